"""One writer per run dir: an advisory lock, ``RUN_DIR/.lock``, held for the run's life.

``train.py`` takes it before anything in the dir is written (for ``resume=RUN_DIR``, before the
run is even read to be continued) and keeps it until the process is done with the dir, its final
``run.json`` write included. A second ``train.py`` on the same dir (a resume, a rerun into it,
``hydra.run.dir=`` pointing at it) stops in one line and touches nothing::

    error: Run dir runs/D/T is in use by PID 4242 on gpu-3 (started 2026-11-25T17:26:21+01:00);
    wait for it, or stop it (kill 4242).

The lock is an ``fcntl.flock`` on the file, so the kernel releases it when its process ends,
however it ends. The file is never deleted (two processes could then lock two different files
of the same name); it holds its holder as one line of JSON::

    {"host": "gpu-3", "pid": 4242, "started": "2026-...", "boot_id": "...", "command": "..."}

and is emptied when the holder releases it. A file that still names a holder when the lock is
free was left by a process that died holding it (SIGKILL, out of memory, power): its lock is
taken over and the takeover logged ("took over the lock of dead PID N"). That is only safe when
the holder ran on this machine, where ``flock`` is authoritative: same host name, or same kernel
(``boot_id``: containers of one machine have their own host names). Over a network file system
``flock`` between hosts works only where the file system forwards locks (NFS with a lock
manager, not ``local_lock=...``), so a free lock that names a holder on another host may still
be in use there: such a lock is not taken over. The run is refused with the command that clears
it (delete ``.lock``) once the user knows that process has ended.

A forked child (a DataLoader worker) closes its copy of the lock file at once, so that the
lock goes with the process that took it, not with a worker that outlives it for a few seconds.
Only the lead process of a run takes the lock (:func:`lead_process`): DDP's other ranks write
into the same dir under rank 0's lock. Commands that only read a run (eval, predict, export,
summary, diff) take none.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nailseg.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
# nailseg.runs.record's name; not imported from there, so that taking a lock imports no Hydra.
RUN_JSON = "run.json"

# The environment that names a process's rank in a distributed run (Lightning reads the first
# four at import; torchrun and Lightning's multi-node launch set the others).
_RANK_VARS = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "NODE_RANK", "GROUP_RANK")


class RunDirBusy(ConfigError):
    """Another process is writing the run dir (or may be, on another host)."""


def lead_process() -> bool:
    """Whether this process is the one that locks (and writes) its run dir: not a DDP rank or
    node other than the first, as far as the environment says (read before Lightning is)."""
    for name in _RANK_VARS:
        value = os.environ.get(name, "").strip()
        if value and value != "0":
            return False
    return True


def _boot_id() -> str | None:
    """This kernel's boot id: the same in every container of the machine, new at each boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a run dir's lock, as its lock file says."""

    host: str
    pid: int
    started: str = "?"
    boot_id: str | None = None
    command: str = ""

    @classmethod
    def me(cls) -> Holder:
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            started=_now(),
            boot_id=_boot_id(),
            command=" ".join(sys.argv),
        )

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """The holder a lock file's text names; ``None`` for an empty (released) file.

        Examples:
            >>> Holder.parse('{"host": "h", "pid": 7, "started": "t"}').describe()
            'PID 7 on h (started t)'
            >>> Holder.parse("") is None
            True
        """
        if not text.strip():
            return None
        try:
            data = json.loads(text)
            return cls(
                host=str(data.get("host") or "?"),
                pid=int(data["pid"]),
                started=str(data.get("started") or "?"),
                boot_id=data.get("boot_id"),
                command=str(data.get("command") or ""),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls(host="?", pid=-1, started="?")  # not ours to read: an unknown holder

    def to_text(self) -> str:
        data: dict[str, Any] = {
            "host": self.host,
            "pid": self.pid,
            "started": self.started,
            "boot_id": self.boot_id,
            "command": self.command,
        }
        return json.dumps(data) + "\n"

    def describe(self) -> str:
        if self.pid < 0:
            return "another process (its lock file names no holder this version can read)"
        return f"PID {self.pid} on {self.host} (started {self.started})"

    def on_this_machine(self) -> bool:
        """Whether ``flock`` between this process and the holder is authoritative: the same host
        name, or the same kernel (a container of this machine)."""
        me_boot = _boot_id()
        return self.host == socket.gethostname() or (
            self.boot_id is not None and self.boot_id == me_boot
        )

    def alive(self) -> bool:
        """Whether a process with the holder's PID exists here (meaningful on this machine)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process
            return True
        except (OSError, OverflowError):
            return False
        return True


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 64 * 1024, 0).decode("utf-8", errors="replace")
    except OSError:
        return ""


