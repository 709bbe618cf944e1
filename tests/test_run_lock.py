"""One writer per run dir (``RUN_DIR/.lock``, :mod:`nailseg.runs.lock`).

A second ``train.py`` on a run dir that a live process holds is refused in one line and touches
nothing; a lock left by a process that died holding it is taken over and logged, one left on
another host is not; the lock goes with the run however it ends. The holders are real processes
that take the lock through the module's API; one tiny run is trained once and copied per test.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from omegaconf import DictConfig

from nailseg.config import REPO_ROOT, compose_config
from nailseg.errors import EXIT_ERROR, ConfigError, RunInterrupted
from nailseg.runs.record import read_run
from tests.conftest import FAST_OVERRIDES, FAST_SYNTHETIC, ONE_THREAD_ENV, nailseg_cli, train_py

TINY = (*FAST_OVERRIDES, *FAST_SYNTHETIC, "trainer.enable_progress_bar=false")

# A process that holds a run dir's lock until it is killed.
HOLD = """
import sys, time
from nailseg.runs.lock import lock_run_dir
lock_run_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(300)
"""


@contextlib.contextmanager
def holder(run_dir: Path) -> Iterator[subprocess.Popen]:
    """A live process on this host that holds ``run_dir``'s lock; killed at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def snapshot(folder: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every file under ``folder`` (hidden ones too) with size, mtime, inode and content."""
    return {
        str(p.relative_to(folder)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            p.stat().st_ino,
            p.read_bytes(),
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def held_by_anyone(run_dir: Path) -> bool:
    """Whether some open file (another process's, or this one's) holds ``run_dir/.lock``."""
    with (run_dir / ".lock").open("r+") as file:  # a new open file: even this process conflicts
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(file, fcntl.LOCK_UN)
    return False


def assert_released(run_dir: Path) -> None:
    assert (run_dir / ".lock").is_file(), "the run took no lock"
    assert not held_by_anyone(run_dir), "the lock outlived the run"
    assert (run_dir / ".lock").read_text() == "", "a released lock names no holder"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny completed run (trained in this process)."""
    from nailseg.train import run

    root = tmp_path_factory.mktemp("lock")
    cfg = compose_config([*TINY, f"paths.output_dir={root / 'run'}", f"paths.data_dir={root}"])
    assert run(cfg)["status"] == "completed"
    return root / "run"


@pytest.fixture
def live(trained: Path, tmp_path: Path) -> Path:
    """A copy of the run whose record says ``running``, as a live run's does; resumable."""

    def copy(a: str, b: str) -> None:  # checkpoints hard-linked: Lightning replaces, not edits
        os.link(a, b) if a.endswith(".ckpt") else shutil.copy2(a, b)

    run_dir = tmp_path / "live"
    shutil.copytree(trained, run_dir, symlinks=True, copy_function=copy)
    record = read_run(run_dir)
    record.update(status="running", ended_at=None)
    (run_dir / "run.json").write_text(json.dumps(record))
    return run_dir.resolve()


def test_a_run_dir_in_use_is_refused_in_one_line_and_left_untouched(
    live: Path, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = f"paths.data_dir={trained.parent}"
    with holder(live) as proc:
        before = snapshot(live)
        in_use = f"Run dir {live} is in use by PID {proc.pid} on {socket.gethostname()} (started "
        # `python train.py resume=LIVE` in a second shell.
        out = train_py(f"resume={live}", f"hydra.run.dir={tmp_path / 'log'}", env=ONE_THREAD_ENV)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == EXIT_ERROR, out.stderr[-3000:]
        assert len(lines) == 1 and lines[0].startswith(f"error: {in_use}"), lines
        assert "wait for it, or stop it" in lines[0]
        assert not (tmp_path / "log").exists()  # refused before Hydra made its own dir
        # A new run into it: Hydra's run dir, or the run's output dir.
        for into in (f"hydra.run.dir={live}", f"paths.output_dir={live}"):
            code, message = nailseg_cli(
                capsys, "train", *TINY, into, data, f"paths.runs_dir={tmp_path / 'runs'}"
            )
            assert code == EXIT_ERROR and message.startswith(f"error: {in_use}"), (into, message)
        # The same refusal without the command line (train.run, as nailseg rerun and tests use).
        from nailseg.train import run

        with pytest.raises(ConfigError, match=f"in use by PID {proc.pid} "):
            run(compose_config([f"resume={live}", f"paths.output_dir={tmp_path / 'out'}"]))
        assert snapshot(live) == before, "a refused process wrote into the run dir"
        assert read_run(live)["status"] == "running"


def test_a_multirun_into_a_sweep_in_use_is_refused(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sweep = tmp_path.resolve() / "sweep"
    (sweep / "0").mkdir(parents=True)
    argv = ("train", "-m", "seed=1,2", *TINY, f"paths.data_dir={trained.parent}")
    for held, what in ((sweep / "0", "Run dir"), (sweep, "Sweep dir")):
        with holder(held) as proc:
            before = snapshot(sweep)
            code, message = nailseg_cli(capsys, *argv, f"hydra.sweep.dir={sweep}")
            assert code == EXIT_ERROR, message
            assert message.startswith(f"error: {what} {held} is in use by PID {proc.pid}")
            assert snapshot(sweep) == before


def test_the_lock_of_a_dead_holder_is_taken_over_and_logged(
    live: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with holder(live) as proc:
        proc.send_signal(signal.SIGKILL)  # dies holding it: the kernel drops the lock, not the file
        proc.wait()
    assert f'"pid": {proc.pid}' in (live / ".lock").read_text()
    code, message = nailseg_cli(capsys, "train", f"resume={live}", f"hydra.run.dir={tmp_path}")
    assert code == 0, message
    assert (
        f"took over the lock of dead PID {proc.pid} on {socket.gethostname()}"
        in (live / "train.log").read_text()
    )
    assert read_run(live)["status"] == "completed"
    assert_released(live)


def test_a_lock_left_on_another_host_is_not_taken_over(
    live: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Free here, but over a network file system its holder may be running there.
    holder_text = {"host": "elsewhere", "pid": 4242, "started": "2026-01-02T03:04:05+00:00"}
    (live / ".lock").write_text(json.dumps({**holder_text, "boot_id": "another-kernel"}))
    before = snapshot(live)
    code, message = nailseg_cli(capsys, "train", f"resume={live}", f"hydra.run.dir={tmp_path}/l")
    assert code == EXIT_ERROR, message
    assert f"PID 4242 on elsewhere (started {holder_text['started']}), another host" in message
    assert f"delete {live / '.lock'}" in message
    assert snapshot(live) == before and not (tmp_path / "l").exists()


# Takes the lock, forks a child that lives on (as a DataLoader worker outlives a killed parent
# for seconds), and dies killed.
FORK_AND_DIE = """
import os, signal, sys, time
from nailseg.runs.lock import lock_run_dir
lock_run_dir(sys.argv[1])
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_forked_child_does_not_keep_a_killed_parents_lock(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", FORK_AND_DIE, str(tmp_path)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    with proc.stdout:
        child = int(proc.stdout.readline())
        try:
            assert proc.wait(timeout=60) == -signal.SIGKILL
            os.kill(child, 0)  # the child lives on ...
            assert not held_by_anyone(tmp_path)  # ... without the lock
        finally:
            os.kill(child, signal.SIGKILL)


def test_the_lock_is_held_while_a_run_lives_and_released_however_it_ends(
    make_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nailseg.train as train

    run_dir, held, check_config = tmp_path / "run", [], train.check_config

    def ends(how: BaseException | None) -> Callable[[DictConfig], None]:
        def check(cfg: DictConfig) -> None:  # inside the run's session
            held.append(held_by_anyone(run_dir))
            if how is not None:
                raise how
            check_config(cfg)

        return check

    monkeypatch.setattr(train, "check_config", ends(None))
    assert train.run(make_cfg())["status"] == "completed"
    assert_released(run_dir)
    # Another run into the same dir is let in; it fails, then one is interrupted.
    monkeypatch.setattr(train, "check_config", ends(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        train.run(make_cfg())
    assert read_run(run_dir)["status"] == "failed"
    assert_released(run_dir)
    monkeypatch.setattr(train, "check_config", ends(KeyboardInterrupt()))
    with pytest.raises(RunInterrupted):
        train.run(make_cfg())
    assert read_run(run_dir)["status"] == "interrupted"
    assert_released(run_dir)
    assert held == [True, True, True]
