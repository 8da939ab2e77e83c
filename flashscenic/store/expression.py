"""The expression store: any input, written once into a chunked zarr store, read a chunk at a time.

Why a store at all: atlas-scale expression (millions of cells) does not fit in one
process's memory, and every distributed stage needs the same rows in the same order. So
the input, whatever its format, is written once into a zarr v3 group, row-chunked, and
every later stage reads chunks from it; no stage ever holds the whole matrix.

``ingest_expression`` writes it (reading the input through ``flashscenic.io``),
``open_expression_store`` reads it. A zarr v3 group in AnnData's on-disk layout, so
``anndata.read_zarr(path)`` opens it: ``X`` dense (row chunks of ``chunk_rows`` x all
genes) or CSR (``data``/``indices``/``indptr``), float32; ``obs`` with the cell names and
the chosen cell-label columns; ``var`` with the gene names. Every node carries anndata's
``encoding-type`` / ``encoding-version``; the root also carries ``flashscenic-expression``
(format version, ``chunk_rows``, how it was made, and ``complete``). The store is written
under a temporary name and renamed at the end, so an interrupted ingest never leaves a
store that looks complete.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import platform
import queue
import re
import threading
from collections.abc import Sequence
from contextlib import closing
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr
from tqdm.auto import tqdm

from .._utils import atomic_path, check_unique, read_text
from ..errors import InputError, MissingFileError
from ..io import (
    ExpressionSource,
    _as_text,
    _check_read,
    _check_source,
    _index,
    _prepare,
    _read_elem,
    _Scanner,
    open_expression,
)

__all__ = ["EXPRESSION_FORMAT", "ExpressionStore", "ingest_expression", "open_expression_store", "is_expression_store"]

logger = logging.getLogger(__name__)

EXPRESSION_FORMAT = "flashscenic-expression"
EXPRESSION_VERSION = "0.1.0"
DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of one dense float32 row chunk
_SPARSE_CHUNK = 2**20  # elements per zarr chunk of the CSR data and indices arrays

Layout = Literal["auto", "dense", "csr"]
Kind = Literal["dense", "csr"]


# --- small helpers -----------------------------------------------------------------------


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _package_versions() -> dict[str, str | None]:
    """Versions of the packages a result depends on, read from metadata (nothing imported)."""
    names = ("flashscenic", "numpy", "scipy", "pandas", "torch", "zarr", "anndata", "pyarrow", "h5py",
             "regdiffusion", "dask", "distributed")
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _parse_memory(value: int | str) -> int:
    """``268435456``, ``'256MB'``, ``'2GiB'``, ``'512M'`` -> bytes (KB/MB/GB taken as binary)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        number, unit = float(value), ""
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", value)
        if not match:
            raise InputError(f"memory_budget={value!r} is not a size; write e.g. 268435456, '256MB' or '2GB'")
        number, unit = float(match.group(1)), match.group(2).upper()
    else:
        raise InputError(f"memory_budget must be a number of bytes or a size like '256MB', got {value!r}")
    size = int(number * 1024 ** "_KMGT".index(unit or "_"))
    if size <= 0:
        raise InputError(f"memory_budget must be positive, got {value!r}")
    return size


def _check_version(found: str | None, supported: str, what: str, path) -> None:
    """Refuse a format whose major.minor is newer than this code's (anndata's rule)."""
    if found is None:
        raise InputError(f"{path} has no {what} format version; it was not written by flashscenic")
    try:
        got = tuple(int(x) for x in str(found).split("."))[:2]
    except ValueError:
        raise InputError(f"{path}: unreadable {what} format version {found!r}") from None
    if got > tuple(int(x) for x in supported.split("."))[:2]:
        raise InputError(
            f"{path} is a {what} of format {found}, newer than this flashscenic reads ({supported}); "
            "upgrade flashscenic"
        )


def _quiet_anndata_write(group, key: str, value) -> None:
    """``anndata.io.write_elem`` without its zarr-v3 auto-sharding notice (we shard nothing)."""
    from anndata.io import write_elem

    write_elem(group, key, value, dataset_kwargs={"shards": None})


# --- writing -----------------------------------------------------------------------------


Compression = Literal["lz4", "zstd", "none"]
COMPRESSIONS = ("lz4", "zstd", "none")


