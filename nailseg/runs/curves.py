"""``curves.png``: a run's learning curves, drawn from its CSV log when the run ends.

Lightning's ``CSVLogger`` writes ``csv/metrics.csv`` with one row per logging call: step rows
(``train/loss_step``, the learning rate) and epoch rows (``train/loss``, ``val/loss``,
``val/iou``, ``val/dice``; ``val/miou``, ``val/mdice`` for multi-class runs), each leaving the other
columns empty. :func:`write_curves` keeps the
epoch-level values, one per epoch (the last one logged, so a resumed run's repeats count once).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

LOSSES = ("train/loss", "val/loss")
SCORES = ("val/iou", "val/dice", "val/miou", "val/mdice")  # binary, then multi-class runs
CONFUSION_PNG = "confusion.png"


def read_metrics_csv(path: Path) -> tuple[list[dict[str, str]], int]:
    """The rows of a CSV logger's ``metrics.csv``, and how many rows could not be read.

    A Ctrl-C inside Lightning's CSV writer, after it noted new metric names but before it
    rewrote the header, leaves rows with more values than the header: the writer appends them,
    with the new names, as the run shuts down. Their values cannot be named, so they are counted,
    not guessed. A row cut short by a kill keeps the fields it has.
    """
    with path.open(newline="") as file:
        reader = csv.reader(file)
        header = next(reader, [])
        rows, unreadable = [], 0
        for values in reader:
            if len(values) > len(header):
                unreadable += 1
            elif values:
                rows.append(dict(zip(header, values, strict=False)))
    return rows, unreadable


def read_epoch_metrics(metrics_csv: Path) -> dict[str, dict[int, float]]:
    """``{metric: {epoch: value}}`` for the columns of :data:`LOSSES` and :data:`SCORES`.

    Empty cells (another row's metric) and non-finite values are left out.
    """
    curves: dict[str, dict[int, float]] = {name: {} for name in (*LOSSES, *SCORES)}
    for row in read_metrics_csv(metrics_csv)[0]:
        epoch = row.get("epoch") or ""
        if not epoch:
            continue
        for name, values in curves.items():
            cell = row.get(name) or ""
            try:
                value = float(cell)
            except ValueError:
                continue
            if math.isfinite(value):
                values[int(float(epoch))] = value
    return curves


def write_curves(run_dir: Path | str) -> Path | None:
    """Plot train/val loss and val IoU/Dice per epoch into ``RUN_DIR/curves.png``.

    Returns the PNG's path, or ``None`` (with one log line) when there is nothing to draw: no
    ``csv/metrics.csv`` (no CSV logger), no epoch values, or matplotlib (a dev dependency) not
    installed. Never raises for these: a missing picture must not fail a finished run.
    """
    run_dir = Path(run_dir)
    metrics_csv = run_dir / "csv" / "metrics.csv"
    if not metrics_csv.is_file():
        log.info("No curves.png: %s not found (the csv logger writes it)", metrics_csv)
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("No curves.png: matplotlib is not installed (pip install matplotlib)")
        return None
    curves = read_epoch_metrics(metrics_csv)
    if not any(curves.values()):
        log.info("No curves.png: %s holds no epoch values", metrics_csv)
        return None
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, names, title in ((loss_ax, LOSSES, "loss"), (score_ax, SCORES, "validation")):
        for name in names:
            points = sorted(curves[name].items())
            if points:
                epochs, values = zip(*points, strict=True)
                # Epochs as Lightning counts them (from 0), as in the checkpoint names.
                ax.plot(epochs, values, marker="o", markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    score_ax.set_ylim(0, 1)
    fig.suptitle(run_dir.name)
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_confusion(
    run_dir: Path | str, confusion: Sequence[Sequence[float]], classes: Sequence[str]
) -> Path | None:
    """Draw a multi-class run's normalised confusion matrix into ``RUN_DIR/confusion.png``: each
    row (a true class) divided by its pixels, so the diagonal is each class's recall; the pixel
    counts are in ``run.json`` (``confusion``). ``None`` when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("No %s: matplotlib is not installed (pip install matplotlib)", CONFUSION_PNG)
        return None
    counts = [[float(v) for v in row] for row in confusion]
    shares = [[v / sum(row) if sum(row) else 0.0 for v in row] for row in counts]
    n = len(classes)
    side = min(max(4.0, 0.45 * n + 2), 14.0)
    fig, ax = plt.subplots(figsize=(side + 1, side), constrained_layout=True)
    image = ax.imshow(shares, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 25:  # the shares stay legible
        for i, row in enumerate(shares):
            for j, value in enumerate(row):
                colour = "white" if value > 0.5 else "black"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, label="share of the true class's pixels")
    ax.set_title(f"{Path(run_dir).name}: validation confusion (last epoch)", fontsize=9)
    out = Path(run_dir) / CONFUSION_PNG
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
