"""One run's record from start to end: :class:`RunSession`.

``train.run`` reads compose -> validate -> build -> fit -> test -> record; everything about the
record lives here: opening a new one or reopening an interrupted run's (``resume=RUN_DIR``, with
that run's config), the log file and the CSV logs kept on resume, the same-data check, and how
the run ends (``completed``, ``failed``, ``interrupted`` with the command that continues it).
A session holds its run dir's lock (:mod:`nailseg.runs.lock`) from before anything in the dir is
read to be continued or written until its final record is written: one writer per run dir.

Examples:
    The shape of a run (``train.run`` is the real one)::

        with RunSession.open(cfg) as session:
            cfg = session.cfg  # a resumed run's recorded config
            ...build...
            session.check_data(datamodule.fingerprint())
            trainer = session.attach(build_trainer(cfg, session.resume))
            with session.keep_logs():
                trainer.fit(module, datamodule=datamodule, ckpt_path=session.ckpt_path)
            session.complete(metrics)
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from nailseg.errors import RunInterrupted
from nailseg.runs import lock as run_lock
from nailseg.runs import stop
from nailseg.runs.curves import write_confusion, write_curves
from nailseg.runs.record import RunRecord, is_rank_zero, read_run, write_config
from nailseg.runs.resume import (
    Resume,
    check_same_data,
    keep_csv_logs,
    last_checkpoint,
    log_to,
    prepare_resume,
    resume_command,
    tidy_checkpoints,
)
from nailseg.runs.writable import ensure_writable_dir, unwritable_reason

log = logging.getLogger(__name__)


def hydra_info() -> dict[str, Any]:
    """What Hydra knows about this run (choices, overrides, output and config dirs); ``{}``
    outside ``hydra.main``."""
    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    return {
        "choices": {
            k: v
            for k, v in OmegaConf.to_container(hydra_cfg.runtime.choices).items()
            if not k.startswith("hydra")
        },
        "overrides": list(hydra_cfg.overrides.task),
        "output_dir": hydra_cfg.runtime.output_dir,
        # The primary config dir (conf/, or a run's snapshot for a rerun): what the record copies.
        "config_dir": next(
            (
                s.path
                for s in hydra_cfg.runtime.config_sources
                if s.provider == "main" and s.schema == "file"
            ),
            None,
        ),
    }


def _rank() -> int:
    from pytorch_lightning.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0))


def requeued_run(output_dir: Path) -> Path | None:
    """The run to continue when SLURM starts a job again after preemption or a requeue.

    SLURM counts a job's starts in ``SLURM_RESTART_COUNT``; a requeued job runs its command
    again, so it starts in its own run dir (a sweep's job dir, or a fixed ``hydra.run.dir``).
    When that dir holds a run that did not end (``interrupted``, or ``running`` when the kill
    left no time to record it) with a ``last.ckpt``, the job continues it, as
    ``resume=RUN_DIR`` would, instead of starting over. Otherwise ``None``: a new run.
    """
    if os.environ.get("SLURM_RESTART_COUNT", "0").strip() in ("", "0"):
        return None
    if not (output_dir / "run.json").is_file():
        return None
    try:
        status = read_run(output_dir).get("status")
    except Exception:  # noqa: BLE001 - a damaged record: start again, as without SLURM
        return None
    if status not in ("interrupted", "running"):
        return None
    if not (output_dir / "checkpoints" / "last.ckpt").is_file():
        return None
    return output_dir


class StopCheck(pl.Callback):
    """At every batch, sanity check and checkpoint: stop if a stop signal came and its exception
    was lost (:func:`nailseg.runs.stop.check`; Lightning then shuts down as for Ctrl-C), and log
    the phase (:func:`nailseg.runs.stop.enter`)."""

    def on_sanity_check_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        stop.enter("sanity check")

    def on_train_batch_start(self, *args: Any) -> None:
        stop.enter("train step")

    def on_validation_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking:
            stop.enter("validation")

    def on_test_batch_start(self, *args: Any) -> None:
        stop.enter("test")

    def on_save_checkpoint(self, *args: Any) -> None:
        stop.enter("checkpoint")


def stop_signal(err: BaseException) -> str | None:
    """The signal that stopped the run, when ``err`` is how a stop request surfaces.

    After a stop signal (:mod:`nailseg.runs.stop`) whatever ends the run is that stop: with
    DataLoader workers, which get the signal too, it often surfaces as their death
    (``RuntimeError: DataLoader worker ... is killed by signal``), or as a ``RuntimeError`` from
    inside ``torch.save``.
    """
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    requested = stop.requested()
    if requested is not None:
        return requested

    if isinstance(err, SIGTERMException):  # Lightning's SIGTERM handler, at the next batch
        return "SIGTERM"
    if isinstance(err, KeyboardInterrupt):
        return "SIGINT (Ctrl-C)"
    # Inside fit Lightning catches KeyboardInterrupt, shuts down and calls sys.exit(1) from its
    # handler, so the SystemExit's context is the KeyboardInterrupt.
    if isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt):
        return "SIGINT (Ctrl-C)"
    return None


def newest_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest checkpoint: an unmonitored ModelCheckpoint's file, else Lightning's last.ckpt."""
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor is None and callback.best_model_path:
            return callback.best_model_path
    lasts = [c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path]
    return lasts[0] if lasts else None


def best_checkpoint(trainer: pl.Trainer | None) -> dict[str, Any]:
    """``best_checkpoint`` and ``best_score`` of the monitored checkpoint callback, if any."""
    checkpoint = trainer.checkpoint_callback if trainer is not None else None
    if checkpoint is None or not checkpoint.best_model_path:
        return {}
    score = checkpoint.best_model_score
    return {
        "best_checkpoint": checkpoint.best_model_path,
        "best_score": float(score) if score is not None else None,
    }


def class_table(metrics: dict[str, float], classes: Sequence[str], stage: str = "val") -> str:
    """A multi-class run's per-class IoU and Dice, and their means, as an aligned table.

    Examples:
        >>> print(class_table({"val/iou/bg": 0.9, "val/dice/bg": 0.95, "val/miou": 0.9,
        ...                    "val/mdice": 0.95}, ["bg", "nail"]))
          class     IoU    Dice
          bg     0.9000  0.9500
          nail        -       -
          mean   0.9000  0.9500
    """
    width = max(len("class"), len("mean"), *(len(name) for name in classes))

    def cell(key: str) -> str:
        value = metrics.get(key)
        return "-" if value is None or value != value else f"{value:.4f}"

    rows = [(name, f"{stage}/iou/{name}", f"{stage}/dice/{name}") for name in classes]
    rows.append(("mean", f"{stage}/miou", f"{stage}/mdice"))
    lines = [f"  {'class':<{width}}  {'IoU':>6}  {'Dice':>6}"]
    lines += [f"  {name:<{width}}  {cell(iou):>6}  {cell(dice):>6}" for name, iou, dice in rows]
    return "\n".join(lines)


class RunSession:
    """A run's record, open for the length of a ``with`` block.

    Leaving the block on an exception records the run as ``failed`` (and re-raises), or on
    Ctrl-C/SIGTERM as ``interrupted`` and raises :class:`~nailseg.errors.RunInterrupted` naming
    the command that continues it. :meth:`complete` records a run that ended well.

    Attributes:
        cfg: the config to run: the composed one, or a resumed run's recorded one.
        record: the run's :class:`~nailseg.runs.record.RunRecord` (``run.json``).
        resume: what a resume continues from, or ``None`` for a new run.
        trainer: the Lightning Trainer, once :meth:`attach` has been called.
    """

    def __init__(
        self,
        cfg: DictConfig,
        record: RunRecord,
        resume: Resume | None,
        lock: run_lock.RunLock | None = None,
    ) -> None:
        self.cfg, self.record, self.resume = cfg, record, resume
        self.trainer: pl.Trainer | None = None
        self._logs: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        # The run dir's lock (None in a DDP child: rank 0 holds it), released on leaving.
        self._lock = lock

    @property
    def run_dir(self) -> Path:
        return self.record.run_dir

    @property
    def ckpt_path(self) -> str | None:
        """The checkpoint ``trainer.fit`` continues from (``None`` for a new run)."""
        return str(self.resume.checkpoint) if self.resume else None

    @classmethod
    def open(cls, cfg: DictConfig, **record_extra: Any) -> RunSession:
        """Start a new record, or with ``resume=RUN_DIR`` reopen that run's (and use its config).

        Args:
            cfg: the composed config.
            record_extra: more top-level fields for ``run.json`` (e.g. ``rerun_of``).

        Raises:
            RunDirBusy: another process holds the run dir's lock; nothing was written.
        """
        info = hydra_info()
        requeued = None if cfg.get("resume") else requeued_run(Path(cfg.paths.output_dir))
        if requeued is not None:
            log.warning(
                "SLURM started this job again (SLURM_RESTART_COUNT=%s): continuing its run in %s",
                os.environ.get("SLURM_RESTART_COUNT"),
                requeued,
            )
            cfg = cfg.copy()
            with open_dict(cfg):
                cfg.resume = str(requeued)
        with contextlib.ExitStack() as undo:  # a failure before the session exists lets go
            if not cfg.get("resume"):
                session = cls._start(cfg, info, undo, record_extra)
            else:
                session = cls._reopen(cfg, info, undo)
            undo.pop_all()
        return session

    @classmethod
    def _take_lock(cls, run_dir: Path, undo: contextlib.ExitStack) -> run_lock.RunLock | None:
        """Lock ``run_dir`` if this process writes the record (rank 0 of a DDP run)."""
        if not (is_rank_zero() and run_lock.lead_process()):
            return None
        lock = run_lock.lock_run_dir(run_dir)
        undo.callback(lock.release)
        return lock

    @classmethod
    def _start(
        cls,
        cfg: DictConfig,
        info: dict[str, Any],
        undo: contextlib.ExitStack,
        record_extra: dict[str, Any],
    ) -> RunSession:
        output_dir = Path(cfg.paths.output_dir)
        ensure_writable_dir(
            output_dir,
            f"paths.output_dir={output_dir}",
            "Point paths.output_dir at a folder you can write, or leave it out to write under"
            " paths.runs_dir.",
        )
        lock = cls._take_lock(output_dir, undo)  # before anything is written into it
        record = RunRecord.start(output_dir, cfg, info, **record_extra)
        if is_rank_zero():  # a DDP child must not remove rank 0's files
            tidy_checkpoints(cfg)  # a reused dir may hold temp files of a killed write
        return cls(cfg, record, None, lock)

    @classmethod
    def _reopen(
        cls, cfg: DictConfig, info: dict[str, Any], undo: contextlib.ExitStack
    ) -> RunSession:
        # Locked before the run is read to be continued, so that a run ending meanwhile is not
        # resumed from what it was. An unwritable one is refused below, with the fix.
        target = run_lock.resume_target(cfg.resume)
        lock = None
        if target is not None and not unwritable_reason(target):
            lock = cls._take_lock(target, undo)
        resume = prepare_resume(cfg, info)
        if not is_rank_zero():
            # A DDP child of a resumed run: rank 0 reopens the record and tidies the run dir; the
            # child only needs the recorded config and the checkpoint to continue from.
            log.info("Rank %s resumes %s from %s", _rank(), resume.run_dir, resume.checkpoint)
            return cls(resume.cfg, RunRecord(resume.run_dir, read_run(resume.run_dir)), resume)
        ensure_writable_dir(
            resume.run_dir,
            f"resume={resume.run_dir}: the run dir",
            "Copy the run to a folder you can write and resume the copy:"
            f" cp -a {resume.run_dir} NEW_DIR && python train.py resume=NEW_DIR",
        )
        if lock is None:
            lock = cls._take_lock(resume.run_dir, undo)
        here = Path(info["output_dir"]).resolve() if info.get("output_dir") else None
        if here is not None and here != resume.run_dir:
            # This invocation's own Hydra dir holds only its .hydra/ and log; point it at the run.
            (here / "resumed_run").symlink_to(resume.run_dir, target_is_directory=True)
        if resume.moved_from:
            # A moved or copied run: its record must name where it is now, never the old dir.
            log.info(
                "%s was recorded at %s; its paths now point here",
                resume.run_dir,
                resume.moved_from[0],
            )
            write_config(resume.run_dir, resume.recorded)
        record = RunRecord.reopen(
            resume.run_dir,
            relocate=resume.relocate if resume.moved_from else None,
            checkpoint=str(resume.checkpoint),
            overrides=info.get("overrides"),
            log_dir=str(here) if here else None,
            **({"moved_from": resume.moved_from} if resume.moved_from else {}),
        )
        removed = tidy_checkpoints(resume.cfg, resume)
        record.data["resumes"][-1]["removed"] = [str(p) for p in removed]
        record.save()
        log.info("Resuming %s from %s", resume.run_dir, resume.checkpoint)
        session = cls(resume.cfg, record, resume, lock)
        # A resumed run logs into its own train.log too, not only this invocation's Hydra dir.
        session._logs = log_to(resume.run_dir / "train.log")
        return session

    def __enter__(self) -> RunSession:
        log.info("Run dir: %s", self.run_dir)
        self._logs.__enter__()
        run_lock.flush_notes()  # a dead holder's lock taken over: in the run's own log too
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if err is None:
                if self.record.data.get("status") == "running":
                    self.record.finish("failed", error="the run ended without a result")
                return
            signal = stop_signal(err)
            if signal is not None:
                # How the stop surfaced, for whoever debugs a stop (hydra.verbose=...phases).
                stop.phases.debug("%s surfaced as", signal, exc_info=err)
                raise self._interrupted(signal) from None
            self.record.finish("failed", error=f"{type(err).__name__}: {err}")
        finally:
            self._logs.__exit__(None, None, None)
            if self._lock is not None:  # after the last record write
                self._lock.release()

    def attach(self, trainer: pl.Trainer) -> pl.Trainer:
        """The trainer whose checkpoints and metrics an interruption records."""
        self.trainer = trainer
        if trainer.world_size > 1:  # DDP: the processes that train, their metrics synced
            self.record.update(world_size=trainer.world_size)
        return trainer

    def check_data(self, fingerprint: dict[str, Any]) -> None:
        """Record the data's fingerprint; a resume stops if the data changed since the start."""
        if self.resume:
            check_same_data(self.resume, fingerprint)
        self.record.update(data=fingerprint)

    def keep_logs(self) -> contextlib.AbstractContextManager[Any]:
        """Around ``trainer.fit``: a resume appends to the run's CSV logs instead of replacing
        them."""
        if self.trainer is None:
            raise RuntimeError("RunSession.keep_logs() needs the trainer: attach() it first")
        return keep_csv_logs(self.trainer, self.resume)

    def complete(
        self,
        metrics: dict[str, float],
        status: str = "completed",
        confusion: Sequence[Sequence[int]] | None = None,
        **fields: Any,
    ) -> None:
        """Record the run as ended well (``completed``, or e.g. ``pruned`` by a search) with its
        final metrics and checkpoints; a multi-class run also with its last validation
        ``confusion`` matrix (pixel counts, rows: true class), drawn into ``confusion.png``."""
        trainer = self.trainer
        classes = (self.cfg.get("data") or {}).get("classes")
        if confusion is not None and classes:
            fields["confusion"] = [[int(v) for v in row] for row in confusion]
        self.record.finish(
            status,
            metrics=metrics,
            **{"best_checkpoint": None, "best_score": None, **best_checkpoint(trainer)},
            last_checkpoint=newest_checkpoint(trainer) if trainer is not None else None,
            **fields,
        )
        if is_rank_zero():
            write_curves(self.run_dir)  # curves.png: losses, IoU and Dice per epoch
            if "confusion" in fields:
                write_confusion(self.run_dir, fields["confusion"], list(classes))
        iou, dice = ("val/miou", "val/mdice") if classes else ("val/iou", "val/dice")
        log.info(
            "Done in %.0f s: %s=%.4f %s=%.4f val/loss=%.4f. Run dir: %s",
            self.record.data["duration_s"],
            iou,
            metrics.get(iou, float("nan")),
            dice,
            metrics.get(dice, float("nan")),
            metrics.get("val/loss", float("nan")),
            self.run_dir,
        )
        if classes:
            log.info("Per class (validation, last epoch):\n%s", class_table(metrics, classes))

    def _interrupted(self, signal: str) -> RunInterrupted:
        """Record the run as interrupted, with what it has so far; the error to raise says how
        to continue it."""
        trainer, fields, metrics, where = self.trainer, {}, None, ""
        if trainer is not None:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()} or None
            fields.update(best_checkpoint(trainer))
            where = f" in epoch {trainer.current_epoch}"
        last = last_checkpoint(self.run_dir, self.cfg)
        if last is not None:
            fields["last_checkpoint"] = str(last)
        run_dir = self.record.data.get("run_dir") or str(self.run_dir)
        command = resume_command(run_dir) if last is not None else None
        self.record.finish(
            "interrupted",
            metrics=metrics,
            error=f"interrupted by {signal}{where}",
            resume_command=command,
            **fields,
        )
        then = (
            f"continue it with: {command}"
            if command
            else f"it wrote no checkpoint yet, so start it again: nailseg rerun {run_dir}"
        )
        return RunInterrupted(
            f"{signal} stopped the run{where}; {run_dir} is recorded as interrupted; {then}",
            exit_code=143 if signal == "SIGTERM" else 130,
        )
