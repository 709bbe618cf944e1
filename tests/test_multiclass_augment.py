"""Class-index masks through every augmentation backend: labels move, never change.

With multi-class segmentation a mask holds class indices ``0..K-1`` plus the void value 255
(``data.ignore_index``). Geometry must carry them unchanged in kind: the mask is resampled
nearest (never blended, so no new label value appears), void stays void, and what the geometry
uncovers is padded with 0, as for binary masks (the policy's documented fill: "0 (background) in
the mask"). Checked for Albumentations (``albu_cpu``, per sample), the Kornia reference engine
(``kornia_gpu``, per batch) and the fused Triton engine against the reference (on a CPU in
Triton's interpreter, as ``test_fused_engine.py`` runs it).

The samples are small class maps: six blocks of classes 1..6 on background 0, a 2-pixel void
border and a void patch inside. Their images encode the mask (a grey level per label), so where
the image is resampled nearest it must equal that encoding of the output mask at every pixel.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch

from nailseg.augment.albu import AlbumentationsAugment
from nailseg.augment.base import AugmentBackend, augment_arrays, denormalize
from nailseg.augment.kornia_gpu import KorniaAugment, fused_interpreted, sampling_grid
from nailseg.augment.params import sample_params
from nailseg.config import compose_config
from tests.test_fused_engine import ODD

VOID = 255
PAD = 0  # what both backends (and the fused kernels) fill uncovered mask pixels with
CLASSES = tuple(range(7))
LABELS = {*CLASSES, VOID}
# Grey level of each label in the images: distinct, background 0 (the image padding), void 255.
LEVEL = np.zeros(256, np.uint8)
LEVEL[list(CLASSES)] = [35 * c for c in CLASSES]
LEVEL[VOID] = 255
SIZES = [(40, 56), (48, 48)]
SEEDS = list(range(7_000, 7_016))
BACKENDS = {"albu_cpu": AlbumentationsAugment, "kornia_gpu": KorniaAugment}
CENTRE_CLASS = 5  # the block of the bottom row's middle cell (nearest the image centre)
# Pixels. Both centroids are sub-pixel estimates (seen: at most 0.16 apart); a mask one pixel
# off the image is not.
CENTROID_TOLERANCE = 0.5
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _policy(name: str) -> dict:
    return dict(compose_config(["paths.output_dir=unused", f"aug/policy={name}"]).aug.policy)


def _geometric(policy: dict) -> dict:
    """The same policy without its intensity parts: geometry is drawn first, from the same
    seeds, so it moves a sample exactly as the full policy does."""
    return {**policy, "noise": None, "blur": None, "colour": None}


# The fused tests' policy with nearest image resampling (test_fused_engine.ODD), geometry wider.
NEAREST = {**ODD, "affine": {**ODD["affine"], "degrees": 45, "scale": [0.75, 1.25]}}
POLICIES = {"tutorial": _policy("tutorial"), "heavy": _policy("heavy"), "nearest": NEAREST}


def _cells(size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """The blocks of classes 1..6 as ``(top, bottom, left, right)``: a 2 x 3 grid inside the
    void border, with background between them."""
    height, width = size
    ch, cw = (height - 4) // 2, (width - 4) // 3
    return [
        (2 + r * ch + 2, 2 + (r + 1) * ch - 1, 2 + c * cw + 2, 2 + (c + 1) * cw - 1)
        for r in range(2)
        for c in range(3)
    ]


def class_mask(size: tuple[int, int], background: int = 0) -> np.ndarray:
    """``uint8`` ``(H, W)``: classes 1..6 in blocks on ``background``, void border and patch."""
    height, width = size
    mask = np.full(size, background, np.uint8)
    for label, (top, bottom, left, right) in enumerate(_cells(size), start=1):
        mask[top:bottom, left:right] = label
    mask[:2], mask[-2:], mask[:, :2], mask[:, -2:] = VOID, VOID, VOID, VOID
    mask[height // 2 - 1 : height // 2 + 2, width // 2 - 1 : width // 2 + 2] = VOID
    return mask


def _samples(size: tuple[int, int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One sample per seed; every 4th has class 3 for background, so no source pixel is 0 and
    every 0 in its output is padding."""
    masks = [class_mask(size, background=3 if i % 4 == 3 else 0) for i in range(len(SEEDS))]
    return [np.repeat(LEVEL[m][..., None], 3, 2) for m in masks], masks


