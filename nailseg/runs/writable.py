"""Refuse a run or output dir that cannot be written, with one line that says why.

Hydra creates the run dir before any of our code runs and answers a failure with a traceback,
so :func:`run_dir_problem` checks Hydra's dir before Hydra starts; :func:`ensure_writable_dir`
checks the dirs the run itself writes (``paths.output_dir``, a resumed run's dir, ``--output`` of
``predict``, ``export``). :func:`ensure_writable_dir` and :func:`unwritable_reason` live in
:mod:`nailseg.errors` (the base layer), so that ``data.cache_dir`` is refused in the same words.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser

# Defined in the base layer, so that every layer can refuse a folder in the same words; imported
# from here by the callers that check run and output dirs.
from nailseg.errors import ensure_writable_dir, unwritable_reason

__all__ = ["ensure_writable_dir", "run_dir_problem", "unwritable_reason"]

# Hydra flags after which no run dir is created (help, --cfg, --info, ...) or that compose
# another config (-cp, -cn, -cd): the check is left to Hydra then.
_RUN_FLAGS = ("-m", "--multirun", "-r", "--run")


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
