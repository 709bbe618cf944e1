"""A small multi-class VOC-style folder for the multi-class tests: colour blocks on noise.

Class 1 (``nail``) is a red block, class 2 (``skin``) a green one, class 0 the gray background,
and a 2-pixel void border (255) surrounds each mask, as in Pascal VOC. The masks are palette
PNGs (values are indices), the images JPEGs of odd, differing sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("background", "nail", "skin")
# Colour of each class in the masks' palette, and in RGB colour masks.
PALETTE = ((0, 0, 0), (200, 0, 0), (0, 200, 0))
VOID = 255


def class_mask(index: int, size: tuple[int, int]) -> np.ndarray:
    """Class indices ``(H, W)``: a nail block and a skin block that move with ``index``."""
    height, width = size
    mask = np.zeros(size, np.uint8)
    top, left = 3 + index % 5, 3 + (index * 3) % 7
    mask[top : top + height // 3, left : left + width // 3] = 1
    mask[height // 2 : height // 2 + height // 4, width // 2 - index % 4 : width - 4] = 2
    mask[:2], mask[-2:], mask[:, :2], mask[:, -2:] = VOID, VOID, VOID, VOID
    return mask


def class_image(mask: np.ndarray, index: int) -> np.ndarray:
    """An RGB image whose colours follow ``mask``'s classes, with noise."""
    rng = np.random.default_rng(index)
    image = rng.integers(90, 140, (*mask.shape, 3)).astype(np.int16)
    image[mask == 1] += np.array([110, -60, -60], np.int16)
    image[mask == 2] += np.array([-60, 100, -40], np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def palette_png(mask: np.ndarray) -> Image.Image:
    image = Image.fromarray(mask, mode="L").convert("P")
    flat = [v for colour in PALETTE for v in colour]
    image.putpalette(flat + [224, 224, 192] * (256 - len(PALETTE)))
    return image


def make_voc(
    root: Path,
    count: int = 12,
    size: tuple[int, int] = (40, 52),
    labels: bool = True,
    valid: int = 3,
) -> Path:
    """``root/JPEGImages``, ``root/SegmentationClass`` (palette PNGs), the image sets and,
    with ``labels``, ``root/labels.txt``. The last ``valid`` images validate."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    names = [f"img{i:02d}" for i in range(count)]
    for i, name in enumerate(names):
        shape = (size[0] + i % 3, size[1] - i % 2)
        mask = class_mask(i, shape)
        Image.fromarray(class_image(mask, i)).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        palette_png(mask).save(root / "SegmentationClass" / f"{name}.png")
    (sets / "train.txt").write_text("\n".join(names[:-valid]) + "\n")
    (sets / "val.txt").write_text("\n".join(names[-valid:]) + "\n")
    if labels:
        (root / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    return root
