"""Input readers: any expression input, as names and blocks of rows, whole or streamed.

One reader per format (h5ad, AnnData-on-zarr and expression stores, loom, CSV/TSV, and
in-memory AnnData, numpy, scipy and DataFrames), behind one interface, so that ingest
(``flashscenic.store``), the verbs that need a matrix in memory and the checks of gene
names against databases see every input alike and check it alike: NaN and infinite values
with their location, genes x cells orientation, duplicate names, empty input, and input
that looks like raw counts.

``open_expression`` reads only the names (so they can be checked before minutes of
reading); ``ExpressionSource.blocks`` then reads rows a block at a time; ``read_expression``
reads the whole input into an AnnData.
"""

from __future__ import annotations

import csv
import gzip
import html
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._utils import check_unique, is_anndata
from .errors import InputError, MissingFileError

__all__ = ["FORMATS", "ExpressionSource", "open_expression", "read_gene_names", "read_expression"]

logger = logging.getLogger(__name__)

FORMATS = ("h5ad", "zarr", "loom", "csv", "tsv")
_SUFFIXES = {".h5ad": "h5ad", ".loom": "loom", ".zarr": "zarr", ".csv": "csv", ".tsv": "tsv", ".txt": "tsv"}
_NAME_SAMPLE = 1000  # names looked at when guessing the orientation of a matrix
_BLOCK_BYTES = 64 * 2**20  # one dense float32 block of read_expression
# Log-normalised data never has only whole numbers with a maximum this large; raw counts do.
_COUNTS_MAX = 30


# --- names -------------------------------------------------------------------------------


def _names(values, what: str) -> np.ndarray:
    """Names as an object array of str, after checking they are strings and unique."""
    names = _as_text(values)
    if len(names) and pd.api.types.infer_dtype(names, skipna=False) != "string":
        bad = next(i for i, v in enumerate(names) if not isinstance(v, str))
        raise InputError(f"{what} must be strings; entry {bad} is {names[bad]!r}")
    check_unique(names, what)
    return names


def _as_text(values) -> np.ndarray:
    """A 1-D object array from any array of strings (numpy U/T dtypes, pandas, lists)."""
    if isinstance(values, (pd.Index, pd.Series)):
        return values.to_numpy(dtype=object)
    array = np.asarray(values)
    return array if array.dtype == object else array.astype(object)


def _attr_text(value) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _read_elem(node):
    from anndata.io import read_elem

    return read_elem(node)


def _index(frame_group) -> np.ndarray:
    """The index of an anndata dataframe group (obs or var)."""
    key = _attr_text(frame_group.attrs.get("_index", "_index"))
    return np.asarray(_read_elem(frame_group[key]))


def _loom_strings(values: np.ndarray) -> np.ndarray:
    """Loom strings -> str: UTF-8 bytes (h5py strings), with XML character references as loompy writes them."""
    if values.dtype.kind == "U":
        return values.astype(str)
    return np.array([html.unescape(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)) for v in values],
                    dtype=object)


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


# --- sources: uniform row-block access to every input format -----------------------------


class ExpressionSource:
    """An open cells x genes input: its names, and its rows a block at a time.

    Opening reads the names only, never the matrix. ``n_cells`` is ``None`` when it is only
    known after reading (CSV); ``cell_names`` is then filled while the blocks are read. Use
    it as a context manager, or call ``close()``, to release the file.
    """

    description = "input"
    sparse = False
    n_cells: int | None
    gene_names: np.ndarray
    cell_names: np.ndarray | None

    def blocks(self, rows: int) -> Iterator[tuple[int, Any]]:
        """Yield ``(start, block)``: ``rows`` cells at a time, a dense array or a CSR matrix."""
        raise NotImplementedError

    def obs(self, columns: Sequence[str]) -> pd.DataFrame:
        """The cell annotation ``columns``, indexed by cell name."""
        if columns:
            raise InputError(f"obs_columns={list(columns)} needs an input with cell annotations "
                             "(h5ad, AnnData, AnnData-on-zarr or loom); this input has none")
        return pd.DataFrame(index=self.cell_names)

    def close(self) -> None:
        pass

    def __enter__(self) -> ExpressionSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _ArraySource(ExpressionSource):
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
        missing = [c for c in columns if c not in self._obs.columns]
        if missing:
            raise InputError(f"{self.description} has no obs column(s) {missing}; it has {list(self._obs.columns)[:20]}")
        return self._obs.loc[:, list(columns)].copy().set_axis(self.cell_names, axis=0)


