"""Shared fixtures: compose the real config, tiny and fast, into a per-test run dir."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

# Without a GPU the fused engine's Triton kernels run in Triton's interpreter, on CPU tensors
# (float32 only). Triton reads this when a kernel is defined, its own library's included, so it
# is set before anything imports triton (Lightning may). With a GPU they compile for CUDA.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from nailseg.config import REPO_ROOT, compose_config  # noqa: E402

# huggingface_hub reads this at import: fail fast instead of retrying a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "nails52"


@pytest.fixture(autouse=True)
def _root_logging_restored() -> object:
    """A command run in this process through Hydra (``nailseg_cli(capsys, "train", ...)``) sets
    up Hydra's job logging: a handler on the root logger bound to the stderr of that moment,
    which pytest's capture closes after the test. Put the root logger back as it was, so a later
    test does not log into a closed stream ("--- Logging error ---" on its stderr)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        # pytest's own capture handlers come and go per test phase: they are left to pytest.
        if handler not in handlers and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


# Small and quick: a tiny synthetic set, a two-batch epoch, no worker processes.
FAST_OVERRIDES = (
    "trainer=debug",
    "data.image_size=64",
    "data.batch_size=4",
    "data.num_workers=0",
)
# Only for data=synthetic (the default).
FAST_SYNTHETIC = ("data.source.count=24", "data.source.image_size=64")


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg("aug=kornia_gpu", fast=True)`` -> a composed config writing into ``tmp_path``."""

    def _make(*overrides: str, fast: bool = True, extra: Sequence[str] = ()) -> DictConfig:
        paths = [
            f"paths.output_dir={tmp_path / 'run'}",
            f"paths.data_dir={tmp_path / 'data'}",
        ]
        other_data = any(o.startswith("data=") and o != "data=synthetic" for o in overrides)
        speed = (*FAST_OVERRIDES, *(() if other_data else FAST_SYNTHETIC)) if fast else ()
        return compose_config([*paths, *speed, *overrides, *extra])

    return _make


@pytest.fixture
def one_torch_thread() -> object:
    """One torch thread for the test: on a small shared CPU, thread contention makes tiny steps
    many times slower. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_py(
    *args: str, timeout: float = 300, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` in a fresh process, as a user runs it; output captured."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=None if env is None else dict(env),
    )


# One thread for train.py subprocesses: on a small shared CPU, thread contention makes a 64 px step
# 20x slower.
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def train_ok(*args: str) -> subprocess.CompletedProcess:
    """``train_py`` on one thread that must succeed; a failure shows train.py's stderr."""
    result = train_py(*args, env=ONE_THREAD_ENV)
    if result.returncode != 0:
        raise AssertionError(f"train.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def quiet_trainer(**kwargs) -> pl.Trainer:
    """A real CPU Trainer with no logger, checkpoints, progress bar or summary."""
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"needs the nails52 data set at {SHARED_DATA} (../shared)"
)


def nailseg_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    """``nailseg ARGV`` in this process: its exit status and the last line it wrote to stderr.

    A command returns its status; a training job inside Hydra exits with it (``SystemExit``).
    """
    from nailseg.cli import main

    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""
