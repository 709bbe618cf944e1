"""Decoding images and masks into the shapes the rest of the package expects.

Images become RGB ``uint8`` arrays ``(H, W, 3)`` (grayscale is replicated, alpha dropped).
Masks become ``uint8`` arrays ``(H, W)`` in ``{0, 1}`` by the rule in :func:`binarize_mask`.
Both are turned upright by their own EXIF orientation tag first, the way image viewers (and the
annotation tools people draw masks in) show them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nailseg.errors import DataError

EXIF_ORIENTATION = 0x0112
# Modes whose pixel values are the mask values themselves (no colour channels to reduce).
SINGLE_CHANNEL_MODES = ("P", "L", "1", "I", "I;16", "F")


def open_file(path: Path | str) -> Image.Image:
    """Open and fully decode one image file, as stored (no EXIF rotation, no mode change).

    Raises :class:`DataError` naming the file when it is missing, truncated or not an image.
    """
    path = Path(path)
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError as err:
        raise DataError(
            f"File not found: {path}. Check the data paths and the split CSVs."
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"Cannot decode {path}: {err}. Replace or remove the file.") from err
    return image


def orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright, also when there is none)."""
    return int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, so pixels are laid out as a viewer shows them."""
    return ImageOps.exif_transpose(image) if orientation(image) != 1 else image


def image_array(image: Image.Image) -> np.ndarray:
    """A decoded image as RGB ``uint8`` ``(H, W, 3)``."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def mask_values(image: Image.Image) -> np.ndarray:
    """A decoded mask's raw values ``(H, W)``: palette indices, gray levels, or for colour masks
    the brightest channel (so a red-on-black mask works like a white-on-black one)."""
    if image.mode in SINGLE_CHANNEL_MODES:
        values = np.asarray(image)
        # 1-bit masks decode to bool, which OpenCV cannot resize.
        return values.astype(np.uint8) if values.dtype == bool else values
    return np.asarray(image.convert("RGB")).max(axis=2)


def read_image(path: Path | str) -> np.ndarray:
    """Read an image as RGB ``uint8`` ``(H, W, 3)``, upright; grayscale, palette, RGBA converted."""
    return image_array(upright(open_file(path)))


def read_mask(path: Path | str, threshold: float | None = None) -> np.ndarray:
    """Read a mask as ``uint8`` ``(H, W)`` in ``{0, 1}``, upright.

    See :func:`mask_values` for how channels are reduced and :func:`binarize_mask` for the
    foreground rule.
    """
    return binarize_mask(mask_values(upright(open_file(path))), threshold)


def auto_threshold(max_value: float) -> float:
    """The automatic threshold for a mask (or a data set) whose largest value is ``max_value``:
    ``0`` for index masks (values 0/1, e.g. palette masks), ``127`` for 8-bit masks (0/255, also
    when JPEG compression has smeared the values)."""
    return 0 if max_value <= 1 else 127


def binarize_mask(values: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Foreground is ``value > threshold``.

    With ``threshold=None`` the rule adapts to this one mask via :func:`auto_threshold`. The
    DataModule instead fixes one threshold for the whole data set (see
    :mod:`nailseg.data.masks`), so every mask of a set follows the same rule.

    Examples:
        >>> binarize_mask(np.array([[0, 3, 200, 255]])).tolist()
        [[0, 0, 1, 1]]
        >>> binarize_mask(np.array([[0, 1]])).tolist()
        [[0, 1]]
    """
    if threshold is None:
        threshold = auto_threshold(values.max(initial=0))
    return (values > threshold).astype(np.uint8)


def resize_pair(
    image: np.ndarray, mask: np.ndarray, size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``size = (height, width)``: area/linear for the image, nearest for the mask.

    Nearest-neighbour keeps mask values as they are, so resizing raw values and thresholding
    afterwards gives the same result as the other way round.
    """
    height, width = int(size[0]), int(size[1])
    if image.shape[:2] == (height, width) and mask.shape[:2] == (height, width):
        return image, mask
    shrinking = image.shape[0] > height and image.shape[1] > width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    image = cv2.resize(image, (width, height), interpolation=interpolation)
    mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, mask
