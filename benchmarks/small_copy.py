"""A small copy of an image/mask folder pair in another format, for time-to-quality runs on data
the defaults were not measured on: each image scaled so that ``sqrt(width * height)`` is
``--side`` px and saved as an RGBA PNG, each mask as a palette PNG (index 0 background, 1
foreground), and a ``pairs.csv`` list file with ``image,mask,split`` columns (``data=csv``). The
split is the framework's own split of the source folders (``data=folder``, seed 42), so runs on
the copy validate on the same photos as runs on the source.

Usage:
    python benchmarks/small_copy.py OUT [--side 200] [--images DIR --masks DIR]
    python benchmarks/time_to_quality.py --budget 120 --file OUT/pairs.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from time_to_quality import NAILS52, split_csvs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--side", type=int, default=200, help="sqrt(width * height) of a copy")
    parser.add_argument("--images", type=Path, default=NAILS52 / "images")
    parser.add_argument("--masks", type=Path, default=NAILS52 / "labels")
    args = parser.parse_args()
    for sub in ("images", "masks"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = ["data=folder", f"data.images={args.images}", f"data.masks={args.masks}"]
        split = split_csvs(data, Path(tmp))
        for name in ("train", "valid", "test"):
            path = split / f"{name}.csv"
            if not path.is_file():
                continue
            with path.open() as f:
                for row in csv.DictReader(f):
                    stem = Path(row["image"]).stem
                    with Image.open(row["image"]) as image:
                        image = image.convert("RGB")
                        scale = args.side / math.sqrt(image.width * image.height)
                        size = (round(image.width * scale), round(image.height * scale))
                        image.resize(size, Image.Resampling.LANCZOS).convert("RGBA").save(
                            args.out / "images" / f"{stem}.png"
                        )
                    with Image.open(row["mask"]) as mask:
                        small = mask.convert("L").resize(size, Image.Resampling.NEAREST)
                    values = np.asarray(small)
                    palette = Image.fromarray((values > 127).astype(np.uint8), mode="P")
                    palette.putpalette([0, 0, 0, 255, 0, 128] + [0] * 762)
                    palette.save(args.out / "masks" / f"{stem}.png")
                    rows.append((f"images/{stem}.png", f"masks/{stem}.png", name))
    with (args.out / "pairs.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "mask", "split"])
        writer.writerows(rows)
    print(f"{len(rows)} pairs at about {args.side} px: {args.out / 'pairs.csv'}")


if __name__ == "__main__":
    main()
