"""Pictures: masks drawn on images, and the preview grid of what an augmentation pipeline does.

Multi-class label maps (class indices) are drawn in a palette, one ``(r, g, b)`` per class
(:attr:`nailseg.inference.LoadedRun.palette`): :func:`colour_labels`, :func:`overlay_labels`,
:func:`legend`, :func:`class_predictions_grid`, and :func:`write_label_png` for palette PNGs.

``nailseg preview`` (:mod:`nailseg.commands.preview`) writes the grid. Each row is one training
sample: the decoded and resized original, several augmented versions with the augmented mask
drawn as a translucent overlay and contour, and the original mask alone.
The augmented versions go through the backend's whole path (worker-side transform, then the
device-side one), exactly as training does; version ``k`` of a sample is drawn from the seed the
training sampler gives that sample in epoch ``k``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from nailseg.augment.base import AugmentBackend, augment_arrays, denormalize
from nailseg.data.sampler import sample_seed
from nailseg.errors import ConfigError

OVERLAY_RGB = (0, 255, 80)  # the mask overlay and contour colour
OVERLAY_ALPHA = 0.4
LABEL_HEIGHT = 22


def overlay_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``uint8`` RGB ``(H, W, 3)`` with mask ``(H, W)`` in {0, 1} tinted and outlined on it."""
    out = image.copy()
    tint = np.array(OVERLAY_RGB, dtype=np.float32)
    fg = mask == 1  # void pixels (data.ignore_index) are not foreground
    out[fg] = (out[fg] * (1 - OVERLAY_ALPHA) + tint * OVERLAY_ALPHA).astype(np.uint8)
    contours, _ = cv2.findContours(fg.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, OVERLAY_RGB, 1)
    return out


