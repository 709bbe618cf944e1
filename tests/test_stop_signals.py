"""Stops as SLURM, ``timeout``, ``docker stop`` and Ctrl-C send them, at every phase of a run.

Table-driven, with real processes and real signals: ``python train.py`` on tiny data, a signal
sent to its main PID or to its whole process group (as a terminal's Ctrl-C and ``timeout`` do)
once the run's log shows the phase (``hydra.verbose=nailseg.runs.phases``: DEBUG lines
``phase: NAME``), with 0 or 2 DataLoader workers: the whole matrix for a training step, and
every other phase with the cases that failed before. Every case must end with exit 130 (SIGINT) or
143 (SIGTERM), one ``interrupted:`` line and no traceback, and the run recorded as
``interrupted``. The cases run two at a time (the machine has two cores).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ONE_THREAD_ENV, REPO_ROOT

BASE = (
    "trainer=debug",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.enable_progress_bar=false",
    "data.source.count=24",
    "data.source.image_size=64",
    "data.image_size=64",
    "data.batch_size=4",
    "hydra.verbose=nailseg.runs.phases",
)
# What makes each phase long enough to be hit, and how the test knows it is there.
PHASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "start-up": ("after 1.0 s", ()),  # imports, composing and checking the overrides
    "data": ("phase: data", ("data.source.count=1500",)),  # generating the synthetic set
    "cache": ("phase: fit", ("aug=none", "data.cache=device", "data.source.count=400")),
    "sanity check": ("phase: sanity check", ("trainer.num_sanity_val_steps=2",)),
    "train step": ("phase: train step", ()),
    "validation": ("phase: validation", ()),
    "checkpoint": ("phase: checkpoint", ()),
    "test": ("phase: test", ("data.test_fraction=0.3",)),
    "final validation": ("phase: final validation", ("budget=4",)),
}


@dataclass(frozen=True)
class Case:
    signal: str  # SIGINT or SIGTERM
    target: str  # "main" (its PID) or "group" (its process group)
    workers: int
    phase: str

    @property
    def name(self) -> str:
        return f"{self.signal}-{self.target}-w{self.workers}-{self.phase.replace(' ', '_')}"


@dataclass
class Outcome:
    code: int
    stderr: str
    record: dict | None
    hit: bool  # the signal was sent once the phase was reached (not after the run ended)
    log: str = field(repr=False, default="")


CASES = (
    [
        Case(sig, target, workers, "train step")
        for sig in ("SIGINT", "SIGTERM")
        for target in ("main", "group")
        for workers in (0, 2)
    ]
    + [
        # Every other phase with the stop that went wrong most often (SIGTERM to the whole group,
        # workers running), and the SIGINT cases the issue saw fail.
        Case("SIGTERM", "group", 2, phase)
        for phase in PHASES
        if phase != "train step"
    ]
    + [
        Case("SIGINT", "main", 0, "start-up"),
        Case("SIGINT", "group", 2, "validation"),
        Case("SIGINT", "group", 2, "checkpoint"),
    ]
)


def _run_case(case: Case, root: Path) -> Outcome:
    marker, extra = PHASES[case.phase]
    run_dir = root / case.name
    args = [
        *BASE,
        *extra,
        f"data.num_workers={case.workers}",
        f"paths.runs_dir={root}",
        f"paths.data_dir={root / ('data-' + case.name)}",
        f"hydra.run.dir={run_dir}",
    ]
    err_path = root / f"{case.name}.err"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "train.py"), *args],
            env=ONE_THREAD_ENV,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            # As a terminal gives a foreground job (a background job of a script inherits
            # SIGINT ignored).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        start, log = time.monotonic(), run_dir / "train.log"
        hit = False
        while proc.poll() is None and time.monotonic() - start < 180:
            if marker.startswith("after "):
                hit = time.monotonic() - start >= float(marker.split()[1])
            else:
                hit = log.is_file() and marker in log.read_text(errors="replace")
            if hit:
                break
            time.sleep(0.01)
        hit = hit and proc.poll() is None
        number = getattr(signal, case.signal)
        if proc.poll() is None:
            (os.killpg if case.target == "group" else os.kill)(proc.pid, number)
        try:
            code = proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
    record_path = run_dir / "run.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    text = log.read_text(errors="replace") if log.is_file() else ""
    return Outcome(code, err_path.read_text(errors="replace"), record, hit, text)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[Case, Outcome]:
    root = tmp_path_factory.mktemp("stops")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case: pool.submit(_run_case, case, root) for case in CASES}
        return {case: future.result() for case, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_a_stop_is_an_interruption_at_every_phase(
    case: Case, outcomes: dict[Case, Outcome]
) -> None:
    outcome = outcomes[case]
    assert outcome.hit, f"the run ended before it reached {case.phase}:\n{outcome.stderr[-2000:]}"
    expected = 130 if case.signal == "SIGINT" else 143
    assert outcome.code == expected, outcome.stderr[-3000:]
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    last = outcome.stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: "), last
    if case.phase == "start-up" and outcome.record is None:
        return  # stopped before the run dir was made: nothing to record
    assert outcome.record is not None
    assert outcome.record["status"] == "interrupted", outcome.record.get("error")
    assert case.signal in outcome.record["error"]
    if outcome.record.get("last_checkpoint"):
        command = outcome.record["resume_command"]
        assert command.startswith("python train.py resume=") and command in last


def test_a_stop_during_a_checkpoint_write_waits_for_the_write() -> None:
    """``stop.deferred`` holds a stop back until the block (a checkpoint write) is done, then
    hands it on: the block finishes, the stop still comes, and it is remembered."""
    from nailseg.runs import stop

    finished = []
    with stop.catching_stops(), pytest.raises(KeyboardInterrupt):
        with stop.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the signal is handled at a bytecode boundary in here
            finished.append(True)
    assert finished == [True]
    assert stop.requested() == stop.NAMES[signal.SIGINT]
