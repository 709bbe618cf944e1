"""Multirun summaries (``summary.csv``/``.md``/``.png``, ``nailseg summary``) and launchers:
a 4-job sweep with one real failure, 2-job sweeps under joblib and submitit_local, the SLURM
preset composing."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nailseg.config import compose_config
from nailseg.errors import EXIT_ERROR
from nailseg.runs.record import read_run
from nailseg.runs.summary import SUMMARY_CSV, pick_gpu, pin_gpu
from tests.conftest import FAST_SYNTHETIC, ONE_THREAD_ENV, nailseg_cli, train_ok, train_py

TINY = (
    "trainer=debug",
    "trainer.enable_progress_bar=false",
    "data.image_size=64",
    "data.num_workers=0",
    *FAST_SYNTHETIC,
)


def read_summary(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / SUMMARY_CSV).open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def four_jobs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """``model=unet,deeplabv3plus x data.batch_size=4,1``: DeepLabV3+ cannot train on batches of
    one (BatchNorm after its image pooling), so exactly one job fails, in torch."""
    tmp = tmp_path_factory.mktemp("four")
    sweep_dir = tmp / "sweep"
    out = train_py(
        "-m",
        "model=unet,deeplabv3plus",
        "data.batch_size=4,1",
        *TINY,
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.data_dir={tmp / 'data'}",
        env=ONE_THREAD_ENV,
    )
    return sweep_dir, out


def test_four_jobs_one_fails_summary(four_jobs: tuple[Path, object]) -> None:
    sweep_dir, out = four_jobs
    assert out.returncode == 1, out.stderr[-3000:]  # a failed job: exit 1, the sweep ran on
    rows = read_summary(sweep_dir)
    assert len(rows) == 4
    assert {r["model"] + "/" + r["data.batch_size"] for r in rows} == {
        "unet/4",
        "unet/1",
        "deeplabv3plus/4",
        "deeplabv3plus/1",
    }
    failed = [r for r in rows if r["status"] == "failed"]
    assert [r["status"] for r in rows].count("completed") == 3
    assert len(failed) == 1 and failed[0]["model"] == "deeplabv3plus"
    assert failed[0]["data.batch_size"] == "1"
    assert failed[0]["error"].startswith("ValueError: Expected more than 1 value per channel")
    assert read_run(sweep_dir / failed[0]["job"])["status"] == "failed"
    # Sorted by val/iou (the optimized_metric), best first and marked; the failed job last.
    done = rows[:3]
    ious = [float(r["final val/iou"]) for r in done]
    assert ious == sorted(ious, reverse=True) and rows[3] is failed[0]
    assert [r["best"] for r in rows] == ["*", "", "", ""]
    for row in done:
        record = read_run(row["run_dir"])
        assert float(row["final val/iou"]) == pytest.approx(record["metrics"]["val/iou"])
        assert float(row["best val/iou"]) >= float(row["final val/iou"])
        assert float(row["best val/loss"]) <= float(row["final val/loss"])
        assert row["best_checkpoint"] == record["best_checkpoint"]
        assert int(row["epochs"]) == 1 and float(row["train_images_per_s"]) > 0
    md = (sweep_dir / "summary.md").read_text()
    assert "| job | model | data.batch_size | status |" in md and f"| **{rows[0]['job']}** |" in md
    assert (sweep_dir / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert f"Summary table: {sweep_dir / SUMMARY_CSV}" in out.stderr


def test_nailseg_summary_rebuilds_it(
    four_jobs: tuple[Path, object], capsys: pytest.CaptureFixture
) -> None:
    sweep_dir, _ = four_jobs
    before = (sweep_dir / SUMMARY_CSV).read_text()
    for name in ("summary.csv", "summary.md", "summary.png"):
        (sweep_dir / name).unlink()
    code, _ = nailseg_cli(capsys, "summary", str(sweep_dir))
    assert code == 0
    assert (sweep_dir / SUMMARY_CSV).read_text() == before
    assert (sweep_dir / "summary.png").is_file() and (sweep_dir / "summary.md").is_file()


def test_nailseg_summary_refuses_a_non_sweep_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, message = nailseg_cli(capsys, "summary", str(tmp_path))
    assert code == EXIT_ERROR
    assert message.startswith(f"error: {tmp_path} is not a multirun sweep dir")


def test_joblib_runs_jobs_in_parallel_dirs(tmp_path: Path) -> None:
    """Two jobs at once (n_jobs=2) under the default, timestamped sweep dir: one sweep dir, a
    run dir per job, each completed, and the summary written by the jobs and the sweep's end."""
    runs = tmp_path / "runs"
    train_ok(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "seed=1,2",
        *TINY,
        "data.batch_size=4",
        f"paths.runs_dir={runs}",
        f"paths.data_dir={tmp_path / 'data'}",
    )
    (sweep_dir,) = [p.parent for p in runs.glob(f"multirun/*/*/{SUMMARY_CSV}")]
    records = [read_run(sweep_dir / str(job)) for job in (0, 1)]
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert len({r["run_dir"] for r in records}) == 2
    rows = read_summary(sweep_dir)
    assert sorted(r["seed"] for r in rows) == ["1", "2"]
    assert {r["status"] for r in rows} == {"completed"}


def test_submitit_local_runs_jobs_in_subprocesses(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    train_ok(
        "-m",
        "hydra/launcher=local",
        "hydra.launcher.timeout_min=4",
        "seed=1,2",
        *TINY,
        "data.batch_size=4",
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.data_dir={tmp_path / 'data'}",
    )
    assert (sweep_dir / ".submitit").is_dir()  # the jobs ran as submitit's processes
    records = [read_run(sweep_dir / str(job)) for job in (0, 1)]
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert len(read_summary(sweep_dir)) == 2


def test_slurm_preset_composes() -> None:
    cfg = compose_config(
        ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4", "trainer=ddp"],
        return_hydra_config=True,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.tasks_per_node == 4  # one SLURM task per GPU: Lightning takes its ranks
    assert OmegaConf.select(cfg, "hydra.callbacks.sweep._target_").endswith("SweepCallback")


def test_pick_gpu_round_robin() -> None:
    assert [pick_gpu(n, ["2", "3"]) for n in range(4)] == ["2", "3", "2", "3"]
    assert pick_gpu(5, []) is None


def test_pin_gpu_is_a_noop_without_several_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    if torch.cuda.device_count() > 1:
        pytest.skip("a multi-GPU machine: pinning applies there")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert pin_gpu(3) is None
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
