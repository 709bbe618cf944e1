"""User-facing errors, and the one mapping from an error to a message and an exit status.

Every message names the offending value (and file, where there is one) and says how to fix it.
The entry points print these without a traceback (:func:`report`); anything else is a bug and
keeps its traceback.

Exit status of ``train.py`` and every ``nailseg`` command:

====  ===================================================================================
0     done
1     the answer is no: ``nailseg diff`` found differences; a multirun had failed jobs
2     a user error (:class:`NailsegError`: config, data, command-line arguments)
130   stopped by Ctrl-C (SIGINT); 143: by SIGTERM (the run is recorded as interrupted)
====  ===================================================================================
"""

import difflib
import os
import pickle
import sys
import tempfile
from pathlib import Path


class NailsegError(Exception):
    """Base class for errors caused by user input (config values, data files)."""


class ConfigError(NailsegError):
    """A config value is invalid or contradicts another."""


class DataError(NailsegError):
    """The data on disk is missing, unreadable or inconsistent."""


class EncoderWeightsError(ConfigError):
    """Requested encoder weights cannot be loaded (offline, missing file, wrong keys)."""


class PickledCheckpointError(ConfigError):
    """A checkpoint holds pickled Python objects, not only tensors, and nailseg loads weights only.

    Said in nailseg's words: torch's own message advises loading with ``weights_only=False``,
    which runs whatever code the file holds; a tool must never pass that advice on.
    """

    def __init__(self, path: Path | str) -> None:
        super().__init__(
            f"Checkpoint {path} holds pickled Python objects, not only tensors: nailseg loads"
            " weights only and refuses it. Use a checkpoint that nailseg wrote."
        )
        self.path = path


def refused_pickle(err: BaseException) -> bool:
    """Whether ``err`` is ``torch.load(..., weights_only=True)`` refusing a file that holds
    pickled Python objects (or is a plain pickle). Its message must not be shown: it advises
    the unsafe way (see :class:`PickledCheckpointError`)."""
    return isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err)


def user_error(err: BaseException) -> NailsegError | None:
    """The :class:`NailsegError` behind ``err`` (Hydra wraps constructor errors), if any."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, NailsegError):
        cause = cause.__cause__
    return cause


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (SIGINT) or SIGTERM. Its record says ``interrupted``; the message
    says how to continue it. A ``KeyboardInterrupt``, so a caller's Ctrl-C handling still applies.
    """

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


EXIT_OK, EXIT_NO, EXIT_ERROR = 0, 1, 2


def report(err: BaseException) -> int:
    """Print a user error (or an interruption) as one line on stderr; returns the exit status.

    Examples:
        >>> report(ConfigError("data.image_size=100 is invalid: use a multiple of 32."))
        2
    """
    if isinstance(err, RunInterrupted):
        print(f"interrupted: {err}", file=sys.stderr)
        return err.exit_code
    print(f"error: {user_error(err) or err}", file=sys.stderr)
    return EXIT_ERROR


def unwritable_reason(path: Path | str) -> str | None:
    """Why a folder cannot be created or written at ``path``, or None when nothing says so.

    Looks at the nearest part of ``path`` that exists. Its permissions are not the whole story
    (``/proc`` and ``/sys`` refuse new folders even to root), so a folder is made in it and
    removed again; nothing is left behind.

    Examples:
        >>> unwritable_reason("/etc/hostname/runs")
        '/etc/hostname is a file, not a folder'
    """
    probe = Path(os.path.abspath(Path(path).expanduser()))
    while not os.path.exists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user"
    if probe != Path(os.path.abspath(Path(path).expanduser())):
        try:
            os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".nailseg-probe-"))
        except OSError as err:
            return f"{probe} refuses new folders ({err.strerror or err})"
    return None


def ensure_writable_dir(path: Path | str, what: str, fix: str) -> None:
    """Create ``path`` if needed and check a file can be written in it.

    Raises:
        ConfigError: "``what`` cannot be written: <why>. ``fix``"
    """
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        reason = unwritable_reason(path) or err.strerror or str(err)
        raise ConfigError(f"{what} cannot be written: {reason}. {fix}") from None


def did_you_mean(word: str, options: list[str], prefix: str = "", quote: bool = False) -> str:
    """``" Did you mean data.batch_size?"`` for the closest options, or ``""`` when none is close.

    Examples:
        >>> did_you_mean("batch_sise", ["batch_size", "num_workers"], prefix="data.")
        ' Did you mean data.batch_size?'
    """
    close = [f"{prefix}{c}" for c in difflib.get_close_matches(word, options, n=3)]
    if not close:
        return ""
    return f" Did you mean {' or '.join(repr(c) if quote else c for c in close)}?"
