"""Decoding images and masks into the shapes the rest of the package expects.

Images become RGB ``uint8`` arrays ``(H, W, 3)`` (grayscale is replicated, alpha dropped); images
with more than 8 bits per channel (16-bit PNG and TIFF) are scaled to 8 bits by
``data.image_scale`` (:func:`to_uint8`), never clipped. Masks become ``uint8`` arrays ``(H, W)``
by the data set's :class:`~nailseg.data.masks.MaskRule`: 1 foreground, 0 background, and the void
value where there is one. Both are turned upright by their own EXIF orientation tag first, the way
image viewers (and the annotation tools people draw masks in) show them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nailseg.data.masks import MaskRule
from nailseg.errors import ConfigError, DataError

EXIF_ORIENTATION = 0x0112
# Modes whose pixel values are the mask values themselves (no colour channels to reduce).
SINGLE_CHANNEL_MODES = ("P", "L", "1", "I", "I;16", "F")
# How images with more than 8 bits per channel become 8-bit (see to_uint8).
IMAGE_SCALES = ("max", "range")
# Where open_file notes the bits per channel the file stores (Pillow keeps only the high byte
# of 16-bit colour images, so the mode alone does not tell).
STORED_BITS = "nailseg.stored_bits"


def _stored_bits(image: Image.Image) -> int:
    """Bits per channel in the file, from the decoder's raw mode (known before ``load``)."""
    if image.mode.startswith("I;16"):
        return 16
    for tile in getattr(image, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        rawmode = args if isinstance(args, str) else args[0] if args else ""
        if isinstance(rawmode, str) and ";16" in rawmode:
            return 16
    return 32 if image.mode == "I" else 8


def open_file(path: Path | str) -> Image.Image:
    """Open and fully decode one image file, as stored (no EXIF rotation, no mode change).

    Raises :class:`DataError` naming the file when it is missing, truncated, not an image, or
    larger than Pillow's decompression-bomb limit.
    """
    path = Path(path)
    try:
        image = Image.open(path)
        bits = _stored_bits(image)
        image.load()
    except FileNotFoundError as err:
        raise DataError(
            f"File not found: {path}. Check the data paths and the split CSVs."
        ) from err
    except Image.DecompressionBombError as err:
        raise DataError(
            f"Cannot decode {path}: {err} Downscale the image or remove the file."
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"Cannot decode {path}: {err}. Replace or remove the file.") from err
    image.info[STORED_BITS] = bits
    return image


def stored_bits(image: Image.Image) -> int:
    """Bits per channel of an image opened by :func:`open_file` (8 for ordinary images)."""
    return int(image.info.get(STORED_BITS, 8))


def check_image_scale(image_scale: str) -> str:
    """``data.image_scale`` when it is one of :data:`IMAGE_SCALES`, else a :class:`ConfigError`."""
    if image_scale not in IMAGE_SCALES:
        raise ConfigError(
            f"Unknown data.image_scale={image_scale!r}. Options: max (divide 16-bit values by"
            " 65535), range (stretch each image's own min..max to 0..255)."
        )
    return image_scale


def orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright, also when there is none)."""
    return int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, so pixels are laid out as a viewer shows them."""
    return ImageOps.exif_transpose(image) if orientation(image) != 1 else image


