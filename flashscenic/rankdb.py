"""cisTarget ranking databases: read, validate and hold them in the layout the kernels use.

A database is a Feather file whose rows are motifs (or tracks) and whose columns are
genes; one column (``motifs``, ``tracks`` or, in older files, ``features``; first, last or
anywhere) names the rows, every other column holds 0-based ranks of one integer dtype,
and each motif's ranks are a permutation of 0..n_genes-1.

In memory the ranks are kept gene-major (genes x motifs, C order): that is Arrow's own
columnar layout, so reading is a straight copy, and a module's genes are contiguous rows,
so gathering them is cheap. ``RankingDatabase.rankings`` exposes the motifs x genes view
the rest of the code and pySCENIC think in, without a copy.

Reading never goes through pandas: columns are read from the IPC file a block at a time,
so peak memory stays close to one copy of the ranks (measured: 1.3x the ranks, including
library start-up; see BENCHMARKS.md).

The first read of a large database also writes a memory-mappable copy beside it (the
cache): ``<file>.flashscenic-cache.npy`` holds exactly ``ranks_by_gene``, and
``<file>.flashscenic-cache.json`` the names and what the cache was made from (the source's
size, mtime, ctime, inode, SHA-1 and a content fingerprint). Later reads map the ``.npy``
(no copy, no validation, nothing resident until the ranks are used), and every process of
a node shares the same pages through the page cache. A cache whose source changed is
rebuilt: the fingerprint (the Feather footer and a few sampled blocks, read on every load)
and the ctime catch a file replaced in place with its size and mtime kept (``rsync
--inplace`` then ``touch -r``), which a size/mtime/inode key trusts. A damaged cache is rebuilt
with a warning; where the source's directory is not writable the cache goes to
``$XDG_CACHE_HOME/flashscenic/rankdb`` (default ``~/.cache/...``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc

from ._utils import atomic_path
from .errors import InputError, MissingFileError

__all__ = ["RankingDatabase", "read_ranking_database", "read_database_gene_names", "check_database_file",
           "INDEX_COLUMNS"]

logger = logging.getLogger(__name__)

INDEX_COLUMNS = ("motifs", "tracks", "features")
_COLUMNS_PER_READ = 512  # gene columns read at a time: bounds the transient copy
_MOTIFS_PER_CHECK = 256  # motifs checked at a time for being permutations
_CACHE_SUFFIX = ".flashscenic-cache"
_CACHE_FORMAT = "flashscenic-ranking-database-cache"
_CACHE_VERSION = 2  # 2: the source's ctime and content fingerprint in the key
_FINGERPRINT_BLOCK = 1 << 16  # bytes per sampled block
_FINGERPRINT_BLOCKS = 16  # blocks sampled evenly over the file, besides its footer
_FINGERPRINT_FOOTER_MAX = 1 << 26  # a footer length read from a damaged file may be anything
# With cache=True, smaller databases are read directly: they load in milliseconds anyway,
# and a copy beside every test fixture or toy database would only litter directories.
_CACHE_MIN_BYTES = 16 * 2**20


@dataclass(frozen=True, eq=False)
class RankingDatabase:
    """A ranking database held gene-major.

    Attributes
    ----------
    name
        The database name pySCENIC uses: the file name without its extension.
    motif_names, gene_names
        Row and column names, as numpy string arrays.
    ranks_by_gene
        int16 or int32, genes x motifs, C order (possibly memory-mapped).
    """

    name: str
    motif_names: np.ndarray
    gene_names: np.ndarray
    ranks_by_gene: np.ndarray

    @property
    def rankings(self) -> np.ndarray:
        """Motifs x genes view of the ranks (no copy)."""
        return self.ranks_by_gene.T

    @property
    def n_motifs(self) -> int:
        return self.ranks_by_gene.shape[1]

    @property
    def n_genes(self) -> int:
        return self.ranks_by_gene.shape[0]

    def gene_indices(self, genes) -> tuple[np.ndarray, np.ndarray]:
        """Database column of each gene, and a mask of which genes the database has."""
        lookup = self._gene_lookup()
        index = np.array([lookup.get(g, -1) for g in genes], dtype=np.int64)
        return index, index >= 0

    def _gene_lookup(self) -> dict:
        lookup = self.__dict__.get("_lookup")
        if lookup is None:
            lookup = {g: i for i, g in enumerate(self.gene_names.tolist())}
            object.__setattr__(self, "_lookup", lookup)
        return lookup

    @classmethod
    def from_array(cls, rankings, motif_names=None, gene_names=None, name: str = "database",
                   validate: bool = True) -> "RankingDatabase":
        """Wrap a motifs x genes rank matrix (numpy or torch) held in memory."""
        if hasattr(rankings, "detach"):
            rankings = rankings.detach().cpu().numpy()
        rankings = np.asarray(rankings)
        if rankings.ndim != 2:
            raise InputError(f"rankings must be 2-D (motifs x genes), got shape {rankings.shape}")
        n_motifs, n_genes = rankings.shape
        if rankings.dtype.kind not in "iu":
            raise InputError(f"rankings must hold integer ranks, got dtype {rankings.dtype}")
        motif_names = np.asarray(motif_names if motif_names is not None else [f"motif{i}" for i in range(n_motifs)], dtype=str)
        gene_names = np.asarray(gene_names if gene_names is not None else [f"gene{j}" for j in range(n_genes)], dtype=str)
        if motif_names.shape != (n_motifs,) or gene_names.shape != (n_genes,):
            raise InputError(
                f"{motif_names.size} motif names and {gene_names.size} gene names for a "
                f"{n_motifs} x {n_genes} rank matrix"
            )
        dtype = np.int16 if n_genes <= np.iinfo(np.int16).max + 1 else np.int32
        database = cls(name, motif_names, gene_names, transposed(rankings, dtype))
        _check_names(database, name)
        if validate:
            check_permutations(database.ranks_by_gene, name)
        return database


def transposed(matrix: np.ndarray, dtype=None) -> np.ndarray:
    """A C-order transposed copy, made in square tiles: a plain strided copy of a large
    matrix misses the cache on every element (5,000 x 20,000 int16: 0.17 s plain, 0.07 s
    tiled, measured here)."""
    tile = 256
    out = np.empty(matrix.shape[::-1], dtype=matrix.dtype if dtype is None else dtype)
    for i in range(0, matrix.shape[0], tile):
        for j in range(0, matrix.shape[1], tile):
            out[j:j + tile, i:i + tile] = matrix[i:i + tile, j:j + tile].T
    return out


def read_ranking_database(path, name: str | None = None, validate: bool = True, cache=True) -> RankingDatabase:
    """Read a Feather (v2, or legacy v1) cisTarget ranking database, through a fast cache.

    Parameters
    ----------
    path
        The ``.feather`` file.
    name
        Database name; default the file name without its extension, as in pySCENIC.
    validate
        Check that every motif's ranks are a permutation of 0..n_genes-1 (one pass over
        the ranks). With the cache this happens once, when the cache is made.
    cache
        ``True`` (default): for a database of 16 MiB or more, write a memory-mappable copy
        of the ranks on first read (beside the file, or in ``~/.cache/flashscenic/rankdb``
        when its directory is not writable) and map it on later reads: about a second
        instead of tens, and no memory used until the ranks are read. A directory: keep
        the cache there (any size). ``False``: always read the Feather file.

    Returns
    -------
    RankingDatabase
        Its ``ranks_by_gene`` is a copy-on-write ``numpy.memmap`` when it comes from the cache.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"ranking database {str(path)!r} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"ranking database {str(path)!r} is empty (0 bytes); download it again")
    name = path.stem if name is None else name  # pySCENIC: the file name without its extension
    if cache is False or cache is None or (cache is True and size < _CACHE_MIN_BYTES):
        return _read_source(path, name, validate)
    return _read_through_cache(path, name, validate, None if cache is True else Path(cache))


