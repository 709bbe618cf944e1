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

from nailseg.config import CONF_DIR, PRIMARY_CONFIG, register_resolvers
from nailseg.data import SegmentationDataModule
from nailseg.errors import NailsegError, user_error
from nailseg.model import SegmentationModule
from nailseg.runs.checkpoint import AtomicCheckpointIO, RNGStateCallback
from nailseg.runs.fingerprint import data_fingerprint
from nailseg.runs.record import RunRecord
from nailseg.runs.resume import Resume, check_same_data, keep_csv_logs, log_to, prepare_resume

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


def build_trainer(cfg: DictConfig) -> pl.Trainer:
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
        return cfg, RunRecord.start(Path(cfg.paths.output_dir), cfg, info, **record_extra), None
    resume = prepare_resume(cfg, info)
    here = Path(info["output_dir"]).resolve() if info.get("output_dir") else None
    if here is not None and here != resume.run_dir:
        # This invocation's own Hydra dir holds only its .hydra/ and log; point it at the run.
        (here / "resumed_run").symlink_to(resume.run_dir, target_is_directory=True)
    record = RunRecord.reopen(
        resume.run_dir,
        checkpoint=str(resume.checkpoint),
        overrides=info.get("overrides"),
        log_dir=str(here) if here else None,
    )
    log.info("Resuming %s from %s", resume.run_dir, resume.checkpoint)
    return resume.cfg, record, resume


def _last_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest checkpoint: an unmonitored ModelCheckpoint's file, else Lightning's last.ckpt."""
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor is None and callback.best_model_path:
            return callback.best_model_path
    lasts = [c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path]
    return lasts[0] if lasts else None


def run(cfg: DictConfig, **record_extra: Any) -> dict[str, Any]:
    """Train and evaluate one config; returns the run record (also written to ``run.json``).

    With ``cfg.resume`` set to a run dir, continues that interrupted run instead, in its own dir,
    from its last checkpoint and with its recorded config.

    Args:
        cfg: the composed config.
        record_extra: more top-level fields for ``run.json`` (e.g. ``rerun_of``).
    """
    cfg, record, resume = _open_record(cfg, record_extra)
    run_dir = record.run_dir
    log.info("Run dir: %s", run_dir)
    logs = log_to(run_dir / "train.log") if resume else contextlib.nullcontext()
    with logs:
        try:
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
            trainer = build_trainer(cfg)
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

    Returns val/iou so sweepers can optimise it.
    """
    try:
        return run(cfg, **record_extra)["metrics"].get("val/iou")
    except NailsegError as err:
        # User errors get their message, not a traceback from deep inside a library.
        log.error("%s", err)
        sys.exit(f"error: {err}")


register_resolvers()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=PRIMARY_CONFIG)
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns val/iou so sweepers can optimise it."""
    return task(cfg)


def cli(argv: list[str]) -> int:
    """``nailseg train [overrides]``: hand the arguments to Hydra as if to ``train.py``."""
    sys.argv = ["nailseg train", *argv]
    main()
    return 0
