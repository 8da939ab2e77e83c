"""The storage layer: a chunked zarr expression store and a per-run results store.

Why a store at all: atlas-scale expression (millions of cells) does not fit in one
process's memory, and every distributed stage needs the same rows in the same order. So
the input, whatever its format, is written once into a zarr v3 group, row-chunked, and
every later stage reads chunks from it; no stage ever holds the whole matrix.

Expression store (``ingest_expression`` writes it, ``open_expression_store`` reads it)
    A zarr v3 group in AnnData's on-disk layout, so ``anndata.read_zarr(path)`` opens it:
    ``X`` dense (row chunks of ``chunk_rows`` x all genes) or CSR (``data``/``indices``/
    ``indptr``), float32; ``obs`` with the cell names and the chosen cell-label columns;
    ``var`` with the gene names. Every node carries anndata's ``encoding-type`` /
    ``encoding-version``; the root also carries ``flashscenic-expression`` (format version,
    ``chunk_rows``, how it was made, and ``complete``). The store is written under a
    temporary name and renamed at the end, so an interrupted ingest never leaves a store
    that looks complete.

Results store (``create_results_store`` / ``open_results_store``, class ``ResultsStore``)
    One zarr v3 group per run, stamped ``encoding-type: flashscenic-results`` and an
    ``encoding-version``, so later readers can refuse or migrate old runs clearly:

    ==========================  ===========================================================
    ``auc``                     cells x regulons float32, row chunks aligned with the
                                expression store; written chunk by chunk (``auc_done``
                                records each finished chunk, one zarr chunk per flag, so
                                concurrent workers never touch the same object)
    ``tf_gene_weights``         TF x gene weights of the GRN (attrs: row and column names)
    ``regulon_weights``         regulons x genes weights (attrs: row and column names)
    ``tables/*.parquet``        parquet files (in a zarr group of that name, readable with
                                ``pandas.read_parquet``): ``cells``, ``adjacencies``
                                (TF, target, importance),
                                ``motifs`` (the motif table of ``flashscenic.regulons``),
                                ``regulons`` (name, tf, type, genes, weights, score,
                                motifs, ...)
    attributes                  ``parameters``, ``versions`` (packages), ``timings``
                                (seconds per stage), ``stages`` (completion markers)
    ==========================  ===========================================================

Both stores are plain directories on a local or shared file system.
"""

from __future__ import annotations

import csv
import datetime
import functools
import gzip
import html
import json
import logging
import math
import os
import platform
import queue
import re
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr
from tqdm.auto import tqdm

from .errors import InputError, MissingFileError

__all__ = [
    "ExpressionStore",
    "ResultsStore",
    "ingest_expression",
    "open_expression_store",
    "create_results_store",
    "open_results_store",
    "MissingFileError",
]

logger = logging.getLogger(__name__)

EXPRESSION_FORMAT = "flashscenic-expression"
EXPRESSION_VERSION = "0.1.0"
RESULTS_FORMAT = "flashscenic-results"
RESULTS_VERSION = "0.1.0"
DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of one dense float32 row chunk
_SPARSE_CHUNK = 2**20  # elements per zarr chunk of the CSR data and indices arrays
_NAME_SAMPLE = 1000  # names looked at when guessing the orientation of a matrix

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


def _attr_text(value) -> Any:
    return value.decode() if isinstance(value, bytes) else value


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


def _names(values, what: str) -> np.ndarray:
    """Names as an object array of str, after checking they are strings and unique."""
    names = _as_text(values)
    if len(names) and pd.api.types.infer_dtype(names, skipna=False) != "string":
        bad = next(i for i, v in enumerate(names) if not isinstance(v, str))
        raise InputError(f"{what} must be strings; entry {bad} is {names[bad]!r}")
    _check_unique(names, what)
    return names


def _as_text(values) -> np.ndarray:
    """A 1-D object array from any array of strings (numpy U/T dtypes, pandas, lists)."""
    if isinstance(values, (pd.Index, pd.Series)):
        return values.to_numpy(dtype=object)
    array = np.asarray(values)
    return array if array.dtype == object else array.astype(object)


def _check_unique(names, what: str) -> None:
    index = pd.Index(names)
    if not index.is_unique:
        counts = Counter(index[index.duplicated(keep=False)])
        examples = ", ".join(f"{name!r} x{n}" for name, n in list(counts.items())[:5])
        fix = ("make them unique (anndata: var_names_make_unique()) or drop the duplicates"
               if "gene" in what else "make them unique (anndata: obs_names_make_unique())")
        raise InputError(f"{what} has {len(counts)} duplicated name(s) ({examples}); {fix}")


_BARCODE = re.compile(r"[ACGT]{12,}")
_GENE_ID = re.compile(r"^(?:ENS[A-Z]*G\d{6,}|FBgn\d{5,}|WBGene\d{5,})(?:\.\d+)?$")


def _check_orientation(cell_names, gene_names, where: str) -> None:
    """Refuse a matrix that is clearly genes x cells: genes named like barcodes or cells like gene IDs.

    Only names that leave no doubt count (12+ letters of A/C/G/T as in 10x barcodes;
    Ensembl, FlyBase and WormBase gene IDs), so gene symbols and arbitrary cell names
    never trigger it.
    """
    cells = [str(x) for x in list(cell_names[:_NAME_SAMPLE])]
    genes = [str(x) for x in list(gene_names[:_NAME_SAMPLE])]
    if not cells or not genes:
        return

    def share(names, pattern, search=False):
        test = pattern.search if search else pattern.match
        return sum(1 for n in names if test(n)) / len(names)

    genes_look_like_cells = share(genes, _BARCODE, True) >= 0.5 and share(cells, _BARCODE, True) < 0.5
    cells_look_like_genes = share(cells, _GENE_ID) >= 0.5 and share(genes, _GENE_ID) < 0.5
    if genes_look_like_cells or cells_look_like_genes:
        evidence = []
        if cells_look_like_genes:
            evidence.append(f"its rows are named like genes (e.g. {cells[0]!r})")
        if genes_look_like_cells:
            evidence.append(f"its columns are named like cell barcodes (e.g. {genes[0]!r})")
        raise InputError(
            f"{where} looks like genes x cells: {' and '.join(evidence)}; flashscenic wants cells as rows and "
            "genes as columns: transpose it (transpose=True, CLI --transpose, or adata.T)"
        )


@contextmanager
def _staging(path: Path, overwrite: bool):
    """Yield a temporary directory beside ``path``; on success move it to ``path``, on error remove it."""
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; choose another path or pass overwrite=True (CLI --overwrite)")
    if not path.parent.exists():
        raise MissingFileError(f"the folder {path.parent} of the store does not exist; create it first")
    token = uuid.uuid4().hex[:8]
    tmp = path.parent / f".{path.name}.partial-{token}"
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{token}"
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def _quiet_anndata_write(group, key: str, value) -> None:
    """``anndata.io.write_elem`` without its zarr-v3 auto-sharding notice (we shard nothing)."""
    from anndata.io import write_elem

    write_elem(group, key, value, dataset_kwargs={"shards": None})


