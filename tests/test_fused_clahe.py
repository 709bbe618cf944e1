"""The fused CLAHE pieces against kornia's ``_equalize_clahe`` (histograms, LUTs, output)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from kornia.enhance.equalization import (  # noqa: E402
    _compute_luts,
    _compute_tiles,
    _equalize_clahe,
    _tiles_histc,
)

from nailseg.augment.fused.clahe import (  # noqa: E402
    clahe_apply,
    clahe_count,
    clahe_lut_kernel,
    clahe_tiles,
)
from nailseg.augment.fused.kernels import _pixels  # noqa: E402  the kernels' pixel block

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BLOCK = 4096
OP_COL, CLIP_COL, CLAHE_OP, OTHER_OP = 1, 3, 1, 2
SENTINEL = -7.0


@triton.jit
def _count_kernel(
    img_ptr, hist_ptr, height, width, tile_h, tile_w, GRID: tl.constexpr, BLOCK: tl.constexpr
):
    sample, offs, mask, y, x = _pixels(height, width, BLOCK)
    light = tl.load(img_ptr + sample * height * width + offs, mask=mask, other=0.0)
    hist = hist_ptr + sample * (GRID * GRID * 256)
    clahe_count(hist, light, y, x, mask, height, width, tile_h, tile_w, GRID)


@triton.jit
def _apply_kernel(
    img_ptr,
    lut_ptr,
    out_ptr,
    height,
    width,
    tile_h,
    tile_w,
    GRID: tl.constexpr,
    BLOCK: tl.constexpr,
):
    sample, offs, mask, y, x = _pixels(height, width, BLOCK)
    light = tl.load(img_ptr + sample * height * width + offs, mask=mask, other=0.0)
    lut = lut_ptr + sample * (GRID * GRID * 256)
    out = clahe_apply(lut, light, y, x, height, width, tile_h, tile_w, GRID)
    tl.store(out_ptr + sample * height * width + offs, out, mask=mask)


def _images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Smooth images (a few broad blobs and ramps) plus some noise, in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, height).view(1, height, 1)
    xx = torch.linspace(0, 1, width).view(1, 1, width)
    centre = torch.rand(batch, 2, 1, 1, generator=gen)
    spread = 0.05 + 0.3 * torch.rand(batch, 1, 1, generator=gen)
    blob = torch.exp(-((yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2) / spread)
    ramp = torch.rand(batch, 1, 1, generator=gen) * xx + torch.rand(batch, 1, 1, generator=gen) * yy
    img = 0.2 + 0.4 * blob + 0.2 * ramp + 0.03 * torch.randn(batch, height, width, generator=gen)
    img = img.clamp(0, 1)
    img[0, 0, :3] = torch.tensor([0.0, 1.0, 254.5 / 255])  # the ends of the range, a level edge
    return img.unsqueeze(1).to(DEVICE)


def _run(img: torch.Tensor, params: torch.Tensor, grid: int, lut_fill: float = SENTINEL):
    batch, _, height, width = img.shape
    tile_h, tile_w = clahe_tiles(height, width, grid)
    pixels = tile_h * tile_w
    hist = torch.zeros(batch, grid * grid, 256, dtype=torch.int32, device=DEVICE)
    lut = torch.full((batch, grid * grid, 256), lut_fill, dtype=torch.float32, device=DEVICE)
    out = torch.empty_like(img)
    blocks = (triton.cdiv(height * width, BLOCK), batch)
    _count_kernel[blocks](img, hist, height, width, tile_h, tile_w, GRID=grid, BLOCK=BLOCK)
    clahe_lut_kernel[(grid * grid, batch)](
        hist,
        lut,
        params,
        params.stride(0),
        pixels,
        255 / pixels,
        CLIP_COL=CLIP_COL,
        OP_COL=OP_COL,
        CLAHE_OP=CLAHE_OP,
        GRID=grid,
    )
    _apply_kernel[blocks](img, lut, out, height, width, tile_h, tile_w, GRID=grid, BLOCK=BLOCK)
    return hist, lut, out


def _params(clips: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    table = torch.zeros(len(clips), 5, dtype=torch.float32)
    table[:, OP_COL] = ops.float()
    table[:, CLIP_COL] = clips
    return table.to(DEVICE)


@pytest.mark.parametrize(
    ("height", "width", "grid"),
    [
        (64, 64, 8),  # even tiles, no padding
        (60, 62, 8),  # even tiles, padding in both axes
        (48, 40, 8),  # odd tiles in one axis (6 x 5)
        (50, 37, 8),  # odd tiles, padding in both axes
        (24, 24, 8),  # 3 x 3 tiles
        (30, 46, 4),  # even tiles, padding in both axes
        (61, 45, 4),  # odd tiles, padding in both axes
        (5, 9, 2),  # tiny tiles, one padded row (3 x 5)
        (127, 99, 2),  # large even tiles (64 x 50): limits well above 1, partial clipping
    ],
)
def test_matches_kornia(height: int, width: int, grid: int) -> None:
    batch = 4
    gen = torch.Generator().manual_seed(height * 1000 + width * 10 + grid)
    img = _images(batch, height, width, seed=height + width + grid)
    clips = 1.0 + 5.0 * torch.rand(batch, generator=gen)
    clips[-1] = 0.0  # clipping off
    hist, lut, out = _run(img, _params(clips, torch.full((batch,), CLAHE_OP)), grid)

    tiles, _ = _compute_tiles(img, (grid, grid), False)
    expected_hist = _tiles_histc(tiles.reshape(batch * grid * grid, -1), 256)
    assert torch.equal(hist.reshape(-1, 256).cpu(), expected_hist.to(torch.int32).cpu())

    clip_tensor = clips.to(DEVICE)
    expected_lut = _compute_luts(tiles, clip=clip_tensor, diff=False).reshape(batch, -1, 256)
    assert torch.equal(lut, expected_lut)
    # The limits bite: every sample with a clip limit has bins above it.
    limits = (clips.double() * (tiles.shape[-2] * tiles.shape[-1]) / 256).floor().clamp(min=1)
    assert (hist.view(batch, -1).amax(1)[:-1].cpu() > limits[:-1]).all()

    expected = _equalize_clahe(img, clip_tensor, (grid, grid), False)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_clip_limits_at_rounding_edges() -> None:
    """Limits at and just below ``k * 256 / pixels``, where a float32 floor differs from kornia's
    float64 one (``3.5804195 * 143 / 256`` is 2 in float32, 1.99... in float64)."""
    pixels = 11 * 13
    exact = torch.tensor([256 * k / pixels for k in range(1, 6)], dtype=torch.float32)
    below = torch.nextafter(exact, torch.zeros(()))
    clips = torch.cat([exact, below, torch.nextafter(below, torch.zeros(()))])
    clips = torch.cat([clips, torch.tensor([-1.0, 1e30, 1e-30])])
    in_float32 = (clips * pixels / 256).floor().clamp(min=1)
    assert (in_float32 != (clips.double() * pixels / 256).floor().clamp(min=1))[:-3].any()
    batch = len(clips)
    img = (torch.rand(batch, 1, 22, 26, generator=torch.Generator().manual_seed(3)) ** 3).to(DEVICE)
    _, lut, _ = _run(img, _params(clips, torch.full((batch,), CLAHE_OP)), 2)
    tiles, _ = _compute_tiles(img, (2, 2), False)
    assert tiles.shape[-2] * tiles.shape[-1] == pixels
    expected_lut = _compute_luts(tiles, clip=clips.to(DEVICE), diff=False).reshape(batch, -1, 256)
    assert torch.equal(lut, expected_lut)


def test_other_op_leaves_lut_untouched() -> None:
    img = _images(3, 40, 44, seed=5)
    ops = torch.tensor([CLAHE_OP, OTHER_OP, CLAHE_OP])
    clips = torch.tensor([2.0, 3.0, 4.5])
    _, lut, out = _run(img, _params(clips, ops), 8)
    assert (lut[1] == SENTINEL).all()
    keep = ops == CLAHE_OP
    tiles, _ = _compute_tiles(img, (8, 8), False)
    expected_lut = _compute_luts(tiles, clip=clips.to(DEVICE), diff=False).reshape(3, -1, 256)
    assert torch.equal(lut[keep.to(DEVICE)], expected_lut[keep.to(DEVICE)])
    expected = _equalize_clahe(img, clips.to(DEVICE), (8, 8), False)
    torch.testing.assert_close(out[keep.to(DEVICE)], expected[keep.to(DEVICE)], rtol=0, atol=1e-6)


def test_clahe_tiles() -> None:
    assert clahe_tiles(64, 64, 8) == (8, 8)
    assert clahe_tiles(50, 37, 8) == (7, 5)
    assert clahe_tiles(9, 9, 8) == (2, 2)
    for height, width in [(8, 64), (64, 8), (3, 3)]:
        with pytest.raises(ValueError, match="smallest image this grid admits is \\(9, 9\\)"):
            clahe_tiles(height, width, 8)
        with pytest.raises(ValueError, match="smallest image this grid admits"):
            _equalize_clahe(torch.rand(1, 1, height, width), 2.0, (8, 8), False)
    with pytest.raises(ValueError, match="positive"):
        clahe_tiles(64, 64, 0)
