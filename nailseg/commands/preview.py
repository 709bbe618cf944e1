"""``nailseg preview [options] [overrides]``: a PNG grid of what an augmentation pipeline does
(see :mod:`nailseg.pictures`).

Examples:
    nailseg preview
    nailseg preview aug=kornia_gpu aug/policy=heavy data=synthetic --out heavy.png
    nailseg preview data=folder data.images=photos/ data.masks=masks/ --samples 6
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from nailseg.build import build_datamodule
from nailseg.commands import command, compose
from nailseg.config_check import check_config
from nailseg.errors import ConfigError
from nailseg.inference import class_palette
from nailseg.pictures import check_out, preview_grid, write_image


@command
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nailseg preview",
        description="Write a PNG grid: per training sample, the original, augmented versions"
        " with the mask overlaid, and the mask alone.",
        epilog="Other arguments are Hydra overrides, as for train.py"
        " (aug=..., aug/policy=..., data=...).",
    )
    parser.add_argument("--samples", type=int, default=4, help="rows: training samples shown")
    parser.add_argument("--versions", type=int, default=4, help="augmented versions per sample")
    parser.add_argument(
        "--out", type=Path, default=None, help="PNG to write (default: runs/preview/AUG-POLICY.png)"
    )
    parser.add_argument("--device", default="cpu", help="device for batch-side augmentation")
    args, overrides = parser.parse_known_args(argv)
    if args.samples < 1 or args.versions < 1:
        raise ConfigError("--samples and --versions must be at least 1.")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose([f"paths.output_dir={tmp}", *overrides], return_hydra_config=True)
        check_config(cfg)
        aug, policy = cfg.hydra.runtime.choices["aug"], cfg.hydra.runtime.choices["aug/policy"]
        out = args.out or Path(cfg.paths.runs_dir) / "preview" / f"{aug}-{policy}.png"
        check_out(out)  # before the slow part: a bad --out fails in a second
        datamodule = build_datamodule(cfg)
        datamodule.setup("fit")
    train = datamodule.datasets["train"]
    count = min(args.samples, len(train))
    indices = np.linspace(0, len(train) - 1, count).round().astype(int).tolist()
    arrays = [train.load(i) for i in indices]
    grid = preview_grid(
        datamodule.augment,
        [a[0] for a in arrays],
        [a[1] for a in arrays],
        indices,
        int(cfg.seed),
        args.versions,
        args.device,
        palette=class_palette(datamodule.classes, datamodule.palette),
    )
    write_image(out, grid)
    print(
        f"wrote {out} ({count} samples x {args.versions} augmented versions, aug={aug},"
        f" aug/policy={policy})"
    )
    return 0