def _run(
    backend: AugmentBackend,
    images: list[np.ndarray],
    masks: list[np.ndarray],
    seeds: list[int] = SEEDS,
) -> tuple[np.ndarray, np.ndarray]:
    """Grey levels 0-255 of channel 0 and the masks, both ``(N, H, W)`` float."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not a GPU" (the reference on a CPU)
        image, mask = augment_arrays(backend, images, masks, seeds, train=True)
    assert mask.dtype == torch.float32 and tuple(mask.shape) == (len(seeds), 1, *masks[0].shape)
    grey = denormalize(image, backend.mean, backend.std)[:, 0] * 255
    return grey.double().numpy(), mask[:, 0].numpy()


@functools.cache
def augmented(backend: str, policy: str, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    engine = {"engine": "reference"} if backend == "kornia_gpu" else {}
    return _run(BACKENDS[backend](POLICIES[policy], **engine), *_samples(size))


def _changed(mask: np.ndarray, size: tuple[int, int]) -> float:
    """Share of samples the geometry moved (so that the checks are not vacuous)."""
    source = np.stack(_samples(size)[1]).astype(np.float32)
    return float((mask != source).reshape(len(mask), -1).any(1).mean())


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("policy", ["tutorial", "heavy"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_masks_keep_their_labels(backend: str, policy: str, size: tuple[int, int]) -> None:
    _, mask = augmented(backend, policy, size)
    # Nearest: no blend of two labels (1.5, 127.5...), no new value, nothing thresholded to {0, 1}.
    assert set(np.unique(mask).tolist()) <= LABELS | {PAD}
    assert _changed(mask, size) >= 0.5
    for sample in mask:
        # Void stays void: the inner patch is far enough inside to survive any transform here.
        assert (sample == VOID).any()
        # Several classes survive in every sample: no binarisation (e.g. ``mask > 0``).
        assert len(set(np.unique(sample).tolist()) - {0, VOID}) >= 3


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_nearest_resampling_moves_every_label_with_its_image(
    backend: str, size: tuple[int, int]
) -> None:
    """Image and mask are sampled at the same source pixel: the image is the encoding of the
    output mask at every pixel, void and padding included (test_augment_alignment, multi-class)."""
    engine = {"engine": "reference"} if backend == "kornia_gpu" else {}
    grey, mask = _run(BACKENDS[backend](_geometric(NEAREST), **engine), *_samples(size))
    assert set(np.unique(mask).tolist()) <= LABELS | {PAD}
    assert _changed(mask, size) >= 0.75
    np.testing.assert_allclose(grey, LEVEL[mask.astype(np.int64)], atol=0.01)
    # Padding is 0 in the mask (and black in the image): the samples with no 0 in their source
    # gain 0 exactly where the transform uncovered them.
    padded = mask[3::4] == PAD
    assert padded.any((1, 2)).mean() >= 0.5
    assert (grey[3::4][padded] < 0.01).all()


@pytest.mark.parametrize("policy", ["tutorial", "heavy"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_a_block_keeps_its_class_at_its_transformed_centre(backend: str, policy: str) -> None:
    """Where the image puts the centre of a block, the mask of the full policy has its class,
    and the block's centroid in that mask lies there (within ``CENTROID_TOLERANCE`` pixels).

    The centre is found from the image alone: a bright spot centred on the block, on a black
    image, moved by the geometric part of the policy with the same seeds (bilinear, as the
    policy resamples images), located by its centroid.
    """
    size = SIZES[0]
    _, mask = augmented(backend, policy, size)
    top, bottom, left, right = _cells(size)[CENTRE_CLASS - 1]
    # 3 pixels wide on an odd side, 4 on an even one: the spot's centroid is the block's.
    sy, sx = 3 + (bottom - top + 1) % 2, 3 + (right - left + 1) % 2
    y0, x0 = top + (bottom - top - sy) // 2, left + (right - left - sx) // 2
    spot = np.zeros((*size, 3), np.uint8)
    spot[y0 : y0 + sy, x0 : x0 + sx] = 255
    block = np.argwhere(class_mask(size) == CENTRE_CLASS).mean(0)
    assert np.allclose(block, (y0 + (sy - 1) / 2, x0 + (sx - 1) / 2))
    engine = {"engine": "reference"} if backend == "kornia_gpu" else {}
    geometric = BACKENDS[backend](_geometric(POLICIES[policy]), **engine)
    grey, _ = _run(geometric, [spot] * len(SEEDS), [np.zeros(size, np.uint8)] * len(SEEDS))
    ys, xs = np.mgrid[: size[0], : size[1]]
    checked = moved = whole = 0
    for sample, image in zip(mask, grey, strict=True):
        mass = image.sum()
        if mass < 0.8 * sy * sx * 255 or (image[[0, -1]].any() or image[:, [0, -1]].any()):
            continue  # the spot (partly) left the image
        centre = np.array([(image * ys).sum(), (image * xs).sum()]) / mass
        y, x = np.round(centre).astype(int)
        checked += 1
        moved += bool(np.abs(centre - block).max() > 1)
        assert sample[y, x] == CENTRE_CLASS, (y, x, sample[y - 2 : y + 3, x - 2 : x + 3])
        inside = sample == CENTRE_CLASS
        if inside[[0, -1]].any() or inside[:, [0, -1]].any():
            continue  # the block is cut by the image's edge: its centroid moved
        whole += 1
        error = np.abs(np.argwhere(inside).mean(0) - centre).max()
        assert error <= CENTROID_TOLERANCE, (error, centre)
    # Not vacuous: most centres were checked, several had moved, several blocks were whole.
    assert checked >= len(SEEDS) // 2 and moved >= 3 and whole >= 3, (checked, moved, whole)


# ---------------------------------------------------------------------------- fused engine
def _ties(policy: dict, seeds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, H, W)``: output pixels whose source point is (nearly) half-way between two source
    pixels, where rounding in either engine may pick either neighbour."""
    matrix = sample_params(KorniaAugment(policy).policy, seeds.cpu(), size).matrix
    grid = sampling_grid(matrix, size)
    height, width = size
    points = ((grid[..., 0] + 1) / 2 * (width - 1), (grid[..., 1] + 1) / 2 * (height - 1))
    return torch.stack([(p - p.floor() - 0.5).abs() < 1e-3 for p in points]).any(0)