class _GroupSource(ExpressionSource):
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
        elif encoding == "array" and not _is_group(x):
            shape = tuple(int(n) for n in x.shape)
        else:
            raise InputError(f"{description}: X has encoding {encoding!r}, which flashscenic cannot stream; "
                             "re-save the file with a recent anndata (CSR or dense X)")
        self._x, self._encoding = x, encoding
        if len(shape) != 2:
            raise InputError(f"{description}: X has shape {shape}; expected 2-D cells x genes")
        self.n_cells = shape[0]
        self.gene_names = _names(_index(root["var"]), f"{description} var_names (gene names)")
        self.cell_names = _names(_index(root["obs"]), f"{description} obs_names (cell names)")
        if len(self.gene_names) != shape[1] or len(self.cell_names) != shape[0]:
            raise InputError(f"{description}: X is {shape} but there are {len(self.cell_names)} cell and "
                             f"{len(self.gene_names)} gene names")

    def blocks(self, rows):
        if self._encoding == "array":
            for start in range(0, self.n_cells, rows):
                yield start, self._x[start : start + rows]
            return
        if self._encoding == "csc_matrix":
            logger.warning("%s stores its matrix by column (CSC): reading it whole into memory to read rows; "
                           "save it as CSR to stream it", self.description)
            whole = sp.csr_matrix(_read_elem(self._x))
            for start in range(0, self.n_cells, rows):
                yield start, whole[start : start + rows]
            return
        data, indices = self._x["data"], self._x["indices"]
        indptr = np.asarray(self._x["indptr"][:], dtype=np.int64)
        for start in range(0, self.n_cells, rows):
            stop = min(start + rows, self.n_cells)
            a, b = indptr[start], indptr[stop]
            yield start, sp.csr_matrix((data[a:b], indices[a:b], indptr[start : stop + 1] - a),
                                       shape=(stop - start, len(self.gene_names)))

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


class _LoomSource(ExpressionSource):
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


class _TextSource(ExpressionSource):
    """CSV/TSV, cells x genes with a header of gene names and cell names in the first column (pySCENIC's layout).

    Transposed (genes x cells), the gene names are the first column: opening reads that
    column only, and the first ``blocks`` call reads the whole table (it cannot be read by
    rows).
    """

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
        if transpose:
            self.gene_names = _names(self._read(None, usecols=[0]).index, f"{path} gene names (first column, transposed)")
            self.cell_names = _names(header[1:], f"{path} cell names (header, transposed)")
            self.n_cells = len(self.cell_names)
        else:
            self.gene_names = _names(header[1:], f"{path} gene names (header)")
            self.cell_names = None
            self.n_cells = None

    def _read(self, chunksize, usecols=None):
        try:
            # keep_default_na=False: a cell called 'NA' is a name, and 'NA' where a number belongs is an error
            return pd.read_csv(self.path, sep=self.sep, header=0, index_col=0, dtype={0: str}, chunksize=chunksize,
                               usecols=usecols, keep_default_na=False, low_memory=False)
        except (ValueError, OSError, UnicodeDecodeError, EOFError, pd.errors.ParserError) as error:
            raise InputError(f"cannot read {self.path} as a table ({error})") from error

    def blocks(self, rows):
        if self.transpose:
            frame = self._read(None).T
            if frame.shape != (self.n_cells, len(self.gene_names)):
                raise InputError(f"{self.path}: the table is {frame.shape[1]} genes x {frame.shape[0]} cells, but "
                                 f"its first column and header name {len(self.gene_names)} and {self.n_cells}")
            yield from ((s, self._numbers(frame.iloc[s : s + rows])) for s in range(0, self.n_cells, rows))
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
            if start == 0:  # cell names arrive with the rows: check the orientation on the first block
                _check_orientation(names[0], self.gene_names, self.description)
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


