"""Training: compose -> validate -> instantiate -> fit -> test -> record.

``python train.py [overrides]`` (or ``nailseg train``) lands in :func:`main`; :func:`run` does the
work for an already-composed config and is what the tests call.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nailseg.config import CONF_DIR, PRIMARY_CONFIG, register_resolvers
from nailseg.data import SegmentationDataModule
from nailseg.errors import NailsegError
from nailseg.model import SegmentationModule
from nailseg.runs.record import RunRecord

log = logging.getLogger(__name__)


def _instantiate(node: DictConfig, what: str, **kwargs: Any) -> Any:
    log.info("Instantiating %s <%s>", what, node.get("_target_"))
    return instantiate(node, _convert_="all", **kwargs)


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
        scheduler=_instantiate(scheduler, "scheduler") if scheduler and "_target_" in scheduler else None,
    )


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    callbacks = [_instantiate(node, f"callback {name}") for name, node in (cfg.get("callbacks") or {}).items()
                 if node and "_target_" in node]
    loggers = [_instantiate(node, f"logger {name}") for name, node in (cfg.get("logger") or {}).items()
               if node and "_target_" in node]
    if not loggers:  # the learning-rate monitor needs a logger
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    return _instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)


def _hydra_info() -> dict[str, Any]:
    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    return {
        "choices": {k: v for k, v in OmegaConf.to_container(hydra_cfg.runtime.choices).items()
                    if not k.startswith("hydra")},
        "overrides": list(hydra_cfg.overrides.task),
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one config; returns the run record (also written to ``run.json``)."""
    run_dir = Path(cfg.paths.output_dir)
    record = RunRecord.start(run_dir, cfg, _hydra_info())
    log.info("Run dir: %s", run_dir)
    try:
        pl.seed_everything(cfg.seed, workers=True)
        # Validate first: the network (encoder name, weights) and the data, before any training.
        module = build_module(cfg)
        datamodule = build_datamodule(cfg)
        datamodule.setup("fit")
        record.update(data={"split_dir": str(datamodule.split_folder),
                            **{f"n_{k}": len(v) for k, v in datamodule.splits.items()}})
        trainer = build_trainer(cfg)
        trainer.fit(module, datamodule=datamodule)
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
        best_score=float(checkpoint.best_model_score) if checkpoint and checkpoint.best_model_score is not None else None,
        last_checkpoint=(checkpoint.last_model_path or None) if checkpoint else None,
    )
    log.info(
        "Done in %.0f s: val/iou=%.4f val/dice=%.4f val/loss=%.4f. Run dir: %s",
        record.data["duration_s"], metrics.get("val/iou", float("nan")),
        metrics.get("val/dice", float("nan")), metrics.get("val/loss", float("nan")), run_dir,
    )
    return record.data


register_resolvers()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=PRIMARY_CONFIG)
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns val/iou so sweepers can optimise it."""
    try:
        return run(cfg)["metrics"].get("val/iou")
    except NailsegError as err:
        # User errors get their message, not a traceback from deep inside a library.
        log.error("%s", err)
        sys.exit(f"error: {err}")


def cli(argv: list[str]) -> int:
    """``nailseg train [overrides]``: hand the arguments to Hydra as if to ``train.py``."""
    sys.argv = ["nailseg train", *argv]
    main()
    return 0
