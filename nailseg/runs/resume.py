"""Resuming an interrupted run: ``python train.py resume=RUN_DIR``.

The run continues in its own dir, from its ``last.ckpt`` (or from the checkpoint file that
``resume=RUN_DIR/checkpoints/FILE.ckpt`` names), with its recorded config
(``config.resolved.yaml``), not with whatever ``conf/`` says today. Command-line overrides next
to ``resume=`` must agree with the recorded run; anything else is refused, because a resumed
run that trains differently from how it started is a new experiment (``nailseg rerun``).

A run dir that was moved or copied is resumed where it is now: every recorded path under its
old location (config, ``run.json``, the checkpoint callbacks' state) is moved under the new one,
so nothing is written to, or read from, the old dir. What a kill during a checkpoint write left
behind is removed first (:func:`tidy_checkpoints`).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import logging
import os
import shlex
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from nailseg.errors import ConfigError, PickledCheckpointError
from nailseg.runs.checkpoint import (
    orphan_checkpoints,
    read_checkpoint,
    read_error,
    recorded_checkpoints,
    stale_temp_files,
)
from nailseg.runs.curves import read_metrics_csv
from nailseg.runs.record import RUN_JSON, find_run_dir, read_config, read_run

log = logging.getLogger(__name__)

RESUME_KEY = "resume"
LAST_CHECKPOINT = "last.ckpt"


def resume_command(run: Path | str) -> str:
    """The command that continues ``run`` (a run dir, or a checkpoint file in one)."""
    return f"python train.py {RESUME_KEY}={shlex.quote(str(run))}"


def relocate(value: Any, old_dirs: Sequence[str], new_dir: str) -> Any:
    """``value`` with every path string under one of ``old_dirs`` moved under ``new_dir``.

    Walks dicts (keys too), lists and tuples; anything else is returned as it is.

    Examples:
        >>> relocate({"a": "/r/old/ckpt", "b": ["/r/older"]}, ["/r/old"], "/r/new")
        {'a': '/r/new/ckpt', 'b': ['/r/older']}
    """
    if isinstance(value, str):
        for old in old_dirs:
            if value == old or value.startswith(old + "/"):
                return new_dir + value[len(old) :]
        return value
    if isinstance(value, dict):
        return {
            relocate(k, old_dirs, new_dir): relocate(v, old_dirs, new_dir) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(relocate(v, old_dirs, new_dir) for v in value)
    return value


@dataclass
class Resume:
    """What :func:`prepare_resume` found: the run, its recorded config and the checkpoint.

    ``recorded`` is the run's config with its paths moved to where the run is now; ``cfg`` is the
    same with ``resume`` set, the config the resumed run trains with.
    """

    run_dir: Path
    cfg: DictConfig
    checkpoint: Path
    record: dict[str, Any]
    recorded: DictConfig
    step: int = 0
    # Whether the checkpoint is the run's last.ckpt (not an older one named on the command line).
    from_last: bool = True
    # The run's recorded locations, when it was moved or copied since (longest first).
    moved_from: list[str] = field(default_factory=list)
    # The real paths of the files the checkpoint's ModelCheckpoint states name (relocated).
    known_checkpoints: set[str] = field(default_factory=set)

    def relocate(self, value: Any) -> Any:
        """``value`` with paths under the run's recorded location moved to where it is now."""
        return relocate(value, self.moved_from, str(self.run_dir)) if self.moved_from else value


def _checkpoint_callbacks(cfg: DictConfig) -> list[DictConfig]:
    """The callbacks of ``cfg`` that write checkpoints: those with a ``dirpath``."""
    return [
        node
        for node in (cfg.get("callbacks") or {}).values()
        if isinstance(node, DictConfig) and node.get("dirpath")
    ]


def checkpoint_dirs(cfg: DictConfig) -> list[Path]:
    """Every folder a ModelCheckpoint of ``cfg`` writes into."""
    return sorted({Path(node.dirpath) for node in _checkpoint_callbacks(cfg)})


def last_checkpoint(run_dir: Path, cfg: DictConfig) -> Path | None:
    """The run's ``last.ckpt``: in a ModelCheckpoint ``dirpath`` of its config, else in the run."""
    candidates = [d / LAST_CHECKPOINT for d in checkpoint_dirs(cfg)]
    candidates += sorted(run_dir.rglob(LAST_CHECKPOINT))
    return next((c for c in candidates if c.is_file()), None)


def _moved_from(run_dir: Path, record: dict[str, Any], recorded: DictConfig) -> list[str]:
    """The run's recorded locations that are not where it is now (both spellings of each)."""
    old = {record.get("run_dir"), OmegaConf.select(recorded, "paths.output_dir", default=None)}
    moved = {str(p) for p in old if p and os.path.realpath(p) != str(run_dir)}
    moved |= {os.path.realpath(p) for p in moved}
    return sorted(moved, key=len, reverse=True)