def _read_source(path: Path, name: str, validate: bool) -> RankingDatabase:
    """Read the Feather file itself (v1 or v2), check names and, if asked, the permutations.

    Any Arrow error (a damaged file raises ArrowInvalid, ArrowNotImplementedError, bare
    ArrowException...) becomes one line naming the file.
    """
    magic = _magic(path)
    try:
        database = _read_v1(path, name) if magic[:4] == b"FEA1" else _read_v2(path, name)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as error:
        raise _damaged(path, error) from None
    _check_names(database, str(path))
    if validate:
        check_permutations(database.ranks_by_gene, str(path))
    logger.info("read %s: %d motifs x %d genes", name, database.n_motifs, database.n_genes)
    return database


def read_database_gene_names(path) -> np.ndarray:
    """The gene names of a ranking database, without reading its ranks.

    For early checks (does the expression data use the database's gene names?) before any
    heavy work: it reads the cache's names when a fresh cache exists, else only the
    Feather schema (v2: the file footer; v1: a memory map, nothing copied).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"ranking database {str(path)!r} does not exist")
    for npy, meta_path in _cache_candidates(path, None):
        meta = _read_meta(meta_path)
        if meta is not None and _same_stat(meta, path.stat()) and _same_content(meta, path):
            return np.asarray(meta["gene_names"], dtype=str)
    schema = _read_schema(path)
    _, gene_positions, _ = _layout(schema, path)
    return np.array([schema.field(i).name for i in gene_positions], dtype=str)


def check_database_file(path) -> None:
    """Raise unless ``path`` has Feather magic bytes and a readable ranking-database schema.

    The cheap check of a download that has no published checksum: an HTML page, a
    truncated file or another table fails it without reading the ranks.
    """
    _layout(_read_schema(Path(path)), Path(path))


def _magic(path: Path) -> bytes:
    """The first 6 bytes, refused unless they open a Feather v2 (``ARROW1``) or v1 (``FEA1``) file."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"ARROW1" and magic[:4] != b"FEA1":
        raise InputError(f"{str(path)!r} is not a Feather ranking database (its first bytes are {magic!r})")
    return magic


