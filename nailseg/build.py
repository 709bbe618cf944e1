"""Config to objects: the one place that instantiates the config tree's ``_target_`` nodes.

``train``, the commands (``preview``, ``check-data``, ``eval``, ...) and the benchmarks build
through these functions, so an object is built the same way wherever it is used.
"""

from __future__ import annotations

import linecache
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

import nailseg
from nailseg.augment.base import AugmentBackend
from nailseg.data import SegmentationDataModule, datamodule_node
from nailseg.errors import ConfigError, user_error
from nailseg.model import SegmentationModule
from nailseg.model.budget import TimeBudget, budget_seconds
from nailseg.model.network import encoder_normalization
from nailseg.runs.checkpoint import AtomicCheckpointIO, RNGStateCallback
from nailseg.runs.resume import RelocatedCheckpoints, Resume
from nailseg.runs.session import StopCheck

log = logging.getLogger(__name__)


# What a library raises when it refuses an argument's value: Lightning its
# MisconfigurationException, smp's losses a bare ``assert mode in {...}``.
REFUSALS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    AssertionError,
    MisconfigurationException,
)
_PACKAGE_DIR = Path(nailseg.__file__).resolve().parent
_NOT_ARGUMENTS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def instantiate_node(
    node: DictConfig, what: str, *, config_key: str | None = None, **kwargs: Any
) -> Any:
    """``hydra.utils.instantiate``, with what the user can fix said in one line.

    A :class:`~nailseg.errors.NailsegError` a constructor raises comes out as it is (Hydra wraps
    it in its own exception). A library's refusal of a value (:data:`REFUSALS`: ``ValueError``,
    ``TypeError``, an ``assert``, Lightning's ``MisconfigurationException``) while the node is
    built is a :class:`~nailseg.errors.ConfigError` naming the config key (:func:`refusal`);
    one raised in nailseg's own code is a bug and keeps its traceback.

    Args:
        config_key: the node's key in the training config, for a node detached from it (the
            ``data`` node :func:`~nailseg.data.datamodule_node` builds); by default its own.
    """
    log.info("Instantiating %s <%s>", what, node.get("_target_"))
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = user_error(err)
        if cause is not None:
            raise cause from None
        key, failed = _failed_node(node, err, config_key or what)
        refused = refusal(failed, err.__cause__, key)
        if refused is not None:
            raise refused from err
        raise


def _own_key(node: DictConfig) -> str:
    return node._get_full_key(None) if OmegaConf.is_config(node) else ""


def _failed_node(node: DictConfig, err: InstantiationException, fallback: str) -> tuple[str, Any]:
    """The full config key of the node Hydra failed on (``node`` or one nested in it), and that
    node. ``fallback`` is ``node``'s key when it is detached from the whole config."""
    found = re.search(r"\nfull_key: (\S+)\s*$", str(err))
    inner = found.group(1) if found else ""
    own = _own_key(node)
    if own:  # attached to the whole config: Hydra's key is the full one
        key = inner or own
        relative = key[len(own) + 1 :] if key.startswith(f"{own}.") else ""
    else:
        key, relative = (f"{fallback}.{inner}" if inner else fallback), inner
    failed = OmegaConf.select(node, relative, default=None) if relative else node
    return key, failed if OmegaConf.is_dict(failed) else node


def _raised_at(err: BaseException) -> tuple[str, int] | None:
    """``(file, line)`` of the innermost frame of ``err``'s traceback."""
    tb = err.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename, tb.tb_lineno


def _from_nailseg(err: BaseException) -> bool:
    """Whether ``err`` was raised in nailseg's own code (its innermost frame is in the package)."""
    where = _raised_at(err)
    return where is not None and Path(where[0]).resolve().is_relative_to(_PACKAGE_DIR)


