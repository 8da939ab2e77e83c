"""A run folder's life: its lock, its staging folder, the swap that publishes it, its fingerprint.

Layout of ``DIR``::

    DIR/results.zarr      the finished run (its arrival is what makes DIR finished)
    DIR/expression.zarr   the run's expression store (unless the input was a store)
    DIR/report.html
    DIR/.partial/         a run in progress or interrupted: the same three, until it succeeds
    DIR/.previous/        only during a swap: the run being replaced
    DIR/.lock             held (``flock``) by the process writing DIR; names its holder

A new run is built in ``.partial`` and swapped in only when it succeeded, so no failure,
Ctrl-C or kill of a rerun can destroy the finished run it would replace. The lock is an
operating-system lock: a second process is refused at once, and the lock of a process that
died (even by SIGKILL) is released by the kernel and taken over by the next run.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path

from ._utils import remove
from .errors import InputError, RunLockedError

logger = logging.getLogger(__name__)

RESULTS, EXPRESSION, REPORT = "results.zarr", "expression.zarr", "report.html"
_PARTIAL, _PREVIOUS, _LOCK = ".partial", ".previous", ".lock"


class RunFolder:
    """The output folder of ``run_pipeline``; see the module docstring for its layout."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"the output folder {self.path} exists and is not a folder")

    @property
    def partial(self) -> Path:
        return self.path / _PARTIAL

    @property
    def finished(self) -> bool:
        return (self.path / RESULTS).exists()

    @property
    def interrupted(self) -> bool:
        return (self.partial / RESULTS).exists()

    @contextmanager
    def lock(self):
        """Hold DIR's lock, or raise ``RunLockedError`` naming the process that holds it."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
                raise RunLockedError(f"{self.path} is being written by another run ({holder}); wait for it to end "
                                     "or choose another output folder") from None
            stale = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            if stale:
                logger.info("taking over the lock of %s from a run that ended without releasing it (%s)",
                            self.path, stale)
            os.ftruncate(fd, 0)
            now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now}\n".encode(), 0)
            self._recover()
            try:
                yield self
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the flock

    def start_afresh(self) -> Path:
        """An empty staging folder for a new run (an interrupted one there is discarded)."""
        remove(self.partial)
        self.partial.mkdir()
        return self.partial

    def publish(self) -> None:
        """Swap the staged run in: the old run aside, the new one in (results last), the old one deleted."""
        previous = self.path / _PREVIOUS
        previous.mkdir(exist_ok=True)
        for name in (RESULTS, EXPRESSION, REPORT):  # results first out: DIR stops looking finished
            if (self.path / name).exists():
                os.replace(self.path / name, previous / name)
        for name in (EXPRESSION, REPORT, RESULTS):  # results last in: DIR looks finished when all is there
            if (self.partial / name).exists():
                os.replace(self.partial / name, self.path / name)
        remove(previous)
        remove(self.partial)

    def _recover(self) -> None:
        """Finish or undo a swap that was interrupted (called under the lock)."""
        previous = self.path / _PREVIOUS
        if not previous.exists():
            return
        if not self.finished:  # the new results never arrived: put the old run back
            self.partial.mkdir(exist_ok=True)
            for name in os.listdir(previous):
                if (self.path / name).exists():
                    os.replace(self.path / name, self.partial / name)
                os.replace(previous / name, self.path / name)
            logger.warning("restored the finished run of %s after an interrupted replacement", self.path)
        remove(previous)


# --- fingerprints: what determines a run's result ------------------------------------------


def path_fingerprint(path: str | os.PathLike) -> dict:
    """A file's or folder's identity: absolute path, total size, latest modification time."""
    path = Path(path).resolve()
    if path.is_dir():
        size = mtime = 0
        for root, _, files in os.walk(path):
            for name in files:
                stat = os.stat(os.path.join(root, name))
                size, mtime = size + stat.st_size, max(mtime, stat.st_mtime_ns)
    else:
        stat = path.stat()
        size, mtime = stat.st_size, stat.st_mtime_ns
    return {"path": str(path), "size": size, "mtime_ns": mtime}


def content_fingerprint(*parts) -> dict:
    """The SHA-1 of in-memory data: numeric arrays, sparse matrices, DataFrames, lists of names."""
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    digest = hashlib.sha1()
    for part in parts:
        if sp.issparse(part):
            part = part.tocsr()
            for array in (part.data, part.indices, part.indptr, np.asarray(part.shape)):
                digest.update(np.ascontiguousarray(array).view(np.uint8))
        elif isinstance(part, pd.DataFrame):
            digest.update(pd.util.hash_pandas_object(part, index=False).to_numpy().view(np.uint8))
            digest.update("\0".join(map(str, part.columns)).encode())
        elif isinstance(part, np.ndarray) and np.issubdtype(part.dtype, np.number):
            digest.update(np.ascontiguousarray(part).view(np.uint8))
            digest.update(str(part.shape).encode())
        elif isinstance(part, (list, tuple)) and all(isinstance(p, (str, int)) for p in part):
            digest.update("\0".join(map(str, part)).encode())
        else:
            raise InputError(f"cannot fingerprint a {type(part).__name__} for --resume; give a numpy array, a "
                             "scipy.sparse matrix or a file")
    return {"sha1": digest.hexdigest()}


def changes(old: dict, new: dict) -> list[str]:
    """What differs between two fingerprints, one phrase per section ("input flags (log1p: False -> True)")."""
    words = {"input": "input", "adjacencies": "adjacency file", "input_flags": "input flags",
             "resources": "resources", "params": "parameters"}
    found = []
    for section, word in words.items():
        before, after = old.get(section), new.get(section)
        if before == after:
            continue
        if before is None or after is None:
            found.append(f"{word} ({'given now, none before' if before is None else 'given before, none now'})")
        elif isinstance(before, dict) and isinstance(after, dict):
            keys = [k for k in dict.fromkeys([*before, *after]) if before.get(k) != after.get(k)]
            found.append(f"{word} ({'; '.join(f'{k}: {before.get(k)!r} -> {after.get(k)!r}' for k in keys[:4])})")
        else:
            found.append(f"{word} ({before!r} -> {after!r})")
    return found
