"""Config to objects: the one place that instantiates the config tree's ``_target_`` nodes.

``train``, the commands (``preview``, ``check-data``, ``eval``, ...) and the benchmarks build
through these functions, so an object is built the same way wherever it is used.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from nailseg.augment.base import AugmentBackend
from nailseg.data import SegmentationDataModule, datamodule_node
from nailseg.errors import user_error
from nailseg.model import SegmentationModule
from nailseg.model.budget import TimeBudget, budget_seconds
from nailseg.model.network import encoder_normalization
from nailseg.runs.checkpoint import AtomicCheckpointIO, RNGStateCallback
from nailseg.runs.resume import RelocatedCheckpoints, Resume
from nailseg.runs.session import StopCheck

log = logging.getLogger(__name__)


def instantiate_node(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with our user-facing errors surfaced as they are (Hydra wraps
    a constructor's exception in its own)."""
    log.info("Instantiating %s <%s>", what, node.get("_target_"))
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = user_error(err)
        if cause is not None:
            raise cause from None
        raise


def build_augment(cfg: DictConfig) -> AugmentBackend:
    """The augmentation backend; a policy without ``mean``/``std`` normalises as the encoder's
    pretrained weights expect (smp's preprocessing parameters for ``encoder.name``)."""
    return instantiate_node(
        cfg.aug, "augmentation", normalization=encoder_normalization(cfg.encoder.name)
    )


def build_datamodule(
    cfg: DictConfig, augment: AugmentBackend | None = None
) -> SegmentationDataModule:
    """The DataModule, with ``augment`` (built from the config when not given)."""
    augment = augment if augment is not None else build_augment(cfg)
    return instantiate_node(datamodule_node(cfg.data), "datamodule", augment=augment)


def build_module(
    cfg: DictConfig, normalization: dict[str, Any] | None = None
) -> SegmentationModule:
    """The LightningModule. ``normalization`` (the augmentation backend's effective mean/std) goes
    into its hyper-parameters, so every checkpoint carries how its inputs were normalised."""
    scheduler = cfg.get("scheduler")
    if budget_seconds(cfg) is not None:
        # A budgeted run anneals over wall time (TimeBudget), not with an epoch schedule.
        scheduler = None
    return SegmentationModule(
        net=instantiate_node(cfg.model, "network"),
        loss=instantiate_node(cfg.loss, "loss"),
        optimizer=instantiate_node(cfg.optimizer, "optimizer"),
        scheduler=instantiate_node(scheduler, "scheduler")
        if scheduler and "_target_" in scheduler
        else None,
        normalization=normalization,
        channels_last=cfg.get("channels_last", "auto"),
    )


def _built(group: DictConfig | None, what: str) -> list[Any]:
    return [
        instantiate_node(node, f"{what} {name}")
        for name, node in (group or {}).items()
        if node and "_target_" in node
    ]


def build_trainer(cfg: DictConfig, resume: Resume | None = None) -> pl.Trainer:
    callbacks = _built(cfg.get("callbacks"), "callback")
    loggers = _built(cfg.get("logger"), "logger")
    if not loggers:  # the learning-rate monitor needs a logger
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    # Always on, whatever the callbacks group: exact resume needs the RNG states in checkpoints,
    # and a kill while writing one must leave the previous one readable.
    callbacks.append(RNGStateCallback())
    # A stop signal stops the run at the next batch even when its exception got lost.
    callbacks.append(StopCheck())
    if resume is not None and resume.moved_from:
        callbacks.append(RelocatedCheckpoints(resume))
    # A trainer config with its own plugins keeps them (and Lightning's checkpoint writer).
    extra: dict[str, Any] = (
        {} if cfg.trainer.get("plugins") else {"plugins": [AtomicCheckpointIO()]}
    )
    budget = budget_seconds(cfg)
    if budget is not None:
        # Time is the limit, not epochs; the rate anneals to the scheduler's floor, if it has one.
        eta_min = (cfg.get("scheduler") or {}).get("eta_min", 1e-6)
        callbacks.append(TimeBudget(budget, eta_min=float(eta_min)))
        extra["max_epochs"] = -1
        log.info("Budgeted run: %.0f s of fitting, learning rate annealed over it", budget)
    return instantiate_node(
        cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, **extra
    )
