"""``nailseg predict RUN_DIR --input DIR_OR_FILES... --output DIR [--tta] [--threshold X]
[--batch-size N] [--device cpu|cuda]``: a binary mask and an overlay for every image, at the
image's own resolution.

Each image (any size, JPEG/PNG/..., grayscale, RGB or RGBA: :func:`nailseg.data.io.read_image`
makes it RGB) is resized to the run's training size (``data.image_size``), predicted, and its
probabilities resized back (bilinear) to the original size before thresholding. Resizing, not
padding: the network was trained on whole images resized to that size, so it sees objects at the
scale it learnt; padding a large photo would show it objects several times larger than in
training. Writes ``OUTPUT/masks/NAME.png`` (0/255) and ``OUTPUT/overlays/NAME.png``. A file
that cannot be decoded is reported by name and skipped; exit status 0 when at least one mask was
written, 2 when none.

Multi-class runs (``data.classes``): ``OUTPUT/masks/NAME.png`` is a label map, a palette PNG
(mode ``P``) whose pixel values are the class indices, coloured in the run's palette
(``data.palette``, else Pascal VOC's colour map); ``OUTPUT/overlays/NAME.png`` tints each class
but class 0 in its colour, with a legend (colour square and class name) under the image. The
class probabilities (softmax, TTA-averaged) are resized back (bilinear) to the image's size and
the class is their argmax there, so class borders are as smooth as the binary mask's; this holds
``C x H x W`` floats per image at a time. ``--threshold`` is refused (binary runs only).

Examples:
    nailseg predict runs/2026-01-01/12-00-00-000000 --input photos/ --output predicted/
    nailseg predict RUN --input a.jpg b.png --output out --tta --threshold 0.4 --device cuda
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nailseg.commands import add_run_argument, command
from nailseg.data.io import read_image
from nailseg.errors import ConfigError, DataError
from nailseg.inference import (
    LoadedRun,
    load_run,
    predict_probs,
    threshold_refusal,
    to_uint8_batch,
)
from nailseg.pictures import overlay_mask, overlay_with_legend, write_image, write_label_png
from nailseg.runs.writable import ensure_writable_dir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_inputs(inputs: list[str]) -> list[tuple[Path, str]]:
    """``(file, output name)`` for every input file, and every image file under input folders
    (recursively; the name keeps the relative folder, ``a/b.png`` -> ``a/b``)."""
    found: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            found += [(p, p.relative_to(path).with_suffix("").as_posix()) for p in files]
        elif path.is_file():
            found.append((path, path.stem))
        else:
            raise ConfigError(f"--input {item} does not exist: give image files or folders.")
    names: dict[str, int] = {}
    unique = []
    for _, name in found:  # a.jpg and a.png in one folder: a.jpg and a.png, not a twice
        names[name] = names.get(name, 0) + 1
    for path, name in found:
        unique.append((path, f"{name}{path.suffix}" if names[name] > 1 else name))
    return unique


def batches(
    files: list[tuple[Path, str]], size: int, skipped: list[str], image_scale: str = "max"
) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Decoded images in batches of ``size``; undecodable files go to ``skipped`` (and stderr)."""
    batch: list[tuple[str, np.ndarray]] = []
    for path, name in files:
        try:
            batch.append((name, read_image(path, image_scale)))
        except DataError as err:
            skipped.append(str(path))
            tqdm.write(f"skipped {path}: {err}", file=sys.stderr)
            continue
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def resize_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``(height, width)`` as training did (:func:`nailseg.data.io.resize_pair`: area
    when shrinking both sides, else bilinear)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    shrinking = image.shape[0] > height and image.shape[1] > width
    return cv2.resize(
        image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )


