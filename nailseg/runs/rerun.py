"""Planning a re-run of a recorded run (``nailseg rerun``, :mod:`nailseg.commands.rerun`).

The config is composed from the run's own ``conf/`` snapshot with its recorded command-line
overrides, then the extra overrides on top, so it is the run's config even if ``conf/`` has
changed since. (Composing from ``RUN/.hydra/config.yaml`` instead would lose the group
choices: ``encoder=resnet34`` would be a plain value there, no longer a choice one can swap.)
The new run dir records ``rerun_of``.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

from nailseg.config import PRIMARY_CONFIG
from nailseg.errors import ConfigError
from nailseg.runs.record import CONF_SNAPSHOT, find_run_dir, read_run
from nailseg.runs.resume import RESUME_KEY

# Overrides a rerun must not inherit: they would point the new run at the old one's dir.
NOT_INHERITED = ("paths.output_dir", RESUME_KEY)


def merge_overrides(recorded: list[str], extra: list[str]) -> list[str]:
    """Recorded overrides with ``extra`` on top: an extra override replaces one of the same key.

    Examples:
        >>> merge_overrides(["encoder=resnet18", "seed=1"], ["encoder=resnet34"])
        ['seed=1', 'encoder=resnet34']
    """
    parser = OverridesParser.create()

    def key(override: str) -> str:
        return parser.parse_override(override).key_or_group

    replaced = {key(o) for o in extra}
    kept = [o for o in recorded if key(o) not in replaced and key(o) not in NOT_INHERITED]
    return kept + list(extra)


def plan_rerun(run: Path | str, extra: list[str]) -> tuple[Path, Path, list[str]]:
    """The run dir, its ``conf/`` snapshot and the overrides to compose it with.

    Raises:
        ConfigError: not a run dir, no snapshot, or no recorded overrides (not a Hydra run).
    """
    run_dir = find_run_dir(run)
    record = read_run(run_dir)
    snapshot = run_dir / CONF_SNAPSHOT
    if not (snapshot / f"{PRIMARY_CONFIG}.yaml").is_file():
        raise ConfigError(
            f"{snapshot}/{PRIMARY_CONFIG}.yaml is missing, so the run's config tree is unknown."
            " Re-run it by hand from its .hydra/overrides.yaml instead."
        )
    if record.get("overrides") is None:
        raise ConfigError(
            f"{run_dir} was not started through Hydra (run(cfg) from Python), so its command-line"
            " overrides were not recorded and it cannot be re-run. Compare its"
            " config.resolved.yaml with `nailseg diff` instead."
        )
    try:
        overrides = merge_overrides(list(record["overrides"]), list(extra))
    except Exception as err:  # noqa: BLE001 - Hydra's parser raises several kinds
        raise ConfigError(f"Cannot parse the overrides {extra}: {err}") from err
    return run_dir, snapshot, overrides
