"""Training: compose -> validate -> instantiate -> fit -> test -> record.

``python train.py [overrides]`` (or ``nailseg train``) lands in :func:`main`; :func:`run` does the
work for an already-composed config and is what the tests call.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nailseg.config import CONF_DIR, PRIMARY_CONFIG
from nailseg.config_check import check_config
from nailseg.data import SegmentationDataModule
from nailseg.errors import NailsegError, RunInterrupted, user_error
from nailseg.model import SegmentationModule
from nailseg.runs.checkpoint import AtomicCheckpointIO, RNGStateCallback
from nailseg.runs.fingerprint import data_fingerprint
from nailseg.runs.record import RunRecord, write_config
from nailseg.runs.resume import (
    RelocatedCheckpoints,
    Resume,
    check_same_data,
    keep_csv_logs,
    last_checkpoint,
    log_to,
    prepare_resume,
    resume_command,
    tidy_checkpoints,
)
from nailseg.runs.sweep import JobFailed, current_job, sweep_summary
from nailseg.runs.writable import ensure_writable_dir, run_dir_problem

log = logging.getLogger(__name__)


def _instantiate(node: DictConfig, what: str, **kwargs: Any) -> Any:
    log.info("Instantiating %s <%s>", what, node.get("_target_"))
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        # Hydra wraps constructor errors; surface our user-facing ones as they are.
        cause = user_error(err)
        if cause is not None:
            raise cause from None
        raise


def build_datamodule(cfg: DictConfig) -> SegmentationDataModule:
    augment = _instantiate(cfg.aug, "augmentation")
    return _instantiate(cfg.data, "datamodule", augment=augment)


def build_module(cfg: DictConfig) -> SegmentationModule:
    net = _instantiate(cfg.model, "network")
    scheduler = cfg.get("scheduler")
    return SegmentationModule(
        net=net,
        loss=_instantiate(cfg.loss, "loss"),
        optimizer=_instantiate(cfg.optimizer, "optimizer"),
        scheduler=_instantiate(scheduler, "scheduler")
        if scheduler and "_target_" in scheduler
        else None,
    )


def build_trainer(cfg: DictConfig, resume: Resume | None = None) -> pl.Trainer:
    callbacks = [
        _instantiate(node, f"callback {name}")
        for name, node in (cfg.get("callbacks") or {}).items()
        if node and "_target_" in node
    ]
    loggers = [
        _instantiate(node, f"logger {name}")
        for name, node in (cfg.get("logger") or {}).items()
        if node and "_target_" in node
    ]
    if not loggers:  # the learning-rate monitor needs a logger
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    # Always on, whatever the callbacks group: exact resume needs the RNG states in checkpoints,
    # and a kill while writing one must leave the previous one readable.
    callbacks.append(RNGStateCallback())
    if resume is not None and resume.moved_from:
        callbacks.append(RelocatedCheckpoints(resume))
    # A trainer config with its own plugins keeps them (and Lightning's checkpoint writer).
    extra = {} if cfg.trainer.get("plugins") else {"plugins": [AtomicCheckpointIO()]}
    return _instantiate(
        cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, **extra
    )


def _hydra_info() -> dict[str, Any]:
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


def _open_record(
    cfg: DictConfig, record_extra: dict[str, Any]
) -> tuple[DictConfig, RunRecord, Resume | None]:
    """Start a new record, or with ``resume=RUN_DIR`` reopen that run's (and use its config)."""
    info = _hydra_info()
    if not cfg.get("resume"):
        output_dir = Path(cfg.paths.output_dir)
        ensure_writable_dir(
            output_dir,
            f"paths.output_dir={output_dir}",
            "Point paths.output_dir at a folder you can write, or leave it out to write under"
            " paths.runs_dir.",
        )
        record = RunRecord.start(output_dir, cfg, info, **record_extra)
        tidy_checkpoints(cfg)  # a reused dir may hold temp files of a killed checkpoint write
        return cfg, record, None
    resume = prepare_resume(cfg, info)
    ensure_writable_dir(
        resume.run_dir,
        f"resume={resume.run_dir}: the run dir",
        "Copy the run to a folder you can write and resume the copy:"
        f" cp -a {resume.run_dir} NEW_DIR && python train.py resume=NEW_DIR",
    )
    here = Path(info["output_dir"]).resolve() if info.get("output_dir") else None
    if here is not None and here != resume.run_dir:
        # This invocation's own Hydra dir holds only its .hydra/ and log; point it at the run.
        (here / "resumed_run").symlink_to(resume.run_dir, target_is_directory=True)
    if resume.moved_from:
        # A moved or copied run: its record must name where it is now, never the old dir.
        log.info(
            "%s was recorded at %s; its paths now point here", resume.run_dir, resume.moved_from[0]
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
    return resume.cfg, record, resume


def _last_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest checkpoint: an unmonitored ModelCheckpoint's file, else Lightning's last.ckpt."""
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor is None and callback.best_model_path:
            return callback.best_model_path
    lasts = [c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path]
    return lasts[0] if lasts else None


def _stop_signal(err: BaseException) -> str | None:
    """The signal that stopped the run, when ``err`` is how a stop request surfaces."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    if isinstance(err, SIGTERMException):  # Lightning's SIGTERM handler, at the next batch
        return "SIGTERM"
    if isinstance(err, KeyboardInterrupt):
        return "SIGINT (Ctrl-C)"
    # Inside fit Lightning catches KeyboardInterrupt, shuts down and calls sys.exit(1) from its
    # handler, so the SystemExit's context is the KeyboardInterrupt.
    if isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt):
        return "SIGINT (Ctrl-C)"
    return None