def busy_message(what: str, run_dir: Path, holder: Holder | None) -> str:
    """The one line that refuses a run dir in use."""
    if holder is None or holder.pid < 0:
        who = holder.describe() if holder else "another process (it has not written its name yet)"
        return f"{what} {run_dir} is in use by {who}; wait for it, or stop it."
    return (
        f"{what} {run_dir} is in use by {holder.describe()}; wait for it, or stop it"
        f" (kill {holder.pid})."
    )


def foreign_message(what: str, run_dir: Path, holder: Holder) -> str:
    """The one line that refuses a lock left by a process on another host."""
    return (
        f"{what} {run_dir} is locked by {holder.describe()}, another host: from here it cannot be"
        " told whether that process still runs (file locks are not reliably shared between"
        f" hosts). Wait for it, or stop it; once it has ended, delete {run_dir / LOCK_FILE} and"
        " run again."
    )


class RunLock:
    """A held lock on a run dir. Taken with :func:`lock_run_dir`, counted: the lock is released
    (its file emptied, then unlocked) when every taker has called :meth:`release`."""

    def __init__(self, run_dir: Path, fd: int | None) -> None:
        self.run_dir, self.fd, self.count = run_dir, fd, 0
        # The takeover of a dead holder's lock, until it is logged (see flush_notes).
        self.note: str | None = None

    @property
    def path(self) -> Path:
        return self.run_dir / LOCK_FILE

    @property
    def held(self) -> bool:
        return self.count > 0

    def release(self) -> None:
        if self.count <= 0:
            return
        self.count -= 1
        if self.count:
            return
        _held.pop(str(self.run_dir), None)
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # released: the next taker sees nobody to take over from
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# The locks this process holds, by real path of their dir; and the open holding() blocks.
_held: dict[str, RunLock] = {}
_scopes: list[list[RunLock]] = []


