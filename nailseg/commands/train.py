"""``python train.py [overrides]`` and ``nailseg train [overrides]``: Hydra's main around
:func:`nailseg.train.task`.

Before Hydra starts, the overrides are composed once here, so a misspelt key or option
(``trainer.max_epoch=2``, ``aug=kornia_gpuu``) stops with one line and a "did you mean" instead
of Hydra's multi-line error; a run dir that cannot be written is refused the same way. After a
multirun, each job's outcome is printed (:func:`nailseg.runs.sweep.sweep_summary`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from nailseg.commands import command, compose
from nailseg.config import CONF_DIR, PRIMARY_CONFIG, REPO_ROOT
from nailseg.config_check import multirun_ddp_problem
from nailseg.errors import ConfigError
from nailseg.runs.sweep import sweep_summary
from nailseg.runs.writable import run_dir_problem

# Hydra's own flags: with any of these (--help, --cfg job, ...) Hydra answers, not a run.
MULTIRUN_FLAGS = ("-m", "--multirun")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=PRIMARY_CONFIG)
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the optimised metric so sweepers can use it."""
    # Imported here, not at the top: Lightning and smp take seconds to import, and `--help`,
    # `--cfg job` and a refused override answer without them.
    from nailseg.train import task

    return task(cfg)


def first_job_overrides(argv: list[str]) -> list[str] | None:
    """The overrides of the first job ``argv`` would run (a sweep ``a,b`` as ``a``), or ``None``
    when ``argv`` holds Hydra flags other than ``-m`` (Hydra handles those itself).

    Examples:
        >>> first_job_overrides(["-m", "encoder=resnet18,resnet34", "seed=1"])
        ['encoder=resnet18', 'seed=1']
        >>> first_job_overrides(["--cfg", "job"]) is None
        True
    """
    words = [a for a in argv if a not in MULTIRUN_FLAGS]
    if any(w.startswith("-") for w in words):
        return None
    parsed = OverridesParser.create().parse_overrides(words)
    first = []
    for override in parsed:
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
            if not values:
                continue
            first.append(f"{override.get_key_element()}={values[0]}")
        else:
            first.append(override.input_line)
    return first


def preflight(argv: list[str]) -> None:
    """Refuse, in one line, overrides that do not compose and a run dir that cannot be written.

    Raises:
        ConfigError: naming the override and the fix.
    """
    problem = run_dir_problem(argv)
    if problem:
        raise ConfigError(problem)
    try:
        overrides = first_job_overrides(argv)
    except Exception:  # noqa: BLE001 - Hydra's parser: let hydra.main report its own syntax error
        return
    if overrides is not None:
        cfg = compose(overrides, return_hydra_config=True)
        # DDP that re-runs the command line inside a sweep: refused before Hydra starts one.
        multirun = True if any(a in MULTIRUN_FLAGS for a in argv) else None
        problem = multirun_ddp_problem(cfg, multirun=multirun)
        if problem:
            raise ConfigError(problem)


@command
def main(argv: list[str]) -> int:
    preflight(argv)
    saved = sys.argv
    # A script Python can run again: Lightning's DDP (trainer=ddp) starts the other ranks with
    # `python sys.argv[0] sys.argv[1:]`, so `nailseg train` runs as the repository's train.py.
    script = saved[0] if saved and saved[0].endswith("train.py") else str(REPO_ROOT / "train.py")
    if not Path(script).is_file():  # an installed package without the repository
        script = "nailseg train"
    sys.argv = [script, *argv]
    try:
        with sweep_summary():
            hydra_main()
    finally:
        sys.argv = saved
    return 0