def _read_schema(path: Path) -> pa.Schema:
    """The schema alone: v2 from the file footer, v1 from a memory map (nothing copied)."""
    magic = _magic(path)
    try:
        if magic == b"ARROW1":
            schema = ipc.open_file(str(path)).schema
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                schema = feather.read_table(str(path), memory_map=True).schema
        schema.names  # decoded here: a damaged name is not UTF-8
    except (pa.ArrowException, OSError, UnicodeDecodeError) as error:
        raise _damaged(path, error) from None
    return schema


def _damaged(path: Path, error: BaseException) -> InputError:
    """One line for an Arrow or I/O error while reading ``path``: which file, what, what to do."""
    detail = " ".join(str(error).split()) or type(error).__name__
    return InputError(f"{str(path)!r} is damaged or truncated and could not be read ({type(error).__name__}: "
                      f"{detail[:200]}); download it again")


# ----------------------------------------------------------------------------- the cache


def _read_through_cache(path: Path, name: str, validate: bool, directory: Path | None) -> RankingDatabase:
    """Map a valid cache of ``path``, or read ``path`` and make one (under a lock)."""
    candidates = _cache_candidates(path, directory)
    for npy, meta_path in candidates:
        database = _load_cache(path, name, validate, npy, meta_path)
        if database is not None:
            return database
    for npy, meta_path in candidates:
        if _writable(npy.parent):
            return _build_cache(path, name, validate, npy, meta_path)
    warnings.warn(f"no writable directory for the cache of {path} (tried {', '.join(str(n.parent) for n, _ in candidates)}); "
                  "reading the Feather file each time", stacklevel=3)
    return _read_source(path, name, validate)


def _cache_candidates(path: Path, directory: Path | None) -> list[tuple[Path, Path]]:
    """Where a cache of ``path`` may live, in order: ``directory``, or beside it then the fallback."""
    if directory is not None:
        places = [(directory, path.name)]
    else:
        key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        places = [(path.parent, path.name), (_fallback_cache_dir(), f"{key}-{path.name}")]
    return [(d / f"{stem}{_CACHE_SUFFIX}.npy", d / f"{stem}{_CACHE_SUFFIX}.json") for d, stem in places]


def _fallback_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "flashscenic" / "rankdb"