def open_expression(
    source,
    *,
    format: str | None = None,
    layer: str | None = None,
    transpose: bool = False,
    gene_names: Sequence[str] | None = None,
    cell_names: Sequence[str] | None = None,
    gene_attribute: str = "Gene",
    cell_attribute: str = "CellID",
) -> ExpressionSource:
    """Open any expression input, reading its names but not its matrix.

    Parameters
    ----------
    source
        A path (``.h5ad``; ``.zarr`` AnnData or expression store; ``.loom`` genes x cells
        as pySCENIC writes it; ``.csv``/``.tsv``, optionally ``.gz``, cells x genes with
        gene names in the header and cell names in the first column), an AnnData (in
        memory or backed), a numpy array, a scipy.sparse matrix or a DataFrame (cells x genes).
    format
        The file format when the name does not tell: one of ``FORMATS``.
    layer
        Read this AnnData/loom layer instead of X.
    transpose
        The input is genes x cells (CSV/TSV, arrays, DataFrames).
    gene_names, cell_names
        Names for numpy/scipy input (gene names required; cells default to ``'0'``, ``'1'``, ...).
    gene_attribute, cell_attribute
        Loom row/column attributes with the gene and cell names (pySCENIC's defaults).

    Returns
    -------
    ExpressionSource
        Close it (or use it in a ``with`` block) to release the file.
    """
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
    if is_anndata(source):
        if source.isbacked and layer is None:
            return open_expression(Path(source.filename), format="h5ad", gene_attribute=gene_attribute,
                                   cell_attribute=cell_attribute)
        if layer is not None and layer not in source.layers:
            raise InputError(f"the AnnData has no layer {layer!r}; it has {list(source.layers.keys())}")
        matrix = source.X if layer is None else source.layers[layer]
        if matrix is None:
            raise InputError("the AnnData has no X; choose a layer with layer=")
        return _ArraySource(matrix, source.var_names, source.obs_names, "the AnnData", obs=source.obs)
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"cannot read a {type(source).__name__}; give a file path, an AnnData, a numpy or "
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
        import zarr

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


def read_gene_names(
    source,
    *,
    format: str | None = None,
    layer: str | None = None,
    transpose: bool = False,
    gene_names: Sequence[str] | None = None,
    cell_names: Sequence[str] | None = None,
    gene_attribute: str = "Gene",
    cell_attribute: str = "CellID",
) -> list[str]:
    """The gene names of any input (options as ``open_expression``), without reading its matrix.

    So that gene names can be checked against the databases before minutes of reading.
    """
    with open_expression(source, format=format, layer=layer, transpose=transpose, gene_names=gene_names,
                         cell_names=cell_names, gene_attribute=gene_attribute, cell_attribute=cell_attribute) as src:
        return [str(g) for g in src.gene_names]


# --- checks while reading ----------------------------------------------------------------


def _check_source(src: ExpressionSource) -> None:
    """What can be refused before reading: an empty input, names that say it is genes x cells."""
    if len(src.gene_names) == 0 or src.n_cells == 0:
        raise InputError(f"{src.description} is empty ({src.n_cells or 0} cells x {len(src.gene_names)} genes); "
                         "nothing to read")
    if src.cell_names is not None:
        _check_orientation(src.cell_names, src.gene_names, src.description)


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


class _Scanner:
    """One pass over all blocks: counts NaN/inf (and, before log1p, negative values), keeping the first
    of each, and tells whether the values look like raw counts (only whole numbers >= 0, large ones)."""

    def __init__(self, log1p: bool):
        self.log1p = log1p
        self.n_bad = self.n_negative = 0
        self.first_bad = self.first_negative = None
        self.counts, self.max = not log1p, 0.0  # whole numbers >= 0 so far (looked at only without log1p)

    def scan(self, block, start: int) -> None:
        values = block.data if sp.issparse(block) else block.ravel()
        if not values.size:
            return
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
        elif self.counts:  # log data fails on its first block, so counts alone pay for this
            self.counts = bool(values.min() >= 0 and np.array_equal(values, np.rint(values)))
            if self.counts:
                self.max = max(self.max, float(values.max()))

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
                             f"{place(self.first_bad)}; remove or impute them first")
        if self.n_negative:
            raise InputError(f"log1p=True but {where} has {self.n_negative} negative value(s), first at "
                             f"{place(self.first_negative)}; log1p needs counts >= 0 (is the input already "
                             "log-transformed? then leave log1p off)")

    def warn_if_counts(self, where: str, stacklevel: int) -> None:
        """One UserWarning when the input looks like raw counts while log1p is off."""
        if self.counts and self.max > _COUNTS_MAX:
            warnings.warn(f"{where} looks like raw counts (only whole numbers, the largest {self.max:g}) but "
                          "log1p is off; RegDiffusion and the module thresholds assume log expression: pass "
                          "log1p=True (CLI --log1p)", UserWarning, stacklevel=stacklevel + 1)


