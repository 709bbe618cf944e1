"""Experiment trackers: MLflow (a local SQLite store) and Weights & Biases (offline)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nailseg.train import run


def test_csv_and_mlflow_together_record_params_and_metrics(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg("logger=[csv,mlflow]", extra=[f"paths.runs_dir={tmp_path / 'runs'}"])
    record = run(cfg)
    assert record["status"] == "completed"
    run_dir = Path(cfg.paths.output_dir)
    assert (run_dir / "csv" / "metrics.csv").is_file()  # the CSV log is still there
    database = tmp_path / "runs" / "mlflow.db"
    assert database.is_file()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("nailseg")
    assert experiment.artifact_location.endswith("runs/mlflow-artifacts")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == str(run_dir)
    assert found.data.tags["run_dir"] == str(run_dir)
    assert found.info.status == "FINISHED"
    # The module's hyper-parameters and the epoch metrics, as the run recorded them.
    assert float(found.data.params["threshold"]) == 0.5
    assert found.data.metrics["val/iou"] == pytest.approx(record["metrics"]["val/iou"], abs=1e-6)
    assert "train/loss" in found.data.metrics


def test_wandb_offline_writes_its_run_under_the_run_dir(
    make_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for key in ("WANDB_DIR", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    cfg = make_cfg("logger=wandb")
    try:
        record = run(cfg)
    finally:
        wandb.finish()  # train.py's process ends here, which finishes the run
    assert record["status"] == "completed"
    run_dir = Path(cfg.paths.output_dir)
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert list(offline.glob("*.wandb")), sorted(os.listdir(offline))
    # With no CSV logger there is no csv/metrics.csv (and so no curves.png to draw).
    assert not (run_dir / "csv").exists()