def _codecs(kind: str, compression: Compression = "zstd"):
    """zarr compressors for ``kind`` ('values' or 'indices').

    ``'lz4'`` (Blosc lz4 with bit-shuffle for values, byte-shuffle for indices) writes and
    reads at several GB/s, so ingest keeps pace with reading the input; ``'zstd'`` (level 1)
    makes stores several times smaller at about a third of the speed; ``'none'`` stores raw
    bytes. Results arrays (small next to the expression) always use zstd.
    """
    from zarr.codecs import BloscCodec, ZstdCodec

    if compression == "none":
        return None
    if compression == "zstd":
        return [ZstdCodec(level=1)]
    shuffle = "bitshuffle" if kind == "values" else "shuffle"
    return [BloscCodec(cname="lz4", clevel=5, shuffle=shuffle)]


# Write every chunk, without first comparing it with the fill value (a pass over the data
# that only pays off for arrays with many empty chunks, which X never has).
_WRITE_ALL = {"write_empty_chunks": True}


class _Appender:
    """Appends to a 1-D zarr array, buffering so that only whole chunks are written (no read-modify-write)."""

    def __init__(self, array):
        self.array, self.chunk = array, array.chunks[0]
        self.size = 0  # elements written
        self.pending: list[np.ndarray] = []
        self.n_pending = 0

    def append(self, values: np.ndarray) -> None:
        if self.n_pending + values.size < self.chunk:
            self.pending.append(values)
            self.n_pending += values.size
            return
        if self.n_pending:  # complete the pending chunk (a small copy), then write from ``values`` directly
            fill = self.chunk - self.n_pending
            self._write(np.concatenate([*self.pending, values[:fill]]))
            values = values[fill:]
        whole = values.size - values.size % self.chunk
        if whole:
            self._write(values[:whole])
        rest = values[whole:]
        self.pending, self.n_pending = ([rest.copy()] if rest.size else []), rest.size

    def finish(self) -> int:
        if self.n_pending:
            self._write(np.concatenate(self.pending))
            self.pending, self.n_pending = [], 0
        return self.size

    def _write(self, values: np.ndarray) -> None:
        stop = self.size + values.size
        if stop > self.array.shape[0]:
            self.array.resize((stop,))
        self.array[self.size : stop] = values
        self.size = stop


class _XWriter:
    """Writes X (dense or CSR) row block by row block, blocks of any size, whole zarr chunks at a time."""

    def __init__(self, group, layout: Kind, n_genes: int, n_cells_hint: int, chunk_rows: int,
                 compression: Compression = "lz4"):
        self.layout, self.n_genes, self.n_rows, self.nnz = layout, n_genes, 0, 0
        self.compression = compression
        if layout == "dense":
            self.chunk_rows, self.pending, self.n_pending = chunk_rows, [], 0
            self.x = group.create_array("X", shape=(n_cells_hint, n_genes), chunks=(chunk_rows, n_genes),
                                        dtype="float32", compressors=_codecs("values", compression), fill_value=0.0,
                                        config=_WRITE_ALL)
            return
        x = group.create_group("X")
        index_dtype = "int32" if n_genes < 2**31 else "int64"
        self.data = _Appender(x.create_array("data", shape=(0,), chunks=(_SPARSE_CHUNK,), dtype="float32",
                                             compressors=_codecs("values", compression), fill_value=0.0,
                                             config=_WRITE_ALL))
        self.indices = _Appender(x.create_array("indices", shape=(0,), chunks=(_SPARSE_CHUNK,), dtype=index_dtype,
                                                compressors=_codecs("indices", compression), fill_value=0,
                                                config=_WRITE_ALL))
        self.index_dtype = np.dtype(index_dtype)
        self.indptr = [np.zeros(1, dtype=np.int64)]
        self.group = x

    def write(self, block) -> None:
        n = block.shape[0]
        self.n_rows += n
        if self.layout == "dense":
            dense = block.toarray() if sp.issparse(block) else block
            self.nnz += int(np.count_nonzero(dense))
            self.pending.append(dense)
            self.n_pending += n
            if self.n_pending >= self.chunk_rows:  # write whole chunks only: no read-modify-write
                self._flush(whole_chunks=True)
        else:
            csr = block if sp.issparse(block) else sp.csr_matrix(block)
            self.data.append(np.asarray(csr.data, dtype=np.float32))
            self.indices.append(np.asarray(csr.indices, dtype=self.index_dtype))
            self.indptr.append(np.asarray(csr.indptr[1:], dtype=np.int64) + self.nnz)
            self.nnz += int(csr.indptr[-1])

    def _flush(self, whole_chunks: bool) -> None:
        rows = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        n = rows.shape[0] - rows.shape[0] % self.chunk_rows if whole_chunks else rows.shape[0]
        start = self.n_rows - self.n_pending
        if start + n > self.x.shape[0]:
            self.x.resize((start + n, self.n_genes))
        self.x[start : start + n] = rows[:n]
        rest = rows[n:]
        self.pending, self.n_pending = ([rest] if rest.shape[0] else []), rest.shape[0]

    def finish(self) -> None:
        if self.layout == "dense":
            if self.n_pending:
                self._flush(whole_chunks=False)
            if self.x.shape[0] != self.n_rows:
                self.x.resize((self.n_rows, self.n_genes))
            self.x.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
            return
        self.data.finish()
        self.indices.finish()
        indptr = np.concatenate(self.indptr)
        array = self.group.create_array("indptr", shape=indptr.shape, chunks=(max(1, min(indptr.size, 2**20)),),
                                        dtype="int64", compressors=_codecs("indices", self.compression),
                                        fill_value=0)
        array[:] = indptr
        self.group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                                 "shape": [self.n_rows, self.n_genes]})