def _newest_readable(dirs: Sequence[Path], broken: Path) -> tuple[Path, int] | None:
    """The readable checkpoint with the highest ``global_step`` in ``dirs`` (newest on a tie)."""
    found = []
    for path in {p for d in dirs if d.is_dir() for p in d.glob("*.ckpt")}:
        if path.resolve() == broken.resolve():
            continue
        try:
            step = int(read_checkpoint(path).get("global_step", 0))
        except Exception:  # noqa: BLE001 - unreadable: not a candidate
            continue
        found.append((step, path.stat().st_mtime, path))
    if not found:
        return None
    step, _, path = max(found)
    return path, step


def _locate(value: Any) -> tuple[Path, Path | None]:
    """``resume=`` names a run dir (or its run.json), or a checkpoint file inside a run dir."""
    path = Path(str(value)).expanduser()
    if path.suffix != ".ckpt":
        return find_run_dir(path), None
    if not path.is_file():
        raise ConfigError(
            f"{RESUME_KEY}={value}: no such checkpoint file. Pass a run dir, or a .ckpt file"
            " in its checkpoints/ folder."
        )
    path = path.resolve()
    run_dir = next((d for d in path.parents if (d / RUN_JSON).is_file()), None)
    if run_dir is None:
        raise ConfigError(
            f"{RESUME_KEY}={value}: that checkpoint is not inside a run dir (no {RUN_JSON} in"
            " any folder above it). Pass a checkpoint of a run that train.py wrote."
        )
    return run_dir, path


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

    Writes nothing. A run that was moved or copied gets its config's paths moved to where it is
    now, so the resumed run writes only inside the dir it was given.

    Raises:
        ConfigError: the run dir is not a run, has completed, has no checkpoint yet, its
            checkpoint cannot be read (naming the newest one that can), or the overrides
            contradict it.
    """
    run_dir, named = _locate(cfg[RESUME_KEY])
    record = read_run(run_dir)
    recorded = read_config(run_dir)
    if record.get("status") == "completed":
        raise ConfigError(
            f"resume={run_dir}: that run completed; there is nothing to resume. To train it"
            f" again, or longer, start a new run: nailseg rerun {run_dir} [trainer.max_epochs=N]"
        )
    moved_from = _moved_from(run_dir, record, recorded)
    if moved_from:
        container = OmegaConf.to_container(recorded, resolve=False)
        recorded = OmegaConf.create(relocate(container, moved_from, str(run_dir)))
    last = last_checkpoint(run_dir, recorded)
    checkpoint = named or last
    if checkpoint is None:
        raise ConfigError(
            f"resume={run_dir}: no {LAST_CHECKPOINT} in that run (it stopped before its first"
            f" checkpoint). Start it again instead: nailseg rerun {run_dir}"
        )
    try:
        state = read_checkpoint(checkpoint)
        step = int(state.get("global_step", 0))
        known = recorded_checkpoints(state)
    except Exception as err:  # noqa: BLE001 - torch raises several kinds for a damaged file
        raise ConfigError(
            _unreadable(run_dir, checkpoint, err, checkpoint_dirs(recorded))
        ) from None
    del state  # memory-mapped: let the file go
    check_overrides(cfg, hydra_info, run_dir, record, recorded)
    resumed = copy.deepcopy(recorded)
    resumed[RESUME_KEY] = str(run_dir)
    return Resume(
        run_dir=run_dir,
        cfg=resumed,
        checkpoint=checkpoint,
        record=record,
        recorded=recorded,
        step=step,
        from_last=last is not None and checkpoint.resolve() == last.resolve(),
        moved_from=moved_from,
        known_checkpoints={
            os.path.realpath(p) for p in relocate(sorted(known), moved_from, str(run_dir))
        },
    )


def _unreadable(run_dir: Path, checkpoint: Path, err: BaseException, dirs: list[Path]) -> str:
    """The message for a checkpoint that cannot be loaded: name it, offer the newest that can."""

    def short(path: Path) -> str:
        return str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path)

    if isinstance(err, PickledCheckpointError):
        message = (
            f"resume={run_dir}: {short(checkpoint)} holds pickled Python objects, not only"
            " tensors: nailseg loads weights only and refuses it."
        )
    else:
        message = (
            f"resume={run_dir}: {short(checkpoint)} cannot be read ({read_error(err)}); it"
            " is truncated or damaged."
        )
    newest = _newest_readable([*dirs, checkpoint.parent], checkpoint)
    if newest is None:
        return (
            f"{message} No other checkpoint of the run can be read; start it again instead:"
            f" nailseg rerun {run_dir}"
        )
    path, step = newest
    return (
        f"{message} The newest readable checkpoint is {short(path)} (step {step}); continue"
        f" from it with: {resume_command(path)}"
    )


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


def tidy_checkpoints(cfg: DictConfig, resume: Resume | None = None) -> list[Path]:
    """Remove what a kill during a checkpoint write left in the run's checkpoint folders.

    Always: temp files of :class:`~nailseg.runs.checkpoint.AtomicCheckpointIO` whose process is
    gone. When resuming from ``last.ckpt``: top-k checkpoints written after it that it does not
    know (see :func:`~nailseg.runs.checkpoint.orphan_checkpoints`); the resumed run writes that
    epoch again. Returns the removed files.
    """
    removed = []
    for path in (p for d in checkpoint_dirs(cfg) for p in stale_temp_files(d)):
        log.warning("Removing %s: the temp file of a checkpoint write that was killed", path)
        path.unlink(missing_ok=True)
        removed.append(path)
    if resume is not None and resume.from_last:
        topk = [
            (Path(node.dirpath), node.get("filename"))
            for node in _checkpoint_callbacks(cfg)
            if node.get("monitor") is not None
        ]
        for path in orphan_checkpoints(
            resume.checkpoint, resume.step, resume.known_checkpoints, topk
        ):
            log.warning(
                "Removing %s: a top-k checkpoint written after %s (step %d) and unknown to it;"
                " the run was killed between the two writes and trains that epoch again",
                path,
                resume.checkpoint.name,
                resume.step,
            )
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class RelocatedCheckpoints(pl.Callback):
    """Moves the checkpoint callbacks' recorded paths to a moved or copied run's new dir.

    A ModelCheckpoint restores its top-k state only when the checkpoint's ``dirpath`` is its
    own; for a moved run it would restore only ``best_model_path``, pointing into the old dir,
    and lose track of the top-k files. This rewrites those states as they are loaded.
    """

    def __init__(self, resume: Resume) -> None:
        self.resume = resume

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = checkpoint.get("callbacks") or {}
        for key, state in states.items():
            if str(key).startswith("ModelCheckpoint") and isinstance(state, dict):
                states[key] = self.resume.relocate(state)


def _write_metrics_csv(path: Path, rows: list[dict[str, str]]) -> None:
    """``rows`` into ``path`` under the union of their names, replacing it in one step."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=sorted({k for row in rows for k in row}))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


