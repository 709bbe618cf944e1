"""Faults a user meets with real runs: Ctrl-C, a copied run dir, junk from a kill, a broken
``last.ckpt``, a failing job in a sweep, an unwritable output dir, two first runs at once.

One run is interrupted with a real SIGINT after its first checkpoint; copies of it are resumed
(one with junk planted as a kill during a checkpoint write leaves it, one with a truncated
``last.ckpt``), so the expensive part, training, is shared between the tests.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from nailseg.config import REPO_ROOT
from nailseg.errors import EXIT_ERROR
from nailseg.runs.record import read_run
from tests.conftest import (
    FAST_OVERRIDES,
    FAST_SYNTHETIC,
    ONE_THREAD_ENV,
    nailseg_cli,
    train_ok,
    train_py,
)

TINY = (
    "trainer=debug",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
    "data.source.count=24",
    "data.source.image_size=64",
    "data.image_size=64",
    "data.batch_size=4",
    "data.num_workers=0",
)


def copy_run(src: Path, dst: Path) -> Path:
    """``cp -a`` of a run dir; checkpoints hard-linked (Lightning replaces, never edits, them)."""

    def copy(a: str, b: str) -> None:
        os.link(a, b) if a.endswith(".ckpt") else shutil.copy2(a, b)

    shutil.copytree(src, dst, symlinks=True, copy_function=copy)
    return dst


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under ``folder`` with its size, mtime and inode: any write shows."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run stopped with Ctrl-C (SIGINT to its process group) after its first checkpoint."""
    root = tmp_path_factory.mktemp("faults")
    common = (*TINY, f"paths.runs_dir={root}", f"paths.data_dir={root / 'data'}")
    orig = root / "orig"
    with (root / "orig.err").open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "train.py"), *common, f"hydra.run.dir={orig}"],
            env=ONE_THREAD_ENV,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # its own process group, as a shell gives a foreground job
            # A background job of a non-interactive shell (as CI may start us) inherits SIGINT
            # ignored, and Python then installs no Ctrl-C handler: restore what a terminal gives.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 120
        while not (orig / "checkpoints" / "last.ckpt").exists() and proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError("no checkpoint within 120 s")
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
    return {
        "root": root,
        "orig": orig.resolve(),
        "code": code,
        "stderr": (root / "orig.err").read_text(),
    }


@pytest.mark.slow
def test_ctrl_c_records_interrupted_with_metrics_checkpoints_and_resume_command(
    interrupted: dict,
) -> None:
    orig, stderr = interrupted["orig"], interrupted["stderr"]
    command = f"python train.py resume={orig}"
    assert interrupted["code"] == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert last_line(stderr).startswith("interrupted: ") and command in last_line(stderr)
    record = read_run(orig)
    assert record["status"] == "interrupted", record["error"]
    assert "SIGINT" in record["error"] and record["resume_command"] == command
    assert 0 <= record["metrics"]["val/iou"] <= 1
    assert Path(record["best_checkpoint"]).is_file() and record["best_score"] is not None
    assert Path(record["last_checkpoint"]) == orig / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def resumed_copy(interrupted: dict) -> dict:
    """``cp -a orig copy`` with the junk a kill during a checkpoint write leaves; copy resumed."""
    root, orig = interrupted["root"], interrupted["orig"]
    copy = copy_run(orig, root / "copy").resolve()
    checkpoints = copy / "checkpoints"
    junk = {
        # AtomicCheckpointIO's temp file of a writer that was killed ...
        "dead_tmp": checkpoints / f".last.ckpt.{dead_pid()}.tmp",
        # ... and one of a writer that is alive (this process): never touched.
        "live_tmp": checkpoints / f".last.ckpt.{os.getpid()}.tmp",
        # A top-k checkpoint of the epoch cut short: written, but last.ckpt was not.
        "orphan": checkpoints / "epoch001-iou0.9999.ckpt",
        # The same bytes under a name the top-k callback never writes: not ours to delete.
        "foreign": checkpoints / "mine.ckpt",
    }
    junk["dead_tmp"].write_bytes(b"half a checkpoint")
    junk["live_tmp"].write_bytes(b"being written")
    state = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    state["epoch"] += 1
    state["global_step"] += 2
    torch.save(state, junk["orphan"])
    os.link(junk["orphan"], junk["foreign"])
    before = snapshot(orig)
    train_ok(f"resume={copy}", f"hydra.run.dir={root / 'resume-log'}")
    return {"orig": orig, "copy": copy, "before": before, "junk": junk}