class _Prefetch:
    """Iterate ``(start, prepare(start, block))`` over ``blocks``, read and checked ahead in a thread.

    Reading and checking the next blocks overlaps with the caller writing this one (h5py,
    pandas and zarr's compressors release the GIL for most of their work). Reading starts
    at once, so the caller can do other work first. ``close()`` (or leaving a ``closing``
    block, however it ends) stops the thread and releases the input at once.
    """

    _DONE = object()

    def __init__(self, blocks, prepare, depth: int = 2):
        self._items: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(blocks, prepare), daemon=True,
                                        name="flashscenic-ingest-reader")
        self._thread.start()

    def _produce(self, blocks, prepare) -> None:
        try:
            with closing(blocks) as source:
                for start, block in source:
                    if not self._put((start, prepare(start, block))):
                        return
            self._put(self._DONE)
        except BaseException as error:  # handed to the caller, which raises it
            self._put(error)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        return self

    def __next__(self):
        item = self._items.get()
        if item is self._DONE:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._items.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()


def _gene_columns(source: ExpressionSource, genes, n_top_genes, log1p, rows, verbose) -> np.ndarray | None:
    """Columns to keep (sorted positions in the input), or None for all."""
    n_genes = len(source.gene_names)
    if genes is not None and n_top_genes is not None:
        raise InputError("give either genes= or n_top_genes=, not both")
    if genes is not None:
        wanted = _read_gene_list(genes) if isinstance(genes, (str, os.PathLike)) else [str(g) for g in genes]
        position = pd.Index(source.gene_names).get_indexer(wanted)
        missing = [g for g, p in zip(wanted, position) if p < 0]
        if missing:
            raise InputError(f"{len(missing)} of the {len(wanted)} requested genes are not in the input, "
                             f"e.g. {missing[:5]}; check the names (case matters)")
        check_unique(wanted, "genes (the requested gene subset)")
        return np.sort(position)
    if n_top_genes is None:
        return None
    if isinstance(n_top_genes, bool) or not isinstance(n_top_genes, (int, np.integer)) or not 1 <= n_top_genes:
        raise InputError(f"n_top_genes must be a positive integer, got {n_top_genes!r}")
    if n_top_genes >= n_genes:
        logger.info("n_top_genes=%d keeps all %d genes", n_top_genes, n_genes)
        return None
    # One pass for the per-gene variance of the values as they will be stored (after log1p).
    total = np.zeros(n_genes)
    squares = np.zeros(n_genes)
    scanner = _Scanner(log1p)
    n_cells = 0
    with closing(source.blocks(rows)) as blocks:
        for start, block in tqdm(blocks, desc="gene variances", unit="chunk", disable=None if verbose else True):
            block = _prepare(block, scanner, start, log1p)
            if not scanner.clean:
                continue
            if sp.issparse(block):
                total += np.bincount(block.indices, weights=block.data, minlength=n_genes)
                squares += np.bincount(block.indices, weights=np.square(block.data, dtype=np.float64),
                                       minlength=n_genes)
            else:
                total += block.sum(axis=0, dtype=np.float64)
                squares += np.square(block, dtype=np.float64).sum(axis=0)
            n_cells += block.shape[0]
    scanner.raise_if_bad(source.cell_names, source.gene_names, source.description)
    if n_cells < 2:
        raise InputError(f"n_top_genes needs at least 2 cells to compute variances, the input has {n_cells}")
    mean = total / n_cells
    variance = (squares - n_cells * mean**2) / (n_cells - 1)
    order = np.argsort(-variance, kind="stable")  # ties: the earlier gene wins
    return np.sort(order[:n_top_genes])