@contextlib.contextmanager
def keep_csv_logs(trainer: pl.Trainer, resume: Resume | None) -> Iterator[None]:
    """Keep the rows a CSV logger wrote before the crash (Lightning deletes its metrics.csv).

    Rows of steps before the checkpoint's are kept; rows written after it (the epoch that was
    cut short) are dropped, since the resumed run writes them again. Until the resumed run's rows
    are merged in, the kept rows wait in ``metrics.before-resume.csv``, so a resume that is killed
    as well loses none of them. A log with rows that cannot be read (:func:`read_metrics_csv`)
    is copied beside it as ``*.damaged-TIME.csv`` first.
    """
    from pytorch_lightning.loggers import CSVLogger

    kept: list[tuple[Path, Path, list[dict[str, str]]]] = []
    if resume is not None:
        for logger in trainer.loggers:
            if not isinstance(logger, CSVLogger):
                continue
            path = Path(logger.log_dir) / "metrics.csv"
            backup = path.with_name("metrics.before-resume.csv")
            rows: list[dict[str, str]] = []
            for source in (backup, path):  # the backup of a resume killed before its merge first
                if not source.is_file():
                    continue
                found, unreadable = read_metrics_csv(source)
                rows += [r for r in found if int(float(r.get("step") or 0)) < resume.step]
                if unreadable:
                    damaged = source.with_name(f"{source.stem}.damaged-{time.time_ns()}.csv")
                    shutil.copy2(source, damaged)
                    log.warning(
                        "%d rows of %s have more values than its header (a Ctrl-C inside"
                        " Lightning's CSV writer leaves such rows); its other rows are kept, and"
                        " a copy of the file as it was is kept as %s",
                        unreadable,
                        source,
                        damaged.name,
                    )
            if rows:
                _write_metrics_csv(backup, rows)
            else:
                backup.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            kept.append((path, backup, rows))
    try:
        yield
    finally:
        for path, backup, old in kept:
            new = read_metrics_csv(path)[0] if path.is_file() else []
            if old or new:
                _write_metrics_csv(path, old + new)
            backup.unlink(missing_ok=True)