def _record_interruption(
    record: RunRecord, cfg: DictConfig, trainer: pl.Trainer | None, signal: str
) -> RunInterrupted:
    """Record the run as interrupted, with what it has so far; the error to raise says how
    to continue it."""
    fields: dict[str, Any] = {}
    metrics = None
    where = ""
    if trainer is not None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()} or None
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.best_model_path:
            fields["best_checkpoint"] = checkpoint.best_model_path
            score = checkpoint.best_model_score
            fields["best_score"] = float(score) if score is not None else None
        where = f" in epoch {trainer.current_epoch}"
    last = last_checkpoint(record.run_dir, cfg)
    if last is not None:
        fields["last_checkpoint"] = str(last)
    run_dir = record.data.get("run_dir") or str(record.run_dir)
    command = resume_command(run_dir) if last is not None else None
    record.finish(
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


def run(cfg: DictConfig, **record_extra: Any) -> dict[str, Any]:
    """Train and evaluate one config; returns the run record (also written to ``run.json``).

    With ``cfg.resume`` set to a run dir, continues that interrupted run instead, in its own dir,
    from its last checkpoint and with its recorded config.

    Args:
        cfg: the composed config.
        record_extra: more top-level fields for ``run.json`` (e.g. ``rerun_of``).

    Raises:
        RunInterrupted: Ctrl-C or SIGTERM stopped the run; it is recorded as ``interrupted``
            with its metrics so far, its checkpoints and the command that continues it.
    """
    cfg, record, resume = _open_record(cfg, record_extra)
    run_dir = record.run_dir
    log.info("Run dir: %s", run_dir)
    logs = log_to(run_dir / "train.log") if resume else contextlib.nullcontext()
    trainer: pl.Trainer | None = None
    with logs:
        try:
            check_config(cfg)  # the final config (a resumed run's recorded one), before building
            pl.seed_everything(cfg.seed, workers=True)
            # Validate first: the network (encoder name, weights) and the data, before any training.
            module = build_module(cfg)
            datamodule = build_datamodule(cfg)
            datamodule.setup("fit")
            fingerprint = data_fingerprint(
                datamodule.split_folder, datamodule.splits, getattr(datamodule, "mask_rule", None)
            )
            if resume:
                check_same_data(resume, fingerprint)
            record.update(data=fingerprint)
            trainer = build_trainer(cfg, resume)
            with keep_csv_logs(trainer, resume):
                trainer.fit(
                    module,
                    datamodule=datamodule,
                    ckpt_path=str(resume.checkpoint) if resume else None,
                )
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            checkpoint = trainer.checkpoint_callback
            best = checkpoint.best_model_path if checkpoint else ""
            if datamodule.has_test and cfg.get("test_after_fit", True):
                results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
                metrics.update({k: float(v) for k, v in results[0].items()})
        except BaseException as err:
            signal = _stop_signal(err)
            if signal is not None:
                raise _record_interruption(record, cfg, trainer, signal) from None
            record.finish("failed", error=f"{type(err).__name__}: {err}")
            raise
        record.finish(
            "completed",
            metrics=metrics,
            best_checkpoint=best or None,
            best_score=float(checkpoint.best_model_score)
            if checkpoint and checkpoint.best_model_score is not None
            else None,
            last_checkpoint=_last_checkpoint(trainer),
        )
        log.info(
            "Done in %.0f s: val/iou=%.4f val/dice=%.4f val/loss=%.4f. Run dir: %s",
            record.data["duration_s"],
            metrics.get("val/iou", float("nan")),
            metrics.get("val/dice", float("nan")),
            metrics.get("val/loss", float("nan")),
            run_dir,
        )
    return record.data


def task(cfg: DictConfig, **record_extra: Any) -> float | None:
    """Run ``cfg`` as a Hydra job: user errors exit with their message, not a traceback.

    In a multirun a user error fails only its job (recorded in its ``run.json``); the sweep goes
    on and :func:`~nailseg.runs.sweep.sweep_summary` reports it at the end. Ctrl-C stops the
    whole sweep. Returns val/iou so sweepers can optimise it.
    """
    job = current_job()
    try:
        record = run(cfg, **record_extra)
    except RunInterrupted as err:
        log.warning("%s", err)
        if job is not None:
            job.finish("interrupted", str(err))
        print(f"interrupted: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except NailsegError as err:
        # User errors get their message, not a traceback from deep inside a library.
        log.error("%s", err)
        if job is None:
            sys.exit(f"error: {err}")
        job.finish("failed", f"error: {err}")
        raise JobFailed(f"error: job #{job.num} failed: {err}") from err
    except Exception as err:
        if job is not None:  # Hydra shows only the first failure's traceback: log each one
            log.exception("Job #%d failed", job.num)
            job.finish("failed", f"{type(err).__name__}: {err}")
        raise
    iou = record["metrics"].get("val/iou")
    if job is not None:
        job.finish(record["status"], f"val/iou={iou:.4f}" if iou is not None else "")
    return iou


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=PRIMARY_CONFIG)
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns val/iou so sweepers can optimise it."""
    return task(cfg)


def main() -> None:
    """``python train.py [overrides]``: Hydra's main, with a run dir that cannot be written
    refused in one line first, and a summary after a multirun."""
    problem = run_dir_problem(sys.argv[1:])
    if problem:
        sys.exit(f"error: {problem}")
    with sweep_summary():
        hydra_main()


def cli(argv: list[str]) -> int:
    """``nailseg train [overrides]``: hand the arguments to Hydra as if to ``train.py``."""
    sys.argv = ["nailseg train", *argv]
    main()
    return 0
