"""The commands: one module per ``nailseg`` subcommand, each with the same entry function.

Every command module defines ``main(argv: list[str]) -> int`` wrapped in :func:`command`, so a
user error (:class:`~nailseg.errors.NailsegError`) prints one line and gives the exit status of
:func:`nailseg.errors.report`, whichever command raised it. :data:`COMMANDS` is the registry
``nailseg`` (:mod:`nailseg.cli`) dispatches on.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from nailseg.config import CONF_DIR, compose_config
from nailseg.config_check import compose_error
from nailseg.errors import ConfigError, NailsegError, report

# command -> (module under nailseg.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train with Hydra overrides (same as python train.py)"),
    "check-data": ("check_data", "validate a data set and print a report"),
    "preview": ("preview", "write a PNG grid of augmented samples with their masks"),
    "diff": ("diff", "show what differs between two runs"),
    "rerun": ("rerun", "run a recorded run again from its conf/ snapshot"),
    "summary": ("summary", "write a multirun's summary.csv/.md/.png (again) from its jobs"),
    "eval": ("eval", "evaluate a run's checkpoint (TTA, tuned threshold, per-image table)"),
    "predict": ("predict", "write masks and overlays for images, at their own size"),
    "export": ("export", "export a run's model to ONNX and check it against PyTorch"),
    "lr-find": ("lr_find", "find a learning rate with Lightning's tuner"),
}


def command(main: Callable[[list[str]], int | None]) -> Callable[[list[str]], int]:
    """Wrap a command's ``main``: user errors become one ``error: ...`` line and exit status 2."""

    @functools.wraps(main)
    def wrapped(argv: list[str]) -> int:
        try:
            return int(main(list(argv)) or 0)
        except NailsegError as err:
            return report(err)

    return wrapped


def compose(
    overrides: Sequence[str], config_dir: Path | str = CONF_DIR, **kwargs: Any
) -> DictConfig:
    """Compose the training config from ``overrides``, Hydra's errors as a one-line
    :class:`~nailseg.errors.ConfigError` with "did you mean" for a misspelt key or option."""
    try:
        return compose_config(overrides, config_dir, **kwargs)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(compose_error(err, overrides, Path(config_dir))) from None


def add_run_argument(parser: argparse.ArgumentParser) -> None:
    """The positional ``run_dir`` of the commands that use a trained run (eval, predict, export):
    whatever :func:`nailseg.inference.resolve_run` takes."""
    parser.add_argument(
        "run_dir", help="a run dir, a multirun job dir, or a .ckpt in RUN/checkpoints"
    )
