"""A multirun's summary: ``summary.csv``, ``summary.md`` and ``summary.png`` in its sweep dir.

One row per job, read back from what each job wrote (``SWEEP_DIR/<num>/``:
``.hydra/overrides.yaml``, ``run.json``, ``config.resolved.yaml``, ``csv/metrics.csv``), so the
summary can be rebuilt at any time, also after a crash (``nailseg summary SWEEP_DIR``). Rows are
sorted by each job's ``optimized_metric`` (best first; the best row is marked), failed and
unfinished jobs last.

:class:`SweepCallback` is the Hydra callback (``conf/hydra/default.yaml``) that keeps the summary
up to date: every job rewrites it when it ends (Hydra calls ``on_multirun_end`` only when no job
failed, so the end of the sweep alone would miss exactly the sweeps with failures), and the end
of the multirun writes it once more. With ``hydra/launcher=joblib`` it also pins each job to one
GPU of a multi-GPU machine at job start (:func:`pin_gpu`).

Columns: ``job``, one column per swept key (the overrides that differ between jobs), ``status``
(``completed``, ``failed``, ``pruned``, ``interrupted``, ``running``; ``not started`` without a
``run.json``, ``bad record`` when it is empty or damaged), ``error`` (its first line, or what is
wrong with the record), ``duration_s``, ``epochs`` (epochs with a training loss in
``csv/metrics.csv``), ``train_images_per_s``, ``final`` and ``best`` ``val/iou``, ``val/dice``,
``val/loss`` (best over the epochs of ``csv/metrics.csv``: highest IoU/Dice, lowest loss; a sweep
of multi-class runs shows ``val/miou`` and ``val/mdice`` instead of IoU and Dice),
``run_dir``, ``best_checkpoint`` and ``best`` (``*`` on the best row).

``train_images_per_s`` = training images per epoch x epochs / seconds, where images per epoch
is ``data.n.train`` (``run.json``) capped by ``trainer.limit_train_batches`` x
``data.batch_size`` x ``world_size``, and seconds is ``fit_duration_s`` from ``run.json`` when
recorded, else ``duration_s``: the whole run, with setup, validation and test, so a lower bound
of the training throughput.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nailseg.errors import ConfigError
from nailseg.runs.curves import read_metrics_csv
from nailseg.runs.record import RUN_JSON, is_rank_zero, read_config, read_run

log = logging.getLogger(__name__)

SUMMARY_CSV, SUMMARY_MD, SUMMARY_PNG = "summary.csv", "summary.md", "summary.png"
OVERRIDES = Path(".hydra") / "overrides.yaml"
METRICS = ("val/iou", "val/dice", "val/loss")
# A multi-class run's (data.classes) in place of val/iou and val/dice.
MULTICLASS_METRICS = ("val/miou", "val/mdice", "val/loss")
DEFAULT_METRIC = "val/iou"


def metrics_of(rows: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The metric columns of a sweep: the multi-class ones when any job logged ``val/miou``."""
    multiclass = any(row.get("final val/miou") is not None for row in rows)
    return MULTICLASS_METRICS if multiclass else METRICS


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job dirs of a sweep (``<num>/.hydra/overrides.yaml``), by job number."""
    jobs = [p.parent.parent for p in sweep_dir.glob(f"*/{OVERRIDES}") if p.parent.parent.name]
    return sorted((j for j in jobs if j.name.isdigit()), key=lambda j: int(j.name))


def parse_overrides(lines: Sequence[str]) -> dict[str, str]:
    """``["encoder=resnet18", "+x=1"]`` -> ``{"encoder": "resnet18", "+x": "1"}`` (Hydra's parser).

    Examples:
        >>> parse_overrides(["encoder=resnet18", "optimizer.lr=1e-3", "+extra.key=[1,2]"])
        {'encoder': 'resnet18', 'optimizer.lr': '1e-3', '+extra.key': '[1,2]'}
    """
    parsed = OverridesParser.create().parse_overrides(list(lines))
    return {
        o.get_key_element(): o.input_line.split("=", 1)[1] for o in parsed if "=" in o.input_line
    }


def swept_keys(overrides: Sequence[dict[str, str]]) -> list[str]:
    """The keys whose value differs between jobs (or that some jobs lack), in first-seen order.

    Examples:
        >>> swept_keys([{"a": "1", "b": "x"}, {"a": "2", "b": "x"}])
        ['a']
    """
    keys = list(dict.fromkeys(k for job in overrides for k in job))
    return [k for k in keys if len({job.get(k) for job in overrides}) > 1]


def first_line(text: Any) -> str:
    return str(text).strip().splitlines()[0] if text and str(text).strip() else ""


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def epoch_metrics(run_dir: Path) -> dict[str, list[float]]:
    """Per-epoch values of the train loss and the validation metrics from ``csv/metrics.csv``
    (Lightning's CSVLogger writes one row per logging call; the epoch rows hold these)."""
    path = run_dir / "csv" / "metrics.csv"
    names = dict.fromkeys((*METRICS, *MULTICLASS_METRICS, "train/loss"))
    values: dict[str, list[float]] = {k: [] for k in names}
    if not path.is_file():
        return values
    for row in read_metrics_csv(path)[0]:
        for key, seen in values.items():
            number = _number(row.get(key))
            if number is not None:
                seen.append(number)
    return values


def _mapping(value: Any) -> dict[str, Any]:
    """A record's field that should hold an object, or ``{}`` when it holds something else."""
    return value if isinstance(value, dict) else {}


def images_per_epoch(data: dict[str, Any], cfg: DictConfig | None) -> int | None:
    """Training images one epoch sees: ``data.n.train``, capped by ``limit_train_batches``."""
    n_train = _number(_mapping(_mapping(data.get("data")).get("n")).get("train"))
    if not n_train:
        return None
    if cfg is None:
        return int(n_train)
    limit = OmegaConf.select(cfg, "trainer.limit_train_batches", default=None)
    batch = OmegaConf.select(cfg, "data.batch_size", default=None)
    world = int(_number(data.get("world_size")) or 1)
    if isinstance(limit, float) and limit <= 1.0:
        return int(n_train * limit)
    if isinstance(limit, int) and isinstance(batch, int):
        return min(int(n_train), limit * batch * world)
    return int(n_train)


def metric_mode(metric: str, job_dir: Path) -> str:
    """``max`` or ``min``: the sweeper's ``direction`` if it has one (Optuna), else ``min`` for
    a loss and ``max`` otherwise."""
    hydra_yaml = job_dir / ".hydra" / "hydra.yaml"
    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
        direction = (yaml.safe_load(hydra_yaml.read_text())["hydra"]["sweeper"] or {}).get(
            "direction"
        )
        if direction in ("minimize", "maximize"):
            return direction[:3]
    return "min" if "loss" in metric else "max"


BAD_RECORD = "bad record"  # status of a job whose run.json cannot be read as a run record


def _record(job_dir: Path) -> tuple[dict[str, Any], str]:
    """A job's ``run.json``, or ``({}, what is wrong with it)`` when it is not a run record
    (empty, not JSON, not a JSON object): the job's row says so, the other rows are written."""
    path = job_dir / RUN_JSON
    try:
        if not path.read_text().strip():
            return {}, f"{path} is empty: the job's record was lost (see {job_dir}/*.log)"
        data = read_run(job_dir)
    except (ConfigError, OSError, UnicodeDecodeError) as err:
        return {}, first_line(err)
    if not isinstance(data, dict):
        kind = {list: "list", str: "string", int: "number", float: "number"}.get(type(data), "")
        return {}, f"{path} holds a JSON {kind or type(data).__name__}, not a run record (object)"
    return data, ""


def job_row(job_dir: Path) -> dict[str, Any]:
    """One job's row (before the swept keys are known); ``_overrides`` and ``_metric`` are for
    :func:`summary_rows`."""
    overrides = parse_overrides(yaml.safe_load((job_dir / OVERRIDES).read_text()) or [])
    row: dict[str, Any] = {"job": int(job_dir.name), "_overrides": overrides}
    if not (job_dir / RUN_JSON).is_file():
        row.update(
            status="not started",
            error=f"no {RUN_JSON}: the job stopped before its run started (see {job_dir}/*.log)",
            run_dir=str(job_dir),
            _metric=DEFAULT_METRIC,
        )
        return row
    data, problem = _record(job_dir)
    if problem:
        row.update(status=BAD_RECORD, error=problem, run_dir=str(job_dir), _metric=DEFAULT_METRIC)
        return row
    try:
        cfg: DictConfig | None = read_config(job_dir)
    except ConfigError:
        cfg = None
    metric = str((cfg.get("optimized_metric") if cfg is not None else None) or DEFAULT_METRIC)
    epochs = epoch_metrics(job_dir)
    recorded = _mapping(data.get("metrics"))
    n_epochs = len(epochs["train/loss"])
    seconds = _number(data.get("fit_duration_s")) or _number(data.get("duration_s"))
    per_epoch = images_per_epoch(data, cfg)
    row.update(
        status=str(data.get("status") or "unknown"),
        error=first_line(data.get("error")) if data.get("status") != "completed" else "",
        duration_s=_number(data.get("duration_s")),
        epochs=n_epochs,
        train_images_per_s=round(per_epoch * n_epochs / seconds, 1)
        if per_epoch and n_epochs and seconds
        else None,
    )
    for key in dict.fromkeys((*METRICS, *MULTICLASS_METRICS)):
        seen = epochs[key]
        final = _number(recorded.get(key))
        row[f"final {key}"] = final if final is not None else (seen[-1] if seen else None)
        row[f"best {key}"] = (min(seen) if "loss" in key else max(seen)) if seen else None
    row.update(
        run_dir=str(data.get("run_dir") or job_dir),
        best_checkpoint=data.get("best_checkpoint"),
        _metric=metric,
        _value=_number(recorded.get(metric)),
        _mode=metric_mode(metric, job_dir),
    )
    return row


def summary_rows(sweep_dir: Path) -> tuple[list[dict[str, Any]], list[str], str]:
    """The rows (sorted, best first), the swept keys and the metric they are sorted by."""
    jobs = job_dirs(sweep_dir)
    if not jobs:
        raise ConfigError(
            f"{sweep_dir} is not a multirun sweep dir: it has no job dirs (<num>/{OVERRIDES})."
            " Pass the folder a `python train.py -m ...` run wrote (runs/multirun/DATE/TIME)."
        )
    rows = [job_row(j) for j in jobs]
    keys = swept_keys([r["_overrides"] for r in rows])
    metrics = [r["_metric"] for r in rows if r.get("_value") is not None]
    metric = max(set(metrics), key=metrics.count) if metrics else rows[0]["_metric"]
    mode = next((r["_mode"] for r in rows if r["_metric"] == metric and "_mode" in r), "max")

    def order(row: dict[str, Any]) -> tuple[int, float, int]:
        value = row.get("_value") if row["_metric"] == metric else None
        if value is None:
            return (1, 0.0, row["job"])
        return (0, -value if mode == "max" else value, row["job"])

    rows.sort(key=order)
    for i, row in enumerate(rows):
        row["best"] = "*" if i == 0 and order(row)[0] == 0 else ""
        for key in keys:
            row[key] = row["_overrides"].get(key, "")
    return rows, keys, metric


def columns(keys: Sequence[str], metrics: Sequence[str] = METRICS) -> list[str]:
    return [
        "job",
        *keys,
        "status",
        "error",
        "duration_s",
        "epochs",
        "train_images_per_s",
        *(f"{kind} {m}" for m in metrics for kind in ("final", "best")),
        "run_dir",
        "best_checkpoint",
        "best",
    ]


def _cell(value: Any, column: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if "/" in column else f"{value:.1f}"
    return str(value)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def markdown(rows: list[dict[str, Any]], keys: Sequence[str], metric: str, sweep: Path) -> str:
    """A Markdown table of the rows (pandas' ``to_markdown`` needs ``tabulate``, which nailseg
    does not depend on; a pipe table is a join)."""
    shown = [
        c
        for c in columns(keys, metrics_of(rows))
        if c not in ("run_dir", "best_checkpoint", "best")
    ]
    head = [f"# Multirun {sweep}", "", f"Sorted by `{metric}` (final value); ** marks the best."]
    lines = [*head, "", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        cells = [_cell(row.get(c), c).replace("|", "\\|") for c in shown]
        if row["best"]:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    lines += fold_markdown(rows, keys)
    lines += ["", "Run dirs and best checkpoints:", ""]
    lines += [f"- job {r['job']}: {r['run_dir']} ({r.get('best_checkpoint') or '-'})" for r in rows]
    return "\n".join(lines) + "\n"


FOLD_KEY = "data.fold"


def fold_stats(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Cross-validation: per configuration (the swept keys other than ``data.fold``), the mean
    and sample standard deviation of each final metric over its completed folds.

    Examples:
        >>> rows = [{"status": "completed", "lr": "1", "data.fold": str(i), "final val/iou": v}
        ...         for i, v in enumerate([0.5, 0.7])]
        >>> stats = fold_stats(rows, ["lr", "data.fold"])
        >>> stats[0]["lr"], stats[0]["folds"], round(stats[0]["val/iou mean"], 3)
        ('1', 2, 0.6)
        >>> round(stats[0]["val/iou std"], 4)
        0.1414
    """
    if FOLD_KEY not in keys:
        return []
    others = [k for k in keys if k != FOLD_KEY]
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("status") == "completed":
            groups.setdefault(tuple(str(row.get(k, "")) for k in others), []).append(row)
    stats = []
    for config, members in groups.items():
        entry: dict[str, Any] = {**dict(zip(others, config, strict=True)), "folds": len(members)}
        for metric in metrics_of(rows):
            values = [
                v for v in (_number(m.get(f"final {metric}")) for m in members) if v is not None
            ]
            mean = sum(values) / len(values) if values else None
            spread = (
                math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                if mean is not None and len(values) > 1
                else None
            )
            entry[f"{metric} mean"], entry[f"{metric} std"] = mean, spread
        stats.append(entry)
    return stats


def fold_markdown(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[str]:
    """The cross-validation table of :func:`fold_stats` (no lines when nothing swept folds)."""
    stats = fold_stats(rows, keys)
    if not stats:
        return []
    others = [k for k in keys if k != FOLD_KEY]
    metrics = metrics_of(rows)
    shown = [*others, "folds", *(f"{m} (mean ± std)" for m in metrics)]
    lines = ["", f"Cross-validation over `{FOLD_KEY}` (completed folds):", ""]
    lines += ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for entry in stats:
        cells = [str(entry[k]) for k in others] + [str(entry["folds"])]
        for metric in metrics:
            mean, spread = entry[f"{metric} mean"], entry[f"{metric} std"]
            cells.append(
                "-" if mean is None else f"{mean:.4f} ± {spread:.4f}" if spread else f"{mean:.4f}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict[str, Any]], keys: Sequence[str], metric: str, path: Path) -> bool:
    """``summary.png``: the metric of each job, grouped by the swept keys (the last swept key as
    the bar colour, the others along the x axis). False when matplotlib (a dev dependency) is
    missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no %s (pip install matplotlib)", path.name)
        return False
    hue = keys[-1] if keys else None
    groups = list(dict.fromkeys(" ".join(f"{k}={r[k]}" for k in keys[:-1]) for r in rows))
    hues = list(dict.fromkeys(r[hue] for r in rows)) if hue else [""]
    by_job = sorted(rows, key=lambda r: r["job"])
    width = 0.8 / len(hues)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) + 2), 3.5), layout="constrained")
    for h, value in enumerate(hues):
        xs, ys, labels = [], [], []
        for row in by_job:
            if hue and row[hue] != value:
                continue
            group = " ".join(f"{k}={row[k]}" for k in keys[:-1])
            x = groups.index(group) + (h - (len(hues) - 1) / 2) * width
            y = row.get(f"final {metric}") if metric in metrics_of(rows) else row.get("_value")
            xs.append(x)
            ys.append(y if y is not None else 0.0)
            labels.append(f"#{row['job']}" if y is not None else f"#{row['job']} {row['status']}")
        bars = ax.bar(xs, ys, width, label=f"{hue}={value}" if hue else None)
        ax.bar_label(bars, labels=labels, fontsize=7)
    ax.set_xticks(range(len(groups)), [g or "all jobs" for g in groups], fontsize=8)
    ax.set_ylabel(f"final {metric}")
    ax.set_title(f"{path.parent.name}: {metric} per job", fontsize=9)
    if hue:
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_summary(sweep_dir: Path | str) -> Path:
    """Write ``summary.csv``, ``summary.md`` and ``summary.png`` into ``sweep_dir`` from its jobs'
    records; returns the path of ``summary.csv``.

    Raises:
        ConfigError: ``sweep_dir`` holds no job dirs.
    """
    sweep = Path(sweep_dir).expanduser().resolve()
    if not sweep.is_dir():
        raise ConfigError(f"Sweep dir {sweep_dir} does not exist. Pass a runs/multirun/DATE/TIME.")
    rows, keys, metric = summary_rows(sweep)
    header = columns(keys, metrics_of(rows))
    out = sweep / SUMMARY_CSV
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: row.get(c) for c in header} for row in rows)
    os.replace(tmp, out)
    _atomic_write(sweep / SUMMARY_MD, markdown(rows, keys, metric, sweep))
    tmp_png = sweep / f".{SUMMARY_PNG}.tmp{os.getpid()}.png"
    if plot(rows, keys, metric, tmp_png):
        os.replace(tmp_png, sweep / SUMMARY_PNG)
    return out