def _to_uint8_rgb(images: torch.Tensor, backend: AugmentBackend) -> np.ndarray:
    """Normalised ``(B, 3, H, W)`` float images back to ``uint8`` ``(B, H, W, 3)``."""
    pixels = denormalize(images.detach().cpu(), backend.mean, backend.std).clamp(0, 1)
    return (pixels.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def _label(tile_width: int, text: str) -> np.ndarray:
    strip = np.full((LABEL_HEIGHT, tile_width, 3), 255, np.uint8)
    cv2.putText(
        strip,
        text,
        (4, LABEL_HEIGHT - 7),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.45,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    return strip


def preview_grid(
    backend: AugmentBackend,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    indices: Sequence[int],
    seed: int,
    versions: int = 4,
    device: torch.device | str = "cpu",
    palette: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """The grid as a ``uint8`` RGB array: one row per sample, ``versions + 2`` tiles a row.

    Args:
        backend: the augmentation backend whose training path is shown.
        images: decoded, resized ``uint8`` ``(H, W, 3)`` images, all of one size.
        masks: their ``uint8`` ``(H, W)`` masks in {0, 1}.
        indices: the samples' indices in the training set (for their seeds).
        seed: the run's seed.
        versions: augmented versions per sample (epochs ``0 .. versions - 1``).
        device: where the backend's batch-side transform runs.
        palette: multi-class: one colour per class; masks then hold class indices and are
            drawn as label maps (:func:`overlay_labels`, :func:`colour_labels`).
    """
    width = images[0].shape[1]

    def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return (
            overlay_mask(image, mask) if palette is None else overlay_labels(image, mask, palette)
        )

    columns: list[list[np.ndarray]] = [[overlay(i, m) for i, m in zip(images, masks, strict=True)]]
    for epoch in range(versions):
        seeds = [sample_seed(seed, epoch, index) for index in indices]
        aug_images, aug_masks = augment_arrays(
            backend, images, masks, seeds, train=True, device=device
        )
        pixels = _to_uint8_rgb(aug_images, backend)
        values = aug_masks[:, 0].detach().cpu().numpy()
        shown = values.astype(np.uint8) if palette is not None else (values == 1).astype(np.uint8)
        columns.append([overlay(p, m) for p, m in zip(pixels, shown, strict=True)])
    if palette is not None:  # each class in its colour, void in VOID_RGB
        columns.append([colour_labels(m, palette) for m in masks])
    else:  # Foreground white, void (data.ignore_index) grey, background black.
        columns.append(
            [
                np.repeat(np.where(m == 1, 255, np.where(m > 1, 128, 0))[..., None], 3, 2).astype(
                    np.uint8
                )
                for m in masks
            ]
        )
    titles = ["original", *(f"augmented {k + 1}" for k in range(versions)), "mask"]

    def row(tiles: list[np.ndarray]) -> np.ndarray:
        gap = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
        return np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)

    header = row([_label(width, t) for t in titles])
    rows = [row([column[r] for column in columns]) for r in range(len(images))]
    spacer = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([header, *(x for r in rows for x in (spacer, r))], axis=0)


OUT_FIX = "Pass --out PATH.png in a writable folder."


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that cannot be written, before the grid is made: no extension (so no
    image format), a format OpenCV cannot write, a folder, or a folder that cannot be made or
    written to. Creates the parent folder.

    Raises:
        ConfigError: one line naming ``out``, what is wrong and the fix.
    """
    if not out.suffix:
        raise ConfigError(
            f"--out {out} has no extension, so no image format: name the file, e.g."
            f" --out {out}.png."
        )
    if not cv2.haveImageWriter(str(out)):
        raise ConfigError(
            f"--out {out}: OpenCV cannot write {out.suffix!r} files. Use .png, e.g."
            f" --out {out.with_suffix('.png')}."
        )
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder: give a file in it, e.g. --out {out}/grid.png.")
    blocker = next((p for p in (out.parent, *out.parent.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(f"Cannot write --out {out}: {blocker} is a file, not a folder. {OUT_FIX}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as err:
        raise ConfigError(
            f"Cannot write --out {out}: {out.parent} is not a writable folder"
            f" ({err.strerror or err}). {OUT_FIX}"
        ) from err


def write_image(out: Path, pixels: np.ndarray, fix: str = OUT_FIX) -> None:
    """Write an RGB ``(H, W, 3)`` or grayscale ``(H, W)`` ``uint8`` picture to ``out`` (format
    from its extension).

    Raises:
        ConfigError: OpenCV could not write it; the message names the file and ``fix``.
    """
    try:
        bgr = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
        written = cv2.imwrite(str(out), bgr)
    except (cv2.error, OSError) as err:
        written, reason = False, str(err).strip().splitlines()[-1]
    else:
        reason = "OpenCV could not write it"
    if not written:
        raise ConfigError(f"Cannot write {out} ({reason}). {fix}")


GROUND_TRUTH_RGB = (0, 220, 0)  # predictions grid: the true mask's contour
PREDICTED_RGB = (255, 0, 200)  # and the predicted mask's


def contours_on(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """``uint8`` RGB ``(H, W, 3)`` with the true (green) and predicted (magenta) foreground's
    contours drawn on it; masks ``(H, W)``, foreground where ``== 1``."""
    out = np.ascontiguousarray(image.copy())
    for mask, colour in ((truth, GROUND_TRUTH_RGB), (predicted, PREDICTED_RGB)):
        fg = (mask == 1).astype(np.uint8)
        contours, _ = cv2.findContours(fg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, 1)
    return out


def predictions_grid(
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    labels: Sequence[str],
    columns: int = 4,
) -> np.ndarray:
    """A grid of images (all of one size) with true and predicted contours and a label above each,
    in the order given (``nailseg eval`` passes them worst IoU first)."""
    # Small images are enlarged by a whole factor (nearest), so one-pixel contours stay visible.
    factor = max(1, -(-160 // max(images[0].shape[:2])))
    if factor > 1:
        images, truths, predictions = (
            [cv2.resize(a, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST) for a in x]
            for x in (images, truths, predictions)
        )
    height, width = images[0].shape[:2]
    tile_width = max(width, 160)
    tiles = []
    for image, truth, pred, text in zip(images, truths, predictions, labels, strict=True):
        tile = np.full((height, tile_width, 3), 255, np.uint8)
        tile[:, :width] = contours_on(image, truth, pred)
        tiles.append(np.concatenate([_label(tile_width, text), tile], axis=0))
    return _tile_grid(
        tiles, columns, lambda width: _label(width, "green: ground truth   magenta: prediction")
    )


def _tile_grid(
    tiles: list[np.ndarray], columns: int, header: Callable[[int], np.ndarray]
) -> np.ndarray:
    """Tiles of one size in rows of ``columns`` (2 px white gaps), under ``header(width)``."""
    columns = max(1, min(columns, len(tiles)))
    blank = np.full_like(tiles[0], 255)
    tiles = tiles + [blank] * (-len(tiles) % columns)
    gap_v = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
    rows = [
        np.concatenate([t for tile in tiles[r : r + columns] for t in (tile, gap_v)][:-1], axis=1)
        for r in range(0, len(tiles), columns)
    ]
    top = header(rows[0].shape[1])
    spacer = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([top, *(x for r in rows for x in (spacer, r))], axis=0)


VOID_RGB = (224, 224, 192)  # label maps: a value that is no class (void, 255), as in Pascal VOC
SWATCH = 12  # legend: side of a class's colour square


def colour_labels(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """Class indices ``(H, W)`` to ``uint8`` RGB ``(H, W, 3)`` in ``palette`` (one colour per
    class); any other value (void) in :data:`VOID_RGB`."""
    table = np.tile(np.array(VOID_RGB, np.uint8), (256, 1))
    table[: len(palette)] = np.asarray(palette, np.uint8)
    return table[labels.astype(np.uint8)]


def overlay_labels(
    image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]]
) -> np.ndarray:
    """``uint8`` RGB ``(H, W, 3)`` with every class but class 0 (the background) tinted in its
    colour and outlined; ``labels`` ``(H, W)`` class indices."""
    out = np.ascontiguousarray(image.copy())
    for index in range(1, len(palette)):
        region = labels == index
        if not region.any():
            continue
        colour = tuple(int(v) for v in palette[index])
        tint = np.array(colour, dtype=np.float32)
        out[region] = (out[region] * (1 - OVERLAY_ALPHA) + tint * OVERLAY_ALPHA).astype(np.uint8)
        contours, _ = cv2.findContours(
            region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        cv2.drawContours(out, contours, -1, colour, 1)
    return out


def legend(width: int, names: Sequence[str], palette: Sequence[Sequence[int]]) -> np.ndarray:
    """A white strip ``width`` wide: a colour square and the name of each class, as many to a
    line as fit (at least one; a name longer than the line is cut)."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45
    entries = [SWATCH + 6 + cv2.getTextSize(n, font, scale, 1)[0][0] + 12 for n in names]
    lines: list[list[int]] = [[]]
    used = 0
    for index, size in enumerate(entries):
        if lines[-1] and used + size > width:
            lines.append([])
            used = 0
        lines[-1].append(index)
        used += size
    strip = np.full((LABEL_HEIGHT * len(lines), width, 3), 255, np.uint8)
    for row, line in enumerate(lines):
        x, top = 4, row * LABEL_HEIGHT
        for index in line:
            colour = tuple(int(v) for v in palette[index])
            y0 = top + (LABEL_HEIGHT - SWATCH) // 2
            cv2.rectangle(strip, (x, y0), (x + SWATCH, y0 + SWATCH), colour, -1)
            cv2.rectangle(strip, (x, y0), (x + SWATCH, y0 + SWATCH), (0, 0, 0), 1)
            cv2.putText(
                strip,
                names[index],
                (x + SWATCH + 6, top + LABEL_HEIGHT - 7),
                font,
                scale,
                (0, 0, 0),
                1,
                cv2.LINE_AA,
            )
            x += entries[index]
    return strip


def overlay_with_legend(
    image: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    palette: Sequence[Sequence[int]],
) -> np.ndarray:
    """:func:`overlay_labels` with the :func:`legend` of the classes under it (so the picture is
    the image's width and a little taller)."""
    return np.concatenate(
        [overlay_labels(image, labels, palette), legend(image.shape[1], names, palette)], axis=0
    )


def class_predictions_grid(
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    labels: Sequence[str],
    names: Sequence[str],
    palette: Sequence[Sequence[int]],
    columns: int = 2,
) -> np.ndarray:
    """Multi-class :func:`predictions_grid`: per image three panels, the image, the true label
    map and the predicted one in ``palette`` (void in :data:`VOID_RGB`), under a label; a legend
    of the classes on top. In the order given (``nailseg eval``: worst mIoU first)."""
    factor = max(1, -(-160 // max(images[0].shape[:2])))
    tiles = []
    for image, truth, pred, text in zip(images, truths, predictions, labels, strict=True):
        panels = [image, colour_labels(truth, palette), colour_labels(pred, palette)]
        if factor > 1:
            panels = [
                cv2.resize(a, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
                for a in panels
            ]
        gap = np.full((panels[0].shape[0], 2, 3), 255, np.uint8)
        tile = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
        tiles.append(np.concatenate([_label(tile.shape[1], text), tile], axis=0))

    def header(width: int) -> np.ndarray:
        return np.concatenate(
            [
                _label(width, "each: image | ground truth | prediction"),
                legend(width, [*names, "void"], [*palette, VOID_RGB]),
            ]
        )

    return _tile_grid(tiles, columns, header)


def write_label_png(
    out: Path, labels: np.ndarray, palette: Sequence[Sequence[int]], fix: str = OUT_FIX
) -> None:
    """Write class indices ``(H, W)`` as a palette PNG (mode ``P``): pixel values are the class
    indices, shown in ``palette`` (one ``(r, g, b)`` per class) by any image viewer.

    Raises:
        ConfigError: the file could not be written; the message names it and ``fix``.
    """
    height, width = labels.shape
    picture = Image.frombytes(
        "P", (width, height), np.ascontiguousarray(labels, np.uint8).tobytes()
    )
    picture.putpalette([int(v) for colour in palette for v in colour])
    try:
        picture.save(out, format="PNG")
    except (OSError, ValueError) as err:
        raise ConfigError(f"Cannot write {out} ({err}). {fix}") from err