def _locate(block, start: int, position: int, values) -> tuple[int, int, float]:
    if sp.issparse(block):
        row = int(np.searchsorted(block.indptr, position, side="right") - 1)
        return start + row, int(block.indices[position]), float(values[position])
    n_genes = block.shape[1]
    return start + position // n_genes, position % n_genes, float(values[position])


def _prepare(block, scanner: _Scanner, start: int, log1p: bool):
    """A block as float32, scanned, then log1p'd (only while the input is clean)."""
    block = _as_float_block(block)
    scanner.scan(block, start)
    if log1p and scanner.clean:  # new arrays: a float32 block may be a view of the caller's matrix
        if sp.issparse(block):
            block.data = np.log1p(block.data)
        else:
            block = np.log1p(block)
    return block


def _check_read(src: ExpressionSource, scanner: _Scanner, n_rows: int, nnz: int, n_genes: int) -> None:
    """What can be refused only after reading: bad values, no cells, nothing but zeros."""
    scanner.raise_if_bad(src.cell_names, src.gene_names, src.description)
    if n_rows == 0:
        raise InputError(f"{src.description} has no cells (0 rows); nothing to read")
    if nnz == 0:
        raise InputError(f"every value in {src.description} is 0 ({n_rows} cells x {n_genes} genes); "
                         "is this the right matrix or layer?")


# --- reading whole -----------------------------------------------------------------------


def read_expression(
    source,
    *,
    format: str | None = None,
    layer: str | None = None,
    log1p: bool = False,
    transpose: bool = False,
    obs_columns: Sequence[str] = (),
    gene_names: Sequence[str] | None = None,
    cell_names: Sequence[str] | None = None,
    gene_attribute: str = "Gene",
    cell_attribute: str = "CellID",
):
    """Read any expression input whole into an AnnData, with the checks ingest makes.

    For the verbs that need the matrix in memory; the pipeline streams it into an
    expression store instead (``flashscenic.store.ingest_expression``). The options are
    those of ``open_expression``, plus ``log1p`` (store ``log1p(x)``) and ``obs_columns``
    (cell annotations to copy into ``obs``).

    Returns
    -------
    anndata.AnnData
        ``X`` float32, CSR for sparse input and dense otherwise; ``obs`` indexed by cell
        name with ``obs_columns``; ``var`` indexed by gene name.

    Raises
    ------
    InputError
        As ``ingest_expression``: NaN or infinite values (count and first location),
        negative values with ``log1p``, duplicate names, an empty matrix, a matrix that is
        clearly genes x cells. Input that looks like raw counts without ``log1p`` gives a
        ``UserWarning``.
    """
    import anndata as ad

    with open_expression(source, format=format, layer=layer, transpose=transpose, gene_names=gene_names,
                         cell_names=cell_names, gene_attribute=gene_attribute, cell_attribute=cell_attribute) as src:
        _check_source(src)
        n_genes = len(src.gene_names)
        scanner = _Scanner(log1p)
        rows = max(1, _BLOCK_BYTES // (4 * n_genes))
        with closing(src.blocks(rows)) as blocks:
            parts = [_prepare(block, scanner, start, log1p) for start, block in blocks]
        if src.sparse:
            x = sp.vstack(parts, format="csr", dtype=np.float32) if parts else sp.csr_matrix((0, n_genes), dtype=np.float32)
            nnz = x.count_nonzero()
        else:
            x = np.vstack(parts) if parts else np.zeros((0, n_genes), dtype=np.float32)
            nnz = np.count_nonzero(x)
        _check_read(src, scanner, x.shape[0], nnz, n_genes)
        scanner.warn_if_counts(src.description, stacklevel=2)
        obs = src.obs(list(obs_columns))
        var = pd.DataFrame(index=pd.Index(src.gene_names, dtype=object))
    return ad.AnnData(X=x, obs=obs, var=var)