def predict_batch(
    loaded: LoadedRun, images: list[np.ndarray], tta: bool, threshold: float
) -> list[np.ndarray]:
    """Masks in {0, 1} at each image's own size; a multi-class run's class indices ``uint8``
    (the argmax of the probabilities resized back, ``threshold`` unused)."""
    small = to_uint8_batch([resize_to(i, loaded.image_size) for i in images]).to(loaded.device)
    probs = predict_probs(loaded.model, loaded.normalize(small), tta)
    masks = []
    for image, prob in zip(images, probs, strict=True):
        full = F.interpolate(prob[None], size=image.shape[:2], mode="bilinear", align_corners=False)
        if loaded.multiclass:
            masks.append(full[0].argmax(0).to(torch.uint8).cpu().numpy())
        else:
            masks.append((full[0, 0] > threshold).cpu().numpy().astype(np.uint8))
    return masks


OUTPUT_FIX = "Pass --output DIR in a writable folder."


def _write(
    path: Path, rgb_or_gray: np.ndarray, palette: Sequence[Sequence[int]] | None = None
) -> None:
    """Write a picture, or with ``palette`` class indices as a palette PNG."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # e.g. OUTPUT/masks is a file: say so in one line
        ensure_writable_dir(path.parent, f"The folder {path.parent} of --output", OUTPUT_FIX)
    if palette is not None:
        write_label_png(path, rgb_or_gray, palette, fix=OUTPUT_FIX)
    else:
        write_image(path, rgb_or_gray, fix=OUTPUT_FIX)


@command
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nailseg predict",
        description="Write a binary mask (0/255 PNG; multi-class: a palette PNG of class indices)"
        " and an overlay for every input image, at the image's own size.",
    )
    add_run_argument(parser)
    parser.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    parser.add_argument(
        "--output", type=Path, required=True, help="folder for masks/ and overlays/"
    )
    parser.add_argument("--tta", action="store_true", help="average over flips (4 versions)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="foreground probability threshold (default: the run's: run.json threshold from"
        " nailseg eval --threshold auto, else the checkpoint's 0.5). Binary runs only",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: give 1 or more.")
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise ConfigError(f"--threshold {args.threshold}: give a number between 0 and 1.")
    files = list_inputs(args.input)
    if not files:
        raise ConfigError(
            f"No images in --input {' '.join(args.input)} (looked for {', '.join(IMAGE_SUFFIXES)})."
        )
    loaded = load_run(args.run_dir, args.device)
    if loaded.multiclass and args.threshold is not None:
        raise ConfigError(threshold_refusal(loaded.classes))
    threshold = args.threshold if args.threshold is not None else loaded.threshold
    out = args.output.expanduser()
    ensure_writable_dir(out, f"--output {out}", OUTPUT_FIX)
    skipped: list[str] = []
    written = 0
    with tqdm(total=len(files), desc="predicting", unit="image", file=sys.stderr) as bar:
        # 16-bit images become 8-bit as in the run's training (data.image_scale).
        scale = str(loaded.cfg.data.get("image_scale", "max"))
        for batch in batches(files, args.batch_size, skipped, scale):
            masks = predict_batch(loaded, [image for _, image in batch], args.tta, threshold)
            for (name, image), mask in zip(batch, masks, strict=True):
                if loaded.multiclass:
                    names, palette = loaded.classes or (), loaded.palette or ()
                    _write(out / "masks" / f"{name}.png", mask, palette)
                    overlay = overlay_with_legend(image, mask, names, palette)
                    _write(out / "overlays" / f"{name}.png", overlay)
                else:
                    _write(out / "masks" / f"{name}.png", mask * 255)
                    _write(out / "overlays" / f"{name}.png", overlay_mask(image, mask))
                written += 1
            bar.update(len(batch))
        bar.update(len(files) - bar.n)
    if not written:
        raise DataError(f"None of the {len(files)} inputs could be read: {', '.join(skipped)}.")
    decided = (
        f"{len(loaded.classes)} classes: {', '.join(loaded.classes)}"
        if loaded.classes
        else f"threshold {threshold:.2f}"
    )
    print(
        f"Wrote {written} {'label maps' if loaded.multiclass else 'masks'} to {out / 'masks'} and"
        f" overlays to {out / 'overlays'} ({decided}, TTA {'on' if args.tta else 'off'})"
        + (f"; skipped {len(skipped)} unreadable: {', '.join(skipped)}" if skipped else "")
    )
    return 0