def _read_gene_list(path) -> list[str]:
    """Gene names from a text file, one per line (blank lines and ``#`` comments skipped)."""
    text = read_text(path, "the gene list (genes=: names, or a file with one name per line)")
    genes = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not genes:
        raise InputError(f"the gene list {path} names no genes")
    return genes


def ingest_expression(
    source,
    path: str | os.PathLike,
    *,
    format: str | None = None,
    layer: str | None = None,
    log1p: bool = False,
    genes: Sequence[str] | str | os.PathLike | None = None,
    n_top_genes: int | None = None,
    obs_columns: Sequence[str] = (),
    gene_names: Sequence[str] | None = None,
    cell_names: Sequence[str] | None = None,
    layout: Layout = "auto",
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    chunk_rows: int | None = None,
    compression: Compression = "lz4",
    transpose: bool = False,
    gene_attribute: str = "Gene",
    cell_attribute: str = "CellID",
    overwrite: bool = False,
    verbose: bool = True,
) -> ExpressionStore:
    """Write an expression matrix into a chunked zarr expression store, a block of rows at a time.

    The input is read ``chunk_rows`` cells at a time and never whole (except CSC h5ad and
    transposed CSV, which cannot be read by rows; a warning says so), checked as it goes,
    and written in AnnData's zarr layout, so ``anndata.read_zarr(path)`` opens the result.
    The store is built under a temporary name beside ``path`` and renamed at the end: an
    error or an interruption leaves no store that looks complete.

    Parameters
    ----------
    source
        Any input ``flashscenic.io.open_expression`` reads: a path (``.h5ad``; ``.zarr``
        AnnData; ``.loom`` genes x cells as pySCENIC writes it; ``.csv``/``.tsv``,
        optionally ``.gz``, cells x genes with gene names in the header and cell names in
        the first column, as pySCENIC reads it), an AnnData (in memory or backed), a numpy
        array, a scipy.sparse matrix or a DataFrame (cells x genes).
    path
        Where to write the store (a directory, by convention ``*.zarr``).
    format
        The file format when the name does not tell: ``'h5ad'``, ``'zarr'``, ``'loom'``,
        ``'csv'`` or ``'tsv'``.
    layer
        Read this AnnData/loom layer instead of X (raw counts often live in a layer).
    log1p
        Store ``log1p(x)``; SCENIC expects log-transformed expression. Negative input is
        then an error.
    genes, n_top_genes
        Keep only these genes (names, or a text file with one name per line), or the ``n_top_genes`` genes of largest variance of
        the stored values (an extra pass over the input; ties go to the earlier gene).
        Kept genes stay in input order.
    obs_columns
        Cell annotation columns to copy into ``obs`` (cell type labels, batches).
    gene_names, cell_names
        Names for numpy/scipy input (gene names required; cells default to ``'0'``, ``'1'``, ...).
    layout
        ``'csr'`` or ``'dense'`` X; ``'auto'`` (default) follows the input: CSR for sparse
        input, dense otherwise.
    memory_budget
        Bytes (or ``'256MB'``) for one chunk read as a dense float32 block: sets
        ``chunk_rows`` = budget / (4 * genes). Readers and AUCell tasks work one chunk at
        a time, so this bounds their memory.
    chunk_rows
        Cells per chunk, overriding ``memory_budget``.
    compression
        ``'lz4'`` (default): fast enough that ingest runs near the speed of reading the
        input, and every later read is fast; ``'zstd'``: a store several times smaller for
        count-like data, written about 3x slower; ``'none'``.
    transpose
        The input is genes x cells (CSV/TSV, arrays, DataFrames): read it transposed.
    gene_attribute, cell_attribute
        Loom row/column attributes with the gene and cell names (pySCENIC's defaults).
    overwrite
        Replace an existing store at ``path`` (only once the new one is complete).
    verbose
        Progress bar on a terminal.

    Returns
    -------
    ExpressionStore
        The new store, open for reading.

    Raises
    ------
    InputError
        Missing or unreadable file (``MissingFileError``, also a ``FileNotFoundError``),
        unknown format, duplicate gene or cell names, NaN or infinite values (count and
        first location), an empty matrix, a matrix that is clearly genes x cells.

    Warns
    -----
    UserWarning
        The input looks like raw counts (only whole numbers, the largest above 30) and
        ``log1p`` is off.
    """
    if layout not in ("auto", "dense", "csr"):
        raise InputError(f"layout={layout!r} is not one of 'auto', 'dense', 'csr'")
    if compression not in COMPRESSIONS:
        raise InputError(f"compression={compression!r} is not one of {list(COMPRESSIONS)}")
    budget = _parse_memory(memory_budget)
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer))
                                   or chunk_rows < 1):
        raise InputError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; choose another path or pass overwrite=True (CLI --overwrite)")
    if not path.parent.exists():
        raise MissingFileError(f"the folder {path.parent} of the store does not exist; create it first")
    with open_expression(source, format=format, layer=layer, gene_names=gene_names, cell_names=cell_names,
                         transpose=transpose, gene_attribute=gene_attribute, cell_attribute=cell_attribute) as src:
        return _ingest(src, path, source, layer=layer, log1p=log1p, genes=genes, n_top_genes=n_top_genes,
                       obs_columns=list(obs_columns), layout=layout, budget=budget, chunk_rows=chunk_rows,
                       compression=compression, overwrite=overwrite, verbose=verbose)


