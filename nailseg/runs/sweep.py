"""Multiruns (``train.py -m``): every job runs, each failure is recorded, a summary ends the sweep.

Hydra's job runner catches an ``Exception`` from a job, records the job as failed and goes on to
the next; after the last job it raises the first failure. So a job that stops on a user error
raises :class:`JobFailed` (a compact Hydra error: one line at the end, no traceback) instead of
exiting, and :func:`sweep_summary` lists every job's outcome once the sweep is over, with a
non-zero exit status when any failed. Each job's ``run.json`` records its own failure; the
sweep dir's ``summary.csv``/``.md``/``.png`` (:mod:`nailseg.runs.summary`) tabulate them all.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode


class JobFailed(CompactHydraException):
    """A multirun job stopped on a user error; the sweep goes on to the next job."""


@dataclass
class Job:
    """One job of the multirun in this process, and how it ended."""

    num: int
    overrides: list[str]
    sweep_dir: str
    status: str = "running"
    detail: str = ""

    def finish(self, status: str, detail: str = "") -> None:
        self.status, self.detail = status, detail


# A search's pruned trial ended as asked: not a failure of the sweep.
ENDED_WELL = ("completed", "pruned")

# The jobs this process ran in the current multirun (Hydra's basic launcher runs them in turn).
_jobs: list[Job] = []


def current_job() -> Job | None:
    """The running multirun job (registered for the summary), or None outside a multirun."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return None
    job = Job(
        num=int(hydra.job.num),
        overrides=list(hydra.overrides.task),
        sweep_dir=str(hydra.sweep.dir),
    )
    _jobs.append(job)
    return job


def summary_lines(jobs: list[Job]) -> list[str]:
    """A heading and one line per job: its overrides (those shared by every job left out), its
    outcome and its run dir."""
    shared = set.intersection(*(set(j.overrides) for j in jobs)) if len(jobs) > 1 else set()
    counts = Counter(j.status for j in jobs if j.status != "completed")
    head = ", ".join(f"{n} of {len(jobs)} jobs {status}" for status, n in counts.items())
    lines = [
        f"Multirun: {head or f'{len(jobs)} job(s) completed'} (sweep dir {jobs[0].sweep_dir}):"
    ]
    overrides = [" ".join(o for o in j.overrides if o not in shared) for j in jobs]
    width = max(map(len, overrides))
    for job, changed in zip(jobs, overrides, strict=True):
        detail = job.detail if len(job.detail) <= 160 else job.detail[:157] + "..."
        lines.append(f"  #{job.num:<3} {job.status:<11} {changed:<{width}}  {detail}".rstrip())
    if counts:
        lines.append("Each job's run.json (in its run dir under the sweep dir) holds its outcome.")
    table = Path(jobs[0].sweep_dir) / "summary.csv"  # nailseg.runs.summary writes it
    if table.is_file():
        lines.append(f"Summary table: {table} (and summary.md, summary.png)")
    return lines


@contextlib.contextmanager
def sweep_summary() -> Iterator[None]:
    """Around Hydra's main: after a multirun, print each job's outcome; exit 1 if any failed.

    Outside a multirun (no job registered) it does nothing.
    """
    _jobs.clear()
    try:
        yield
    finally:
        jobs = list(_jobs)
        _jobs.clear()
        if jobs:
            bad = any(j.status not in ENDED_WELL for j in jobs)
            print("\n".join(summary_lines(jobs)), file=sys.stderr if bad else sys.stdout)
    if jobs and any(j.status not in ENDED_WELL for j in jobs):
        sys.exit(1)  # Hydra normally exits first, re-raising the first failed job
