"""Statistical parity: the Albumentations and Kornia backends draw from the same distributions.

Each case switches on one part of the policy, runs both backends over the same tiny test pattern
with N fixed seeds, recovers the drawn parameter of every sample from the output (flip from where
a marker lands; rotation, scale and shift from image moments of an ellipse; brightness and
contrast from two grey levels; hue, saturation and value shifts from a flat colour patch; noise
std from a flat image; blur sigma from a step edge; for CLAHE only whether it was applied, on a
low-contrast gradient) and compares, with tolerances stated next to each check:

- the fraction of samples the op was applied to, against the policy's ``p`` and between backends:
  within 4 binomial standard errors (``4 * sqrt(p (1 - p) / N)``, doubled variance between);
- each recovered parameter, against the uniform range the policy states and between backends:
  Kolmogorov-Smirnov distance below the 0.1 % critical value ``1.95 * sqrt(1/n + 1/m)`` plus a
  small allowance for measurement error (``KS_SLACK``);
- the mean and std of the brightness change between backends: within 4 standard errors of the
  difference (mean: ``sqrt(var_a / n_a + var_k / n_k)``; std: ``std * sqrt(1 / 2n_a + 1 / 2n_k)``).

With fixed seeds the outcome is deterministic; the tolerances are the ones a correct
implementation passes by chance 99.9 % of the time, not values fitted to the measurement.
``test_detects_a_different_policy`` runs every case with a deliberately different Kornia policy
and requires each one to fail, so the checks can fail.
"""

from __future__ import annotations

import colorsys
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import pytest
import torch

from nailseg.augment.albu import AlbumentationsAugment
from nailseg.augment.base import AugmentBackend, augment_arrays, denormalize
from nailseg.augment.kornia_gpu import KorniaAugment

N = 600
SEEDS = list(range(10_000, 10_000 + N))
KS_SLACK = 0.03  # measurement error of the recovered parameters (sub-pixel moments, 8-bit rounding)

# Every case starts from "nothing" and switches on one part.
OFF = {"hflip_p": 0.0, "vflip_p": 0.0, "affine": None, "noise": None, "blur": None, "colour": None}