def _read_elem(node):
    from anndata.io import read_elem

    return read_elem(node)


# --- sources: uniform row-block access to every input format -----------------------------


class _Source:
    """Rows of a cells x genes matrix in blocks, plus names and cell labels.

    ``n_cells`` is ``None`` when it is only known after reading (CSV); ``cell_names`` is
    then filled while the blocks are read.
    """

    description = "input"
    sparse = False
    n_cells: int | None
    gene_names: np.ndarray
    cell_names: np.ndarray | None

    def blocks(self, rows: int) -> Iterator[tuple[int, Any]]:  # (start, dense ndarray or CSR)
        raise NotImplementedError

    def obs(self, columns: Sequence[str]) -> pd.DataFrame:
        if columns:
            raise InputError(f"obs_columns={list(columns)} needs an input with cell annotations "
                             "(h5ad, AnnData, AnnData-on-zarr or loom); this input has none")
        return pd.DataFrame(index=self.cell_names)

    def close(self) -> None:
        pass


def _as_float_block(block) -> Any:
    """A dense float32 ndarray or a CSR float32 matrix with sorted indices.

    Sources hand over blocks they own (files read into new arrays, row slices of scipy
    matrices, which scipy copies); dense blocks may be views of the caller's array, so
    nothing below changes a dense block in place.
    """
    if sp.issparse(block):
        block = sp.csr_matrix(block, dtype=np.float32)
        if not block.has_sorted_indices:
            block.sort_indices()
        return block
    block = np.asarray(block)
    if block.dtype.kind not in "fiub":
        raise InputError(f"the expression values have dtype {block.dtype}; expected numbers")
    return np.ascontiguousarray(block, dtype=np.float32)


