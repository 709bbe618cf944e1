"""``nailseg lr-find [options] [overrides]``: Lightning's learning-rate range test.

Builds the run's module, data and trainer from the same overrides as ``train.py``, runs
``pytorch_lightning.tuner.Tuner.lr_find`` (the rate grows step by step from ``--min-lr`` to
``--max-lr``; the weights are restored afterwards), and writes the loss-against-rate plot and a
JSON with the suggestion into ``runs/lr_find/DATE_TIME/`` (or ``--out DIR``). It prints the
override to train with (``optimizer.lr=...``).

Examples:
    nailseg lr-find
    nailseg lr-find encoder=effnet_b4 optimizer=sgd --num-training 200 --out runs/lr_sgd
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from nailseg.build import build_augment, build_datamodule, build_module, build_trainer
from nailseg.commands import command, compose
from nailseg.config_check import check_config
from nailseg.errors import ConfigError
from nailseg.runs.writable import ensure_writable_dir


@command
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nailseg lr-find",
        description="Find a learning rate with Lightning's Tuner.lr_find and print the override"
        " to train with.",
        epilog="Other arguments are Hydra overrides, as for train.py (model=..., optimizer=...).",
    )
    parser.add_argument("--num-training", type=int, default=100, help="steps to try (100)")
    parser.add_argument("--min-lr", type=float, default=1e-8, help="first rate (1e-8)")
    parser.add_argument("--max-lr", type=float, default=1.0, help="last rate (1.0)")
    parser.add_argument(
        "--mode", choices=("exponential", "linear"), default="exponential", help="rate growth"
    )
    parser.add_argument(
        "--early-stop-threshold",
        type=float,
        default=4.0,
        help="stop when the loss exceeds this many times the best loss (4.0; 0: never)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder to write into (runs/lr_find/DATE_TIME)"
    )
    args, overrides = parser.parse_known_args(argv)
    if args.num_training < 2:
        raise ConfigError(f"--num-training must be at least 2 (got {args.num_training}).")
    if not 0 < args.min_lr < args.max_lr:
        raise ConfigError(
            f"Need 0 < --min-lr < --max-lr (got {args.min_lr:g} and {args.max_lr:g})."
        )
    with tempfile.TemporaryDirectory() as tmp:
        # The trainer's own files (callbacks' checkpoints, Lightning's temporary .lr_find
        # checkpoint) go to a temporary dir; budget=null: the tuner sets its own step limit.
        cfg = compose([f"paths.output_dir={tmp}", *overrides, "budget=null"])
        check_config(cfg)
        # The tuner stops after --num-training steps; the trainer's epoch limit must not come
        # first (Lightning's lr_find sets max_steps only). -1: no epoch limit.
        cfg.trainer.max_epochs = -1
        out = args.out or Path(cfg.paths.runs_dir) / "lr_find" / datetime.now().strftime(
            "%Y-%m-%d_%H-%M-%S"
        )
        ensure_writable_dir(out, f"The lr-find folder {out}", "Pass a writable --out DIR.")
        pl.seed_everything(cfg.seed, workers=True)
        augment = build_augment(cfg)
        module = build_module(cfg, normalization=augment.normalization)
        datamodule = build_datamodule(cfg, augment)
        trainer = build_trainer(cfg)
        finder = pl.tuner.Tuner(trainer).lr_find(
            module,
            datamodule=datamodule,
            min_lr=args.min_lr,
            max_lr=args.max_lr,
            num_training=args.num_training,
            mode=args.mode,
            early_stop_threshold=args.early_stop_threshold or None,
            attr_name="lr",  # SegmentationModule.lr overrides the optimizer partial's lr
            update_attr=False,
        )
    if finder is None:  # only under a fast_dev_run trainer
        raise ConfigError("lr-find cannot run with trainer.fast_dev_run; remove it.")
    # Lightning skips the first 10 steps (and the last) before taking the steepest descent; a
    # short test of a few steps keeps a quarter of its steps instead.
    steps = len(finder.results.get("lr", []))
    suggestion = (
        finder.suggestion(skip_begin=min(10, steps // 4), skip_end=1) if steps > 3 else None
    )
    found = suggestion is not None and math.isfinite(suggestion) and suggestion > 0
    plot = _plot(finder, suggestion if found else None, out / "lr_find.png")
    result = {
        "suggestion": float(suggestion) if found else None,
        "override": f"optimizer.lr={suggestion:.3g}" if found else None,
        "configured_lr": float(cfg.optimizer.lr) if "lr" in cfg.optimizer else None,
        "num_training": args.num_training,
        "steps_run": steps,
        "min_lr": args.min_lr,
        "max_lr": args.max_lr,
        "mode": args.mode,
        "overrides": list(overrides),
        "plot": str(plot) if plot else None,
        "lr": [float(v) for v in finder.results.get("lr", [])],
        "loss": [float(v) for v in finder.results.get("loss", [])],
    }
    (out / "lr_find.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'lr_find.json'}" + (f" and {plot}" if plot else ""))
    if not found:
        print(
            "no suggestion: the loss did not fall steadily over the range tried"
            " (try more --num-training steps or another --min-lr/--max-lr)"
        )
        return 1
    print(f"suggested learning rate: {suggestion:.3g}  (train with: {result['override']})")
    return 0


def _plot(finder: Any, suggestion: float | None, path: Path) -> Path | None:
    """Lightning's own plot of loss against rate, with our suggestion marked (its
    ``plot(suggest=True)`` would mark its own, computed with the default skips)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    fig = finder.plot(suggest=False)
    if suggestion is not None:
        index = finder.results["lr"].index(suggestion)
        fig.axes[0].plot(
            suggestion, finder.results["loss"][index], marker="o", markersize=10, color="red"
        )
        fig.axes[0].set_title(f"suggested optimizer.lr={suggestion:.3g}")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
