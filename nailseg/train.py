"""Training: compose -> validate -> build -> fit -> test -> record.

``python train.py [overrides]`` (or ``nailseg train``) composes the config in
:mod:`nailseg.commands.train` and lands in :func:`task`; :func:`run` does the work for an
already-composed config and is what the tests call.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from nailseg.build import build_augment, build_datamodule, build_module, build_trainer
from nailseg.config_check import check_config
from nailseg.errors import NailsegError, RunInterrupted, report
from nailseg.model.budget import TimeBudget
from nailseg.runs import lock as run_lock
from nailseg.runs import stop
from nailseg.runs.session import RunSession
from nailseg.runs.sweep import JobFailed, current_job

log = logging.getLogger(__name__)


def finish_budget(
    session: RunSession,
    trainer: pl.Trainer,
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    budget: TimeBudget,
) -> None:
    """After a budgeted fit: validate the final weights when the budget cut an epoch short, keep
    them as ``checkpoints/final.ckpt`` (the end of the schedule), and record the budget."""
    stop.enter("final validation")
    if not budget.validated_last:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    final = session.run_dir / "checkpoints" / "final.ckpt"
    trainer.save_checkpoint(final)
    session.record.update(budget=budget.summary(trainer), final_checkpoint=str(final))


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
    with contextlib.ExitStack() as stops:
        if not stop.active():  # the command line installs them first; a direct call here
            stops.enter_context(stop.catching_stops())
        return _run(cfg, **record_extra)


def _run(cfg: DictConfig, **record_extra: Any) -> dict[str, Any]:
    with RunSession.open(cfg, **record_extra) as session:
        cfg = session.cfg  # a resumed run goes on with its recorded config
        stop.enter("config check")
        check_config(cfg)
        pl.seed_everything(cfg.seed, workers=True)
        # The network (encoder name, weights) and the data are checked before any training.
        augment = build_augment(cfg)
        module = build_module(cfg, normalization=augment.normalization)
        datamodule = build_datamodule(cfg, augment)
        stop.enter("data")
        datamodule.setup("fit")
        stop.enter("fit")
        session.check_data(datamodule.fingerprint())
        session.record.update(normalization=augment.normalization)
        if module.classes is not None:  # the class names, so a record says what each index is
            session.record.update(classes=list(module.classes))
        trainer = session.attach(build_trainer(cfg, session.resume))
        with session.keep_logs():
            trainer.fit(module, datamodule=datamodule, ckpt_path=session.ckpt_path)
        budget = next((c for c in trainer.callbacks if isinstance(c, TimeBudget)), None)
        if budget is not None:
            finish_budget(session, trainer, module, datamodule, budget)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if datamodule.has_test and cfg.get("test_after_fit", True):
            best = (
                trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            )
            stop.enter("test after fit")
            results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
            metrics.update({k: float(v) for k, v in results[0].items()})
        stop.check()  # the work is done, but the user asked to stop: interrupted, not completed
        # A search's pruning callback (nailseg.runs.pruning) stops a hopeless trial early.
        pruned = any(getattr(callback, "pruned", False) for callback in trainer.callbacks)
        session.complete(
            metrics,
            status="pruned" if pruned else "completed",
            confusion=module.confusion.get("val"),
        )
    return session.record.data


def task(cfg: DictConfig, **record_extra: Any) -> float | None:
    """Run ``cfg`` as a Hydra job: user errors exit with their message, not a traceback.

    In a multirun a user error fails only its job (recorded in its ``run.json``); the sweep goes
    on and :func:`~nailseg.runs.sweep.sweep_summary` reports it at the end. Ctrl-C stops the
    whole sweep. Returns the configured ``optimized_metric`` (``val/iou`` by default), the
    value sweepers optimise.

    The run dir's lock (:mod:`nailseg.runs.lock`) is kept until the job's last word is logged;
    each job of a sweep locks its own dir.
    """
    with run_lock.holding():
        return _task(cfg, **record_extra)


def _task(cfg: DictConfig, **record_extra: Any) -> float | None:
    job = current_job()
    metric = str(cfg.get("optimized_metric") or "val/iou")
    try:
        record = run(cfg, **record_extra)
    except RunInterrupted as err:
        log.warning("%s", err)
        if job is not None:
            job.finish("interrupted", str(err))
        sys.exit(report(err))
    except NailsegError as err:
        # User errors get their message, not a traceback from deep inside a library.
        log.error("%s", err)
        if job is None:
            sys.exit(report(err))
        job.finish("failed", f"error: {err}")
        raise JobFailed(f"error: job #{job.num} failed: {err}") from err
    except Exception as err:
        if job is not None:  # Hydra shows only the first failure's traceback: log each one
            log.exception("Job #%d failed", job.num)
            job.finish("failed", f"{type(err).__name__}: {err}")
        raise
    value = record["metrics"].get(metric)
    if job is not None:
        job.finish(record["status"], f"{metric}={value:.4f}" if value is not None else "")
    return value
