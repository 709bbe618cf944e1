"""Run records, ``nailseg diff``, ``nailseg rerun`` and ``train.py resume=``: real tiny runs on CPU.

One reference run (4 epochs through Hydra) is shared by the end-to-end tests: a run killed with
SIGKILL and resumed must end bit-identical to it, and so must a re-run.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nailseg import cli
from nailseg.config import REPO_ROOT
from nailseg.errors import EXIT_ERROR, ConfigError
from nailseg.runs.checkpoint import AtomicCheckpointIO, RNGStateCallback
from nailseg.runs.diff import RUN_DIR_TOKEN
from nailseg.runs.record import find_run_dir, read_run
from nailseg.runs.rerun import merge_overrides
from tests.conftest import ONE_THREAD_ENV, nailseg_cli, train_ok

TINY = (
    "trainer=debug",
    "trainer.max_epochs=4",
    "trainer.enable_progress_bar=false",
    "data.source.count=24",
    "data.source.image_size=64",
    "data.image_size=64",
    "data.batch_size=4",
    # A worker process, as in real runs: on resume Lightning starts the loader (and a worker's
    # prefetching) before it sets the sampler's epoch, which only a worker exposes.
    "data.num_workers=1",
)


def diff(*args: str, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["diff", *map(str, args)])
    return code, capsys.readouterr().out


# ---------------------------------------------------------------------------- units (fast)


def test_atomic_checkpoint_io_keeps_the_previous_file_on_failure(tmp_path: Path) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    with pytest.raises(Exception):  # noqa: B017 - torch.save cannot pickle a lambda
        io.save_checkpoint({"step": torch.tensor(2), "bad": lambda: 0}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_rng_state_callback_restores_every_generator(tmp_path: Path) -> None:
    callback = RNGStateCallback()
    torch.save(callback.state_dict(), tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())
    callback.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2]


def test_merge_overrides_puts_extra_on_top() -> None:
    recorded = ["encoder=resnet18", "data.batch_size=4", "paths.output_dir=/old", "resume=/x"]
    assert merge_overrides(recorded, ["encoder=resnet34", "+model.foo=1"]) == [
        "data.batch_size=4",
        "encoder=resnet34",
        "+model.foo=1",
    ]


def test_find_run_dir_explains_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        find_run_dir(tmp_path / "nope")
    with pytest.raises(ConfigError, match="has no run.json"):
        find_run_dir(tmp_path)
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "run.json").write_text("{}")
    with pytest.raises(ConfigError, match="multirun sweep dir.*0"):
        find_run_dir(tmp_path)
    assert find_run_dir(tmp_path / "0") == (tmp_path / "0").resolve()


# ------------------------------------------------------------------ end to end (slow, CPU)


def _logged_epoch(run_dir: Path, epoch: int) -> bool:
    """Whether ``last.ckpt`` exists and the CSV log holds the epoch's ``train/loss`` row."""
    log = run_dir / "csv" / "metrics.csv"
    if not (run_dir / "checkpoints" / "last.ckpt").exists() or not log.exists():
        return False
    with log.open(newline="") as file:
        rows = list(csv.DictReader(file))
    return any(r.get("epoch") == str(epoch) and r.get("train/loss") for r in rows)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    """A reference run, and a run of the same config killed after its first checkpoint."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    common = (*TINY, f"paths.runs_dir={root}", f"paths.data_dir={root / 'data'}")
    full, killed = root / "full", root / "killed"
    train_ok(*common, f"hydra.run.dir={full}")
    proc = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "train.py"), *common, f"hydra.run.dir={killed}"],
        env=ONE_THREAD_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    # Kill partway through epoch 1: after epoch 0's checkpoint and its epoch-level log row. (A kill
    # in the milliseconds between the two loses that row from metrics.csv: Lightning logs it after
    # the checkpoint. Metrics and checkpoints are unaffected, but the CSV comparison below is not.)
    while not _logged_epoch(killed, 0) and proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("no checkpoint within 120 s")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    yield {"root": root, "common": common, "full": full, "killed": killed}
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_every_run_records_itself(runs: dict) -> None:
    full = runs["full"]
    for name in (
        "config.resolved.yaml",
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "conf/train.yaml",
        "train.log",
    ):
        assert (full / name).is_file(), name
    record = read_run(full)
    assert record["status"] == "completed" and record["ended_at"] and record["duration_s"] > 0
    assert record["choices"]["encoder"] == "resnet18" and "trainer=debug" in record["overrides"]
    assert set(record["git"]) == {"commit", "dirty", "diff_sha256"}
    for package in (
        "python",
        "torch",
        "pytorch-lightning",
        "kornia",
        "segmentation-models-pytorch",
        "albumentations",
        "hydra-core",
        "omegaconf",
    ):
        assert record["versions"][package], package
    assert {"cpu", "gpu", "cuda"} <= set(record["device"])
    assert record["seed"] == 42 and len(record["data"]["sha256"]) == 64
    assert record["data"]["n"]["train"] > 0
    assert Path(record["best_checkpoint"]).is_file() and Path(record["last_checkpoint"]).is_file()


def record_norm(runs: dict) -> dict:
    normalization = read_run(runs["full"])["normalization"]
    assert set(normalization) == {"mean", "std"} and len(normalization["mean"]) == 3
    return normalization


@pytest.mark.slow
def test_checkpoints_load_with_weights_only(runs: dict) -> None:
    state = torch.load(runs["full"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 3
    # Only plain values: how inputs were normalised travels with the weights.
    assert state["hyper_parameters"] == {"threshold": 0.5, "normalization": record_norm(runs)}
    assert "RNGStateCallback" in state["callbacks"]


@pytest.mark.slow
def test_resume_refuses_contradicting_overrides(
    runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    killed = runs["killed"]
    assert read_run(killed)["status"] == "running"  # really killed before the end
    for override, recorded in (
        ("trainer.max_epochs=5", "trainer.max_epochs=4"),
        ("encoder=resnet34", "encoder=resnet18"),
    ):
        code, message = nailseg_cli(
            capsys, "train", f"resume={killed}", override, f"hydra.run.dir={tmp_path}"
        )
        assert code == EXIT_ERROR and re.search(f"contradict the recorded run.*{recorded}", message)
    code, message = nailseg_cli(
        capsys, "train", f"resume={runs['full']}", f"hydra.run.dir={tmp_path}"
    )
    assert code == EXIT_ERROR and "completed; there is nothing to resume" in message


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(runs: dict) -> None:
    full, killed, root = runs["full"], runs["killed"], runs["root"]
    # Repeating the recorded overrides is allowed; they agree with the run.
    train_ok(
        f"resume={killed}",
        "trainer.max_epochs=4",
        "encoder=resnet18",
        f"hydra.run.dir={root / 'resume-log'}",
    )
    record = read_run(killed)
    assert record["status"] == "completed" and len(record["resumes"]) == 1
    assert (root / "resume-log" / "resumed_run").resolve() == killed.resolve()
    assert record["metrics"] == read_run(full)["metrics"]  # bit-identical, not approximately
    # The metrics logged before the kill are kept, and nothing is logged twice.
    assert (killed / "csv" / "metrics.csv").read_text() == (
        full / "csv" / "metrics.csv"
    ).read_text()


@pytest.mark.slow
def test_rerun_reproduces_the_run(runs: dict, capsys: pytest.CaptureFixture) -> None:
    full = runs["full"]
    assert cli.main(["rerun", str(full)]) == 0
    new = Path(capsys.readouterr().out.split("New run: ")[1].split()[0])
    assert new != full and (new / ".hydra" / "overrides.yaml").is_file()
    record = read_run(new)
    assert record["rerun_of"] == str(full.resolve())
    assert record["choices"] == read_run(full)["choices"]
    assert record["metrics"] == read_run(full)["metrics"]
    code, out = diff(full, new, capsys=capsys)
    assert code == 0 and "configs are equal" in out and "metrics" not in out


@pytest.mark.slow
def test_diff_shows_only_what_differs(
    runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    full = runs["full"]
    # A second run differing in one choice: the record files edited as such a run would write them.
    other = tmp_path / "sweep" / "1"
    shutil.copytree(full, other, ignore=shutil.ignore_patterns("*.ckpt"))
    record = read_run(other)
    record["run_dir"] = str(other)
    record["choices"]["encoder"] = "resnet34"
    record["metrics"]["val/iou"] += 0.25
    (other / "run.json").write_text(json.dumps(record))
    cfg = yaml.safe_load((other / "config.resolved.yaml").read_text())
    cfg["encoder"]["name"] = cfg["model"]["encoder_name"] = "resnet34"
    cfg["trainer"]["default_root_dir"] = str(other)  # run-specific: must not show
    (other / "config.resolved.yaml").write_text(yaml.safe_dump(cfg))

    code, out = diff(full, other, capsys=capsys)
    assert code == 1 and "configs differ" in out
    assert "model.encoder_name" in out and "resnet18 → resnet34" in out
    assert "val/iou" in out and "(+0.25)" in out
    assert "default_root_dir" not in out and "val/dice" not in out
    code, out = diff(full, other, "--json", capsys=capsys)
    data = json.loads(out)
    assert code == 1 and set(data) == {"choices", "config", "env", "data", "metrics"}
    assert data["choices"] == {"encoder": {"a": "resnet18", "b": "resnet34"}}
    assert data["metrics"]["val/iou"]["delta"] == pytest.approx(0.25)
    code, out = diff(full, other, "--all", "--json", capsys=capsys)
    assert json.loads(out)["config"]["seed"] == {"a": 42, "b": 42}
    assert diff(full, tmp_path / "sweep", capsys=capsys)[0] == 2  # a sweep dir, not a job


@pytest.mark.slow
def test_diff_against_current_defaults(runs: dict, capsys: pytest.CaptureFixture) -> None:
    code, out = diff(runs["full"], "--json", capsys=capsys)
    data = json.loads(out)
    assert code == 1 and data["choices"]["trainer"] == {"a": "debug", "b": "default"}
    assert data["config"]["trainer.max_epochs"]["a"] == 4
    # The run dir is <run_dir> on both sides, so paths derived from it are no difference.
    assert not [k for k, v in data["config"].items() if RUN_DIR_TOKEN in json.dumps(v)]
    assert "paths.output_dir" not in data["config"] and data["metrics"] == {}