def image_array(image: Image.Image) -> np.ndarray:
    """A decoded 8-bit image as RGB ``uint8`` ``(H, W, 3)``."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def to_uint8(pixels: np.ndarray, bits: int, image_scale: str = "max") -> np.ndarray:
    """Values of a ``bits``-bit image to ``uint8``, rounded.

    ``image_scale="max"`` divides by the largest value the format holds (65535 for 16 bits), as
    Pillow, torchvision and scikit-image do, so brightness stays comparable between images;
    ``range`` stretches this image's own min..max to 0..255 (for 12-bit or dim data that ``max``
    leaves nearly black).

    Examples:
        >>> to_uint8(np.array([0, 257, 65535], np.uint16), 16).tolist()
        [0, 1, 255]
        >>> to_uint8(np.array([1000, 2000, 3000], np.uint16), 16, "range").tolist()
        [0, 128, 255]
    """
    values = pixels.astype(np.float64)
    if image_scale == "range":
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        values = (values - low) * (255.0 / (high - low) if high > low else 0.0)
    else:
        values = values * (255.0 / (2.0**bits - 1))
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _orient(pixels: np.ndarray, tag: int) -> np.ndarray:
    """Apply EXIF orientation ``tag`` to an array, as :func:`upright` does to an image."""
    if tag in (5, 7):  # transpose, transverse
        pixels = pixels.swapaxes(0, 1)
        return pixels if tag == 5 else pixels[::-1, ::-1]
    flips = {2: (slice(None), slice(None, None, -1)), 4: (slice(None, None, -1),)}
    if tag in flips:
        return pixels[flips[tag]]
    turns = {3: 2, 6: -1, 8: 1}.get(tag, 0)  # quarter turns counter-clockwise
    return np.rot90(pixels, turns) if turns else pixels


def _deep_colour(image: Image.Image) -> np.ndarray | None:
    """The full-depth RGB pixels of a 16-bit colour image (Pillow keeps only the high byte), read
    again with OpenCV; ``None`` if OpenCV cannot read it."""
    filename = getattr(image, "filename", None)
    if not filename:
        return None
    pixels = cv2.imdecode(np.fromfile(filename, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.dtype != np.uint16 or pixels.shape[:2] != image.size[::-1]:
        return None
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    pixels = pixels[..., :3] if pixels.shape[2] >= 3 else pixels[..., :1]
    if pixels.shape[2] == 3:
        pixels = pixels[..., ::-1]  # BGR to RGB
    return _orient(pixels, orientation(image))


def decode_image(image: Image.Image, image_scale: str = "max") -> np.ndarray:
    """An image opened by :func:`open_file` as upright RGB ``uint8`` ``(H, W, 3)``.

    Grayscale is replicated, palette and alpha converted; 16-bit images are scaled by
    :func:`to_uint8`.
    """
    bits = stored_bits(image)
    if bits <= 8:
        return image_array(upright(image))
    if image.mode.startswith("I"):
        pixels = np.asarray(upright(image))[..., None]
    else:
        pixels = _deep_colour(image)
        if pixels is None:  # Pillow's high byte: the "max" scaling, truncated
            return image_array(upright(image))
    pixels = to_uint8(pixels, bits, image_scale)
    return np.ascontiguousarray(np.broadcast_to(pixels, (*pixels.shape[:2], 3)))


class UnknownColour(DataError):
    """A colour mask holds a colour that ``data.palette`` does not list."""


def colour_classes(rgb: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """Colour mask ``(H, W, 3)`` to class indices ``(H, W)`` ``uint8``: colour ``palette[i]``
    is class ``i``.

    Raises:
        UnknownColour: naming the first colour (in raster order) that the palette lacks.

    Examples:
        >>> rgb = np.array([[[0, 0, 0], [255, 0, 0]]], np.uint8)
        >>> colour_classes(rgb, [[0, 0, 0], [255, 0, 0]]).tolist()
        [[0, 1]]
    """
    codes = rgb[..., 0].astype(np.int64) << 16 | rgb[..., 1].astype(np.int64) << 8 | rgb[..., 2]
    table = np.array([(r << 16) | (g << 8) | b for r, g, b in palette], np.int64)
    order = np.argsort(table)
    found = np.searchsorted(table[order], codes).clip(max=len(table) - 1)
    known = table[order][found] == codes
    if not known.all():
        y, x = np.unravel_index(np.argmin(known), known.shape)
        colour = [int(v) for v in rgb[y, x]]
        raise UnknownColour(
            f"colour {colour} (at x={x}, y={y}) is not in data.palette: add it with its class,"
            " or repaint those pixels"
        )
    return order[found].astype(np.uint8)


def mask_values(image: Image.Image, palette: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """A decoded mask's raw values ``(H, W)``: palette indices, gray levels, or for colour masks
    the brightest channel (so a red-on-black mask works like a white-on-black one); with
    ``palette`` (``data.palette``), colour masks become class indices (:func:`colour_classes`)."""
    if image.mode in SINGLE_CHANNEL_MODES:
        values = np.asarray(image)
        # 1-bit masks decode to bool, which OpenCV cannot resize.
        return values.astype(np.uint8) if values.dtype == bool else values
    rgb = np.asarray(image.convert("RGB"))
    if palette is not None:
        return colour_classes(rgb, palette)
    return rgb.max(axis=2)


def read_image(path: Path | str, image_scale: str = "max") -> np.ndarray:
    """Read an image as RGB ``uint8`` ``(H, W, 3)``, upright; see :func:`decode_image`."""
    return decode_image(open_file(path), image_scale)


def read_mask(path: Path | str, rule: MaskRule | float | None = None) -> np.ndarray:
    """Read a mask as ``uint8`` ``(H, W)``, upright: 1 foreground, 0 background (and the void
    value where ``rule`` has one).

    ``rule`` is the data set's :class:`~nailseg.data.masks.MaskRule`, or a threshold (see
    :func:`binarize_mask`). See :func:`mask_values` for how channels are reduced.
    """
    if isinstance(rule, MaskRule):
        palette = rule.palette
        try:
            return rule.apply(mask_values(upright(open_file(path)), palette))
        except UnknownColour as err:
            raise UnknownColour(f"{path}: {err}") from None
    values = mask_values(upright(open_file(path)))
    return binarize_mask(values, rule)


def auto_threshold(max_value: float) -> float:
    """The automatic threshold for a mask (or a data set) whose largest value is ``max_value``:
    ``0`` for index masks (values 0/1, e.g. palette masks), ``127`` for 8-bit masks (0/255, also
    when JPEG compression has smeared the values)."""
    return 0 if max_value <= 1 else 127


def binarize_mask(values: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Foreground is ``value > threshold``.

    With ``threshold=None`` the rule adapts to this one mask via :func:`auto_threshold`. The
    DataModule instead fixes one :class:`~nailseg.data.masks.MaskRule` for the whole data set,
    so every mask of a set follows the same rule (and void pixels stay void).

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
