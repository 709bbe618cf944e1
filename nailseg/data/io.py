"""Decoding images and masks into the shapes the rest of the package expects.

Images become RGB ``uint8`` arrays ``(H, W, 3)`` (grayscale is replicated, alpha dropped).
Masks become ``uint8`` arrays ``(H, W)`` in ``{0, 1}`` by the rule in :func:`binarize_mask`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from nailseg.errors import DataError


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError as err:
        raise DataError(f"File not found: {path}. Check the data root and the split CSVs.") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"Cannot decode {path}: {err}. Replace or remove the file.") from err
    return image


def read_image(path: Path | str) -> np.ndarray:
    """Read an image as RGB ``uint8`` ``(H, W, 3)``, converting grayscale, palette and RGBA."""
    image = _open(Path(path))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def read_mask(path: Path | str, threshold: float | None = None) -> np.ndarray:
    """Read a mask as ``uint8`` ``(H, W)`` in ``{0, 1}``.

    Palette masks keep their indices; colour masks are reduced to their brightest channel.
    See :func:`binarize_mask` for the foreground rule.
    """
    image = _open(Path(path))
    if image.mode in ("P", "L", "1", "I", "I;16", "F"):
        values = np.asarray(image)
    else:
        values = np.asarray(image.convert("RGB")).max(axis=2)
    return binarize_mask(values, threshold)


def binarize_mask(values: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Foreground is ``value > threshold``.

    With ``threshold=None`` the rule adapts to the mask: masks whose values are all in ``{0, 1}``
    (index masks) use ``> 0``; 8-bit masks (0/255, JPEG-noisy) use ``> 127``, the midpoint.
    """
    if threshold is None:
        threshold = 0 if values.max(initial=0) <= 1 else 127
    return (values > threshold).astype(np.uint8)


def resize_pair(
    image: np.ndarray, mask: np.ndarray, size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``size = (height, width)``: area/linear for the image, nearest for the mask."""
    height, width = int(size[0]), int(size[1])
    if image.shape[:2] == (height, width) and mask.shape[:2] == (height, width):
        return image, mask
    shrinking = image.shape[0] > height and image.shape[1] > width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    image = cv2.resize(image, (width, height), interpolation=interpolation)
    mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, mask