def _first_line(err: BaseException) -> str:
    """The first line of ``err``'s message; for a bare ``assert``, the asserting line."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    where = _raised_at(err)
    if not lines and isinstance(err, AssertionError) and where is not None:
        source = linecache.getline(*where).strip()
        lines = [f"`{source}` failed"] if source.startswith("assert ") else []
    text = lines[0] if lines else type(err).__name__
    return text if text.endswith((".", "!", "?")) else f"{text}."


def refusal(node: Any, cause: BaseException | None, key: str) -> ConfigError | None:
    """The user error for a library's refusal (:data:`REFUSALS`) to build ``node``, the config
    node at ``key``, or None when ``cause`` is not one (or was raised in nailseg's own code: a
    bug).

    One line: the argument the library's message names, with its value (else the node), the
    target, and the library's own first line, which usually lists the values allowed:
    ``trainer.precision=8 was refused by pytorch_lightning.Trainer: Precision 8 is invalid.
    Allowed precision values: (...). Change trainer.precision.``
    """
    if not isinstance(cause, REFUSALS) or _from_nailseg(cause):
        return None
    line = _first_line(cause)
    failed = node if OmegaConf.is_dict(node) else OmegaConf.create({})
    target = failed.get("_target_", "?")
    values = _arguments(failed)
    # The arguments the library's line names: by name, else the one whose (textual) value it
    # quotes ("No supported gpu backend found!": trainer.accelerator=gpu).
    named = [arg for arg in values if _says(line, arg)]
    if not named:
        quoted = [a for a, v in values.items() if isinstance(v, str) and _says(line, v)]
        named = quoted if len(quoted) == 1 else []
    if named:
        shown = ", ".join(f"{key}.{arg}={_shown(values[arg])}" for arg in named)
        keys = " or ".join(f"{key}.{arg}" for arg in named)
        verb = "was" if len(named) == 1 else "were"
        return ConfigError(f"{shown} {verb} refused by {target}: {line} Change {keys}.")
    return ConfigError(
        f"The {key} config node ({target}) cannot be built: {line} Check the values under {key}."
    )


def _arguments(node: DictConfig) -> dict[str, Any]:
    """A node's arguments (its keys but ``_target_`` and the like), resolved where they can be."""
    try:
        resolved = OmegaConf.to_container(node, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation that does not resolve: show it as is
        resolved = OmegaConf.to_container(node, resolve=False)
    return {str(k): v for k, v in resolved.items() if str(k) not in _NOT_ARGUMENTS}


def _says(line: str, word: str) -> bool:
    """Whether ``line`` holds ``word`` as a word of its own (any case): ``mode`` in "`mode` can
    be min, max", not in "model"."""
    return bool(word.strip()) and bool(
        re.search(rf"(?<![\w.-]){re.escape(word)}(?![\w-])", line, re.IGNORECASE)
    )


def _shown(value: Any) -> str:
    """A config value as an override writes it: ``8``, ``maxx``, ``[1, 2]``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _tried(factory: Callable[..., Any], node: DictConfig, what: str, **kwargs: Any) -> Any:
    """Call a partial (``optimizer``, ``scheduler``) once as the LightningModule will, so a value
    its target refuses stops the run now, in one line, not at the start of fitting."""
    try:
        return factory(**kwargs)
    except REFUSALS as err:
        refused = refusal(node, err, _own_key(node) or what)
        if refused is not None:
            raise refused from err
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
    return instantiate_node(
        datamodule_node(cfg.data), "datamodule", config_key="data", augment=augment
    )


def build_module(
    cfg: DictConfig, normalization: dict[str, Any] | None = None
) -> SegmentationModule:
    """The LightningModule. ``normalization`` (the augmentation backend's effective mean/std) goes
    into its hyper-parameters, so every checkpoint carries how its inputs were normalised."""
    scheduler_node = cfg.get("scheduler")
    if budget_seconds(cfg) is not None:
        # A budgeted run anneals over wall time (TimeBudget), not with an epoch schedule.
        scheduler_node = None
    optimizer = instantiate_node(cfg.optimizer, "optimizer")
    scheduler = (
        instantiate_node(scheduler_node, "scheduler")
        if scheduler_node and "_target_" in scheduler_node
        else None
    )
    # Both are partials, built only when fitting starts: built once here on a stand-in
    # parameter, so that a value torch refuses (optimizer.weight_decay=-1) stops the run now.
    trial = _tried(
        optimizer, cfg.optimizer, "optimizer", params=[torch.nn.Parameter(torch.zeros(1))]
    )
    if scheduler is not None:
        _tried(scheduler, scheduler_node, "scheduler", optimizer=trial)
    return SegmentationModule(
        net=instantiate_node(cfg.model, "network"),
        loss=instantiate_node(cfg.loss, "loss"),
        optimizer=optimizer,
        scheduler=scheduler,
        normalization=normalization,
        channels_last=cfg.get("channels_last", "auto"),
        classes=cfg.data.get("classes"),
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
