"""Where a run's tasks run: one protocol, two executors.

``InProcessExecutor`` (here) runs tasks one after another in this process;
``flashscenic.distributed.DaskExecutor`` runs them on a Dask cluster (embedded, external,
or a ``distributed.Client`` the caller already has). ``start_executor`` in
``flashscenic.distributed`` picks one. The engine only speaks this protocol, so the
result cannot depend on the executor.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from typing import ContextManager, Protocol, runtime_checkable

from tqdm.auto import tqdm

__all__ = ["Executor", "InProcessExecutor"]


@runtime_checkable
class Executor(Protocol):
    """What the engine asks of an executor."""

    name: str  # for messages: "in process", "Dask LocalCluster: 2 workers x 1 thread"
    remote: bool  # tasks run in other processes (they do not see this process's state)
    slots: int  # tasks that run at once

    def share(self, value):
        """A value every task of the next ``map`` needs (a Dask executor scatters it once)."""

    def map(self, function: Callable, arguments: Sequence[tuple], *, description: str, gpu: bool = False,
            verbose: bool = True) -> list:
        """``[function(*args) for args in arguments]``, in order, with a progress bar."""

    def stage(self, name: str) -> ContextManager:
        """A context naming the stage its tasks belong to (Dask: a span on the dashboard)."""

    def close(self) -> None:
        """Release what the executor started (never a client or cluster it was given)."""


# The protocol's members, read from it: its attributes, then its methods.
_MEMBERS = tuple(Executor.__annotations__) + tuple(
    name for name, value in vars(Executor).items() if callable(value) and not name.startswith("_"))
_ABSENT = object()


def is_executor(value) -> bool:
    """Whether ``value`` has the ``Executor`` members, looked up without reading them:
    ``isinstance(value, Executor)`` reads every one on Python 3.11, and a starting
    cluster's ``name`` and ``slots`` wait for its workers."""
    if isinstance(value, type):
        return False
    if hasattr(type(value), "__getattr__"):  # a proxy: its members exist only when asked for
        return all(hasattr(value, m) for m in _MEMBERS)
    return all(inspect.getattr_static(value, m, _ABSENT) is not _ABSENT for m in _MEMBERS)


class InProcessExecutor:
    """Runs tasks one after another in this process (``--n-workers 0``)."""

    name = "in process"
    remote = False
    slots = 1

    def share(self, value):
        return value

    def map(self, function: Callable, arguments: Sequence[tuple], *, description: str, gpu: bool = False,
            verbose: bool = True) -> list:
        return [function(*args) for args in tqdm(arguments, desc=description, unit="task",
                                                  disable=None if verbose and len(arguments) > 1 else True)]

    def stage(self, name: str) -> ContextManager:
        return contextlib.nullcontext()

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