@contextlib.contextmanager
def _locked(sweep: Path) -> Iterator[None]:
    """Parallel jobs (joblib, submitit) rewrite the summary one at a time: each job's ``run.json``
    is final before it writes, so the last writer sees every finished job."""
    with (sweep / ".summary.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def refresh_summary(sweep_dir: Path | str) -> Path | None:
    """:func:`write_summary` under the sweep's lock; a problem is logged, never raised (a summary
    must not fail the job or the sweep)."""
    try:
        with _locked(Path(sweep_dir)):
            return write_summary(sweep_dir)
    except Exception as err:  # noqa: BLE001 - the summary is a by-product of the sweep
        log.warning("Could not write the multirun summary in %s: %s", sweep_dir, err)
        return None


def pick_gpu(job_num: int, visible: Sequence[str]) -> str | None:
    """The GPU (an entry of ``visible``) job ``job_num`` runs on: round robin.

    Examples:
        >>> pick_gpu(3, ["0", "1"]), pick_gpu(2, ["4", "5", "6"]), pick_gpu(0, [])
        ('1', '6', None)
    """
    return visible[job_num % len(visible)] if visible else None


# The GPUs this process could see before pin_gpu narrowed CUDA_VISIBLE_DEVICES.
_visible_gpus: list[str] | None = None


def pin_gpu(job_num: int) -> str | None:
    """Make job ``job_num`` of a parallel sweep see one GPU (``CUDA_VISIBLE_DEVICES``), chosen
    round robin from those visible; no-op without CUDA or with one GPU. Returns the GPU.

    The variable only counts before CUDA starts in this process, so the GPU count is read
    through NVML (``torch.cuda.device_count`` does not start CUDA). joblib reuses worker
    processes: a worker that already ran a job on its GPU keeps that GPU.
    """
    import torch

    global _visible_gpus
    if _visible_gpus is None:  # the first job of this process: what the machine shows it
        count = torch.cuda.device_count()
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        _visible_gpus = (shown.split(",") if shown else [str(i) for i in range(count)])[:count]
    visible = [v for v in _visible_gpus if v]
    if len(visible) < 2:
        return None
    if torch.cuda.is_initialized():
        log.info(
            "Job #%d: CUDA already runs in this worker on GPU %s; it stays there",
            job_num,
            os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
        return os.environ.get("CUDA_VISIBLE_DEVICES")
    gpu = pick_gpu(job_num, visible)
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    log.info("Job #%d runs on GPU %s (CUDA_VISIBLE_DEVICES)", job_num, gpu)
    return gpu


def _multirun(config: DictConfig) -> bool:
    mode = OmegaConf.select(config, "hydra.mode", default=None)
    return mode == RunMode.MULTIRUN or str(mode) == "MULTIRUN"


class SweepCallback(Callback):
    """Hydra callback: the multirun summary, and one GPU per job under the joblib launcher.

    Args:
        summary: write the summary files (after each job and at the end of the multirun).
        pin_gpus: with ``hydra/launcher=joblib``, give each job one GPU (:func:`pin_gpu`).
    """

    def __init__(self, summary: bool = True, pin_gpus: bool = True) -> None:
        self.summary, self.pin_gpus = summary, pin_gpus

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not (self.pin_gpus and _multirun(config)):
            return
        launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
        if "joblib" in launcher.lower():
            pin_gpu(int(OmegaConf.select(config, "hydra.job.num", default=0)))

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.summary and _multirun(config) and is_rank_zero():
            refresh_summary(str(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra calls this only when every job succeeded; each job's on_job_end covers the rest.
        if self.summary:
            path = refresh_summary(str(config.hydra.sweep.dir))
            if path is not None:
                log.info("Multirun summary: %s (and .md, .png)", path)
