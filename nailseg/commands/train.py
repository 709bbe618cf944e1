"""``python train.py [overrides]`` and ``nailseg train [overrides]``: Hydra's main around
:func:`nailseg.train.task`.

Before Hydra starts, the overrides are composed once here, so a misspelt key or option
(``trainer.max_epoch=2``, ``aug=kornia_gpuu``) stops with one line and a "did you mean" instead
of Hydra's multi-line error; a run dir that cannot be written is refused the same way, and so is
one that another process is writing (:mod:`nailseg.runs.lock`): the dirs this command will
write that can be known before Hydra starts are locked here, before Hydra writes its ``.hydra/``
into them. After a multirun, each job's outcome is printed
(:func:`nailseg.runs.sweep.sweep_summary`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import hydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from nailseg.commands import command, compose
from nailseg.config import CONF_DIR, PRIMARY_CONFIG, REPO_ROOT
from nailseg.config_check import multirun_ddp_problem
from nailseg.errors import ConfigError
from nailseg.runs import lock as run_lock
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


def preflight(argv: list[str]) -> DictConfig | None:
    """Refuse, in one line, overrides that do not compose and a run dir that cannot be written.

    Returns the config of the first job (with Hydra's), or ``None`` when Hydra handles ``argv``
    itself.

    Raises:
        ConfigError: naming the override and the fix.
    """
    problem = run_dir_problem(argv)
    if problem:
        raise ConfigError(problem)
    try:
        overrides = first_job_overrides(argv)
    except Exception:  # noqa: BLE001 - Hydra's parser: let hydra.main report its own syntax error
        return None
    if overrides is None:
        return None
    cfg = compose(overrides, return_hydra_config=True)
    # DDP that re-runs the command line inside a sweep: refused before Hydra starts one.
    multirun = True if any(a in MULTIRUN_FLAGS for a in argv) else None
    problem = multirun_ddp_problem(cfg, multirun=multirun)
    if problem:
        raise ConfigError(problem)
    return cfg


def _fixed_dir(cfg: DictConfig, key: str) -> Path | None:
    """The folder ``key`` names, when it is the same whenever it is composed: not a dir of its
    own per start (``${now:...}``), nor Hydra's runtime dir (``${hydra:...}``)."""
    node, _, leaf = key.rpartition(".")
    raw = OmegaConf.to_container(OmegaConf.select(cfg, node), resolve=False).get(leaf)
    if not isinstance(raw, str) or "${now:" in raw or "${hydra:" in raw:
        return None
    try:
        return Path(str(OmegaConf.select(cfg, key))).expanduser()
    except Exception:  # noqa: BLE001 - an interpolation that does not resolve: Hydra will say
        return None


@contextlib.contextmanager
def run_dirs_locked(cfg: DictConfig | None, multirun: bool) -> Iterator[None]:
    """Hold, around Hydra's main, the locks of the dirs this command will write that are known
    now: a resumed run's dir, a fixed ``hydra.run.dir`` or ``paths.output_dir`` (one that may
    already hold a run), a fixed ``hydra.sweep.dir``. A dir named by ``${now:...}`` is new (the
    run locks it itself, in :class:`~nailseg.runs.session.RunSession`).

    Raises:
        RunDirBusy: one of them is in use; nothing has been written.
    """
    if cfg is None or not run_lock.lead_process():  # a DDP child runs in rank 0's dir and lock
        yield
        return
    with contextlib.ExitStack() as stack:
        if multirun:
            sweep = _fixed_dir(cfg, "hydra.sweep.dir")
            if sweep is not None:
                # A job still running in it (a job resumed alone) would be written over, or
                # marked failed by a resumed search.
                for job_lock in sorted(sweep.glob(f"*/{run_lock.LOCK_FILE}")):
                    run_lock.check_free(job_lock.parent)
                with contextlib.suppress(OSError):  # Hydra's sweeper makes it, or says why
                    sweep.mkdir(parents=True, exist_ok=True)
                if sweep.is_dir():
                    stack.enter_context(run_lock.locked(sweep, "Sweep dir"))
        else:
            # The run to continue first: a refused resume leaves even its own log dir unmade.
            resumed = run_lock.resume_target(cfg.get("resume"))
            if resumed is not None:
                stack.enter_context(run_lock.locked(resumed))
            output_dir = _fixed_dir(cfg, "paths.output_dir")
            if output_dir is not None and output_dir.is_dir():
                stack.enter_context(run_lock.locked(output_dir))
            hydra_dir = _fixed_dir(cfg, "hydra.run.dir")
            if hydra_dir is not None:
                with contextlib.suppress(OSError):  # Hydra makes it a moment later, or says why
                    hydra_dir.mkdir(parents=True, exist_ok=True)
                if hydra_dir.is_dir():
                    stack.enter_context(run_lock.locked(hydra_dir))
        try:
            yield
        finally:
            run_lock.flush_notes()  # takeovers no run logged (a sweep dir's)


# The default loss (conf/train.yaml) is binary-only; multi-class data gets its counterpart.
DEFAULT_LOSS, MULTICLASS_LOSS = "bce_dice", "ce_dice"


def default_loss_override(cfg: DictConfig | None, argv: list[str]) -> str | None:
    """``loss=ce_dice`` when the data is multi-class (``data.classes``, e.g. from a VOC folder's
    ``labels.txt``) and the loss is the binary default that no override chose; else ``None``.

    Added to the command line (so recorded with the run's overrides, and ``rerun`` and ``diff``
    see it) rather than chosen silently; a loss the user names is kept, and refused in one line
    if it is binary-only. A resumed run keeps its recorded loss.
    """
    if cfg is None or cfg.get("resume") or "hydra" not in cfg:
        return None
    named = any(a.split("=", 1)[0].lstrip("+~") == "loss" for a in argv if "=" in a)
    choice = cfg.hydra.runtime.choices.get("loss")
    if named or choice != DEFAULT_LOSS or cfg.data.get("classes") is None:
        return None
    return f"loss={MULTICLASS_LOSS}"


@command
def main(argv: list[str]) -> int:
    cfg = preflight(argv)
    added = default_loss_override(cfg, argv)
    if added is not None:
        classes = list(cfg.data.classes)
        print(
            f"data.classes names {len(classes)} classes ({', '.join(classes)}): {added}, the"
            f" multi-class counterpart of the default loss {DEFAULT_LOSS}, is added to the"
            " overrides (give loss=... to choose another).",
            file=sys.stderr,
        )
        argv = [*argv, added]
    saved = sys.argv
    # A script Python can run again: Lightning's DDP (trainer=ddp) starts the other ranks with
    # `python sys.argv[0] sys.argv[1:]`, so `nailseg train` runs as the repository's train.py.
    script = saved[0] if saved and saved[0].endswith("train.py") else str(REPO_ROOT / "train.py")
    if not Path(script).is_file():  # an installed package without the repository
        script = "nailseg train"
    sys.argv = [script, *argv]
    try:
        with run_dirs_locked(cfg, any(a in MULTIRUN_FLAGS for a in argv)), sweep_summary():
            hydra_main()
    finally:
        sys.argv = saved
    return 0