# ---------------------------------------------------------------------------- test patterns
def _marker(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A bright square in the top-left quadrant: its quadrant after the op gives the flips."""
    mask = np.zeros((size, size), np.uint8)
    mask[3:10, 4:12] = 1
    return np.repeat(mask[..., None] * 255, 3, 2), mask


def _ellipse(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A horizontal ellipse in the centre: moments give angle, scale and shift."""
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, (size // 2, size // 2), (16, 5), 0, 0, 360, 1, -1)
    return np.repeat(mask[..., None] * 255, 3, 2), mask


LO, HI = 0.3, 0.6


def _two_levels(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Left half at LO, right half at HI: x * (1 + c) + b recovered from the two levels."""
    image = np.empty((size, size, 3), np.uint8)
    image[:, : size // 2], image[:, size // 2 :] = round(LO * 255), round(HI * 255)
    return image, np.zeros((size, size), np.uint8)


COLOUR = (200, 90, 60)  # a saturated skin-like colour: no HSV shift of the policy clips it


def _colour_patch(size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    return np.full((size, size, 3), COLOUR, np.uint8), np.zeros((size, size), np.uint8)


def _low_contrast(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A dim, low-contrast gradient that CLAHE visibly stretches at any clip limit."""
    ramp = np.linspace(90, 130, size, dtype=np.float32)
    grey = (ramp[None, :] + ramp[:, None]) / 2
    return np.repeat(grey[..., None], 3, 2).round().astype(np.uint8), np.zeros(
        (size, size), np.uint8
    )


def _changed(out: np.ndarray, original: np.ndarray) -> dict[str, np.ndarray]:
    return {"applied": np.abs(out - original[None]).reshape(len(out), -1).max(1) > 2 / 255}


def _flat(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    return np.full((size, size, 3), 128, np.uint8), np.zeros((size, size), np.uint8)


EDGE = 16


def _step(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Black left of column EDGE, white from it: the last black pixel measures the blur."""
    image = np.zeros((size, size, 3), np.uint8)
    image[:, EDGE:] = 255
    return image, np.zeros((size, size), np.uint8)


# ---------------------------------------------------------------------------- measurements
def _flips(out: np.ndarray, original: np.ndarray) -> dict[str, np.ndarray]:
    gray = out.mean(1)
    size = gray.shape[-1]
    mass = gray.sum((1, 2))
    ys, xs = np.mgrid[:size, :size]
    cy, cx = (gray * ys).sum((1, 2)) / mass, (gray * xs).sum((1, 2)) / mass
    hflip, vflip = cx > size / 2, cy > size / 2
    return {"hflip": hflip, "vflip": vflip, "both": hflip & vflip}


def _moments(out: np.ndarray, original: np.ndarray) -> dict[str, np.ndarray]:
    gray = out.mean(1)
    size = gray.shape[-1]
    ys, xs = np.mgrid[:size, :size].astype(np.float64)
    m00 = gray.sum((1, 2))
    cx, cy = (gray * xs).sum((1, 2)) / m00, (gray * ys).sum((1, 2)) / m00
    dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
    mu20, mu02, mu11 = ((gray * d).sum((1, 2)) / m00 for d in (dx * dx, dy * dy, dx * dy))
    # The principal axis; the sign convention of "positive rotation" does not matter, the
    # distribution is symmetric.
    angle = np.degrees(0.5 * np.arctan2(2 * mu11, mu20 - mu02))
    base = original.mean(0).sum()
    centre = (size - 1) / 2
    return {
        "applied": np.abs(out - original[None]).reshape(len(out), -1).max(1) > 1e-3,
        "angle": angle,
        "scale": np.sqrt(m00 / base),
        "shift_x": (cx - centre) / size,
        "shift_y": (cy - centre) / size,
    }


def _brightness(out: np.ndarray, original: np.ndarray) -> dict[str, np.ndarray]:
    half = out.shape[-1] // 2
    lo, hi = out[:, :, :, 2 : half - 2].mean((1, 2, 3)), out[:, :, :, half + 2 : -2].mean((1, 2, 3))
    contrast = (hi - lo) / (HI - LO) - 1
    return {
        "applied": np.abs(out - original[None]).reshape(len(out), -1).max(1) > 1e-3,
        "contrast": contrast,
        "brightness": lo - LO * (1 + contrast),
        "change": (out - original[None]).mean((1, 2, 3)),
    }


def _hsv(out: np.ndarray, original: np.ndarray) -> dict[str, np.ndarray]:
    before = colorsys.rgb_to_hsv(*original[:, 0, 0])
    after = np.array([colorsys.rgb_to_hsv(*pixel) for pixel in out[:, :, 8, 8]])
    return {
        "applied": np.abs(out - original[None]).reshape(len(out), -1).max(1) > 1e-3,
        # Hue is a fraction of the circle: the shortest way round.
        "hue": (after[:, 0] - before[0] + 0.5) % 1.0 - 0.5,
        "saturation": after[:, 1] - before[1],
        "value": after[:, 2] - before[2],
    }


def _noise(out: np.ndarray, original: np.ndarray) -> dict[str, np.ndarray]:
    std = out.reshape(len(out), -1).std(1)
    return {"applied": std > 0.005, "std": std}


def _kernel_ratio(sigma: np.ndarray, kernel_size: int = 5) -> np.ndarray:
    """Weight of the white side at the last black pixel, for a sampled Gaussian kernel."""
    k = np.arange(kernel_size) - kernel_size // 2
    g = np.exp(-(k[None] ** 2) / (2 * sigma[:, None] ** 2))
    return g[:, k > 0].sum(1) / g.sum(1)


def _blur(out: np.ndarray, original: np.ndarray) -> dict[str, np.ndarray]:
    value = out[:, :, 4:-4, EDGE - 1].mean((1, 2))
    grid = np.linspace(0.05, 5.0, 4000)
    sigma = np.interp(value, _kernel_ratio(grid), grid)  # the ratio grows with sigma
    return {"applied": value > 1e-3, "sigma": sigma}


# ---------------------------------------------------------------------------- the cases
@dataclass(frozen=True)
class Case:
    """One part of the policy, its test pattern, how to measure it and what to expect."""

    policy: dict
    pattern: Callable[[], tuple[np.ndarray, np.ndarray]]
    measure: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]
    # flag name -> expected probability
    fractions: dict[str, float]
    # parameter name -> uniform (low, high) it is drawn from, measured where "applied"
    uniform: dict[str, tuple[float, float]] = field(default_factory=dict)
    # the same policy with one thing changed, that parity must catch
    different: dict = field(default_factory=dict)


CLAHE = {"clip_limit": [1.0, 4.0], "grid_size": 4}
HSV_LIMITS = {"hue": 0.05, "saturation": 0.15, "value": 0.1}
CASES = {
    "flips": Case(
        {**OFF, "hflip_p": 0.5, "vflip_p": 0.3},
        _marker,
        _flips,
        # "both": the two flips are drawn independently (p = 0.5 * 0.3).
        fractions={"hflip": 0.5, "vflip": 0.3, "both": 0.15},
        different={**OFF, "hflip_p": 0.35, "vflip_p": 0.3},
    ),
    "affine": Case(
        {**OFF, "affine": {"p": 0.7, "degrees": 20, "scale": [0.8, 1.2], "translate": 0.08}},
        _ellipse,
        _moments,
        fractions={"applied": 0.7},
        uniform={
            "angle": (-20, 20),
            "scale": (0.8, 1.2),
            "shift_x": (-0.08, 0.08),
            "shift_y": (-0.08, 0.08),
        },
        different={
            **OFF,
            # 32, not 26: KS to Uniform(-20, 20) is then 0.19, far above the limit (26 gave 0.115
            # against 0.123, a detection left to chance).
            "affine": {"p": 0.7, "degrees": 32, "scale": [0.8, 1.2], "translate": 0.08},
        },
    ),
    "brightness_contrast": Case(
        {
            **OFF,
            "colour": {
                "p": 0.6,
                "hsv": None,
                "clahe": None,
                "brightness_contrast": {"brightness": 0.2, "contrast": 0.2},
            },
        },
        _two_levels,
        _brightness,
        fractions={"applied": 0.6},
        uniform={"brightness": (-0.2, 0.2), "contrast": (-0.2, 0.2)},
        different={
            **OFF,
            "colour": {
                "p": 0.6,
                "hsv": None,
                "clahe": None,
                "brightness_contrast": {"brightness": 0.3, "contrast": 0.2},
            },
        },
    ),
    "hsv": Case(
        {
            **OFF,
            "colour": {"p": 0.7, "hsv": HSV_LIMITS, "clahe": None, "brightness_contrast": None},
        },
        _colour_patch,
        _hsv,
        fractions={"applied": 0.7},
        uniform={"hue": (-0.05, 0.05), "saturation": (-0.15, 0.15), "value": (-0.1, 0.1)},
        different={
            **OFF,
            "colour": {
                "p": 0.7,
                "hsv": {**HSV_LIMITS, "hue": 0.08},
                "clahe": None,
                "brightness_contrast": None,
            },
        },
    ),
    # CLAHE's clip limit cannot be read back from an image, and OpenCV's and Kornia's CLAHE
    # differ in implementation: only how often it is applied is compared.
    "clahe": Case(
        {**OFF, "colour": {"p": 0.7, "hsv": None, "clahe": CLAHE, "brightness_contrast": None}},
        _low_contrast,
        _changed,
        fractions={"applied": 0.7},
        different={
            **OFF,
            "colour": {"p": 0.5, "hsv": None, "clahe": CLAHE, "brightness_contrast": None},
        },
    ),
    "noise": Case(
        {**OFF, "noise": {"p": 0.3, "std": [0.02, 0.06]}},
        _flat,
        _noise,
        fractions={"applied": 0.3},
        uniform={"std": (0.02, 0.06)},
        different={**OFF, "noise": {"p": 0.45, "std": [0.02, 0.06]}},
    ),
    "blur": Case(
        {**OFF, "blur": {"p": 0.4, "sigma": [0.5, 1.5], "kernel_size": 5}},
        _step,
        _blur,
        fractions={"applied": 0.4},
        uniform={"sigma": (0.5, 1.5)},
        different={**OFF, "blur": {"p": 0.4, "sigma": [0.7, 1.5], "kernel_size": 5}},
    ),
}


# ---------------------------------------------------------------------------- running, comparing
def run(
    backend: AugmentBackend,
    pattern: Callable[[], tuple[np.ndarray, np.ndarray]],
    device: str = "cpu",
) -> np.ndarray:
    """The backend's augmented images, de-normalised to [0, 1], as ``(N, 3, H, W)`` numpy."""
    image, mask = pattern()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the one "not a GPU" warning; tested elsewhere
        out, _ = augment_arrays(backend, [image] * N, [mask] * N, SEEDS, device=device)
    out = denormalize(out.float().cpu(), backend.mean, backend.std)
    return out.clamp(0, 1).numpy().astype(np.float64)


@functools.cache
def measured(name: str, backend: str, different: bool = False) -> dict[str, np.ndarray]:
    case = CASES[name]
    policy = case.different if different else case.policy
    if backend == "fused":  # the fused Triton engine, on CUDA
        built, device = KorniaAugment(policy, engine="fused"), "cuda"
    else:
        cls = {"albu": AlbumentationsAugment, "kornia": KorniaAugment}[backend]
        built, device = cls(policy), "cpu"
    image, _ = case.pattern()
    original = image.transpose(2, 0, 1).astype(np.float64) / 255
    return case.measure(run(built, case.pattern, device), original)


def ks_distance(a: np.ndarray, b: np.ndarray | tuple[float, float]) -> float:
    """Two-sample KS distance, or one-sample against Uniform(low, high) when ``b`` is a range."""
    a = np.sort(a)
    if isinstance(b, tuple):
        cdf = np.clip((a - b[0]) / (b[1] - b[0]), 0, 1)
        i = np.arange(1, len(a) + 1) / len(a)
        return float(max((i - cdf).max(), (cdf - (i - 1 / len(a))).max()))
    b = np.sort(b)
    grid = np.concatenate([a, b])
    return float(
        np.abs(
            np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)
        ).max()
    )


def ks_limit(n: int, m: int | None = None) -> float:
    """0.1 % critical KS distance (one sample when ``m`` is None) plus measurement slack."""
    return 1.95 * np.sqrt(1 / n + (1 / m if m else 0)) + KS_SLACK


def compare(
    case: Case, albu: dict[str, np.ndarray], kornia: dict[str, np.ndarray]
) -> tuple[list[str], dict]:
    """Every check of one case: ``(failures, figures)``; no failures means parity."""
    failures, figures = [], {}
    for flag, p in case.fractions.items():
        fa, fk = float(albu[flag].mean()), float(kornia[flag].mean())
        se = np.sqrt(p * (1 - p) / N)
        figures[f"{flag} fraction"] = (round(fa, 3), round(fk, 3), p)
        for who, f in (("albu", fa), ("kornia", fk)):
            if abs(f - p) > 4 * se:
                failures.append(
                    f"{who} {flag} fraction {f:.3f}, policy says {p} (tolerance {4 * se:.3f})"
                )
        if abs(fa - fk) > 4 * np.sqrt(2) * se:
            failures.append(f"{flag} fraction differs: albu {fa:.3f} vs kornia {fk:.3f}")
    for name, bounds in case.uniform.items():
        a = albu[name][albu.get("applied", np.ones(N, bool))]
        k = kornia[name][kornia.get("applied", np.ones(N, bool))]
        both = ks_distance(a, k), ks_limit(len(a), len(k))
        figures[f"{name} KS albu-kornia"] = (round(both[0], 3), round(both[1], 3))
        if both[0] > both[1]:
            failures.append(f"{name}: KS distance albu vs kornia {both[0]:.3f} > {both[1]:.3f}")
        for who, values in (("albu", a), ("kornia", k)):
            d, limit = ks_distance(values, bounds), ks_limit(len(values))
            figures[f"{name} KS {who}-uniform{bounds}"] = (round(d, 3), round(limit, 3))
            if d > limit:
                failures.append(
                    f"{who} {name}: KS distance to Uniform{bounds} {d:.3f} > {limit:.3f}"
                )
    if "change" in albu:
        a, k = albu["change"][albu["applied"]], kornia["change"][kornia["applied"]]
        figures["brightness change mean"] = (round(a.mean(), 4), round(k.mean(), 4))
        figures["brightness change std"] = (round(a.std(), 4), round(k.std(), 4))
        mean_tol = 4 * np.sqrt(a.var() / len(a) + k.var() / len(k))
        std_tol = 4 * np.sqrt(1 / (2 * len(a)) + 1 / (2 * len(k)))  # relative
        figures["brightness tolerances (mean, std ratio)"] = (round(mean_tol, 4), round(std_tol, 3))
        if abs(a.mean() - k.mean()) > mean_tol:
            failures.append(f"brightness change mean: albu {a.mean():.4f} vs kornia {k.mean():.4f}")
        if abs(a.std() / k.std() - 1) > std_tol:
            failures.append(f"brightness change std: albu {a.std():.4f} vs kornia {k.std():.4f}")
    return failures, figures


@pytest.mark.parametrize("name", list(CASES))
def test_backends_draw_the_same_distributions(name: str) -> None:
    failures, figures = compare(CASES[name], measured(name, "albu"), measured(name, "kornia"))
    print(name, figures)
    assert not failures, f"{name}: {failures} (figures: {figures})"


@pytest.mark.parametrize("name", list(CASES))
def test_detects_a_different_policy(name: str) -> None:
    # Kornia built from a policy that differs in one value must fail parity with Albumentations.
    failures, figures = compare(
        CASES[name], measured(name, "albu"), measured(name, "kornia", different=True)
    )
    assert failures, f"{name}: a different policy passed parity (figures: {figures})"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(CASES))
def test_the_fused_engine_draws_the_same_distributions(name: str) -> None:
    """The fused Triton engine (CUDA) against Albumentations, as the reference is above."""
    failures, figures = compare(CASES[name], measured(name, "albu"), measured(name, "fused"))
    assert not failures, f"{name}: {failures} (figures: {figures})"
