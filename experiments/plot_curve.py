"""Plot a run's training curve (train/val loss and val IoU/Dice per epoch) from its CSV log.

Usage: .venv/bin/python experiments/plot_curve.py RUN_DIR [--out curve.png]
Needs matplotlib (in the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed
import matplotlib.pyplot as plt  # noqa: E402

CURVES = {"loss": ("train/loss", "val/loss"), "score": ("val/iou", "val/dice")}


def epoch_metrics(metrics_csv: Path) -> dict[str, dict[int, float]]:
    """``{metric: {epoch: value}}`` from a Lightning CSV log (rows are sparse per metric)."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    with metrics_csv.open(newline="") as file:
        for row in csv.DictReader(file):
            for name in (n for pair in CURVES.values() for n in pair):
                if row.get(name):
                    series[name][int(row["epoch"])] = float(row[name])
    return series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/curve.png")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    series = epoch_metrics(args.run_dir / "csv" / "metrics.csv")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (kind, names) in zip(axes, CURVES.items(), strict=True):
        for name in names:
            epochs = sorted(series[name])
            ax.plot(epochs, [series[name][e] for e in epochs], label=name, marker=".")
        ax.set_xlabel("epoch")
        ax.set_ylabel(kind)
        if kind == "loss":
            ax.set_yscale("log")  # early validation spikes would flatten the rest
        ax.grid(alpha=0.3)
        ax.legend()
    best = max(series["val/iou"].values(), default=float("nan"))
    fig.suptitle(args.title or f"{args.run_dir.name}: best val/iou {best:.3f}")
    fig.tight_layout()
    out = args.out or args.run_dir / "curve.png"
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
