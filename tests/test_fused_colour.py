"""The Triton colour conversions of ``nailseg.augment.fused.colour`` against Kornia's.

Without a GPU the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``, set before
Triton is imported), on CPU tensors. The tolerances are the largest differences measured there
(noted next to each), with a margin for a GPU, where ``tl.exp2``/``tl.log2`` are the hardware
approximations and Kornia divides by a Python scalar as a multiplication by its reciprocal.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402

import kornia.color as kc  # noqa: E402
import pytest  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from nailseg.augment.fused import colour  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BLOCK = 1024
TWO_PI = 2 * math.pi
F32 = torch.float32

RGB_TO_HSV, HSV_TO_RGB, RGB_TO_LAB, LAB_TO_RGB, HUE_SHIFT, LAB_ROUND_TRIP, HELPERS = range(7)


@triton.jit
def _convert_kernel(src, dst, n, shift, OP: tl.constexpr, BLOCK: tl.constexpr):
    """Three planes of a (3, n) tensor in, through one conversion of ``colour``, three out."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(src + offs, mask=mask, other=0.0)
    b = tl.load(src + n + offs, mask=mask, other=0.0)
    c = tl.load(src + 2 * n + offs, mask=mask, other=0.0)
    if OP == 0:
        x, y, z = colour.rgb_to_hsv(a, b, c)
    elif OP == 1:
        x, y, z = colour.hsv_to_rgb(a, b, c)
    elif OP == 2:
        x, y, z = colour.rgb_to_lab(a, b, c)
    elif OP == 3:
        x, y, z = colour.lab_to_rgb(a, b, c)
    elif OP == 4:
        # kornia.enhance.adjust_hue's step, inside one kernel: RGB -> HSV -> hue + shift -> RGB
        h, s, v = colour.rgb_to_hsv(a, b, c)
        h = colour.remainder(h + shift, 6.283185307179586)
        x, y, z = colour.hsv_to_rgb(h, s, v)
    elif OP == 5:
        lightness, la, lb = colour.rgb_to_lab(a, b, c)
        x, y, z = colour.lab_to_rgb(lightness, la, lb)
    else:
        x = colour.remainder(a, 1.0)
        y = colour.remainder(b, 6.0)
        z = colour._pow(c, 2.4)
    tl.store(dst + offs, x, mask=mask)
    tl.store(dst + n + offs, y, mask=mask)
    tl.store(dst + 2 * n + offs, z, mask=mask)