@pytest.mark.skipif(
    not CUDA and not fused_interpreted(),
    reason="the fused engine needs CUDA or Triton's interpreter (TRITON_INTERPRET=1)",
)
@pytest.mark.parametrize("policy", list(POLICIES))
def test_fused_masks_equal_the_reference_but_at_ties(policy: str) -> None:
    size = SIZES[0]
    images, masks = _samples(size)
    image = torch.stack([torch.from_numpy(i).permute(2, 0, 1) for i in images])
    mask = torch.stack([torch.from_numpy(m)[None] for m in masks])
    seeds = torch.tensor(SEEDS, dtype=torch.int64)
    reference = KorniaAugment(POLICIES[policy], engine="reference")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not a GPU" (the reference on a CPU)
        _, want = reference.batch_transform(image, mask, seeds, True)
    # A batch of two (the interpreter is slow): a sample the geometry moves, and one with no
    # background class 0 in its source whose reference output is padded.
    geometric = sample_params(reference.policy, seeds, size).geometric
    padded = (want[:, 0] == PAD).flatten(1).any(1)
    moved = [i for i in range(len(SEEDS)) if i % 4 != 3 and geometric[i]]
    uncovered = [i for i in range(3, len(SEEDS), 4) if padded[i]]
    chosen = torch.tensor([moved[0], uncovered[0]])
    image, mask, seeds, want = image[chosen], mask[chosen], seeds[chosen], want[chosen]
    fused = KorniaAugment(POLICIES[policy], engine="fused")
    _, got = fused.batch_transform(image.to(DEVICE), mask.to(DEVICE), seeds.to(DEVICE), True)
    got = got.cpu()
    assert got.dtype == torch.float32
    assert set(got.unique().tolist()) <= LABELS | {PAD}
    assert (got == VOID).flatten(1).any(1).all()
    assert (got[1] == PAD).any()  # padded with 0, as the reference pads
    differ = (got != want)[:, 0]
    # As test_fused_engine: equal but for nearest-neighbour ties, and only at ties.
    assert float(differ.float().mean()) <= 1e-3
    assert not (differ & ~_ties(POLICIES[policy], seeds, size)).any()