def _ingest(src: ExpressionSource, path: Path, source, *, layer, log1p, genes, n_top_genes, obs_columns, layout,
            budget, chunk_rows, compression, overwrite, verbose) -> ExpressionStore:
    _check_source(src)
    obs = src.obs(obs_columns) if src.cell_names is not None else None
    # Input blocks hold every input gene, so they are sized for the input; store chunks for the kept genes.
    read_rows = max(1, budget // (4 * len(src.gene_names)))
    columns = _gene_columns(src, genes, n_top_genes, log1p, read_rows, verbose)
    out_genes = src.gene_names if columns is None else src.gene_names[columns]
    rows = chunk_rows or max(1, budget // (4 * len(out_genes)))
    if src.n_cells is not None:
        rows = min(rows, src.n_cells)
    read_rows = min(read_rows, rows)
    kind: Kind = ("csr" if src.sparse else "dense") if layout == "auto" else layout

    with atomic_path(path, overwrite=overwrite) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        writer = _XWriter(group, kind, len(out_genes), src.n_cells or 0, rows, compression)
        scanner = _Scanner(log1p)
        bar = tqdm(total=src.n_cells, desc="ingest", unit="cell", disable=None if verbose else True)
        # closing: an early error stops the reader thread and releases open files at once
        with closing(_Prefetch(src.blocks(read_rows), lambda start, block: _prepare(block, scanner, start, log1p))) \
                as blocks:
            # the names first, while the reader thread fetches the first blocks
            _quiet_anndata_write(group, "var", pd.DataFrame(index=pd.Index(out_genes, dtype=object)))
            if obs is not None:
                _quiet_anndata_write(group, "obs", obs)
            for _, block in blocks:
                if scanner.clean:
                    writer.write(block if columns is None else block[:, columns])
                bar.update(block.shape[0])
        bar.close()
        _check_read(src, scanner, writer.n_rows, writer.nnz, len(out_genes))
        if obs is None:  # CSV: names are known after the last block
            _quiet_anndata_write(group, "obs", src.obs(obs_columns))
        writer.finish()
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            _quiet_anndata_write(group, key, {})
        group.attrs.update({
            "encoding-type": "anndata",
            "encoding-version": "0.1.0",
            EXPRESSION_FORMAT: {
                "encoding-version": EXPRESSION_VERSION,
                "complete": True,
                "chunk_rows": int(rows),
                "layout": kind,
                "compression": compression,
                "source": str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__,
                "layer": layer,
                "log1p": bool(log1p),
                "genes": "subset" if genes is not None else None,
                "n_top_genes": n_top_genes,
                "nnz": int(writer.nnz),
                "created": _now(),
                "versions": _package_versions(),
            },
        })
    scanner.warn_if_counts(src.description, stacklevel=3)  # points at the caller of ingest_expression
    logger.info("ingested %d cells x %d genes (%s, %d cells per chunk) into %s", writer.n_rows, len(out_genes), kind,
                rows, path)
    return open_expression_store(path)


# --- reading the expression store --------------------------------------------------------


def is_expression_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding an expression store (read from its root metadata only)."""
    meta = Path(path) / "zarr.json"
    return meta.is_file() and EXPRESSION_FORMAT in meta.read_text(errors="replace")


def open_expression_store(path: str | os.PathLike) -> ExpressionStore:
    """Open an expression store written by ``ingest_expression``; refuse incomplete or newer ones."""
    return ExpressionStore(path)


class ExpressionStore:
    """Read access to an expression store: shape, names, and rows a chunk at a time.

    Cheap to create and to pickle (a path and a few numbers), so a Dask task can carry it
    to a worker, which then reads only its own chunk.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise MissingFileError(f"expression store {self.path} does not exist")
        group = _open_group(self.path, "expression store")
        meta = group.attrs.get(EXPRESSION_FORMAT)
        if not isinstance(meta, dict):
            raise InputError(f"{self.path} is not a flashscenic expression store (no {EXPRESSION_FORMAT!r} "
                             "attribute); create one with ingest_expression / flashscenic ingest")
        _check_version(meta.get("encoding-version"), EXPRESSION_VERSION, "expression store", self.path)
        if not meta.get("complete"):
            raise InputError(f"{self.path} is an incomplete expression store; ingest the input again")
        self.metadata: dict = dict(meta)
        self.chunk_rows: int = int(meta["chunk_rows"])
        self.layout: Kind = meta["layout"]
        x = group["X"]
        shape = tuple(int(n) for n in (x.attrs["shape"] if self.layout == "csr" else x.shape))
        self.n_cells, self.n_genes = shape
        self._group = group
        self._x = None  # the X array, or CSR (data, indices, indptr in memory), opened on first read

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return (f"ExpressionStore({str(self.path)!r}: {self.n_cells} cells x {self.n_genes} genes, {self.layout}, "
                f"{self.chunk_rows} cells per chunk)")

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_cells, self.n_genes

    @property
    def n_chunks(self) -> int:
        return -(-self.n_cells // self.chunk_rows)

    @functools.cached_property
    def gene_names(self) -> np.ndarray:
        """Gene names (object array of str), in column order."""
        return _as_text(_index(self._group["var"]))

    @functools.cached_property
    def cell_names(self) -> np.ndarray:
        """Cell names (object array of str), in row order."""
        return _as_text(_index(self._group["obs"]))

    def obs(self) -> pd.DataFrame:
        """The stored cell annotations (index: cell names)."""
        return _read_elem(self._group["obs"])

    def chunk_ranges(self, rows: int | None = None) -> list[tuple[int, int]]:
        """``[(start, stop), ...]`` row ranges of ``rows`` cells (default: the store's chunks)."""
        step = self.chunk_rows if rows is None else int(rows)
        if step < 1:
            raise InputError(f"rows must be a positive integer, got {rows!r}")
        return [(start, min(start + step, self.n_cells)) for start in range(0, self.n_cells, step)]

    def read_rows(self, start: int, stop: int, kind: Kind = "dense"):
        """Rows [start, stop) as a dense float32 array (``kind='dense'``) or a CSR matrix (``'csr'``)."""
        if kind not in ("dense", "csr"):
            raise InputError(f"kind={kind!r} is not one of 'dense', 'csr'")
        start, stop = max(0, int(start)), min(self.n_cells, int(stop))
        stop = max(start, stop)
        if self._x is None:
            x = self._group["X"]
            self._x = x if self.layout == "dense" else (x["data"], x["indices"], np.asarray(x["indptr"][:], np.int64))
        if self.layout == "dense":
            block = np.asarray(self._x[start:stop], dtype=np.float32)
            return sp.csr_matrix(block) if kind == "csr" else block
        data, indices, indptr = self._x
        a, b = int(indptr[start]), int(indptr[stop])
        block = sp.csr_matrix((data[a:b], indices[a:b], indptr[start : stop + 1] - a),
                              shape=(stop - start, self.n_genes))
        return block.toarray() if kind == "dense" else block

    def iter_chunks(self, kind: Kind = "dense", rows: int | None = None, verbose: bool = True):
        """Yield ``(start, stop, block)`` over all cells, ``rows`` at a time (default: the store's chunks)."""
        ranges = self.chunk_ranges(rows)
        for start, stop in tqdm(ranges, desc="read", unit="chunk", disable=None if verbose and len(ranges) > 1 else True):
            yield start, stop, self.read_rows(start, stop, kind)

    def sample_cells(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` distinct cell positions drawn with ``numpy.random.default_rng(seed)``, sorted.

        The same seed and store give the same cells on every machine (the draw depends only
        on ``n_cells``, ``n`` and ``seed``, not on chunking). ``n >= n_cells`` gives all cells.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError(f"n must be a positive integer, got {n!r}")
        if n >= self.n_cells:
            return np.arange(self.n_cells)
        return np.sort(np.random.default_rng(seed).choice(self.n_cells, size=int(n), replace=False))

    def read_cells(self, positions, kind: Kind = "dense", genes=None):
        """The rows at ``positions`` (sorted, distinct), reading only the chunks that hold them.

        ``genes``: only these column positions (e.g. a gene budget's), in that order; each
        chunk is cut down as it is read, so the whole rows of the sample are never held.
        """
        parts = list(self.iter_cells(positions, kind, genes))
        if not parts:
            n_columns = self.n_genes if genes is None else len(genes)
            empty = sp.csr_matrix((0, n_columns), dtype=np.float32)
            return empty if kind == "csr" else empty.toarray()
        if kind == "dense":
            return np.concatenate(parts) if len(parts) > 1 else parts[0]
        return sp.vstack(parts, format="csr")

    def iter_cells(self, positions, kind: Kind = "dense", genes=None):
        """Yield the rows at ``positions`` chunk by chunk (see ``read_cells``)."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.ndim != 1 or (positions.size and (positions[0] < 0 or positions[-1] >= self.n_cells
                                                       or (np.diff(positions) <= 0).any())):
            raise InputError(f"positions must be sorted distinct cell positions in [0, {self.n_cells})")
        if genes is not None:
            genes = np.asarray(genes, dtype=np.int64)
            if genes.ndim != 1 or (genes.size and (genes.min() < 0 or genes.max() >= self.n_genes)):
                raise InputError(f"genes must be gene positions in [0, {self.n_genes})")
        # Chunk by chunk, each part converted as it is read: a dense store's rows never go
        # through CSR unless CSR is asked for, and no whole copy in the other kind is made.
        own = "dense" if self.layout == "dense" else "csr"
        for start, stop in self.chunk_ranges():
            inside = positions[(positions >= start) & (positions < stop)]
            if inside.size:
                part = self.read_rows(start, stop, own)[inside - start]
                if genes is not None:
                    part = part[:, genes]
                yield part if own == kind else sp.csr_matrix(part) if kind == "csr" else part.toarray()

    def sample(self, n: int, seed: int = 0, kind: Kind = "dense"):
        """``(positions, rows)``: a reproducible sample of ``n`` cells (see ``sample_cells``)."""
        positions = self.sample_cells(n, seed)
        return positions, self.read_cells(positions, kind)


def _open_group(path: Path, what: str):
    try:
        return zarr.open_group(path, mode="r")
    except Exception as error:  # zarr raises several types for a folder that is not a group
        raise InputError(f"cannot open {path} as a {what} ({type(error).__name__}: {error})") from error

