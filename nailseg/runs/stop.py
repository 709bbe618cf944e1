"""Stop requests: the SIGINT or SIGTERM a run's main process received, whatever it interrupted.

``timeout``, SLURM, ``docker stop``, Kubernetes and a terminal's Ctrl-C signal every process of
the job. With DataLoader workers the workers often die first, and the main process then sees
``RuntimeError: DataLoader worker (pid N) is killed by signal`` instead of the signal; a signal
that lands inside ``torch.save`` surfaces as a ``RuntimeError`` from its writer; one that lands
before Lightning's ``fit`` has installed its SIGTERM handler would end the process with no record
at all. So the run remembers the first stop signal itself, and an exception that follows one is
the stop, not a failure (:func:`nailseg.runs.session.stop_signal`).

- SIGINT: remembered, then ``KeyboardInterrupt`` as Python's own handler raises it.
- SIGTERM: remembered; inside ``Trainer.fit``/``validate``/``test`` Lightning's own handler (which
  calls this one too) stops at the next batch; anywhere else this one raises
  :class:`TerminateRequested` at once.

Lightning's handlers are composed on top of whatever is installed, so nothing here replaces them.
SIGUSR1 (Lightning's SLURM requeue signal with ``auto_requeue``) and SIGUSR2 (submitit's
preemption signal) are left to those libraries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

# DEBUG lines "phase: NAME" as a run enters each phase; `hydra.verbose=nailseg.runs.phases` shows
# them (the signal tests wait for them).
phases = logging.getLogger("nailseg.runs.phases")
NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}
_received: list[str] = []
_forking = False
_installed = 0  # catching_stops blocks open in this process


class TerminateRequested(KeyboardInterrupt):
    """SIGTERM outside Lightning's loops: stop now (a ``KeyboardInterrupt``, so every cleanup
    that Ctrl-C runs runs for it too)."""


def requested() -> str | None:
    """The first stop signal received since :func:`catching_stops` began, e.g. ``"SIGTERM"``."""
    return _received[0] if _received else None


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _received.append(NAMES[signal.SIGINT])
    if not _forking:  # raised in an at-fork hook, Python would only print it: check() will raise
        raise KeyboardInterrupt


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _received.append(NAMES[signal.SIGTERM])
    # Inside fit/validate/test Lightning has composed this handler into its own, which stops the
    # loop at the next batch and saves what it can; raising here would cut that short.
    if signal.getsignal(signal.SIGTERM) is _on_sigterm and not _forking:
        raise TerminateRequested


def _before_fork() -> None:
    global _forking
    _forking = True


def _after_fork_in_parent() -> None:
    global _forking
    _forking = False


def _after_fork_in_child() -> None:
    """A process forked during a run (a DataLoader worker) leaves stops to the main process,
    which shuts its workers down: SIGINT and SIGTERM are ignored there from the fork on. (A
    DataLoader worker then installs torch's own SIGTERM handler, which ends it; its death reaches
    the main process through torch's SIGCHLD handler, which :func:`deferred` holds back during a
    checkpoint write.) A worker whose main process is killed outright still ends: torch's workers
    watch their parent."""
    global _forking, _installed
    _forking = False
    if active():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _installed = 0
    _received.clear()


# Registered at import, after logging's: the "before" hook runs first and the "after" hooks last,
# so the whole fork, logging's lock juggling included, is covered.
os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


@contextlib.contextmanager
def catching_stops() -> Iterator[None]:
    """Remember stop signals for the length of the block (main thread only; elsewhere, e.g. a
    launcher's worker thread, nothing is installed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in NAMES}
    _received.clear()
    # A background job of a non-interactive shell starts with SIGINT ignored: keep it ignored,
    # as the shell asked.
    if previous[signal.SIGINT] is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_sigint)
    signal.signal(signal.SIGTERM, _on_sigterm)
    global _installed
    _installed += 1
    try:
        yield
    finally:
        _installed -= 1
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def active() -> bool:
    """Whether a :func:`catching_stops` block is open in this process (Lightning may have
    composed its own SIGTERM handler on top of ours meanwhile)."""
    return _installed > 0


def run_command(main: Callable[[], int]) -> int:
    """A command's whole life with stop signals remembered, from before its heavy imports.

    A stop inside a run is recorded by the run (``interrupted``, :mod:`nailseg.runs.session`) and
    surfaces as :class:`~nailseg.errors.RunInterrupted`; one outside any run (importing,
    composing and checking the overrides) has nothing to record: one line, exit 130 or 143.
    """
    from nailseg.errors import RunInterrupted, report

    with catching_stops():
        try:
            return main()
        except RunInterrupted as err:
            return report(err)
        except KeyboardInterrupt:
            name = requested() or NAMES[signal.SIGINT]
            code = 143 if name == NAMES[signal.SIGTERM] else 130
            return report(RunInterrupted(f"{name} stopped it before a run started", code))


def check() -> None:
    """Stop now if a stop signal came and its exception was lost on the way (a signal handler
    that raises inside an at-fork hook or a finaliser: Python prints "Exception ignored" and goes
    on). Called between a run's phases and, by :class:`~nailseg.runs.session.StopCheck`, at
    every batch."""
    name = requested()
    if name is not None:
        raise TerminateRequested if name == NAMES[signal.SIGTERM] else KeyboardInterrupt


def enter(phase: str) -> None:
    """A run enters ``phase``: stop here if a stop came (:func:`check`), else log it (DEBUG)."""
    check()
    phases.debug("phase: %s", phase)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGCHLD back for the length of the block (a checkpoint write),
    then hand them to their handlers.

    A handler that raises inside ``torch.save``'s writer (ours for a stop, or torch's SIGCHLD
    handler when a DataLoader worker died of the same stop) leaves a half-written zip writer
    whose destructor aborts the process at exit. Held back, the write completes, and the stop
    comes right after it. Main thread only (elsewhere the block runs as it is).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[tuple[int, FrameType | None]] = []
    kinds = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)
    previous = {sig: signal.getsignal(sig) for sig in kinds}

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append((signum, frame))

    for sig in kinds:
        if callable(previous[sig]):  # an ignored or default disposition stays as it is
            signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if callable(handler):
                signal.signal(sig, handler)
        for signum, frame in held:
            previous[signum](signum, frame)