def _forget_in_child() -> None:
    """In a forked child (a DataLoader worker): close the copies of the lock files. A copy would
    hold the lock after the parent died (a worker outlives a killed parent by seconds); closing
    it leaves the parent's lock as it is (only an unlock, or the last close, releases one)."""
    for lock in _held.values():
        if lock.fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock.fd)
        lock.fd, lock.count = None, 0
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _take(run_dir: Path, what: str) -> RunLock:
    """Open and lock ``run_dir/.lock`` (creating it), or refuse; writes the holder into it."""
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise ConfigError(
            f"{what} {run_dir} cannot be locked for writing: cannot open {path}"
            f" ({err.strerror}). Use a run dir you can write (or ask the owner of {path})."
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = Holder.parse(_read(fd))
        os.close(fd)
        raise RunDirBusy(busy_message(what, run_dir, holder)) from None
    except OSError as err:
        os.close(fd)
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        # A file system without locks (some network mounts): run as before this lock existed.
        log.warning(
            "%s %s cannot be locked (%s): nothing stops a second process from writing it",
            what,
            run_dir,
            err.strerror,
        )
        return RunLock(run_dir, None)
    lock = RunLock(run_dir, fd)
    try:
        previous = Holder.parse(_read(fd))
        if previous is not None and previous.pid >= 0:
            if not previous.on_this_machine():
                raise RunDirBusy(foreign_message(what, run_dir, previous))
            if previous.pid == os.getpid():
                pass  # this process's own, not emptied when it let go
            elif previous.alive():
                lock.note = (
                    f"{what} {run_dir}: took over the lock of {previous.describe()}: that PID"
                    " runs, but does not hold the lock (the dir was copied, or the PID reused)"
                )
            else:
                lock.note = (
                    f"{what} {run_dir}: took over the lock of dead PID {previous.pid} on"
                    f" {previous.host} (started {previous.started})"
                )
        os.ftruncate(fd, 0)
        os.pwrite(fd, Holder.me().to_text().encode(), 0)
    except BaseException:
        fcntl.flock(fd, fcntl.LOCK_UN)  # the file as it was: nothing written yet
        os.close(fd)
        raise
    return lock


def lock_run_dir(run_dir: Path | str, what: str = "Run dir") -> RunLock:
    """Take the lock of ``run_dir`` (an existing folder) for this process, or refuse.

    Taking a lock this process already holds only counts it again: each call wants one
    :meth:`RunLock.release`. Taking over a dead holder's lock is logged by :func:`flush_notes`,
    once the caller's log is set up (a run session's is).

    Raises:
        RunDirBusy: a live process holds it (its PID, host and start in the message), or the lock
            file names a holder on another host.
        ConfigError: the lock file cannot be opened.
    """
    key = os.path.realpath(run_dir)
    lock = _held.get(key)
    if lock is None:
        lock = _take(Path(key), what)
        _held[key] = lock
    lock.count += 1
    if _scopes and lock not in _scopes[-1]:
        lock.count += 1  # kept until the holding() block ends
        _scopes[-1].append(lock)
    return lock


@contextlib.contextmanager
def locked(run_dir: Path | str, what: str = "Run dir") -> Iterator[RunLock]:
    """:func:`lock_run_dir` for the length of a ``with`` block."""
    lock = lock_run_dir(run_dir, what)
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def holding() -> Iterator[None]:
    """Keep every lock taken inside the block until the block ends (a job's last log line comes
    after its record's)."""
    scope: list[RunLock] = []
    _scopes.append(scope)
    try:
        yield
    finally:
        _scopes.remove(scope)
        for lock in scope:
            lock.release()


def flush_notes() -> None:
    """Log the takeovers of dead holders' locks not logged yet."""
    for lock in list(_held.values()):
        if lock.note:
            note, lock.note = lock.note, None
            log.warning("%s", note)


def is_locked(run_dir: Path | str) -> bool:
    """Whether this process holds the lock of ``run_dir``."""
    lock = _held.get(os.path.realpath(run_dir))
    return lock is not None and lock.held


def check_free(run_dir: Path | str, what: str = "Run dir") -> None:
    """Refuse ``run_dir`` if another process holds its lock; creates and writes nothing.

    Raises:
        RunDirBusy: as :func:`lock_run_dir`, for a live holder only.
    """
    if is_locked(run_dir):
        return
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # no lock file: nobody has locked it (or it cannot be read: the run will say)
    try:
        # Shared: an exclusive lock needs a writable file over NFS; a shared one still conflicts
        # with the holder's exclusive lock.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunDirBusy(busy_message(what, Path(run_dir), Holder.parse(_read(fd)))) from None
    except OSError:
        pass
    finally:
        os.close(fd)  # closing releases the shared lock


def resume_target(value: Any) -> Path | None:
    """The run dir ``resume=VALUE`` names (a run dir, its run.json, or a .ckpt inside one), or
    ``None`` when it names none (the resume then says why itself)."""
    if value is None or value == "":
        return None
    path = Path(str(value)).expanduser()
    if path.suffix == ".ckpt":
        if not path.is_file():
            return None
        return next((d for d in path.resolve().parents if (d / RUN_JSON).is_file()), None)
    if path.name == RUN_JSON and path.is_file():
        path = path.parent
    return path.resolve() if (path / RUN_JSON).is_file() else None
