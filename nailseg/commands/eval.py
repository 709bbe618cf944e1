"""``nailseg eval RUN_DIR [--tta] [--threshold auto|FLOAT] [--split valid|test|all] [--out DIR]
[overrides...]``: score a run's checkpoint on its validation (or test) split, or on another data
set given as Hydra overrides (``data=folder data.images=... data.masks=...``).

Writes ``eval.json`` (metrics, threshold, TTA, split, checkpoint), ``eval_per_image.csv`` and
``predictions.png`` (true and predicted contours, worst IoU first) into ``RUN_DIR/eval/`` or
``--out``. ``--threshold auto`` picks the threshold with the best IoU on the valid split and
records it in ``run.json`` (``threshold``), which ``nailseg predict`` then uses.

Metrics are computed at the run's training resolution (``data.image_size``; masks resized with
nearest neighbour, as in training), with torchmetrics' confusion counts; dataset-level figures sum
the counts over all images, ``per_image_mean`` averages the per-image scores.

Multi-class runs (``data.classes``): the predicted class is the argmax of the (TTA-averaged)
softmax, no threshold (``--threshold`` is refused). One dataset-level confusion matrix (void
left out, the training metric's torchmetrics function) gives each class's IoU and Dice and
their means over the classes present, mIoU and mDice (:func:`nailseg.model.module.class_scores`,
as training logs them); the table also gives each class's share of the true pixels.
``eval.json`` has ``metrics`` (``miou``, ``mdice``, ``iou/NAME``, ``dice/NAME``), ``classes``
(the table) and ``confusion``; ``eval_per_image.csv`` one row per image, worst mIoU first;
``predictions.png`` the image, the true and the predicted label maps in the run's palette.
Data overrides that change ``data.classes`` are refused.

Examples:
    nailseg eval runs/2026-01-01/12-00-00-000000 --tta --threshold auto
    nailseg eval RUN --split test
    nailseg eval RUN --split all --out eval-other data=folder data.images=photos/ data.masks=masks/
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader

from nailseg.augment.base import NoAugment
from nailseg.build import build_datamodule
from nailseg.classes import check_classes
from nailseg.commands import add_run_argument, command, compose
from nailseg.data.datamodule import SegmentationDataModule
from nailseg.data.dataset import SegmentationDataset
from nailseg.errors import ConfigError
from nailseg.inference import (
    LoadedRun,
    best_threshold,
    class_confusion,
    confusion_counts,
    describe_classes,
    load_run,
    predict_probs,
    scores,
    threshold_refusal,
)
from nailseg.model.module import class_scores
from nailseg.pictures import class_predictions_grid, predictions_grid, write_image
from nailseg.runs.record import RUN_JSON, read_run, write_json
from nailseg.runs.rerun import plan_rerun

METRICS = ("iou", "dice", "precision", "recall")
GRID_MAX = 16  # images in predictions.png (the worst ones)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _layout_key(key: str) -> bool:
    shortcuts = SegmentationDataModule.SHORTCUT_KEYS
    return key.startswith("data.source.") or key in {f"data.{k}" for k in shortcuts}


def eval_config(loaded: LoadedRun, overrides: list[str], out: Path) -> DictConfig:
    """The config whose ``data`` node is evaluated on: the recorded one, or with ``overrides``
    the run's ``conf/`` snapshot composed with its recorded overrides and these on top (as
    ``nailseg rerun`` does, :func:`nailseg.runs.rerun.plan_rerun`)."""
    if not overrides:
        cfg = loaded.cfg
    else:
        _, snapshot, merged = plan_rerun(loaded.run_dir, overrides)
        if any(_key(o) == "data" for o in overrides):
            # Another data layout: the recorded run's source settings (data.source.count,
            # data.root...) belong to its own layout and may not exist in the new one.
            merged = [o for o in merged if o in overrides or not _layout_key(_key(o))]
        cfg = compose([*merged, f"paths.output_dir={out}"], config_dir=snapshot)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if overrides:
        classes = check_classes(cfg.data.get("classes"))
        if classes != loaded.classes:
            fix = (
                "set data.classes=null (and data.foreground=[...] to merge labels into one"
                " foreground)"
                if loaded.classes is None
                else f"set data.classes=[{','.join(loaded.classes)}] for data with those classes"
            )
            raise ConfigError(
                f"The data overrides make data.classes={describe_classes(classes)}, but the run"
                f" was trained for data.classes={describe_classes(loaded.classes)} (its network's"
                f" output channels): {fix}."
            )
    cfg.data.image_size = list(loaded.image_size)  # the network's size, whatever the data
    # Evaluation decodes each image once: no device cache (that needs a Trainer's device).
    if cfg.data.get("cache") == "device":
        cfg.data.cache = "auto"
    return cfg


def run_split(
    loaded: LoadedRun, datamodule: SegmentationDataModule, split: str, tta: bool, batch_size: int
) -> dict[str, Any]:
    """Probabilities, masks and images of one split at the training resolution (on the CPU)."""
    if split == "all":  # every pair the data check accepted, e.g. a whole external data set
        report = datamodule.check()
        dataset = SegmentationDataset(
            report.pairs,
            datamodule.image_size,
            cache=datamodule.cache,
            mask_rule=report.rule,
            image_scale=datamodule.image_scale,
        )
    else:
        dataset = datamodule.datasets.get(split)
    if dataset is None:
        hint = (
            " Train with data.test_fraction>0 (or give test pairs in the split file), or use"
            " --split valid."
            if split == "test"
            else ""
        )
        raise ConfigError(f"The data has no {split} split.{hint}")
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=datamodule.num_workers
    )
    probs, masks, images = [], [], []
    for batch in loader:
        image = batch["image"].to(loaded.device)
        prob = predict_probs(loaded.model, loaded.normalize(image), tta)
        # Multi-class: only the predicted classes (N, H, W) are kept, not C probabilities a pixel.
        probs.append(prob.argmax(1).to(torch.uint8).cpu() if loaded.multiclass else prob.cpu())
        masks.append(batch["mask"])
        images.append(batch["image"])
    return {
        "labels" if loaded.multiclass else "probs": torch.cat(probs),
        "masks": torch.cat(masks),
        "images": torch.cat(images),
        "pairs": dataset.pairs,
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def evaluate(
    result: dict[str, Any], threshold: float, ignore_index: int | None
) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    """Dataset-level scores (counts summed over images) and one row per image."""
    counts = confusion_counts(result["probs"], result["masks"], threshold, ignore_index)
    tp, fp, _, fn, _ = counts.sum(0).tolist()
    overall = {k: _finite(v) for k, v in scores(tp, fp, fn).items()}
    rows = []
    for pair, (i_tp, i_fp, _, i_fn, _) in zip(result["pairs"], counts.tolist(), strict=True):
        rows.append(
            {
                "image": str(pair.image),
                "mask": str(pair.mask),
                **scores(i_tp, i_fp, i_fn),
                "tp": i_tp,
                "fp": i_fp,
                "fn": i_fn,
            }
        )
    return overall, rows


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if math.isfinite(r[key])]
    return float(np.mean(values)) if values else None


def record_threshold(run_dir: Path, threshold: float, tuning: dict[str, Any]) -> None:
    """Write the tuned threshold into ``run.json`` (``threshold``, ``threshold_tuning``)."""
    record = read_run(run_dir)
    record["threshold"] = threshold
    record["threshold_tuning"] = tuning
    write_json(run_dir / RUN_JSON, record)


def _parse_threshold(value: str) -> str | float:
    if value == "auto":
        return value
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0 < number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give auto or a number between 0 and 1")
    return number


def _write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str] | None = None) -> None:
    fields = fields or ["rank", "image", "mask", *METRICS, "tp", "fp", "fn"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for rank, row in enumerate(rows, 1):
            writer.writerow(
                {
                    "rank": rank,
                    **{
                        k: ("" if isinstance(v, float) and not math.isfinite(v) else v)
                        for k, v in row.items()
                    },
                }
            )


def _evaluated(loaded: LoadedRun, args: argparse.Namespace, images: int) -> dict[str, Any]:
    """The first fields of every ``eval.json``: what was evaluated, and how."""
    return {
        "run_dir": str(loaded.run_dir),
        "checkpoint": str(loaded.checkpoint),
        "split": args.split,
        "images": images,
        "tta": args.tta,
    }


def evaluate_classes(
    result: dict[str, Any], classes: tuple[str, ...], ignore_index: int | None
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], Tensor]:
    """Multi-class scores: ``metrics`` (``miou``, ``mdice``, ``iou/NAME``, ``dice/NAME``) from the
    dataset-level confusion matrix (the per-image matrices summed), the per-class table, one row
    per image, and the matrix (rows: true class)."""
    per_image = class_confusion(result["labels"], result["masks"], len(classes), ignore_index)
    confusion = per_image.sum(0)
    overall = class_scores(confusion)
    metrics: dict[str, float | None] = {
        "miou": _finite(float(overall["miou"])),
        "mdice": _finite(float(overall["mdice"])),
    }
    truth = confusion.sum(1).double()
    table = []
    for i, name in enumerate(classes):
        metrics[f"iou/{name}"] = _finite(float(overall["iou"][i]))
        metrics[f"dice/{name}"] = _finite(float(overall["dice"][i]))
        table.append(
            {
                "class": name,
                "index": i,
                "iou": metrics[f"iou/{name}"],
                "dice": metrics[f"dice/{name}"],
                "pixel_share": float(truth[i] / truth.sum()) if truth.sum() else None,
                "pixels": int(truth[i]),
            }
        )
    rows = []
    for pair, matrix in zip(result["pairs"], per_image, strict=True):
        image = class_scores(matrix)
        rows.append(
            {
                "image": str(pair.image),
                "mask": str(pair.mask),
                "miou": float(image["miou"]),
                "mdice": float(image["mdice"]),
                **{f"iou/{n}": float(image["iou"][i]) for i, n in enumerate(classes)},
            }
        )
    return metrics, table, rows, confusion


def _eval_classes(
    loaded: LoadedRun,
    args: argparse.Namespace,
    overrides: list[str],
    out: Path,
    result: dict[str, Any],
    ignore: int | None,
) -> int:
    """``nailseg eval`` of a multi-class run, from its predicted classes in ``result``."""
    classes, palette = loaded.classes or (), loaded.palette or ()
    metrics, table, rows, confusion = evaluate_classes(result, classes, ignore)
    # Worst mIoU first; an image with no scored pixel (all void) last.
    order = sorted(range(len(rows)), key=lambda i: (math.isnan(rows[i]["miou"]), rows[i]["miou"]))
    per_image = {k: _mean(rows, k) for k in ("miou", "mdice")}
    summary = {
        **_evaluated(loaded, args, len(rows)),
        "decision": "argmax of the softmax over the classes",
        "image_size": list(loaded.image_size),
        "data_overrides": overrides,
        "metrics": metrics,
        "per_image_mean": per_image,
        "classes": table,
        "palette": [list(c) for c in palette],
        "confusion": confusion.tolist(),
    }
    write_json(out / "eval.json", summary)
    fields = ["rank", "image", "mask", "miou", "mdice", *(f"iou/{n}" for n in classes)]
    _write_csv(out / "eval_per_image.csv", [rows[i] for i in order], fields)

    shown = order[:GRID_MAX]
    images = result["images"][shown].permute(0, 2, 3, 1).numpy()
    truths = result["masks"][shown, 0].numpy()
    preds = result["labels"][shown].numpy()
    labels = [f"{Path(rows[i]['image']).name[:18]} mIoU {rows[i]['miou']:.2f}" for i in shown]
    write_image(
        out / "predictions.png",
        class_predictions_grid(list(images), truths, preds, labels, classes, palette),
    )

    def fmt(value: float | None) -> str:
        return "   n/a" if value is None else f"{value:6.4f}"

    width = max(14, *(len(n) + 2 for n in classes))
    print(
        f"{loaded.run_dir}  {args.split}: {len(rows)} images, {len(classes)} classes,"
        f" TTA {'on' if args.tta else 'off'}"
    )
    # truth share: the class's share of the true (non-void) pixels.
    print(f"{'class':{width}}{'iou':>11}{'dice':>11}{'truth share':>13}")
    for row in table:
        share = "n/a" if row["pixel_share"] is None else f"{100 * row['pixel_share']:.1f}%"
        print(f"{row['class']:{width}}{fmt(row['iou']):>11}{fmt(row['dice']):>11}{share:>13}")
    print(f"{'mIoU, mDice':{width}}{fmt(metrics['miou']):>11}{fmt(metrics['mdice']):>11}")
    print(f"{'per-image mean':{width}}{fmt(per_image['miou']):>11}{fmt(per_image['mdice']):>11}")
    print(f"Wrote {out / 'eval.json'}, eval_per_image.csv, predictions.png")
    return 0


@command
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nailseg eval",
        description="Evaluate a run's checkpoint: IoU, Dice, precision, recall (dataset level and"
        " per image; multi-class: per-class IoU and Dice, mIoU, mDice), eval.json,"
        " eval_per_image.csv and predictions.png.",
        epilog="Other arguments are Hydra overrides composed onto the run's recorded config, to"
        " evaluate on other data: data=folder data.images=DIR data.masks=DIR.",
    )
    add_run_argument(parser)
    parser.add_argument("--tta", action="store_true", help="average over flips (4 versions)")
    parser.add_argument(
        "--threshold",
        type=_parse_threshold,
        default=None,
        help="auto: tune on the valid split and record it in run.json; or a number in (0, 1);"
        " default: the run's (run.json threshold, else the checkpoint's 0.5). Binary runs only",
    )
    parser.add_argument(
        "--split",
        choices=("valid", "test", "all"),
        default="valid",
        help="all: every pair of the data (for another data set given as overrides)",
    )
    parser.add_argument("--out", type=Path, default=None, help="folder (default: RUN_DIR/eval)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        raise ConfigError(f"Unknown option {unknown[0]}. See nailseg eval --help.")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: give 1 or more.")

    loaded = load_run(args.run_dir, args.device)
    if loaded.multiclass and args.threshold is not None:
        raise ConfigError(threshold_refusal(loaded.classes))
    out = (args.out or loaded.run_dir / "eval").expanduser().resolve()
    cfg = eval_config(loaded, overrides, out)  # refuses other classes before writing anything
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"Cannot create --out {out}: {err.strerror}.") from err
    # No augmentation; the checkpoint's normalisation (applied in loaded.normalize).
    datamodule = build_datamodule(cfg, augment=NoAugment(normalization=loaded.normalization))
    datamodule.setup("fit")
    ignore = datamodule.ignore_index
    result = run_split(loaded, datamodule, args.split, args.tta, args.batch_size)
    if loaded.multiclass:
        return _eval_classes(loaded, args, overrides, out, result, ignore)

    threshold, source = loaded.threshold, loaded.threshold_source
    tuning = None
    if args.threshold == "auto":
        valid = (
            result
            if args.split == "valid"
            else run_split(loaded, datamodule, "valid", args.tta, args.batch_size)
        )
        threshold, valid_iou = best_threshold(valid["probs"], valid["masks"], ignore)
        source = "auto (best IoU on the valid split)"
        tuning = {
            "split": "valid",
            "tta": args.tta,
            "iou": valid_iou,
            "checkpoint": str(loaded.checkpoint),
            "data_overrides": overrides,
            "at": dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        }
        record_threshold(loaded.run_dir, threshold, tuning)
    elif args.threshold is not None:
        threshold, source = float(args.threshold), "--threshold"

    overall, rows = evaluate(result, threshold, ignore)
    order = sorted(range(len(rows)), key=lambda i: rows[i]["iou"])  # worst first
    rows_sorted = [rows[i] for i in order]
    per_image = {k: _mean(rows, k) for k in METRICS}
    summary = {
        **_evaluated(loaded, args, len(rows)),
        "threshold": threshold,
        "threshold_source": source,
        "threshold_tuning": tuning,
        "image_size": list(loaded.image_size),
        "data_overrides": overrides,
        "metrics": overall,
        "per_image_mean": per_image,
    }
    write_json(out / "eval.json", summary)
    _write_csv(out / "eval_per_image.csv", rows_sorted)

    shown = order[:GRID_MAX]
    images = result["images"][shown].permute(0, 2, 3, 1).numpy()
    truths = result["masks"][shown, 0].numpy()
    preds = (result["probs"][shown, 0] > threshold).numpy().astype(np.uint8)
    labels = [f"{Path(rows[i]['image']).name[:18]} IoU {rows[i]['iou']:.2f}" for i in shown]
    write_image(out / "predictions.png", predictions_grid(list(images), truths, preds, labels))

    def fmt(value: float | None) -> str:
        return "   n/a" if value is None else f"{value:6.4f}"

    print(
        f"{loaded.run_dir}  {args.split}: {len(rows)} images, threshold {threshold:.2f}"
        f" ({source}), TTA {'on' if args.tta else 'off'}"
    )
    print(f"{'':14}" + "".join(f"{m:>11}" for m in METRICS))
    print(f"{'dataset':14}" + "".join(f"{fmt(overall[m]):>11}" for m in METRICS))
    print(f"{'per-image mean':14}" + "".join(f"{fmt(per_image[m]):>11}" for m in METRICS))
    print(f"Wrote {out / 'eval.json'}, eval_per_image.csv, predictions.png")
    return 0
