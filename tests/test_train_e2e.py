"""Fast end-to-end training runs write a complete run.json with finite metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from nailseg.train import run
from tests.conftest import FAST_OVERRIDES, FAST_SYNTHETIC, train_py


def _check_record(record: dict) -> None:
    assert record["status"] == "completed", record.get("error")
    for key in ("val/iou", "val/dice", "val/loss", "train/loss"):
        assert key in record["metrics"] and math.isfinite(record["metrics"][key]), key
    assert 0 <= record["metrics"]["val/iou"] <= 1
    assert record["duration_s"] > 0
    assert Path(record["best_checkpoint"]).is_file()


@pytest.mark.slow
def test_default_run_writes_record(make_cfg, tmp_path: Path) -> None:
    record = run(make_cfg())
    on_disk = json.loads((tmp_path / "run" / "run.json").read_text())
    _check_record(on_disk)
    assert on_disk["metrics"] == record["metrics"]
    assert (tmp_path / "run" / "csv" / "metrics.csv").is_file()


@pytest.mark.slow
def test_test_split_is_evaluated(make_cfg) -> None:
    record = run(make_cfg("data.test_fraction=0.2"))
    _check_record(record)
    assert math.isfinite(record["metrics"]["test/iou"])


@pytest.mark.slow
def test_readme_command_kornia_effnet_b4(tmp_path: Path) -> None:
    """`python train.py aug=kornia_gpu encoder=effnet_b4`, as in the README, with a fast trainer."""
    run_dir = tmp_path / "run"
    out = train_py(
        "aug=kornia_gpu",
        "encoder=effnet_b4",
        *FAST_OVERRIDES,
        *FAST_SYNTHETIC,
        f"hydra.run.dir={run_dir}",
        f"paths.data_dir={tmp_path / 'data'}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((run_dir / "run.json").read_text())
    _check_record(record)
    assert record["choices"]["aug"] == "kornia_gpu" and record["choices"]["encoder"] == "effnet_b4"
    if not torch.cuda.is_available():  # exactly one warning about augmenting off the GPU
        assert out.stderr.count("aug=kornia_gpu is augmenting on cpu") == 1


def test_failed_run_records_the_error(make_cfg) -> None:
    cfg = make_cfg("data.valid_fraction=0.0")
    with pytest.raises(Exception, match="validation split is empty"):
        run(cfg)
    record = json.loads((Path(cfg.paths.output_dir) / "run.json").read_text())
    assert record["status"] == "failed" and "validation split is empty" in record["error"]


@pytest.mark.slow
def test_multirun_sweep_gives_each_job_its_own_run_dir(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    out = train_py(
        "-m",
        "loss=dice,bce",
        *FAST_OVERRIDES,
        *FAST_SYNTHETIC,
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.data_dir={tmp_path / 'data'}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads((sweep_dir / str(job) / "run.json").read_text()) for job in (0, 1)]
    assert [r["choices"]["loss"] for r in records] == ["dice", "bce"]
    assert all(r["status"] == "completed" for r in records)
