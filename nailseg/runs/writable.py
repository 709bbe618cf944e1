"""Refuse a run or output dir that cannot be written, with one line that says why.

Hydra creates the run dir before any of our code runs and answers a failure with a traceback,
so :func:`run_dir_problem` checks Hydra's dir before Hydra starts; :func:`ensure_writable_dir`
checks the dirs the run itself writes (``paths.output_dir``, a resumed run's dir).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

from nailseg.errors import ConfigError

# Hydra flags after which no run dir is created (help, --cfg, --info, ...) or that compose
# another config (-cp, -cn, -cd): the check is left to Hydra then.
_RUN_FLAGS = ("-m", "--multirun", "-r", "--run")


def unwritable_reason(path: Path | str) -> str | None:
    """Why a folder cannot be created or written at ``path``, or None when nothing says so.

    Looks at the nearest part of ``path`` that exists; creates nothing.

    Examples:
        >>> unwritable_reason("/etc/hostname/runs")
        '/etc/hostname is a file, not a folder'
    """
    probe = Path(os.path.abspath(Path(path).expanduser()))
    while not os.path.exists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user"
    return None


def ensure_writable_dir(path: Path, what: str, fix: str) -> None:
    """Create ``path`` if needed and check a file can be written in it.

    Raises:
        ConfigError: "``what`` cannot be written: <why>. ``fix``"
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        reason = unwritable_reason(path) or err.strerror or str(err)
        raise ConfigError(f"{what} cannot be written: {reason}. {fix}") from None


def run_dir_problem(argv: Sequence[str]) -> str | None:
    """The one-line error for a Hydra run (or sweep) dir that cannot be created, else None.

    ``argv`` are ``train.py``'s arguments. The config is composed as Hydra will compose it (sweep
    values left out), and the nearest existing part of ``hydra.run.dir`` (``hydra.sweep.dir``
    with ``-m``) must be a writable folder. Anything unusual (flags, overrides that do not
    compose) is left to Hydra, which reports it itself.
    """
    from nailseg.config import compose_config

    if any(a.startswith("-") and a not in _RUN_FLAGS for a in argv):
        return None
    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        hydra = compose_config(fixed, return_hydra_config=True).hydra
        folder = str(hydra.sweep.dir if multirun else hydra.run.dir)
    except Exception:  # noqa: BLE001 - Hydra reports bad overrides better than we would
        return None
    reason = unwritable_reason(folder)
    if reason is None:
        return None
    kind, key = ("sweep", "hydra.sweep.dir") if multirun else ("run", "hydra.run.dir")
    return (
        f"the {kind} dir {folder} cannot be written: {reason}. Choose a writable folder with"
        f" paths.runs_dir=DIR (or {key}=DIR for this {kind} alone)."
    )