@pytest.mark.slow
def test_resuming_a_copied_run_writes_only_into_the_copy(resumed_copy: dict) -> None:
    orig, copy = resumed_copy["orig"], resumed_copy["copy"]
    assert snapshot(orig) == resumed_copy["before"], "the original run was written to"
    assert read_run(orig)["status"] == "interrupted"
    record = read_run(copy)
    assert record["status"] == "completed", record["error"]
    assert record["run_dir"] == str(copy) and "resume_command" not in record
    for key in ("best_checkpoint", "last_checkpoint"):
        assert Path(record[key]).is_relative_to(copy) and Path(record[key]).is_file(), key
    assert str(orig) in record["resumes"][-1]["moved_from"]
    assert str(orig) not in (copy / "config.resolved.yaml").read_text()
    cfg = yaml.safe_load((copy / "config.resolved.yaml").read_text())
    assert cfg["paths"]["output_dir"] == str(copy)
    # The top-k state came along: still exactly save_top_k=2 epoch checkpoints, all of 3 epochs.
    topk = sorted(p.name for p in (copy / "checkpoints").glob("epoch*.ckpt"))
    assert len(topk) == 2, topk


@pytest.mark.slow
def test_resume_removes_junk_of_a_killed_checkpoint_write(resumed_copy: dict) -> None:
    junk = resumed_copy["junk"]
    assert not junk["dead_tmp"].exists() and not junk["orphan"].exists()
    assert junk["live_tmp"].exists() and junk["foreign"].exists()
    removed = read_run(resumed_copy["copy"])["resumes"][-1]["removed"]
    assert sorted(removed) == sorted([str(junk["dead_tmp"]), str(junk["orphan"])])


