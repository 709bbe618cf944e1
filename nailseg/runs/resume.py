"""Resuming an interrupted run: ``python train.py resume=RUN_DIR``.

The run continues in its own dir, from its ``last.ckpt``, with its recorded config
(``config.resolved.yaml``), not with whatever ``conf/`` says today. Command-line overrides next
to ``resume=`` must agree with the recorded run; anything else is refused, because a resumed
run that trains differently from how it started is a new experiment (``nailseg rerun``).
"""

from __future__ import annotations

import contextlib
import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from nailseg.errors import ConfigError
from nailseg.runs.record import find_run_dir, read_config, read_run

log = logging.getLogger(__name__)

RESUME_KEY = "resume"
LAST_CHECKPOINT = "last.ckpt"


@dataclass
class Resume:
    """What :func:`prepare_resume` found: the run, its recorded config and its last checkpoint."""

    run_dir: Path
    cfg: DictConfig
    checkpoint: Path
    record: dict[str, Any]


def last_checkpoint(run_dir: Path, cfg: DictConfig) -> Path | None:
    """The run's ``last.ckpt``: in a ModelCheckpoint ``dirpath`` of its config, else in the run."""
    dirs = [
        Path(node["dirpath"])
        for node in (cfg.get("callbacks") or {}).values()
        if isinstance(node, DictConfig) and node.get("dirpath")
    ]
    candidates = [d / LAST_CHECKPOINT for d in dirs] + sorted(run_dir.rglob(LAST_CHECKPOINT))
    return next((c for c in candidates if c.is_file()), None)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def check_overrides(
    cfg: DictConfig,
    hydra_info: dict[str, Any],
    run_dir: Path,
    record: dict[str, Any],
    recorded: DictConfig,
) -> None:
    """Refuse overrides given with ``resume=`` that differ from the recorded run.

    Raises:
        ConfigError: naming each contradicting override with the recorded value.
    """
    overrides = [
        o
        for o in hydra_info.get("overrides") or []
        if o.split("=", 1)[0].lstrip("+~") != RESUME_KEY
    ]
    choices_now = hydra_info.get("choices") or {}
    choices_then = record.get("choices") or {}
    problems = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key in choices_now:
            now, then = choices_now.get(key), choices_then.get(key)
        else:
            now = _plain(OmegaConf.select(cfg, key, default=None))
            then = _plain(OmegaConf.select(recorded, key, default=None))
        if now != then:
            problems.append(f"{override.input_line} (the run has {key}={then})")
    if problems:
        raise ConfigError(
            f"resume={run_dir}: these overrides contradict the recorded run: {'; '.join(problems)}."
            " A resumed run keeps its recorded config: drop them to resume, or start a new run"
            f" with them: nailseg rerun {run_dir} {' '.join(overrides)}"
        )


def prepare_resume(cfg: DictConfig, hydra_info: dict[str, Any]) -> Resume:
    """Find the run named by ``cfg.resume``, check the overrides, and load its config.

    Raises:
        ConfigError: the run dir is not a run, has completed, has no checkpoint yet, or the
            overrides contradict it.
    """
    run_dir = find_run_dir(cfg[RESUME_KEY])
    record = read_run(run_dir)
    recorded = read_config(run_dir)
    if record.get("status") == "completed":
        raise ConfigError(
            f"resume={run_dir}: that run completed; there is nothing to resume. To train it"
            f" again, or longer, start a new run: nailseg rerun {run_dir} [trainer.max_epochs=N]"
        )
    checkpoint = last_checkpoint(run_dir, recorded)
    if checkpoint is None:
        raise ConfigError(
            f"resume={run_dir}: no {LAST_CHECKPOINT} in that run (it stopped before its first"
            f" checkpoint). Start it again instead: nailseg rerun {run_dir}"
        )
    check_overrides(cfg, hydra_info, run_dir, record, recorded)
    recorded[RESUME_KEY] = str(run_dir)
    return Resume(run_dir=run_dir, cfg=recorded, checkpoint=checkpoint, record=record)


def check_same_data(resume: Resume, fingerprint: dict[str, Any]) -> None:
    """Refuse to resume on data that changed since the run started."""
    before = (resume.record.get("data") or {}).get("sha256")
    if before and before != fingerprint.get("sha256"):
        raise ConfigError(
            f"resume={resume.run_dir}: the data changed since the run started (fingerprint"
            f" {before[:12]} then, {fingerprint.get('sha256', '')[:12]} now; split"
            f" {fingerprint.get('split_folder')}). Restore the data, or start a new run."
        )


@contextlib.contextmanager
def log_to(path: Path) -> Iterator[None]:
    """Append this process's log to ``path`` (the resumed run's ``train.log``) while inside."""
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def _checkpoint_step(checkpoint: Path) -> int:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    return int(state.get("global_step", 0))


@contextlib.contextmanager
def keep_csv_logs(trainer: pl.Trainer, resume: Resume | None) -> Iterator[None]:
    """Keep the rows a CSV logger wrote before the crash (Lightning deletes its metrics.csv).

    Rows of steps before the checkpoint's are kept; rows written after it (the epoch that was
    cut short) are dropped, since the resumed run writes them again.
    """
    from pytorch_lightning.loggers import CSVLogger

    kept: list[tuple[Path, list[dict[str, str]]]] = []
    if resume is not None:
        step = _checkpoint_step(resume.checkpoint)
        for logger in trainer.loggers:
            path = Path(logger.log_dir) / "metrics.csv" if isinstance(logger, CSVLogger) else None
            if path is None or not path.is_file():
                continue
            with path.open(newline="") as file:
                rows = [r for r in csv.DictReader(file) if int(r.get("step") or 0) < step]
            backup = path.with_name(
                f"metrics.before-resume-{len(resume.record.get('resumes', []))}.csv"
            )
            path.replace(backup)  # kept until the merge, in case this attempt is killed as well
            kept.append((path, rows))
    try:
        yield
    finally:
        for path, old in kept:
            new = []
            if path.is_file():
                with path.open(newline="") as file:
                    new = list(csv.DictReader(file))
            rows = old + new
            fields = sorted({k for row in rows for k in row})
            with path.open("w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
            for backup in path.parent.glob("metrics.before-resume-*.csv"):
                backup.unlink()