class _ArraySource(_Source):
    """numpy, scipy.sparse, pandas DataFrame or in-memory AnnData X/layer."""

    def __init__(self, matrix, gene_names, cell_names, description: str, obs: pd.DataFrame | None = None):
        if sp.issparse(matrix):
            self.sparse = True
            matrix = matrix if isinstance(matrix, (sp.csr_matrix, sp.csr_array)) else sp.csr_matrix(matrix)
        else:
            matrix = np.asarray(matrix)
        if len(matrix.shape) != 2:
            raise InputError(f"{description} must be 2-D (cells x genes), got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self.n_cells = int(matrix.shape[0])
        n_genes = int(matrix.shape[1])
        if gene_names is None:
            raise InputError(f"{description}: gene_names is required for numpy/scipy input (one name per column)")
        self.gene_names = _names(gene_names, "gene_names")
        if len(self.gene_names) != n_genes:
            raise InputError(f"gene_names has {len(self.gene_names)} names but {description} has {n_genes} columns")
        names = [str(i) for i in range(self.n_cells)] if cell_names is None else cell_names
        self.cell_names = _names(names, "cell_names")
        if len(self.cell_names) != self.n_cells:
            raise InputError(f"cell_names has {len(self.cell_names)} names but {description} has {self.n_cells} rows")
        self.description = description
        self._obs = obs

    def blocks(self, rows):
        for start in range(0, self.n_cells, rows):
            yield start, self.matrix[start : start + rows]

    def obs(self, columns):
        if self._obs is None:
            return super().obs(columns)
        return _pick_columns(self._obs, columns, self.description).set_axis(self.cell_names, axis=0)


def _pick_columns(frame: pd.DataFrame, columns: Sequence[str], where: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{where} has no obs column(s) {missing}; it has {list(frame.columns)[:20]}")
    return frame.loc[:, list(columns)].copy()


class _GroupSource(_Source):
    """AnnData on disk, h5ad (h5py) or zarr: X or a layer, read a block of rows at a time."""

    def __init__(self, root, description: str, layer: str | None, handle=None):
        self.root, self.description, self._handle = root, description, handle
        if layer is None:
            if "X" not in root:
                raise InputError(f"{description} has no X; choose a layer with layer=")
            x = root["X"]
        else:
            layers = root["layers"] if "layers" in root else {}
            if layer not in layers:
                raise InputError(f"{description} has no layer {layer!r}; it has {sorted(layers.keys())}")
            x = layers[layer]
        encoding = _attr_text(x.attrs.get("encoding-type", "array" if not _is_group(x) else None))
        if encoding in ("csr_matrix", "csc_matrix"):
            self.sparse = True
            shape = tuple(int(n) for n in x.attrs["shape"])
            if encoding == "csc_matrix":
                logger.warning("%s stores its matrix by column (CSC): reading it whole into memory to write rows; "
                               "save it as CSR to stream it", description)
                self._whole = sp.csr_matrix(_read_elem(x))
            else:
                self._whole = None
                self._data, self._indices = x["data"], x["indices"]
                self._indptr = np.asarray(x["indptr"][:], dtype=np.int64)
        elif encoding == "array" and not _is_group(x):
            shape = tuple(int(n) for n in x.shape)
            self._whole = None
            self._dense = x
        else:
            raise InputError(f"{description}: X has encoding {encoding!r}, which flashscenic cannot stream; "
                             "re-save the file with a recent anndata (CSR or dense X)")
        self._encoding = encoding
        if len(shape) != 2:
            raise InputError(f"{description}: X has shape {shape}; expected 2-D cells x genes")
        self.n_cells = shape[0]
        self.gene_names = _names(_index(root["var"]), f"{description} var_names (gene names)")
        self.cell_names = _names(_index(root["obs"]), f"{description} obs_names (cell names)")
        if len(self.gene_names) != shape[1] or len(self.cell_names) != shape[0]:
            raise InputError(f"{description}: X is {shape} but there are {len(self.cell_names)} cell and "
                             f"{len(self.gene_names)} gene names")

    def blocks(self, rows):
        n_genes = len(self.gene_names)
        for start in range(0, self.n_cells, rows):
            stop = min(start + rows, self.n_cells)
            if self._encoding == "array":
                yield start, self._dense[start:stop]
            elif self._whole is not None:
                yield start, self._whole[start:stop]
            else:
                a, b = self._indptr[start], self._indptr[stop]
                yield start, sp.csr_matrix(
                    (self._data[a:b], self._indices[a:b], self._indptr[start : stop + 1] - a), shape=(stop - start, n_genes)
                )

    def obs(self, columns):
        if not columns:
            return pd.DataFrame(index=self.cell_names)
        group = self.root["obs"]
        missing = [c for c in columns if c not in group]
        if missing:
            have = [k for k in group.keys() if k != _attr_text(group.attrs.get("_index", "_index"))]
            raise InputError(f"{self.description} has no obs column(s) {missing}; it has {sorted(have)[:20]}")
        return pd.DataFrame({c: _read_elem(group[c]) for c in columns}, index=self.cell_names)

    def close(self):
        if self._handle is not None:
            self._handle.close()


def _is_group(node) -> bool:
    return hasattr(node, "keys") and not hasattr(node, "dtype")


def _index(frame_group) -> np.ndarray:
    key = _attr_text(frame_group.attrs.get("_index", "_index"))
    return np.asarray(_read_elem(frame_group[key]))


class _LoomSource(_Source):
    """A loom file as pySCENIC writes it: ``/matrix`` genes x cells, ``Gene`` and ``CellID`` attributes."""

    def __init__(self, handle, description: str, layer: str | None, gene_attribute: str, cell_attribute: str):
        self._handle, self.description = handle, description
        try:
            matrix = handle["matrix"] if layer is None else handle["layers"][layer]
            rows, cols = handle["row_attrs"], handle["col_attrs"]
        except KeyError:
            raise InputError(f"{description} is not a loom file with /matrix, /row_attrs and /col_attrs"
                             + (f" (or has no layer {layer!r})" if layer else "")) from None
        for group, name, option in ((rows, gene_attribute, "gene_attribute"), (cols, cell_attribute, "cell_attribute")):
            if name not in group:
                raise InputError(f"{description} has no {'row' if group is rows else 'column'} attribute {name!r} "
                                 f"(it has {sorted(group.keys())}); choose one with {option}=")
        self._matrix = matrix
        n_genes, self.n_cells = (int(n) for n in matrix.shape)
        self.gene_names = _names(_loom_strings(rows[gene_attribute][:]), f"{description} gene names ({gene_attribute})")
        self.cell_names = _names(_loom_strings(cols[cell_attribute][:]), f"{description} cell names ({cell_attribute})")
        self._cols = cols
        if len(self.gene_names) != n_genes or len(self.cell_names) != self.n_cells:
            raise InputError(f"{description}: /matrix is {matrix.shape} (genes x cells) but there are "
                             f"{len(self.gene_names)} gene and {len(self.cell_names)} cell names")

    def blocks(self, rows):
        for start in range(0, self.n_cells, rows):
            yield start, self._matrix[:, start : start + rows].T

    def obs(self, columns):
        missing = [c for c in columns if c not in self._cols]
        if missing:
            raise InputError(f"{self.description} has no column attribute(s) {missing}; it has {sorted(self._cols.keys())}")
        data = {}
        for c in columns:
            values = self._cols[c][:]
            if values.ndim != 1:
                raise InputError(f"{self.description}: column attribute {c!r} is not one value per cell")
            data[c] = _loom_strings(values) if values.dtype.kind in "SOU" else values
        return pd.DataFrame(data, index=self.cell_names)

    def close(self):
        self._handle.close()


def _loom_strings(values: np.ndarray) -> np.ndarray:
    """Loom strings (ASCII bytes, non-ASCII as XML character references) -> str, as loompy reads them."""
    if values.dtype.kind == "U":
        return values.astype(str)
    return np.array([html.unescape(v.decode("ascii", "ignore") if isinstance(v, bytes) else str(v)) for v in values],
                    dtype=object)


class _TextSource(_Source):
    """CSV/TSV, cells x genes with a header of gene names and cell names in the first column (pySCENIC's layout)."""

    def __init__(self, path: Path, sep: str, transpose: bool):
        self.path, self.sep, self.transpose = path, sep, transpose
        self.description = str(path)
        opener = gzip.open if path.name.endswith(".gz") else open
        try:
            with opener(path, "rt", encoding="utf-8", newline="") as handle:
                header = next(csv.reader(handle, delimiter=sep), None)
        except (OSError, UnicodeDecodeError, EOFError, csv.Error) as error:
            raise InputError(f"cannot read {path} as text ({error})") from error
        if header is None:
            raise InputError(f"{path} is empty: expected a header of gene names and a row per cell")
        if len(header) < 2:
            raise InputError(f"{path}: the header has {len(header)} field(s) with separator {sep!r}; "
                             "is the separator right (.csv: ',', .tsv: tab)?")
        self._header = header
        if transpose:
            frame = self._read(None)
            frame = frame.T
            self.gene_names = _names(frame.columns, f"{path} gene names (first column, transposed)")
            self.cell_names = _names(frame.index, f"{path} cell names (header, transposed)")
            self._frame = frame
            self.n_cells = len(self.cell_names)
        else:
            self.gene_names = _names(header[1:], f"{path} gene names (header)")
            self.cell_names = None
            self.n_cells = None
            self._frame = None

    def _read(self, chunksize):
        try:
            # keep_default_na=False: a cell called 'NA' is a name, and 'NA' where a number belongs is an error
            return pd.read_csv(self.path, sep=self.sep, header=0, index_col=0, dtype={0: str}, chunksize=chunksize,
                               keep_default_na=False, low_memory=False)
        except (ValueError, OSError, UnicodeDecodeError, EOFError, pd.errors.ParserError) as error:
            raise InputError(f"cannot read {self.path} as a table ({error})") from error

    def blocks(self, rows):
        if self._frame is not None:
            yield from ((s, self._numbers(self._frame.iloc[s : s + rows])) for s in range(0, self.n_cells, rows))
            return
        names: list[np.ndarray] = []
        try:
            with self._read(rows) as reader:  # closed even when the reader of the blocks stops early
                yield from self._chunks(reader, names)
        except (ValueError, pd.errors.ParserError) as error:
            if isinstance(error, InputError):
                raise
            raise InputError(f"cannot read {self.path} as a table ({error})") from error
        self.n_cells = sum(len(n) for n in names)
        self.cell_names = _names(np.concatenate(names) if names else [], f"{self.path} cell names (first column)")

    def _chunks(self, reader, names: list):
        start = 0
        for chunk in reader:
            if chunk.shape[1] != len(self.gene_names):
                raise InputError(f"{self.path}: rows {start + 2}.. have {chunk.shape[1] + 1} fields, the header "
                                 f"has {len(self.gene_names) + 1}")
            names.append(chunk.index.to_numpy(dtype=object))
            if start == 0:
                self.first_names = names[0]
            yield start, self._numbers(chunk)
            start += len(chunk)

    def _numbers(self, frame: pd.DataFrame) -> np.ndarray:
        """The chunk as float32; pandas' NA texts ('', 'NA', 'nan', ...) become NaN (reported later
        with their location), any other text is an error naming the cell and gene."""
        try:
            return frame.to_numpy(dtype=np.float32)
        except (ValueError, TypeError):
            pass
        from .regulons import _NA_TEXT

        values = np.empty(frame.shape, dtype=np.float32)
        for j in range(frame.shape[1]):
            column = frame.iloc[:, j]
            if pd.api.types.is_numeric_dtype(column.dtype):
                values[:, j] = column.to_numpy(dtype=np.float32)
                continue
            missing = column.astype(str).isin(_NA_TEXT)
            numbers = pd.to_numeric(column.where(~missing), errors="coerce")
            bad = (numbers.isna() & ~missing).to_numpy()
            if bad.any():
                row = int(np.argmax(bad))
                raise InputError(f"{self.path}: {column.iloc[row]!r} at cell {frame.index[row]!r}, gene "
                                 f"{frame.columns[j]!r} is not a number")
            values[:, j] = numbers.to_numpy(dtype=np.float32)
        return values


_SUFFIXES = {".h5ad": "h5ad", ".loom": "loom", ".zarr": "zarr", ".csv": "csv", ".tsv": "tsv", ".txt": "tsv"}
FORMATS = ("h5ad", "zarr", "loom", "csv", "tsv")


def _guess_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix, fmt in _SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    if path.is_dir() and ((path / "zarr.json").exists() or (path / ".zgroup").exists()):
        return "zarr"
    raise InputError(f"cannot tell the format of {path} from its name; name it .h5ad, .zarr, .loom, .csv or .tsv "
                     f"(optionally .gz), or pass format= one of {list(FORMATS)}")


def _open_source(source, *, format, layer, gene_names, cell_names, transpose, gene_attribute, cell_attribute) -> _Source:
    if transpose and not isinstance(source, (str, os.PathLike, np.ndarray, pd.DataFrame)) and not sp.issparse(source):
        raise InputError("transpose=True works for CSV/TSV files, numpy, scipy and DataFrame input; "
                         "for AnnData pass adata.T")
    if isinstance(source, pd.DataFrame):
        frame = source.T if transpose else source
        return _ArraySource(frame.to_numpy(), frame.columns if gene_names is None else gene_names,
                            frame.index if cell_names is None else cell_names, "the DataFrame")
    if isinstance(source, np.ndarray) or sp.issparse(source):
        matrix = source.T if transpose else source
        return _ArraySource(matrix, gene_names, cell_names, "the array")
    if _is_anndata(source):
        if source.isbacked and layer is None:
            return _open_source(Path(source.filename), format="h5ad", layer=None, gene_names=None, cell_names=None,
                                transpose=False, gene_attribute=gene_attribute, cell_attribute=cell_attribute)
        if layer is not None and layer not in source.layers:
            raise InputError(f"the AnnData has no layer {layer!r}; it has {list(source.layers.keys())}")
        matrix = source.X if layer is None else source.layers[layer]
        if matrix is None:
            raise InputError("the AnnData has no X; choose a layer with layer=")
        return _ArraySource(matrix, source.var_names, source.obs_names, "the AnnData", obs=source.obs)
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"cannot ingest a {type(source).__name__}; give a file path, an AnnData, a numpy or "
                         "scipy.sparse matrix or a DataFrame")
    path = Path(source)
    if not path.exists():
        raise MissingFileError(f"input {path} does not exist")
    fmt = format or _guess_format(path)
    if fmt not in FORMATS:
        raise InputError(f"format={fmt!r} is not one of {list(FORMATS)}")
    if gene_names is not None or cell_names is not None:
        raise InputError("gene_names and cell_names are for array input; files carry their own names")
    if transpose and fmt not in ("csv", "tsv"):
        raise InputError(f"transpose=True works for CSV/TSV files only, not {fmt}")
    if fmt in ("csv", "tsv"):
        return _TextSource(path, "," if fmt == "csv" else "\t", transpose)
    if fmt == "zarr":
        try:
            root = zarr.open_group(path, mode="r")
        except Exception as error:  # zarr raises several types for a folder that is not a zarr group
            raise InputError(f"cannot open {path} as a zarr group ({type(error).__name__}: {error})") from error
        return _GroupSource(root, str(path), layer)
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"cannot open {path} as HDF5 ({fmt}): {error}; is the file complete and readable?") from error
    try:
        if fmt == "loom":
            return _LoomSource(handle, str(path), layer, gene_attribute, cell_attribute)
        return _GroupSource(handle, str(path), layer, handle=handle)
    except BaseException:
        handle.close()
        raise


