"""What differs between two runs, or a run and today's defaults (``nailseg diff RUN_A [RUN_B]``).

Sections: group choices, config keys (flattened, ``model.encoder_name``), environment (git,
package versions, device), data fingerprint, and metrics with their change. Only differences
are shown unless ``--all``; ``--json`` prints the same as JSON. The exit status is 0 when the
choices and configs are equal, 1 when they differ, 2 on an error, like ``diff``.

Run-specific paths do not count as differences: each run's own dir is written ``<run_dir>`` in
its values (so ``trainer.default_root_dir`` and the checkpoint dir compare equal). With one
run, the other side is ``conf/`` composed with no overrides; keys that only a Hydra run can
resolve (``${hydra:...}``) are left out of the comparison and named in a note.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from nailseg.config import compose_config
from nailseg.runs.record import (
    device_info,
    find_run_dir,
    git_state,
    package_versions,
    read_config,
    read_run,
)

RUN_DIR_TOKEN = "<run_dir>"
SECTIONS = ("choices", "config", "env", "data", "metrics")
ABSENT = "(absent)"


@dataclass
class Side:
    """One side of a diff, every section flattened to ``dotted.key -> value``."""

    label: str
    sections: dict[str, dict[str, Any] | None]
    unresolved: list[str] = field(default_factory=list)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay whole values.

    Examples:
        >>> flatten({"model": {"arch": "unet", "x": [1, 2]}})
        {'model.arch': 'unet', 'model.x': [1, 2]}
    """
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: value}


def flatten_config(
    node: DictConfig, prefix: str = "", unresolved: list[str] | None = None
) -> dict[str, Any]:
    """Flatten a config, resolving each value; values that cannot resolve go to ``unresolved``."""
    out: dict[str, Any] = {}
    for key in node.keys():
        name = f"{prefix}{key}"
        try:
            value = node[key]
            if isinstance(value, ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
        except MissingMandatoryValue:
            value = "???"
        except Exception:  # noqa: BLE001 - any resolver failure means "only a Hydra run knows"
            if unresolved is not None:
                unresolved.append(name)
            continue
        if isinstance(value, DictConfig):
            out.update(flatten_config(value, f"{name}.", unresolved) if len(value) else {name: {}})
        else:
            out[name] = value
    return out


def _replace_run_dir(value: Any, run_dir: str) -> Any:
    if isinstance(value, str) and run_dir and (value == run_dir or value.startswith(run_dir + "/")):
        return RUN_DIR_TOKEN + value[len(run_dir) :]
    if isinstance(value, list):
        return [_replace_run_dir(v, run_dir) for v in value]
    return value


def _env(record: dict[str, Any]) -> dict[str, Any]:
    return flatten({key: record.get(key) or {} for key in ("git", "versions", "device")})


def load_run_side(path: Path | str) -> Side:
    """A recorded run: its ``run.json`` and ``config.resolved.yaml``."""
    run_dir = find_run_dir(path)
    record = read_run(run_dir)
    recorded_dir = str(record.get("run_dir") or run_dir)
    config = {
        k: _replace_run_dir(v, recorded_dir)
        for k, v in flatten_config(read_config(run_dir)).items()
    }
    data = {
        k: _replace_run_dir(v, recorded_dir) for k, v in flatten(record.get("data") or {}).items()
    }
    return Side(
        label=str(run_dir),
        sections={
            "choices": record.get("choices") or {},
            "config": config,
            "env": _env(record),
            "data": data,
            "metrics": record.get("metrics") or {},
        },
    )


def load_defaults_side() -> Side:
    """Today's defaults: ``conf/`` with no overrides, and this machine's environment."""
    cfg = compose_config([], return_hydra_config=True)
    choices = {
        k: v
        for k, v in OmegaConf.to_container(cfg.hydra.runtime.choices).items()
        if not k.startswith("hydra")
    }
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = RUN_DIR_TOKEN
    unresolved: list[str] = []
    config = flatten_config(cfg, unresolved=unresolved)
    env = _env({"git": git_state(), "versions": package_versions(), "device": device_info()})
    return Side(
        label="current defaults (conf/, no overrides)",
        sections={"choices": choices, "config": config, "env": env, "data": None, "metrics": None},
        unresolved=unresolved,
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def compare(a: Side, b: Side, show_all: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """Per section, ``key -> {"a": ..., "b": ...}`` (metrics add ``"delta"``) for differing keys.

    Sections that one side lacks (data and metrics of the defaults) are empty. Keys that could
    not be resolved on either side are left out.
    """
    skip = set(a.unresolved) | set(b.unresolved)
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for section in SECTIONS:
        left, right = a.sections.get(section), b.sections.get(section)
        rows: dict[str, dict[str, Any]] = {}
        if left is not None and right is not None:
            for key in sorted(set(left) | set(right)):
                if section == "config" and key in skip:
                    continue
                va, vb = left.get(key, ABSENT), right.get(key, ABSENT)
                if va == vb and not show_all:
                    continue
                row = {"a": va, "b": vb}
                na, nb = _number(va), _number(vb)
                if section == "metrics" and na is not None and nb is not None:
                    row["delta"] = nb - na
                rows[key] = row
        result[section] = rows
    return result


def configs_differ(a: Side, b: Side) -> bool:
    """Whether the group choices or the config differ (what the exit status reports)."""
    diff = compare(a, b)
    return bool(diff["choices"] or diff["config"])


def _show(value: Any, width: int = 60) -> str:
    if isinstance(value, str) and len(value) >= 40 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a commit or a sha256: the head is enough to tell them apart
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(diff: dict[str, dict[str, dict[str, Any]]], a: Side, b: Side) -> str:
    """A readable table: one block per section, ``key  old → new`` per row."""
    lines = [f"a: {a.label}", f"b: {b.label}"]
    keys = [k for rows in diff.values() for k in rows]
    width = min(max((len(k) for k in keys), default=10), 48)
    for section in SECTIONS:
        rows = diff[section]
        if not rows:
            continue
        lines += ["", section]
        for key, row in rows.items():
            if row["a"] == row["b"]:
                change = _show(row["a"])
            else:
                change = f"{_show(row['a'])} → {_show(row['b'])}"
            if "delta" in row and row["a"] != row["b"]:
                change += f"  ({row['delta']:+.6g})"
            lines.append(f"  {key:<{width}}  {change}")
    skipped = sorted(set(a.unresolved) | set(b.unresolved))
    if skipped:
        lines += ["", f"not compared (only a Hydra run resolves them): {', '.join(skipped)}"]
    missing = [
        s for s in ("data", "metrics") if a.sections.get(s) is None or b.sections.get(s) is None
    ]
    if missing:
        lines += [] if skipped else [""]
        lines.append(f"not compared (no run on one side): {', '.join(missing)}")
    differ = bool(diff["choices"] or diff["config"])
    lines += ["", "configs differ" if differ else "configs are equal"]
    return "\n".join(lines)


def jsonable(diff: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(diff, default=str))
