"""``trainer=ddp`` / ``trainer=ddp_cpu``: one run dir, rank 0 records, no DDP inside a multirun."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from pytorch_lightning.utilities import rank_zero_only

from nailseg.config import compose_config
from nailseg.config_check import multirun_ddp_problem
from nailseg.runs.record import RUN_JSON, RunRecord, read_run
from tests.conftest import FAST_SYNTHETIC, ONE_THREAD_ENV, train_py

TINY = (
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "data.image_size=64",
    "data.batch_size=4",
    "data.num_workers=0",
    *FAST_SYNTHETIC,
)


def _run_dirs(root: Path) -> list[Path]:
    """Every dir under ``root`` that looks like a run: a run.json or Hydra's .hydra/."""
    found = {p.parent for p in root.rglob(RUN_JSON)} | {p.parent for p in root.rglob(".hydra")}
    return sorted(found)


def test_ddp_cpu_trains_two_processes_into_one_run_dir(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    result = train_py(
        "trainer=ddp_cpu",
        *TINY,
        f"paths.runs_dir={runs}",
        f"paths.data_dir={tmp_path / 'data'}",
        env=ONE_THREAD_ENV,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    dirs = _run_dirs(tmp_path)
    assert len(dirs) == 1, dirs  # the child rank wrote no run dir of its own
    run_dir = dirs[0]
    record = read_run(run_dir)
    assert record["status"] == "completed" and record["world_size"] == 2
    assert record["choices"]["trainer"] == "ddp_cpu"
    for key in ("val/iou", "val/dice", "val/loss", "train/loss"):
        assert math.isfinite(record["metrics"][key]), key
    assert Path(record["best_checkpoint"]).is_file()
    # Rank 1 ran in the same dir: Lightning names its log after it; it has no .hydra of its own.
    assert (run_dir / "train_ddp_process_1.log").is_file()
    assert "Run dir: " + str(run_dir) in (run_dir / "train_ddp_process_1.log").read_text()
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    val = [float(r["val/iou"]) for r in rows if r.get("val/iou")]
    assert len(val) == 2 and all(math.isfinite(v) for v in val)  # one row an epoch: rank 0's
    assert math.isclose(val[-1], record["metrics"]["val/iou"], rel_tol=1e-6)


def test_ddp_in_a_multirun_is_refused_up_front(tmp_path: Path) -> None:
    result = train_py(
        "-m",
        "trainer=ddp_cpu",
        "seed=1,2",
        *TINY,
        f"paths.runs_dir={tmp_path / 'runs'}",
        f"paths.data_dir={tmp_path / 'data'}",
        env=ONE_THREAD_ENV,
        timeout=120,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: trainer.strategy=ddp"), lines
    assert "multirun" in lines[0] and "submitit_slurm" in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()  # nothing ran


@pytest.mark.parametrize(
    ("overrides", "multirun", "refused"),
    [
        (["trainer=ddp_cpu"], True, True),
        (["trainer=ddp"], True, True),  # devices=-1: all GPUs there are
        (["trainer=ddp_cpu", "trainer.devices=[0,1]"], True, True),
        (["trainer=ddp_cpu"], False, False),  # a single run may use DDP
        (["trainer=ddp_cpu", "trainer.devices=1"], True, False),  # one process: nothing spawned
        (["trainer=cpu"], True, False),
        (["trainer=ddp_cpu", "+trainer.num_nodes=2", "trainer.devices=1"], True, True),
        (["trainer=ddp_cpu", "hydra/launcher=submitit_slurm"], True, False),
        (["trainer=ddp_cpu", "hydra/launcher=submitit_local"], True, True),
    ],
)
def test_which_configs_a_multirun_refuses(
    overrides: list[str], multirun: bool, refused: bool
) -> None:
    cfg = compose_config(overrides, return_hydra_config=True)
    problem = multirun_ddp_problem(cfg, multirun=multirun)
    assert (problem is not None) == refused, problem
    if refused:
        assert "without -m" in problem


def test_only_rank_zero_writes_the_record(tmp_path: Path, monkeypatch) -> None:
    cfg = compose_config([f"paths.output_dir={tmp_path / 'run'}"])
    # What Lightning sets in a DDP child (from RANK/LOCAL_RANK at import, or its strategy).
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    record = RunRecord.start(tmp_path / "run", cfg)
    record.update(data={"n": 1})
    record.finish("completed", metrics={"val/iou": 0.5})
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    record = RunRecord.start(tmp_path / "run", cfg)
    record.finish("completed", metrics={"val/iou": 0.5})
    assert read_run(tmp_path / "run")["metrics"] == {"val/iou": 0.5}