def _fused(op: int, planes: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
    planes = planes.to(DEVICE, F32).contiguous()
    out = torch.empty_like(planes)
    n = planes.shape[1]
    _convert_kernel[(triton.cdiv(n, BLOCK),)](planes, out, n, shift, OP=op, BLOCK=BLOCK)
    return out


def _kornia(fn, planes: torch.Tensor) -> torch.Tensor:
    """``fn`` on a (3, n) tensor, seen as one (1, 3, 1, n) image."""
    return fn(planes.to(DEVICE, F32).reshape(1, 3, 1, -1)).reshape(3, -1)


def _max_error(actual: torch.Tensor, expected: torch.Tensor) -> list[float]:
    return (actual - expected).abs().amax(1).tolist()


def _hue_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest hue difference around the circle (0 and 2π are neighbours)."""
    d = (actual - expected).abs()
    return torch.minimum(d, TWO_PI - d).max().item()


def _columns(pixels: list) -> torch.Tensor:
    return torch.tensor(pixels, dtype=F32).T.contiguous()


def _next(x: float, towards: float) -> float:
    return torch.nextafter(torch.tensor(x, dtype=F32), torch.tensor(towards, dtype=F32)).item()


def _rgb_cases() -> torch.Tensor:
    """(3, n): a seeded random image, dark pixels, and the edge cases."""
    gen = torch.Generator().manual_seed(0)
    random = torch.rand(3, 4000, generator=gen)
    dark = torch.rand(3, 500, generator=gen) * 0.05  # around the sRGB threshold
    pixels = [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    pixels += [[v, v, v] for v in torch.linspace(0, 1, 33).tolist()]  # greys
    for k in (1.0, 0.5, 1e-3):  # primaries and secondaries
        pixels += [[k, 0, 0], [0, k, 0], [0, 0, k], [k, k, 0], [0, k, k], [k, 0, k]]
    hi, lo = 0.7, 0.2  # ties between the maximal (or minimal) channels
    pixels += [[hi, hi, lo], [hi, lo, hi], [lo, hi, hi], [hi, lo, lo], [lo, hi, lo], [lo, lo, hi]]
    pixels += [[hi, _next(hi, 0), lo], [_next(hi, 0), hi, hi], [hi, hi, _next(hi, 1)]]
    t = 0.04045  # sRGB -> linear threshold, and its float32 neighbours
    for v in (t, _next(t, 0), _next(t, 1)):
        pixels += [[v, v, v], [v, 0.5, 0.9], [0.9, v, 0.0], [0.0, 0.3, v]]
    # greys whose Y is around Lab's 0.008856 threshold (sRGB ~0.0998)
    g0 = 1.055 * 0.008856 ** (1 / 2.4) - 0.055
    pixels += [[v, v, v] for v in torch.linspace(g0 - 1e-5, g0 + 1e-5, 41).tolist()]
    for v in (1e-3, 1e-6, 1e-12, 1e-20):  # tiny values
        pixels += [[v, 0, 0], [v, v, 0], [0, v, 2 * v], [v, v, v], [1.0, v, 0]]
    return torch.cat([random, dark, _columns(pixels)], 1)


def _hsv_cases() -> torch.Tensor:
    """(3, n): HSV of the RGB cases, random HSV, and hues on sextant edges and the wrap."""
    gen = torch.Generator().manual_seed(1)
    random = torch.rand(3, 3000, generator=gen)
    random[0] *= TWO_PI
    pixels = []
    two_pi = torch.tensor(TWO_PI, dtype=F32).item()
    hues = [k * math.pi / 3 for k in range(7)]
    hues += [_next(h, 0) for h in hues] + [_next(h, 10) for h in hues]
    hues += [_next(two_pi, 0), two_pi, -1e-7, -0.5, 7.0]
    for h in hues:
        pixels += [[h, 1.0, 1.0], [h, 0.5, 0.8], [h, 0.0, 0.4], [h, 1.0, 0.0]]
    rgb_hsv = _kornia(kc.rgb_to_hsv, _rgb_cases()).cpu()
    return torch.cat([rgb_hsv, random, _columns(pixels)], 1)


def _lab_cases() -> torch.Tensor:
    """(3, n): Lab of the RGB cases, random Lab (much of it out of the sRGB gamut), edges."""
    gen = torch.Generator().manual_seed(2)
    random = torch.rand(3, 3000, generator=gen)
    random[0] *= 100
    random[1:] = random[1:] * 255 - 128
    pixels = [[0, 0, 0], [100, 0, 0], [50, 0, 0], [100, 127, 127], [0, -128, 127], [0, 127, -128]]
    # fy around Kornia's 0.2068966 threshold: L around 8.0
    pixels += [[v, a, a] for v in torch.linspace(7.999, 8.001, 21).tolist() for a in (0, 20)]
    rgb_lab = _kornia(kc.rgb_to_lab, _rgb_cases()).cpu()
    return torch.cat([rgb_lab, random, _columns(pixels)], 1)


def test_rgb_to_hsv_matches_kornia() -> None:
    rgb = _rgb_cases()
    got, want = _fused(RGB_TO_HSV, rgb), _kornia(kc.rgb_to_hsv, rgb)
    # Measured under the interpreter: 0 (bit-identical), hue, saturation and value.
    assert _hue_error(got[0], want[0]) <= 1e-6
    assert max(_max_error(got[1:], want[1:])) <= 1e-6
    assert ((got[0] >= 0) & (got[0] < TWO_PI)).all()


def test_hsv_to_rgb_matches_kornia() -> None:
    hsv = _hsv_cases()
    got, want = _fused(HSV_TO_RGB, hsv), _kornia(kc.hsv_to_rgb, hsv)
    # Measured under the interpreter: 0 (bit-identical).
    assert max(_max_error(got, want)) <= 1e-6


def test_rgb_to_lab_matches_kornia() -> None:
    rgb = _rgb_cases()
    got, want = _fused(RGB_TO_LAB, rgb), _kornia(kc.rgb_to_lab, rgb)
    err_l, err_a, err_b = _max_error(got, want)
    # Measured under the interpreter: L 1.5e-5, a 9.0e-5, b 3.1e-5 (a few float32 ulps of the
    # cube root, times 116, 500 and 200), from exp2(y * log2(x)) for torch.pow.
    assert err_l <= 4e-5
    assert err_a <= 2e-4
    assert err_b <= 1e-4


def test_lab_to_rgb_matches_kornia() -> None:
    lab = _lab_cases()
    got, want = _fused(LAB_TO_RGB, lab), _kornia(kc.lab_to_rgb, lab)
    # Measured under the interpreter: 1.2e-7 (one ulp below 1).
    assert max(_max_error(got, want)) <= 1e-6
    assert ((got >= 0) & (got <= 1)).all()


@pytest.mark.parametrize("shift", [0.0, 0.5, -1.3, math.pi, -math.pi])
def test_hue_shift_round_trip_matches_kornia(shift: float) -> None:
    """RGB -> HSV -> hue + shift (torch.remainder by 2π) -> RGB in one kernel, as Kornia does it
    in three calls."""
    rgb = _rgb_cases()
    got = _fused(HUE_SHIFT, rgb, shift)
    hsv = _kornia(kc.rgb_to_hsv, rgb)
    hsv[0] = torch.remainder(hsv[0] + shift, TWO_PI)
    want = _kornia(kc.hsv_to_rgb, hsv)
    # Measured under the interpreter: 0 (bit-identical).
    assert max(_max_error(got, want)) <= 1e-6
    if shift == 0.0:
        # The identity, up to rounding: measured 7.2e-7.
        assert max(_max_error(got, rgb.to(DEVICE))) <= 1e-6


def test_lab_round_trip() -> None:
    rgb = _rgb_cases()
    got = _fused(LAB_ROUND_TRIP, rgb)
    want = _kornia(kc.lab_to_rgb, _kornia(kc.rgb_to_lab, rgb))
    # Measured under the interpreter: 4.6e-6 against Kornia's round trip, 4.0e-6 against the
    # input (Kornia's own round trip: 3.4e-6), on saturated dark colours.
    assert max(_max_error(got, want)) <= 1e-5
    assert max(_max_error(got, rgb.to(DEVICE))) <= 1e-5


def test_remainder_and_pow_helpers() -> None:
    """``remainder`` is torch.remainder bit for bit (here and for the hue's ranges); ``_pow``
    is exp2(y * log2(x)), a few ulps from torch.pow."""
    n = 4096
    x = torch.stack(
        [
            torch.linspace(-3, 3, n),  # hue / 6 in rgb_to_hsv: divisor 1
            torch.linspace(-12.5, 12.5, n),  # h * 6 in hsv_to_rgb: divisor 6
            torch.logspace(-4, 0, n),  # (c + 0.055) / 1.055 in the sRGB curve: from 0.09
        ]
    )
    x[1, :8] = torch.tensor(
        [6.0, _next(6.0, 0), _next(6.0, 12), -6.0, _next(-6.0, 0), 0.0, -1e-7, 1e-7]
    )
    got = _fused(HELPERS, x)
    x = x.to(DEVICE)
    assert torch.equal(got[0], torch.remainder(x[0], 1.0))
    assert torch.equal(got[1], torch.remainder(x[1], 6.0))
    want = torch.pow(x[2], 2.4)
    # Measured under the interpreter: 6.0e-8 absolute; relative 1.4e-6 (x near 1e-4, where
    # |2.4 log2 x| is large), 6.7e-7 from x = 0.05 up.
    assert (got[2] - want).abs().max().item() <= 3e-7
    rel = ((got[2] - want).abs() / want.clamp(min=1e-30))[x[2] >= 0.05]  # the range used
    assert rel.max().item() <= 2e-6