def _writable(directory: Path) -> bool:
    """Can files be created in ``directory`` (made if missing)? Tried, not guessed from permissions."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".flashscenic-probe-"):
            return True
    except OSError:
        return False


def _read_meta(meta_path: Path) -> dict | None:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _same_stat(meta: dict, stat: os.stat_result) -> bool:
    source = meta.get("source") or {}
    return ((source.get("size"), source.get("mtime_ns"), source.get("ctime_ns"), source.get("inode"))
            == (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino))


def _same_content(meta: dict, path: Path) -> bool:
    """Does ``path`` still have the size and fingerprint the cache was made from?"""
    source = meta.get("source") or {}
    return source.get("size") == path.stat().st_size and source.get("fingerprint") == _fingerprint(path)


def _fingerprint(path: Path) -> str:
    """A cheap content hash: the first block, the footer (schema and block index) and a few blocks
    sampled evenly; about 1 MiB read however large the file, so it can run on every load."""
    size = path.stat().st_size
    hasher = hashlib.sha1(str(size).encode())
    with open(path, "rb") as f:
        tail = _FINGERPRINT_BLOCK
        if size >= 10:
            f.seek(size - 10)
            end = f.read(10)
            if end[4:] == b"ARROW1":  # Feather v2: a 4-byte footer length, then the magic
                tail = min(max(tail, int.from_bytes(end[:4], "little", signed=True) + 10), _FINGERPRINT_FOOTER_MAX)
        starts = {0, max(size - tail, 0)} | {k * max(size - _FINGERPRINT_BLOCK, 0) // (_FINGERPRINT_BLOCKS - 1)
                                              for k in range(_FINGERPRINT_BLOCKS)}
        for start in sorted(starts):
            f.seek(start)
            hasher.update(start.to_bytes(8, "little"))
            hasher.update(f.read(tail if start == max(size - tail, 0) else _FINGERPRINT_BLOCK))
    return hasher.hexdigest()


def _load_cache(path: Path, name: str, validate: bool, npy: Path, meta_path: Path) -> RankingDatabase | None:
    """The database mapped from a valid cache, or None (missing, stale or damaged: rebuild)."""
    if not meta_path.exists():
        return None
    meta = _read_meta(meta_path)
    if meta is None or meta.get("format") != _CACHE_FORMAT:
        warnings.warn(f"the database cache {meta_path} is damaged (unreadable); rebuilding it", stacklevel=4)
        return None
    if meta.get("version") != _CACHE_VERSION:
        logger.info("%s was written by another flashscenic (cache format %s); rebuilding it", meta_path, meta.get("version"))
        return None
    stat = path.stat()
    if not _same_content(meta, path) or (not _same_stat(meta, stat) and _sha1_of(path) != meta["source"].get("sha1")):
        logger.info("%s changed since its cache was made; rebuilding the cache", path)
        return None
    if not _same_stat(meta, stat):  # same bytes, copied or touched
        meta["source"].update(mtime_ns=stat.st_mtime_ns, ctime_ns=stat.st_ctime_ns, inode=stat.st_ino)
        _write_json(meta_path, meta)
    try:
        ranks = np.load(npy, mmap_mode="c", allow_pickle=False)
        motif_names = np.asarray(meta["motif_names"], dtype=str)
        gene_names = np.asarray(meta["gene_names"], dtype=str)
        if (not isinstance(ranks, np.memmap) or ranks.shape != (gene_names.size, motif_names.size)
                or ranks.dtype != np.dtype(meta["dtype"]) or not ranks.flags.c_contiguous):
            raise ValueError(f"shape {ranks.shape} {ranks.dtype}, expected {gene_names.size} x {motif_names.size} {meta['dtype']}")
    except (OSError, ValueError, KeyError, TypeError, EOFError) as error:
        warnings.warn(f"the database cache {npy} is damaged ({error}); rebuilding it", stacklevel=4)
        return None
    database = RankingDatabase(name, motif_names, gene_names, ranks)
    if validate and not meta.get("validated"):
        try:
            check_permutations(ranks, str(path))
        except InputError:
            return None  # the cache was made without validation: rebuild, and let the source speak
        meta["validated"] = True
        _write_json(meta_path, meta)
    logger.info("mapped %s from its cache %s: %d motifs x %d genes", name, npy, database.n_motifs, database.n_genes)
    return database


def _build_cache(path: Path, name: str, validate: bool, npy: Path, meta_path: Path) -> RankingDatabase:
    """Read the source once, write the cache (``.npy`` then ``.json``, each atomically), map it.

    A lock keeps the processes of a node from all converting the same database at once:
    the others wait, then map what the first one wrote.
    """
    from filelock import FileLock

    with FileLock(str(meta_path.with_name(meta_path.name + ".lock"))):
        database = _load_cache(path, name, validate, npy, meta_path)  # made while we waited?
        if database is not None:
            return database
        before = path.stat()
        database = _read_source(path, name, validate)
        meta = {
            "format": _CACHE_FORMAT, "version": _CACHE_VERSION,
            "source": {"file": path.name, "size": before.st_size, "mtime_ns": before.st_mtime_ns,
                       "ctime_ns": before.st_ctime_ns, "inode": before.st_ino, "sha1": _sha1_of(path),
                       "fingerprint": _fingerprint(path)},
            "dtype": database.ranks_by_gene.dtype.str, "validated": bool(validate),
            "motif_names": database.motif_names.tolist(), "gene_names": database.gene_names.tolist(),
        }
        if not _same_stat(meta, path.stat()):
            logger.warning("%s changed while it was read; not caching it", path)
            return database
        try:
            with atomic_path(npy) as tmp, open(tmp, "wb") as f:
                np.save(f, database.ranks_by_gene, allow_pickle=False)
            _write_json(meta_path, meta, strict=True)
        except OSError as error:
            warnings.warn(f"could not write the database cache {npy} ({error}); reading the Feather file each time",
                          stacklevel=4)
            return database
        logger.info("cached %s as %s", path, npy)
    mapped = _load_cache(path, name, False, npy, meta_path)
    return mapped if mapped is not None else database


def _write_json(target: Path, content: dict, strict: bool = False) -> None:
    try:
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(content))
    except OSError:
        if strict:
            raise
        logger.info("could not update %s (read-only?); it stays valid", target)


def _sha1_of(path: Path) -> str:
    hasher = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def _read_v2(path: Path, name: str) -> RankingDatabase:
    """Feather v2; Arrow errors propagate to ``_read_source``, which names the file."""
    schema = ipc.open_file(str(path)).schema
    index_position, gene_positions, dtype = _layout(schema, path)
    motif_names = _motif_names(_read_columns(path, [index_position]).column(0), path)
    ranks = np.empty((len(gene_positions), motif_names.size), dtype=dtype)
    for start in range(0, len(gene_positions), _COLUMNS_PER_READ):
        block = _read_columns(path, gene_positions[start : start + _COLUMNS_PER_READ])
        for offset, column in enumerate(block.columns):
            if column.null_count:
                raise InputError(f"{str(path)!r}: gene column {block.column_names[offset]!r} has missing ranks")
            ranks[start + offset] = column.to_numpy()
        del block
        pa.default_memory_pool().release_unused()  # else Arrow's pool keeps every freed block: 2x peak
    gene_names = np.array([schema.field(i).name for i in gene_positions], dtype=str)
    return RankingDatabase(name, motif_names, gene_names, ranks)


def _read_columns(path: Path, positions: list[int]) -> pa.Table:
    """Some columns, fully validated: a damaged offset or length fails here, never reads out of bounds."""
    table = ipc.open_file(str(path), options=ipc.IpcReadOptions(included_fields=positions)).read_all()
    table.validate(full=True)
    return table


def _motif_names(column, path: Path) -> np.ndarray:
    """The index column as strings; a non-string or null one (a damaged file) is refused, not stringified."""
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)) or column.null_count:
        raise InputError(f"{str(path)!r}: the motif names must be strings without nulls, found {column.type} with "
                         f"{column.null_count} null(s); the file is damaged or not a ranking database")
    return column.to_numpy(zero_copy_only=False).astype(str)


def _read_v1(path: Path, name: str) -> RankingDatabase:
    """Legacy Feather v1: pyarrow still reads it (memory-mapped, uncompressed)."""
    advice = (
        "convert it once to Feather v2 with: python -c \"import pyarrow.feather as f; "
        f"f.write_feather(f.read_table('{path}'), '{path.with_suffix('.v2.feather')}')\""
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            table = feather.read_table(str(path), memory_map=True)
        table.validate(full=True)  # a damaged length or offset fails here, never reads out of bounds
    except (pa.ArrowException, OSError, NotImplementedError) as error:
        raise InputError(f"{str(path)!r} is a legacy Feather v1 database this pyarrow cannot read or a damaged one "
                         f"({' '.join(str(error).split())[:200]}); {advice}") from None
    logger.info("%s is a legacy Feather v1 file; reading it works today, but %s", path, advice)
    index_position, gene_positions, dtype = _layout(table.schema, path)
    ranks = np.empty((len(gene_positions), table.num_rows), dtype=dtype)
    for row, position in enumerate(gene_positions):
        ranks[row] = table.column(position).to_numpy()
    motif_names = _motif_names(table.column(index_position), path)
    gene_names = np.array([table.schema.field(i).name for i in gene_positions], dtype=str)
    return RankingDatabase(name, motif_names, gene_names, ranks)


def _layout(schema: pa.Schema, path: Path) -> tuple[int, list[int], np.dtype]:
    """Position of the index column, positions of the gene columns, and their one dtype."""
    names = schema.names
    found = [i for i, n in enumerate(names) if n in INDEX_COLUMNS]
    if len(found) != 1:
        raise InputError(
            f"{str(path)!r} must have exactly one index column named one of {', '.join(INDEX_COLUMNS)}; "
            f"found {len(found)} (columns start {names[:5]})"
        )
    index_position = found[0]
    gene_positions = [i for i in range(len(names)) if i != index_position]
    if not gene_positions:
        raise InputError(f"{str(path)!r} has no gene columns")
    types = {schema.field(i).type for i in gene_positions}
    if len(types) != 1 or not pa.types.is_integer(next(iter(types))):
        shown = ", ".join(sorted(str(t) for t in types)[:4])
        raise InputError(f"{str(path)!r}: gene columns must share one integer dtype (int16 or int32), found {shown}")
    return index_position, gene_positions, np.dtype(next(iter(types)).to_pandas_dtype())


def _check_names(database: RankingDatabase, where: str) -> None:
    """Names must be unique and non-empty: a damaged name that still parses is caught here."""
    for what, names in (("gene", database.gene_names), ("motif", database.motif_names)):
        empty = np.char.str_len(np.char.strip(names.astype(str))) == 0 if names.size else np.zeros(0, bool)
        if empty.any():
            raise InputError(f"{where}: empty {what} name at position {int(np.argmax(empty))}; "
                             "the file is damaged or not a ranking database")
        unique, counts = np.unique(names, return_counts=True)
        if (counts > 1).any():
            raise InputError(f"{where}: duplicate {what} names, e.g. {unique[counts > 1][:5].tolist()}")


def check_permutations(ranks_by_gene: np.ndarray, where: str) -> None:
    """Raise unless every motif's ranks (a column here) are a permutation of 0..n_genes-1."""
    n_genes, n_motifs = ranks_by_gene.shape
    if n_motifs == 0:
        raise InputError(f"{where}: the database has no motifs")
    low, high = int(ranks_by_gene.min()), int(ranks_by_gene.max())
    if low < 0 or high >= n_genes:
        raise InputError(f"{where}: ranks must lie in 0..{n_genes - 1}, found {low}..{high}")
    for start in range(0, n_motifs, _MOTIFS_PER_CHECK):
        block = ranks_by_gene[:, start : start + _MOTIFS_PER_CHECK]
        seen = np.zeros((block.shape[1], n_genes), dtype=bool)
        seen[np.arange(block.shape[1])[None, :], block] = True
        if not seen.all():
            bad = start + int(np.argmin(seen.all(axis=1)))
            raise InputError(
                f"{where}: the ranks of motif {bad} are not a permutation of 0..{n_genes - 1} "
                "(a rank is repeated or missing); the file is corrupt or not a ranking database"
            )