@pytest.mark.slow
def test_unreadable_last_ckpt_names_it_and_offers_the_newest_readable(
    interrupted: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = copy_run(interrupted["orig"], interrupted["root"] / "broken").resolve()
    last = broken / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.unlink()  # a hard link: write a new, truncated file instead of cutting the shared one
    last.write_bytes(data[: len(data) // 2])
    code, message = nailseg_cli(
        capsys, "train", f"resume={broken}", f"hydra.run.dir={tmp_path / 'log'}"
    )
    assert code == EXIT_ERROR and message.startswith("error: ")
    assert "checkpoints/last.ckpt" in message and "cannot be read" in message
    offered = re.search(r"python train\.py (resume=(\S+\.ckpt))", message)
    assert offered, message
    assert re.fullmatch(r"epoch\d{3}-iou[\d.]+\.ckpt", Path(offered[2]).name)
    # The offered command works: it continues the run from that checkpoint.
    train_ok(offered[1], f"hydra.run.dir={tmp_path / 'log2'}")
    record = read_run(broken)
    assert record["status"] == "completed", record["error"]
    assert record["resumes"][-1]["checkpoint"] == offered[2]
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 2


# A metrics.csv as a Ctrl-C inside Lightning's CSV writer leaves it: the writer had noted the new
# name val/iou but not yet rewritten the header when the interrupt came, and on shutdown it
# appended rows under the new, longer list of names.
DAMAGED_CSV = (
    "epoch,step,train/loss\r\n"
    "0,1,0.9\r\n"
    "0,3,0.8\r\n"
    "0,3,0.8,0.5\r\n"  # epoch 0's validation row: four values, three names
    "1,5,0.7,\r\n"  # after the checkpoint (step 4): the resumed run writes it again
)


def test_resume_keeps_a_csv_log_damaged_by_ctrl_c_and_survives_a_second_kill(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from omegaconf import OmegaConf
    from pytorch_lightning import Trainer
    from pytorch_lightning.loggers import CSVLogger

    from nailseg.runs.resume import Resume, keep_csv_logs

    log_dir = tmp_path / "csv"
    log_dir.mkdir()
    metrics = log_dir / "metrics.csv"
    metrics.write_text(DAMAGED_CSV, newline="")
    trainer = Trainer(
        logger=CSVLogger(tmp_path, name="csv", version=""), enable_checkpointing=False
    )

    def resume(step: int) -> Resume:
        empty = OmegaConf.create()
        return Resume(tmp_path, empty, tmp_path / "last.ckpt", {}, empty, step=step)

    # The first resume (from step 4) is killed before it merges: its rows wait in a backup.
    killed = keep_csv_logs(trainer, resume(4))  # kept referenced: no exit runs before the end
    killed.__enter__()
    assert "more values than its header" in caplog.text
    (damaged,) = log_dir.glob("metrics.damaged-*.csv")
    assert damaged.read_bytes() == DAMAGED_CSV.encode()  # the file as it was, kept for the user
    metrics.write_text("epoch,step,train/loss\r\n1,5,0.7\r\n1,7,0.6\r\n", newline="")

    # The second resume, from step 6, keeps the rows before it from both attempts.
    with keep_csv_logs(trainer, resume(6)):
        assert not metrics.exists()
        metrics.write_text("epoch,step,train/loss,val/iou\r\n1,7,0.6,\r\n1,7,,0.6\r\n")
    with metrics.open(newline="") as file:
        rows = [(r["step"], r["train/loss"], r["val/iou"]) for r in csv.DictReader(file)]
    assert rows == [
        ("1", "0.9", ""),
        ("3", "0.8", ""),
        ("5", "0.7", ""),
        ("7", "0.6", ""),
        ("7", "", "0.6"),
    ]
    assert not (log_dir / "metrics.before-resume.csv").exists()


def test_curves_and_summaries_skip_the_rows_they_cannot_name(tmp_path: Path) -> None:
    from nailseg.runs.curves import read_epoch_metrics
    from nailseg.runs.summary import epoch_metrics

    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text(DAMAGED_CSV, newline="")
    # Values of the longer rows are not given names they may not have.
    assert read_epoch_metrics(tmp_path / "csv" / "metrics.csv")["train/loss"] == {0: 0.8}
    assert epoch_metrics(tmp_path)["train/loss"] == [0.9, 0.8]


@pytest.mark.slow
def test_a_failed_job_does_not_stop_the_sweep(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    out = train_py(
        "-m",
        "encoder.name=resnet81,resnet18",
        *FAST_OVERRIDES,
        *FAST_SYNTHETIC,
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.data_dir={tmp_path / 'data'}",
        env=ONE_THREAD_ENV,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    failed, completed = (read_run(sweep_dir / str(job)) for job in (0, 1))
    assert failed["status"] == "failed" and "resnet81" in failed["error"]
    assert completed["status"] == "completed", completed["error"]
    summary = out.stderr[out.stderr.index("Multirun: 1 of 2 jobs failed") :]
    assert re.search(r"#0 +failed +encoder\.name=resnet81 .*Unknown encoder", summary), summary
    assert re.search(r"#1 +completed +encoder\.name=resnet18", summary), summary


def test_unwritable_output_dir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, message = nailseg_cli(
        capsys,
        "train",
        f"paths.output_dir={blocker}/out",
        "trainer=debug",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    )
    assert code == EXIT_ERROR
    assert message.startswith(f"error: paths.output_dir={blocker}/out cannot be written")
    assert f"{blocker} is a file, not a folder" in message


@pytest.mark.parametrize("blocker", ["file", "read-only folder"])
def test_unwritable_runs_dir_is_one_line(
    tmp_path: Path, blocker: str, capsys: pytest.CaptureFixture
) -> None:
    runs_dir = tmp_path / "blocker"
    if blocker == "file":
        runs_dir.write_text("not a folder")
        runs_dir = runs_dir / "runs"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder; the 'file' case covers root")
        runs_dir.mkdir(mode=0o555)
    code, message = nailseg_cli(capsys, "train", f"paths.runs_dir={runs_dir}", "trainer=debug")
    assert code == EXIT_ERROR and message.startswith("error: the run dir ")
    assert "cannot be written" in message and "paths.runs_dir=" in message


def _generate_then_read(root: str, barrier, results) -> None:  # noqa: ANN001 - mp proxies
    """One "first run": generate the set, then read it for a while as training would."""
    from nailseg.data.synthetic import generate_dataset

    barrier.wait()
    folder = generate_dataset(root, count=8, image_size=32, seed=7)
    inode, problems, reads = folder.stat().st_ino, [], 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        files = sorted(folder.glob("*/*/*.png"))
        if len(files) != 16:
            problems.append(f"{len(files)} files")
        for path in files:
            try:
                reads += len(path.read_bytes()) > 0
            except OSError as err:
                problems.append(str(err))
    results.put(
        {"folder": str(folder), "replaced": folder.stat().st_ino != inode, "problems": problems}
    )


def test_two_first_runs_share_one_synthetic_set(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    procs = [
        context.Process(target=_generate_then_read, args=(str(tmp_path), barrier, results))
        for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert outcomes[0]["folder"] == outcomes[1]["folder"]
    for outcome in outcomes:
        assert not outcome["replaced"], "the set was deleted and made again while in use"
        assert not outcome["problems"][:5], outcome["problems"][:5]
    folder = Path(outcomes[0]["folder"])
    assert json.loads((folder / "params.json").read_text())["count"] == 8
    # Nothing left over but the set and its lock file.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [folder.name, f".{folder.name}.lock"]
    )


@pytest.mark.slow
def test_a_job_slurm_starts_again_continues_its_run(interrupted: dict) -> None:
    """A requeued SLURM job runs its command again (``SLURM_RESTART_COUNT`` > 0): in its own run
    dir it finds its interrupted run and continues it instead of starting over."""
    root = interrupted["root"]
    job = copy_run(interrupted["orig"], root / "requeued").resolve()
    command = (*TINY, f"paths.runs_dir={root}", f"paths.data_dir={root / 'data'}")
    done = train_py(
        *command, f"hydra.run.dir={job}", env={**ONE_THREAD_ENV, "SLURM_RESTART_COUNT": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SLURM started this job again" in (job / "train.log").read_text()
    record = read_run(job)
    assert record["status"] == "completed"
    assert len(record["resumes"]) == 1 and 0 <= record["metrics"]["val/iou"] <= 1
