"""The import layers of docs/ARCHITECTURE.md hold: no module imports a higher layer.

commands -> train/build -> runs, data, model, augment -> config, errors. Inside the middle layer
``runs`` imports none of its siblings (records describe runs, not data or models), and only the
DataModule's side of ``data`` may use ``augment`` (it applies the backend to batches).
"""

from __future__ import annotations

import ast
from pathlib import Path

import nailseg

PACKAGE = Path(nailseg.__file__).parent

# Highest first. A module belongs to the layer of the longest prefix of its name. The policy
# module is the schema of the aug/policy config group: the config layer registers it with Hydra.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("commands", ("nailseg.cli", "nailseg.commands", "nailseg.sweepers")),
    ("train/build", ("nailseg.train", "nailseg.build", "nailseg.pictures", "nailseg.inference")),
    ("parts", ("nailseg.runs", "nailseg.data", "nailseg.model", "nailseg.augment")),
    (
        "base",
        ("nailseg", "nailseg.classes", "nailseg.config", "nailseg.config_check", "nailseg.errors")
        + ("nailseg.augment.policy",),
    ),
]
# Within "parts": who may import whom (a part always imports itself).
PART_IMPORTS = {
    "nailseg.runs": (),
    "nailseg.model": (),
    "nailseg.augment": (),
    "nailseg.data": ("nailseg.augment",),
}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(module: str) -> int:
    matches = [
        (len(prefix), level)
        for level, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if _within(module, prefix) and (prefix != "nailseg" or module == "nailseg")
    ]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/ARCHITECTURE.md")
    return max(matches)[1]


def part_of(module: str) -> str | None:
    if layer_of(module) != 2:
        return None
    return next((p for p in PART_IMPORTS if _within(module, p)), None)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ``nailseg`` module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nailseg"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("nailseg"):
                found.add(node.module)
    return found


def violations(module: str, imported: set[str]) -> list[str]:
    """What is wrong with ``module`` importing ``imported``."""
    wrong = []
    for target in sorted(imported):
        if layer_of(target) < layer_of(module):
            wrong.append(
                f"{module} ({LAYERS[layer_of(module)][0]}) imports {target}"
                f" ({LAYERS[layer_of(target)][0]}), a higher layer"
            )
        source_part, target_part = part_of(module), part_of(target)
        if (
            source_part
            and target_part
            and source_part != target_part
            and target_part not in PART_IMPORTS[source_part]
        ):
            wrong.append(f"{module} imports {target}: {source_part} may not use {target_part}")
    return wrong


def test_the_check_catches_an_upward_and_a_sideways_import() -> None:
    assert violations("nailseg.data.datamodule", {"nailseg.train"})
    assert violations("nailseg.runs.record", {"nailseg.data.fingerprint"})
    assert not violations("nailseg.data.datamodule", {"nailseg.augment.base", "nailseg.errors"})


def test_no_module_imports_a_higher_layer() -> None:
    wrong = [
        problem
        for path in sorted(PACKAGE.rglob("*.py"))
        for problem in violations(module_name(path), imports_of(path))
    ]
    assert not wrong, "\n".join(wrong)


def test_every_entry_module_imports_first_in_a_fresh_interpreter() -> None:
    """No import cycle bites whichever module a program imports first (the config layer
    registers the policy schema while it is imported)."""
    import subprocess
    import sys

    for module in ("nailseg.build", "nailseg.augment", "nailseg.config", "nailseg.cli"):
        out = subprocess.run(
            [sys.executable, "-c", f"import {module}"], capture_output=True, text=True
        )
        assert out.returncode == 0, f"import {module} first:\n{out.stderr[-2000:]}"
