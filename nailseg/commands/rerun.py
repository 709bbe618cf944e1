"""``nailseg rerun RUN_DIR [overrides...]``: run a recorded run again, as a new Hydra run (how
the config is rebuilt: :mod:`nailseg.runs.rerun`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nailseg.commands import command
from nailseg.config import PRIMARY_CONFIG
from nailseg.runs.rerun import plan_rerun
from nailseg.train import task


def launch(config_dir: Path, overrides: list[str], **record_extra: Any) -> Path:
    """Start a Hydra run of ``config_dir`` with ``overrides``; returns the new run dir.

    ``hydra.main`` is applied here to a task bound to ``record_extra``, with ``config_path``
    the snapshot, so the run gets its run dir, ``.hydra/`` and log like ``train.py``.
    """
    out: dict[str, Path] = {}

    def rerun_task(cfg: DictConfig) -> float | None:
        out["run_dir"] = Path(HydraConfig.get().runtime.output_dir)
        return task(cfg, **record_extra)

    entry = hydra.main(
        version_base="1.3", config_path=str(config_dir.resolve()), config_name=PRIMARY_CONFIG
    )(rerun_task)
    saved = sys.argv
    # hydra.job.name: the log is train.log, as for train.py (Hydra overrides are not recorded).
    sys.argv = ["nailseg rerun", *overrides, "hydra.job.name=train"]
    try:
        entry()
    finally:
        sys.argv = saved
    return out["run_dir"]


@command
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nailseg rerun",
        description="Run a recorded run again from its conf/ snapshot and recorded overrides.",
    )
    parser.add_argument(
        "run_dir", help="the run to re-run (single run, or a job dir of a multirun)"
    )
    parser.add_argument("overrides", nargs="*", help="extra overrides on top, e.g. seed=1")
    args = parser.parse_args(argv)
    run_dir, snapshot, overrides = plan_rerun(args.run_dir, args.overrides)
    print(f"Re-running {run_dir} with: {' '.join(overrides) or '(no overrides)'}")
    new_dir = launch(
        snapshot, overrides, rerun_of=str(run_dir), rerun_extra_overrides=args.overrides
    )
    print(f"New run: {new_dir}\nCompare: nailseg diff {run_dir} {new_dir}")
    return 0
