"""The exception family of flashscenic, re-exported from ``flashscenic``.

Each class also subclasses the built-in a caller would naturally catch (``ValueError``,
``FileNotFoundError``, ``OSError``, ``RuntimeError``), so ``except ValueError`` keeps
working, while the command line can tell a user mistake (``FlashscenicError``: one line)
from a bug (a traceback).
"""

__all__ = [
    "FlashscenicError",
    "InputError",
    "MissingFileError",
    "MissingDependencyError",
    "DownloadError",
    "ChecksumError",
    "ResourceNotFoundError",
    "RunExistsError",
    "ResumeMismatchError",
    "RunLockedError",
    "IncompleteStageError",
]


class FlashscenicError(Exception):
    """Base class of every error flashscenic raises on purpose."""


class InputError(FlashscenicError, ValueError):
    """The caller's data or arguments are wrong; the message says what and how to fix it."""


class MissingFileError(InputError, FileNotFoundError):
    """An input file that does not exist; catchable as FileNotFoundError too."""


class MissingDependencyError(FlashscenicError, ImportError):
    """An optional package a step needs is not installed; catchable as ImportError too."""


class DownloadError(FlashscenicError, OSError):
    """A resource could not be downloaded (network, server or disk); the message says what to do."""


class ChecksumError(DownloadError):
    """A downloaded file does not match its published SHA-1; the bad download is deleted."""


class ResourceNotFoundError(FlashscenicError, FileNotFoundError):
    """A resource is not in the cache and may not be downloaded (offline mode)."""


class RunExistsError(InputError, FileExistsError):
    """The output folder already holds a run; resume it or overwrite it explicitly."""


class ResumeMismatchError(InputError):
    """A resume whose input, adjacencies, flags, resources or parameters differ from the run's."""


class RunLockedError(FlashscenicError, RuntimeError):
    """Another live process is writing this run folder."""


class IncompleteStageError(InputError):
    """A reader asked for a stage that the run has not finished (resume the run first)."""
