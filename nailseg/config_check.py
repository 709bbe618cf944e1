"""Check a composed config before anything is built: value types and ranges, unknown keys.

:func:`check_config` is the "validate" step of ``train.py`` (compose, validate, build, fit, test,
record) and of ``nailseg preview``. It reads the config only; nothing is imported but the
``_target_`` objects, nothing is built. Each problem is one sentence naming the key, its value
and the fix; all problems found are raised together as one :class:`~nailseg.errors.ConfigError`.

Two kinds of checks:

- :data:`RULES`: the values a typo or a wrong unit would break far from the cause (a batch size
  of 2.5 trained as 2, ``max_epochs=abc`` as a bare ``AssertionError`` inside Lightning).
- Unknown keys: every node with a ``_target_`` may hold only arguments its target takes (and
  the keys in the target's ``SHORTCUT_KEYS``, such as ``data.root``, which only the node's
  children read: :func:`nailseg.data.datamodule_node` drops them before building). Hydra
  refuses an unknown key unless it is added with ``+key=``, as its own hint suggests; followed on
  a typo (``+data.batch_sise=4``), that hint would end in a ``TypeError`` from the constructor.
  Here it ends in "did you mean data.batch_size?".
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nailseg.config import CONF_DIR, compose_config
from nailseg.errors import ConfigError, did_you_mean

log = logging.getLogger(__name__)

# Hydra's own keys in a node with a _target_; they are not constructor arguments.
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})


def _whole(minimum: int, maximum: int | None = None) -> Callable[[Any], bool]:
    def accept(value: Any) -> bool:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value >= minimum
            and (maximum is None or value <= maximum)
        )

    return accept


def _number_at_least_zero(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


@dataclass(frozen=True)
class Rule:
    """A config value's type and range: ``key`` must pass ``accept``, else the error says
    ``expected`` and offers ``key=example`` as the fix."""

    key: str
    expected: str
    example: str
    accept: Callable[[Any], bool]


RULES: tuple[Rule, ...] = (
    Rule("seed", "a whole number from 0 to 4294967295", "42", _whole(0, 2**32 - 1)),
    Rule("data.batch_size", "a whole number of at least 1", "8", _whole(1)),
    Rule(
        "data.num_workers",
        "a whole number of at least 0 (0 loads in the training process) or auto",
        "2",
        lambda value: value == "auto" or _whole(0)(value),
    ),
    # 0 would "complete" a run that trained nothing, with NaN metrics; Lightning's -1 (endless)
    # has no end for the cosine schedule (T_max) to reach.
    Rule("trainer.max_epochs", "a whole number of at least 1", "20", _whole(1)),
    # 0 is allowed (a frozen run can make sense), with a warning: see check_config.
    Rule("optimizer.lr", "a number above 0", "0.001", _number_at_least_zero),
)


def check_config(cfg: DictConfig) -> None:
    """Refuse a config whose values or keys would fail, or silently mislead, later.

    Args:
        cfg: the composed config (its ``hydra`` node, if any, is skipped).

    Raises:
        ConfigError: one line listing every problem found, each naming the key, the value and
            the fix.

    Examples:
        >>> from nailseg.config import compose_config
        >>> check_config(compose_config(["data.batch_size=8"]))  # passes: returns None
    """
    choices = _choices(cfg)
    problems = [*_unknown_keys(cfg), *_bad_values(cfg, choices)]
    ddp = multirun_ddp_problem(cfg)
    if ddp:
        problems.append(ddp)
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} config problems: {' '.join(problems)}")
    if OmegaConf.select(cfg, "optimizer.lr") == 0:
        log.warning(
            "optimizer.lr=0: the weights will not change (only batch-norm statistics will)."
            " Give a learning rate above 0 to train, e.g. optimizer.lr=0.001."
        )


_ABSENT = object()

# Lightning strategies whose launcher starts the other processes by running this script's command
# line again (its _SubprocessScriptLauncher): "ddp" and its variants, FSDP and DeepSpeed. The
# spawn/fork flavours (ddp_spawn, ddp_fork, ddp_notebook) start processes in Python instead.
SCRIPT_LAUNCHED = re.compile(r"^(ddp|ddp_find_unused_parameters_(true|false)|fsdp.*|deepspeed.*)$")


def _several_devices(devices: Any) -> bool:
    """Whether ``trainer.devices`` may mean several devices (``-1``/``auto``: all there are)."""
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices > 1 or devices == -1
    if isinstance(devices, str):
        text = devices.strip()
        return (
            text in ("-1", "auto") or "," in text.strip(",") or (text.isdigit() and int(text) > 1)
        )
    if isinstance(devices, Sequence):
        return len(devices) > 1
    return False


def _script_launched(strategy: Any) -> bool:
    if isinstance(strategy, str):
        return bool(SCRIPT_LAUNCHED.match(strategy))
    if isinstance(strategy, dict | DictConfig):
        target = str(strategy.get("_target_", ""))
        if target.endswith("DDPStrategy"):
            return strategy.get("start_method", "popen") == "popen"
        return target.endswith(("FSDPStrategy", "DeepSpeedStrategy"))
    return False


def multirun_ddp_problem(cfg: DictConfig, multirun: bool | None = None) -> str | None:
    """The one-line refusal of a multi-process DDP run inside a Hydra multirun, else ``None``.

    Lightning's ``strategy: ddp`` starts the other ranks by running the command line again; in a
    multirun that command line is the whole sweep (``-m ...``), so each rank would run every job,
    and the ranks of different jobs would wait for each other. Jobs that a launcher starts as
    processes of their own with the ranks created outside (``hydra/launcher=submitit_slurm``: SLURM
    starts one task per device) are fine.

    Args:
        cfg: the composed config; with ``return_hydra_config`` its ``hydra`` node says the
            launcher (and ``hydra.mode``).
        multirun: whether this is a multirun (``-m``); ``None``: as Hydra says for this job, or
            as ``cfg.hydra.mode`` says.
    """
    if multirun is None:
        if HydraConfig.initialized():
            multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        else:
            multirun = OmegaConf.select(cfg, "hydra.mode", default=None) == RunMode.MULTIRUN
    if not multirun:
        return None
    trainer = OmegaConf.select(cfg, "trainer", default=None)
    if not isinstance(trainer, DictConfig):
        return None
    try:
        strategy = trainer.get("strategy")
        devices, nodes = trainer.get("devices"), trainer.get("num_nodes", 1)
    except OmegaConfBaseException:
        return None  # unresolvable values: _bad_values and the Trainer report them
    several = _several_devices(devices) or (isinstance(nodes, int) and nodes > 1)
    if not (_script_launched(strategy) and several):
        return None
    launcher = (
        str(HydraConfig.get().launcher.get("_target_", ""))
        if HydraConfig.initialized()
        else str(OmegaConf.select(cfg, "hydra.launcher._target_", default="") or "")
    )
    if "submitit" in launcher.lower() and "slurm" in launcher.lower():
        return None
    shown = strategy if isinstance(strategy, str) else strategy.get("_target_")
    return (
        f"trainer.strategy={shown} with trainer.devices={_show(devices)} cannot run inside a"
        " multirun (-m): Lightning starts the other DDP processes by running the command line"
        " again, which here is the whole sweep, so every process would run every job. Run the"
        " jobs one by one without -m (e.g. a shell loop over the values), use"
        " hydra/launcher=submitit_slurm (SLURM starts each job's processes itself), or train"
        " each job on one device (trainer.devices=1)."
    )


def _bad_values(cfg: DictConfig, choices: dict[str, Any]) -> Iterator[str]:
    for rule in RULES:
        fix = f"Fix it, e.g. {rule.key}={rule.example}{_where(rule.key, choices)}."
        try:
            value = OmegaConf.select(cfg, rule.key, default=_ABSENT)
        except OmegaConfBaseException as err:
            yield f"{rule.key} cannot be resolved ({_first_line(err)}). {fix}"
            continue
        if value is not _ABSENT and not rule.accept(value):
            # Absent (e.g. an optimizer without lr): the constructor decides.
            yield f"{rule.key}={_show(value)} is invalid: expected {rule.expected}. {fix}"


def _unknown_keys(cfg: DictConfig) -> Iterator[str]:
    # Keys and _target_ strings only: nothing is resolved here (a bad value is _bad_values' job).
    tree = OmegaConf.to_container(cfg, resolve=False)
    for path, node in _target_nodes({k: v for k, v in tree.items() if k != "hydra"}, ""):
        target = node["_target_"]
        if "${" in target:
            continue  # an interpolated target: known only once resolved
        try:
            obj = get_object(target)
        except Exception as err:  # any import failure: the user's _target_ to fix
            yield (
                f"{path}._target_={target} cannot be imported ({_first_line(err)}). Check the"
                " module and name."
            )
            continue
        try:
            parameters = inspect.signature(obj).parameters.values()
        except (TypeError, ValueError):
            continue  # no signature to check against (a builtin)
        if any(p.kind == p.VAR_KEYWORD for p in parameters):
            continue  # takes anything; the target checks its own keywords
        named = sorted(
            {p.name for p in parameters if p.kind != p.VAR_POSITIONAL}
            # Keys the node holds for its children to interpolate, e.g. the data node's root.
            | set(getattr(obj, "SHORTCUT_KEYS", ()))
        )
        for key, value in node.items():
            if key in HYDRA_KEYS or key in named:
                continue
            close = difflib.get_close_matches(key, named, n=1)
            fix = f" ({path}.{close[0]}={_show(value)})" if close and _scalar(value) else ""
            yield (
                f"Unknown key {path}.{key}: {target} takes no argument {key!r}."
                f"{did_you_mean(key, named, f'{path}.')} Fix the name{fix} or remove it."
                f" Options: {', '.join(named)}."
            )


def _target_nodes(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every dict with a ``_target_`` in ``node``, with its dotted path, depth first."""
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str) and path:
            yield path, node
        for key, child in node.items():
            yield from _target_nodes(child, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _target_nodes(child, f"{path}[{index}]")


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value if value and not any(c.isspace() for c in value) else repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _choices(cfg: DictConfig) -> dict[str, Any]:
    """The group choices (``data: synthetic``): of this Hydra run, or of a config composed with
    ``return_hydra_config``; empty when unknown."""
    if HydraConfig.initialized():
        return dict(HydraConfig.get().runtime.choices)
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    return dict(choices) if choices is not None else {}


def _where(key: str, choices: dict[str, Any]) -> str:
    """Where to fix ``key``: `` on the command line or in conf/data/synthetic.yaml``."""
    group = key.split(".")[0] if "." in key else None
    if group is None:
        return " on the command line or in conf/train.yaml"
    if choices.get(group):
        return f" on the command line or in conf/{group}/{choices[group]}.yaml"
    return " on the command line"


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0].strip() if lines else type(err).__name__