def _is_anndata(value) -> bool:
    return type(value).__name__ == "AnnData" and hasattr(value, "obs_names")


# --- validation while reading ------------------------------------------------------------


class _Scanner:
    """Counts NaN/inf (and, before log1p, negative values) over all blocks; keeps the first of each."""

    def __init__(self, log1p: bool):
        self.log1p = log1p
        self.n_bad = self.n_negative = 0
        self.first_bad = self.first_negative = None

    def scan(self, block, start: int) -> None:
        values = block.data if sp.issparse(block) else block.ravel()
        bad = ~np.isfinite(values)
        count = int(np.count_nonzero(bad))
        if count:
            if self.first_bad is None:
                self.first_bad = _locate(block, start, int(np.argmax(bad)), values)
            self.n_bad += count
        if self.log1p:
            negative = values < 0
            count = int(np.count_nonzero(negative))
            if count:
                if self.first_negative is None:
                    self.first_negative = _locate(block, start, int(np.argmax(negative)), values)
                self.n_negative += count

    @property
    def clean(self) -> bool:
        return self.n_bad == 0 and self.n_negative == 0

    def raise_if_bad(self, cell_names, gene_names, where: str) -> None:
        def place(found):
            row, col, value = found
            cell = cell_names[row] if cell_names is not None and row < len(cell_names) else row
            return f"cell {row} ({cell!r}), gene {col} ({gene_names[col]!r}): {value}"

        if self.n_bad:
            raise InputError(f"{where} contains {self.n_bad} NaN or infinite value(s), first at "
                             f"{place(self.first_bad)}; remove or impute them before ingesting")
        if self.n_negative:
            raise InputError(f"log1p=True but {where} has {self.n_negative} negative value(s), first at "
                             f"{place(self.first_negative)}; log1p needs counts >= 0 (is the input already "
                             "log-transformed? then leave log1p off)")


def _locate(block, start: int, position: int, values) -> tuple[int, int, float]:
    if sp.issparse(block):
        row = int(np.searchsorted(block.indptr, position, side="right") - 1)
        return start + row, int(block.indices[position]), float(values[position])
    n_genes = block.shape[1]
    return start + position // n_genes, position % n_genes, float(values[position])


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


def _prepare(block, scanner: _Scanner, start: int, log1p: bool):
    block = _as_float_block(block)
    scanner.scan(block, start)
    if log1p and scanner.clean:  # new arrays: a float32 block may be a view of the caller's matrix
        if sp.issparse(block):
            block.data = np.log1p(block.data)
        else:
            block = np.log1p(block)
    return block


