"""Decode cache benchmark: loader time of epoch 1 vs epoch 2 on nails52, per ``data.cache``.

Two views, side by side in one run:

- *dataset*: a :class:`SegmentationDataset` with an empty cache, so epoch 1 decodes (and fills
  the cache) and epoch 2 reads the cache: the pure effect of the cache.
- *datamodule*: what training does: ``setup()`` runs the data check, which decodes every pair
  once and fills the cache, so both epochs read the cache; setup time is shown.

No augmentation and no worker processes, so the figures are decode + resize + collate only.

Usage: .venv/bin/python benchmarks/decode_cache.py [--data PATH] [--size 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from nailseg.data import FolderSource, SegmentationDataModule
from nailseg.data.cache import make_cache
from nailseg.data.dataset import SegmentationDataset

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nails52"


def epoch_time(dataset: SegmentationDataset, batch_size: int = 8) -> float:
    start = time.perf_counter()
    for _ in DataLoader(dataset, batch_size=batch_size, num_workers=0):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is kept")
    args = parser.parse_args()
    source = FolderSource(args.data / "images", args.data / "labels")
    size = (args.size, args.size)
    print(f"{len(source.pairs())} pairs from {args.data}, {args.size} px, best of {args.repeat}")
    print(f"{'cache':<6} {'view':<11} {'setup s':>8} {'epoch1 s':>9} {'epoch2 s':>9} {'e1/e2':>6}")
    for kind in ("none", "ram", "disk"):
        best: dict[str, list[float]] = {"dataset": [], "datamodule": []}
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                dataset = SegmentationDataset(
                    source.pairs(),
                    size,
                    mask_threshold=127,
                    cache=make_cache(kind, Path(tmp) / "a"),
                )
                best["dataset"].append([0.0, epoch_time(dataset), epoch_time(dataset)])
                start = time.perf_counter()
                datamodule = SegmentationDataModule(
                    source,
                    image_size=size,
                    cache=kind,
                    cache_dir=Path(tmp) / "b",
                    split_dir=Path(tmp) / "splits",
                    valid_fraction=0.19,
                    seed=42,
                )
                datamodule.setup("fit")
                setup = time.perf_counter() - start
                train = datamodule.datasets["train"]
                best["datamodule"].append([setup, epoch_time(train), epoch_time(train)])
        for view, runs in best.items():
            setup, first, second = (min(r[i] for r in runs) for i in range(3))
            shown = f"{setup:8.2f}" if view == "datamodule" else f"{'-':>8}"
            print(f"{kind:<6} {view:<11} {shown} {first:9.3f} {second:9.3f} {first / second:6.1f}")


if __name__ == "__main__":
    main()