def compose_error(err: Exception, overrides: Sequence[str], config_dir: Path = CONF_DIR) -> str:
    """Hydra's composition error as one line, for commands that compose with
    :func:`~nailseg.config.compose_config`.

    An override of a key the config does not have (``data.batch_sise=4``) gets "did you mean"
    instead of Hydra's hint to add it with ``+``, which on a typo leads to a ``TypeError``.
    """
    full_key = re.search(r"full_key: (\S+)", str(err.__cause__ or ""))
    if "is not in struct" in str(err.__cause__ or "") and full_key:
        full = full_key.group(1)
        parent, _, key = full.rpartition(".")
        given = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] == full]
        value = given[0].split("=", 1)[1] if given and "=" in given[0] else "VALUE"
        try:
            cfg = compose_config([o for o in overrides if o not in given], config_dir)
            node = OmegaConf.select(cfg, parent) if parent else cfg
        except Exception:  # the other overrides fail too: Hydra's own message then
            node = None
        if isinstance(node, DictConfig):
            keys = sorted(str(k) for k in node.keys() if k not in HYDRA_KEYS)
            prefix = f"{parent}." if parent else ""
            close = difflib.get_close_matches(key, keys, n=1)
            fix = (
                f"Fix the name ({prefix}{close[0]}={value})"
                if close
                else f"Add it with +{full}={value} only if {parent or 'the config'} takes it"
            )
            return (
                f"Unknown key {full}.{did_you_mean(key, keys, prefix)} {fix}."
                f" Keys of {parent or 'the config'}: {', '.join(keys)}."
            )
    missing = re.search(r"Could not find '(.+)/([^/']+)'", str(err))
    options = re.search(
        r"Available options in '[^']+':\s*(.*?)(?:Config search path:|$)", str(err), re.S
    )
    if missing and options:
        group, name = missing.groups()
        # data/default.yaml is the layouts' shared base, not a layout.
        names = [o for o in options.group(1).split() if (group, o) != ("data", "default")]
        return (
            f"Unknown option {group}={name}.{did_you_mean(name, names, f'{group}=')}"
            f" Options of {group}: {', '.join(names)}."
        )
    text = str(err).split("Config search path:")[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
