"""User-facing errors.

Every message names the offending value (and file, where there is one) and says how to fix it.
The entry points print these without a traceback; anything else is a bug and keeps its traceback.
"""


class NailsegError(Exception):
    """Base class for errors caused by user input (config values, data files)."""


class ConfigError(NailsegError):
    """A config value is invalid or contradicts another."""


class DataError(NailsegError):
    """The data on disk is missing, unreadable or inconsistent."""


class EncoderWeightsError(ConfigError):
    """Requested encoder weights cannot be loaded (offline, missing file, wrong keys)."""


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