def _gene_columns(source: _Source, genes, n_top_genes, log1p, rows, verbose) -> np.ndarray | None:
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
        _check_unique(wanted, "genes (the requested gene subset)")
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
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"gene list {path} does not exist (genes= takes a list of names or a file, one per line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the gene list {path} ({error})") from error
    genes = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
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
        A path (``.h5ad``; ``.zarr`` AnnData; ``.loom`` genes x cells as pySCENIC writes
        it; ``.csv``/``.tsv``, optionally ``.gz``, cells x genes with gene names in the
        header and cell names in the first column, as pySCENIC reads it), an AnnData
        (in memory or backed), a numpy array, a scipy.sparse matrix or a DataFrame
        (cells x genes).
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
    src = _open_source(source, format=format, layer=layer, gene_names=gene_names, cell_names=cell_names,
                       transpose=transpose, gene_attribute=gene_attribute, cell_attribute=cell_attribute)
    try:
        return _ingest(src, path, source, layer=layer, log1p=log1p, genes=genes, n_top_genes=n_top_genes,
                       obs_columns=list(obs_columns), layout=layout, budget=budget, chunk_rows=chunk_rows,
                       compression=compression, overwrite=overwrite, verbose=verbose)
    finally:
        src.close()


def _ingest(src: _Source, path: Path, source, *, layer, log1p, genes, n_top_genes, obs_columns, layout, budget,
            chunk_rows, compression, overwrite, verbose) -> ExpressionStore:
    where = src.description
    if len(src.gene_names) == 0 or src.n_cells == 0:
        raise InputError(f"{where} is empty ({src.n_cells if src.n_cells is not None else 0} cells x "
                         f"{len(src.gene_names)} genes); nothing to ingest")
    if src.cell_names is not None:
        _check_orientation(src.cell_names, src.gene_names, where)
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

    with _staging(path, overwrite) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        writer = _XWriter(group, kind, len(out_genes), src.n_cells or 0, rows, compression)
        scanner = _Scanner(log1p)
        checked = src.cell_names is not None
        bar = tqdm(total=src.n_cells, desc="ingest", unit="cell", disable=None if verbose else True)
        # closing: an early error stops the reader thread and releases open files at once
        with closing(_Prefetch(src.blocks(read_rows), lambda start, block: _prepare(block, scanner, start, log1p))) \
                as blocks:
            # the names first, while the reader thread fetches the first blocks
            _quiet_anndata_write(group, "var", pd.DataFrame(index=pd.Index(out_genes, dtype=object)))
            if obs is not None:
                _quiet_anndata_write(group, "obs", obs)
            for start, block in blocks:
                if not checked:  # CSV: cell names arrive with the rows; check the orientation on the first block
                    _check_orientation(src.first_names, src.gene_names, where)
                    checked = True
                if scanner.clean:
                    writer.write(block if columns is None else block[:, columns])
                bar.update(block.shape[0])
        bar.close()
        scanner.raise_if_bad(src.cell_names, src.gene_names, where)
        if obs is None:  # CSV: names are known after the last block
            obs = src.obs(obs_columns)
            _quiet_anndata_write(group, "obs", obs)
        if writer.n_rows == 0:
            raise InputError(f"{where} has no cells (0 rows); nothing to ingest")
        if writer.nnz == 0:
            raise InputError(f"every value in {where} is 0 ({writer.n_rows} cells x {len(out_genes)} genes); "
                             "is this the right matrix or layer?")
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
    logger.info("ingested %d cells x %d genes (%s, %d cells per chunk) into %s", writer.n_rows, len(out_genes), kind,
                rows, path)
    return open_expression_store(path)


