"""The small exception family of flashscenic.

Each class also subclasses the built-in a caller would naturally catch (``ValueError``,
``FileNotFoundError``), so ``except ValueError`` keeps working, while the command line can
tell a user mistake (print one line) from a bug (print the traceback).
"""


class FlashscenicError(Exception):
    """Base class of every error flashscenic raises on purpose."""


class InputError(FlashscenicError, ValueError):
    """The caller's data or arguments are wrong; the message says what and how to fix it."""


class MissingFileError(InputError, FileNotFoundError):
    """An input file that does not exist; catchable as FileNotFoundError too."""


class MissingDependencyError(FlashscenicError, ImportError):
    """An optional package a step needs is not installed; catchable as ImportError too."""