# --- reading the expression store --------------------------------------------------------


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

    def read_cells(self, positions, kind: Kind = "dense"):
        """The rows at ``positions`` (sorted, distinct), reading only the chunks that hold them."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.ndim != 1 or (positions.size and (positions[0] < 0 or positions[-1] >= self.n_cells
                                                       or (np.diff(positions) <= 0).any())):
            raise InputError(f"positions must be sorted distinct cell positions in [0, {self.n_cells})")
        parts = []
        for start, stop in self.chunk_ranges():
            inside = positions[(positions >= start) & (positions < stop)]
            if inside.size:
                parts.append(self.read_rows(start, stop, "csr")[inside - start])
        if not parts:
            empty = sp.csr_matrix((0, self.n_genes), dtype=np.float32)
            return empty if kind == "csr" else empty.toarray()
        block = sp.vstack(parts, format="csr")
        return block if kind == "csr" else block.toarray()

    def sample(self, n: int, seed: int = 0, kind: Kind = "dense"):
        """``(positions, rows)``: a reproducible sample of ``n`` cells (see ``sample_cells``)."""
        positions = self.sample_cells(n, seed)
        return positions, self.read_cells(positions, kind)


def _open_group(path: Path, what: str):
    try:
        return zarr.open_group(path, mode="r")
    except Exception as error:  # zarr raises several types for a folder that is not a group
        raise InputError(f"cannot open {path} as a {what} ({type(error).__name__}: {error})") from error


# --- results store -----------------------------------------------------------------------

_TABLES = "tables"
_REGULON_COLUMNS = ("name", "tf", "type", "genes", "weights", "score", "motifs")


def create_results_store(
    path: str | os.PathLike,
    *,
    cell_names: Sequence[str] | None = None,
    chunk_rows: int | None = None,
    expression: ExpressionStore | str | os.PathLike | None = None,
    parameters: dict | None = None,
    overwrite: bool = False,
) -> ResultsStore:
    """Create the results store of one run.

    Give ``expression`` (an ``ExpressionStore`` or its path) to take the cells and the row
    chunking from it, so AUC chunks line up with expression chunks; or give ``cell_names``
    (and optionally ``chunk_rows``) for results without a store (pySCENIC imports).
    ``parameters`` (JSON-able) are recorded with the package versions.
    """
    path = Path(path)
    if expression is not None:
        store = expression if isinstance(expression, ExpressionStore) else open_expression_store(expression)
        if cell_names is not None:
            raise InputError("give expression= or cell_names=, not both")
        cell_names = store.cell_names
        chunk_rows = chunk_rows or store.chunk_rows
        expression_path = str(store.path.resolve())
    else:
        expression_path = None
    if cell_names is None:
        raise InputError("a results store needs its cells: pass expression= (an expression store) or cell_names=")
    cells = _names(cell_names, "cell_names")
    if len(cells) == 0:
        raise InputError("cell_names is empty; a results store needs at least one cell")
    if chunk_rows is None:
        chunk_rows = len(cells)
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise InputError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    try:
        json.dumps(parameters or {})
    except TypeError as error:
        raise InputError(f"parameters must be JSON-serialisable ({error})") from None
    if path.exists():
        if not overwrite:
            raise InputError(f"{path} already exists; pass overwrite=True (or open it with open_results_store)")
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if not path.parent.exists():
        raise MissingFileError(f"the folder {path.parent} of the results store does not exist; create it first")
    group = zarr.open_group(path, mode="w-", zarr_format=3)
    # The parquet files live in a zarr group of their own, so listing the root's members finds
    # only zarr nodes (zarr warns about foreign objects beside them).
    group.create_group(_TABLES).attrs.update({"encoding-type": "parquet-tables", "encoding-version": "0.1.0"})
    _write_table(path, "cells", pd.DataFrame({"cell": pd.Series(cells, dtype=object)}))
    group.attrs.update({
        "encoding-type": RESULTS_FORMAT,
        "encoding-version": RESULTS_VERSION,
        "created": _now(),
        "n_cells": len(cells),
        "chunk_rows": int(min(chunk_rows, len(cells))),
        "expression_store": expression_path,
        "parameters": parameters or {},
        "versions": _package_versions(),
        "timings": {},
        "stages": {},
    })
    return ResultsStore(path)


def open_results_store(path: str | os.PathLike) -> ResultsStore:
    """Open an existing results store; refuse one of a newer format."""
    return ResultsStore(path)


def _write_table(root: Path, name: str, frame: pd.DataFrame) -> None:
    """Write a parquet table atomically (temporary file, then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = root / _TABLES / f"{name}.parquet"
    tmp = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_table(root: Path, name: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    target = root / _TABLES / f"{name}.parquet"
    if not target.exists():
        raise InputError(f"the results store {root} has no {name} table yet; run the stage that writes it first")
    return pq.read_table(target).to_pandas()


class ResultsStore:
    """One run's results: AUC, weights, regulons, motifs, adjacencies, and run metadata.

    Writers replace what they write and record a completion marker; the AUC is written a
    row chunk at a time so that workers can write their own chunks concurrently and a
    later run can resume from ``missing_auc_chunks()``. Everything else (tables, weight
    matrices, and the attributes: parameters, timings, stages) is written by one process,
    the coordinator: attributes are read-modify-write.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise MissingFileError(f"results store {self.path} does not exist")
        self._group = _open_group(self.path, "results store")
        attrs = self._group.attrs.asdict()
        if attrs.get("encoding-type") != RESULTS_FORMAT:
            raise InputError(f"{self.path} is not a flashscenic results store (encoding-type "
                             f"{attrs.get('encoding-type')!r}); create one with create_results_store")
        _check_version(attrs.get("encoding-version"), RESULTS_VERSION, "results store", self.path)
        self.n_cells: int = int(attrs["n_cells"])
        self.chunk_rows: int = int(attrs["chunk_rows"])

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def __repr__(self) -> str:
        done = [s for s, v in self.stages.items() if v.get("complete")]
        return f"ResultsStore({str(self.path)!r}: {self.n_cells} cells, complete stages {done})"

    # metadata ------------------------------------------------------------------------

    def _writable(self):
        return zarr.open_group(self.path, mode="r+")

    @property
    def attrs(self) -> dict:
        return zarr.open_group(self.path, mode="r").attrs.asdict()

    @property
    def parameters(self) -> dict:
        return dict(self.attrs.get("parameters", {}))

    @property
    def versions(self) -> dict:
        return dict(self.attrs.get("versions", {}))

    @property
    def timings(self) -> dict:
        return dict(self.attrs.get("timings", {}))

    @property
    def stages(self) -> dict:
        return dict(self.attrs.get("stages", {}))

    @property
    def expression_store(self) -> str | None:
        return self.attrs.get("expression_store")

    def update_parameters(self, **parameters) -> None:
        """Add or replace run parameters (JSON-able)."""
        group = self._writable()
        current = dict(group.attrs.get("parameters", {}))
        current.update(parameters)
        try:
            json.dumps(current)
        except TypeError as error:
            raise InputError(f"parameters must be JSON-serialisable ({error})") from None
        group.attrs["parameters"] = current

    def record_timing(self, stage: str, seconds: float) -> None:
        """Record how long ``stage`` took (seconds); a later record of the same stage replaces it."""
        group = self._writable()
        timings = dict(group.attrs.get("timings", {}))
        timings[stage] = float(seconds)
        group.attrs["timings"] = timings

    def mark_complete(self, stage: str, **info) -> None:
        """Record that ``stage`` finished (with optional JSON-able details)."""
        group = self._writable()
        stages = dict(group.attrs.get("stages", {}))
        stages[stage] = {"complete": True, "at": _now(), **info}
        group.attrs["stages"] = stages

    def is_complete(self, stage: str) -> bool:
        return bool(self.stages.get(stage, {}).get("complete"))

    # cells ---------------------------------------------------------------------------

    @property
    def cell_names(self) -> np.ndarray:
        return _as_text(_read_table(self.path, "cells")["cell"])

    def write_table(self, name: str, frame: pd.DataFrame) -> None:
        """Write (replace) the parquet table ``name``, e.g. ``'rss'``."""
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise InputError(f"table name {name!r} must be letters, digits and underscores")
        _write_table(self.path, name, frame)

    def read_table(self, name: str) -> pd.DataFrame:
        """Read the parquet table ``name``."""
        return _read_table(self.path, name)

    def read_cells(self) -> pd.DataFrame:
        """The cells table: ``cell`` (names, in AUC row order) and any cell-label columns."""
        frame = _read_table(self.path, "cells")
        frame["cell"] = _as_text(frame["cell"])
        return frame

    def write_cell_labels(self, labels: pd.DataFrame) -> None:
        """Add or replace cell-label columns (e.g. cell types).

        Rows are matched to cells by index when the index holds this store's cell names (in
        any order), else by position. Categorical columns keep their category order.
        """
        labels = pd.DataFrame(labels)
        frame = self.read_cells()
        if len(labels) != self.n_cells:
            raise InputError(f"{len(labels)} rows of cell labels for the {self.n_cells} cells of this results store")
        if "cell" in labels.columns:
            raise InputError("'cell' is the column of cell names; give the labels other column names")
        index = pd.Index(labels.index.astype(str)) if labels.index.dtype == object else None
        if index is not None and index.is_unique and set(index) == set(frame["cell"]):
            labels = labels.loc[labels.index[index.get_indexer(frame["cell"])]]
        labels = labels.reset_index(drop=True)
        for column in labels.columns:
            frame[str(column)] = labels[column]
        _write_table(self.path, "cells", frame)

    def auc_chunk_ranges(self) -> list[tuple[int, int]]:
        """Row ranges of the AUC chunks (the expression store's chunks when made from one)."""
        return [(s, min(s + self.chunk_rows, self.n_cells)) for s in range(0, self.n_cells, self.chunk_rows)]

    # tables --------------------------------------------------------------------------

    def write_adjacencies(self, adjacencies: pd.DataFrame) -> None:
        """The GRN edges: columns ``TF``, ``target``, ``importance`` (pySCENIC's adjacencies)."""
        frame = _check_adjacencies(adjacencies)
        _write_table(self.path, "adjacencies", frame)
        self.mark_complete("adjacencies", n_edges=len(frame))

    def read_adjacencies(self) -> pd.DataFrame:
        return _read_table(self.path, "adjacencies")

    def write_motifs(self, table: pd.DataFrame) -> None:
        """The enriched-motif table (``flashscenic.regulons.MOTIF_COLUMNS``; pySCENIC's reg.csv rows)."""
        from .regulons import MOTIF_COLUMNS, validate_motif_table

        validate_motif_table(table)
        frame = pd.DataFrame({c: table[c].to_numpy() for c in MOTIF_COLUMNS})
        frame["Context"] = [sorted(c) for c in table["Context"]]
        frame["TargetGenes"] = [[{"gene": str(g), "weight": float(w)} for g, w in t] for t in table["TargetGenes"]]
        for name in ("AUC", "NES", "MotifSimilarityQvalue", "OrthologousIdentity"):
            frame[name] = table[name].to_numpy(np.float64, na_value=np.nan)
        frame["RankAtMax"] = table["RankAtMax"].to_numpy(np.int64)
        _write_table(self.path, "motifs", frame)
        self.mark_complete("motifs", n_rows=len(frame))

    def read_motifs(self) -> pd.DataFrame:
        """The motif table, with ``Context`` as frozensets and ``TargetGenes`` as lists of tuples."""
        frame = _read_table(self.path, "motifs")
        frame["Context"] = [frozenset(c) for c in frame["Context"]]
        frame["TargetGenes"] = [[(d["gene"], float(d["weight"])) for d in t] for t in frame["TargetGenes"]]
        for name in ("TF", "MotifID", "Annotation", "Database"):
            frame[name] = frame[name].astype(object)
        return frame

    def write_regulons(self, regulons: Sequence[dict], gene_names: Sequence[str] | None = None,
                       weighted: bool = True) -> None:
        """The regulons (dicts as ``regulons_from_motifs`` returns) and their regulons x genes weights.

        The weight matrix (``regulon_weights``) is written when ``gene_names`` is given, or
        taken from ``tf_gene_weights`` / the expression store when one is recorded.
        ``weighted=False`` stores 1.0 for each regulon gene.
        """
        frame = _regulon_frame(regulons)
        if gene_names is None:
            gene_names = self._default_gene_names()
        _write_table(self.path, "regulons", frame)
        if gene_names is not None:
            from .regulons import regulons_to_adjacency

            matrix = regulons_to_adjacency(regulons, gene_names, weighted=weighted)
            self._write_matrix("regulon_weights", matrix, list(frame["name"]), list(gene_names))
        self.mark_complete("regulons", n_regulons=len(frame))

    def _default_gene_names(self):
        if "tf_gene_weights" in zarr.open_group(self.path, mode="r"):
            return zarr.open_array(self.path / "tf_gene_weights", mode="r").attrs["columns"]
        if self.expression_store and Path(self.expression_store).exists():
            return list(open_expression_store(self.expression_store).gene_names)
        return None

    def read_regulons(self) -> list[dict]:
        """The regulons as dicts (lists of genes and weights, plus whatever was stored)."""
        frame = _read_table(self.path, "regulons")
        regulons = []
        for record in frame.to_dict("records"):
            regulon = {}
            for key, value in record.items():
                if isinstance(value, np.ndarray):
                    value = value.tolist()
                elif isinstance(value, np.generic):
                    value = value.item()
                if value is None and key not in _REGULON_COLUMNS:
                    continue
                regulon[key] = value
            regulon["weights"] = [float(w) for w in regulon["weights"]]
            regulons.append(regulon)
        return regulons

    def read_regulon_weights(self) -> tuple[np.ndarray, list[str], list[str]]:
        """``(weights, regulon_names, gene_names)``: the regulons x genes matrix AUCell scores."""
        return self._read_matrix("regulon_weights")

    def write_tf_gene_weights(self, weights, tf_names: Sequence[str], gene_names: Sequence[str]) -> None:
        """The GRN as a TF x gene weight matrix (float32)."""
        weights = np.asarray(weights.toarray() if sp.issparse(weights) else weights, dtype=np.float32)
        self._write_matrix("tf_gene_weights", weights, list(_names(tf_names, "tf_names")),
                           list(_names(gene_names, "gene_names")))
        self.mark_complete("tf_gene_weights", shape=list(weights.shape))

    def read_tf_gene_weights(self) -> tuple[np.ndarray, list[str], list[str]]:
        """``(weights, tf_names, gene_names)``."""
        return self._read_matrix("tf_gene_weights")

    def _write_matrix(self, name: str, matrix: np.ndarray, rows: list[str], columns: list[str]) -> None:
        if matrix.ndim != 2 or matrix.shape != (len(rows), len(columns)):
            raise InputError(f"{name} is {matrix.shape} but there are {len(rows)} row and {len(columns)} column names")
        if not np.isfinite(matrix).all():
            raise InputError(f"{name} contains NaN or infinite values")
        group = self._writable()
        chunk_rows = max(1, min(len(rows), 2**24 // max(1, len(columns))))
        array = group.create_array(name, shape=matrix.shape, chunks=(chunk_rows, max(1, len(columns))),
                                   dtype="float32", compressors=_codecs("values"), fill_value=0.0, overwrite=True)
        array[...] = matrix
        array.attrs.update({"rows": [str(r) for r in rows], "columns": [str(c) for c in columns]})

    def _read_matrix(self, name: str):
        if name not in zarr.open_group(self.path, mode="r"):
            raise InputError(f"the results store {self.path} has no {name} yet; run the stage that writes it first")
        array = zarr.open_array(self.path / name, mode="r")
        return np.asarray(array[...]), list(array.attrs["rows"]), list(array.attrs["columns"])

    # AUC -----------------------------------------------------------------------------

    def init_auc(self, regulon_names: Sequence[str], overwrite: bool = False) -> None:
        """Create the empty cells x regulons AUC array and its per-chunk completion flags.

        Re-initialising with the same regulons keeps what is written (for resuming); other
        regulons, or ``overwrite=True``, start afresh.
        """
        names = list(_names(regulon_names, "regulon_names"))
        group = self._writable()
        if "auc" in group and not overwrite:
            if list(group["auc"].attrs.get("regulons", [])) == names:
                return
            logger.info("regulons changed: the AUC of %s starts afresh", self.path)
        n_chunks = len(self.auc_chunk_ranges())
        array = group.create_array("auc", shape=(self.n_cells, len(names)), chunks=(self.chunk_rows, max(1, len(names))),
                                   dtype="float32", compressors=_codecs("values"), fill_value=0.0, overwrite=True)
        array.attrs.update({"regulons": names})
        group.create_array("auc_done", shape=(n_chunks,), chunks=(1,), dtype="uint8", fill_value=0, overwrite=True)
        stages = dict(group.attrs.get("stages", {}))
        stages.pop("auc", None)
        group.attrs["stages"] = stages

    @property
    def regulon_names(self) -> list[str]:
        """The regulons of the AUC columns."""
        return list(self._auc().attrs["regulons"])

    def _auc(self, mode="r"):
        if "auc" not in zarr.open_group(self.path, mode="r"):
            raise InputError(f"the results store {self.path} has no AUC yet; call init_auc (or run AUCell) first")
        return zarr.open_array(self.path / "auc", mode=mode)

    def write_auc_chunk(self, index: int, block) -> None:
        """Write AUC chunk ``index`` (rows of ``auc_chunk_ranges()[index]``) and flag it done.

        Safe from many processes at once: each chunk and each flag is its own zarr object.
        """
        ranges = self.auc_chunk_ranges()
        if not 0 <= index < len(ranges):
            raise InputError(f"AUC chunk {index} does not exist; there are {len(ranges)}")
        start, stop = ranges[index]
        array = self._auc("r+")
        block = np.asarray(block, dtype=np.float32)
        if block.shape != (stop - start, array.shape[1]):
            raise InputError(f"AUC chunk {index} must be {(stop - start, array.shape[1])}, got {block.shape}")
        array[start:stop] = block
        zarr.open_array(self.path / "auc_done", mode="r+")[index] = 1

    def auc_done(self) -> np.ndarray:
        """One bool per AUC chunk: written or not."""
        self._auc()
        return zarr.open_array(self.path / "auc_done", mode="r")[:].astype(bool)

    def missing_auc_chunks(self) -> list[int]:
        return np.flatnonzero(~self.auc_done()).tolist()

    def finish_auc(self, seconds: float | None = None) -> None:
        """Mark the AUC stage complete once every chunk is written (raises otherwise)."""
        missing = self.missing_auc_chunks()
        if missing:
            raise InputError(f"{len(missing)} AUC chunk(s) are not written yet, e.g. {missing[:5]}")
        if seconds is not None:
            self.record_timing("auc", seconds)
        self.mark_complete("auc", n_regulons=len(self.regulon_names))

    def write_auc(self, auc, regulon_names: Sequence[str] | None = None) -> None:
        """Write a whole cells x regulons AUC (array, or DataFrame with regulon columns) chunk by chunk."""
        if isinstance(auc, pd.DataFrame):
            regulon_names = list(auc.columns) if regulon_names is None else regulon_names
            auc = auc.to_numpy()
        auc = np.asarray(auc, dtype=np.float32)
        if regulon_names is None:
            raise InputError("regulon_names is required with an array AUC")
        if auc.ndim != 2 or auc.shape != (self.n_cells, len(regulon_names)):
            raise InputError(f"the AUC must be {self.n_cells} cells x {len(list(regulon_names))} regulons, "
                             f"got {auc.shape}")
        self.init_auc(regulon_names, overwrite=True)
        for index, (start, stop) in enumerate(self.auc_chunk_ranges()):
            self.write_auc_chunk(index, auc[start:stop])
        self.finish_auc()

    def read_auc(self, as_frame: bool = False):
        """The AUC (cells x regulons float32), or a DataFrame indexed by cell with regulon columns."""
        array = self._auc()
        missing = self.missing_auc_chunks()
        if missing:
            logger.warning("%d AUC chunk(s) of %s are not written yet and read as 0", len(missing), self.path)
        values = np.asarray(array[...])
        if not as_frame:
            return values
        return pd.DataFrame(values, index=pd.Index(self.cell_names, name="Cell"),
                            columns=pd.Index(self.regulon_names, name="Regulon"))


def _check_adjacencies(adjacencies) -> pd.DataFrame:
    if not isinstance(adjacencies, pd.DataFrame):
        raise InputError(f"adjacencies must be a DataFrame with columns TF, target, importance, got "
                         f"{type(adjacencies).__name__}")
    missing = [c for c in ("TF", "target", "importance") if c not in adjacencies.columns]
    if missing:
        raise InputError(f"adjacencies lack column(s) {missing}; pySCENIC's are TF, target, importance")
    frame = pd.DataFrame({
        "TF": adjacencies["TF"].astype(str).to_numpy(dtype=object),
        "target": adjacencies["target"].astype(str).to_numpy(dtype=object),
        "importance": pd.to_numeric(adjacencies["importance"], errors="coerce").to_numpy(np.float64),
    })
    bad = ~np.isfinite(frame["importance"].to_numpy())
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(f"adjacencies row {row}: importance {adjacencies['importance'].iloc[row]!r} is not a "
                         "finite number")
    return frame


def _regulon_frame(regulons: Sequence[dict]) -> pd.DataFrame:
    """Regulon dicts -> a parquet-ready table; the required fields are checked, extra fields kept."""
    if isinstance(regulons, dict) or not isinstance(regulons, Sequence):
        raise InputError("regulons must be a list of dicts (see regulons_from_motifs)")
    records = []
    extra: list[str] = []
    for i, regulon in enumerate(regulons):
        if not isinstance(regulon, dict):
            raise InputError(f"regulons[{i}] is not a dict")
        for key in ("name", "genes", "weights"):
            if key not in regulon:
                raise InputError(f"regulons[{i}] lacks {key!r}; a regulon needs name, genes and weights")
        genes, weights = [str(g) for g in regulon["genes"]], [float(w) for w in regulon["weights"]]
        if len(genes) != len(weights):
            raise InputError(f"regulons[{i}] ({regulon['name']}) has {len(genes)} genes but {len(weights)} weights")
        name = str(regulon["name"])
        tf, kind = _parse_regulon_name(name)
        record = {"name": name, "tf": str(regulon.get("tf", tf)), "type": str(regulon.get("type", kind)),
                  "genes": genes, "weights": weights, "score": float(regulon.get("score", math.nan)),
                  "motifs": [str(m) for m in regulon.get("motifs", [])]}
        for key, value in regulon.items():
            if key not in record:
                record[key] = value
                if key not in extra:
                    extra.append(key)
        records.append(record)
    _check_unique([r["name"] for r in records], "regulon names")
    frame = pd.DataFrame.from_records(records, columns=[*_REGULON_COLUMNS, *extra])
    return frame


def _parse_regulon_name(name: str) -> tuple[str, str]:
    """``'Tf(+)'`` -> ('Tf', 'activating'), ``'Tf(-)'`` -> repressing; SCope's ``'Tf (+)'``, ``'Tf (12g)'`` too."""
    text = name.strip()
    match = re.fullmatch(r"(.+?)\s*\(([+-])\)(?:\s*\(\d+g\))?", text)
    if match:
        return match.group(1), "repressing" if match.group(2) == "-" else "activating"
    match = re.fullmatch(r"(.+?)\s*\(\d+g\)", text)
    return (match.group(1) if match else text), "activating"
