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
so peak memory stays close to one copy of the ranks (about 1.05x the database).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc

from ._errors import InputError

__all__ = ["RankingDatabase", "read_ranking_database", "INDEX_COLUMNS"]

logger = logging.getLogger(__name__)

INDEX_COLUMNS = ("motifs", "tracks", "features")
_COLUMNS_PER_READ = 1024  # gene columns read at a time: bounds the transient copy
_MOTIFS_PER_CHECK = 256  # motifs checked at a time for being permutations


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
        database = cls(name, motif_names, gene_names, np.ascontiguousarray(rankings.T, dtype=dtype))
        _check_names(database, name)
        if validate:
            check_permutations(database.ranks_by_gene, name)
        return database


def read_ranking_database(path, name: str | None = None, validate: bool = True) -> RankingDatabase:
    """Read a Feather (v2, or legacy v1) cisTarget ranking database.

    Parameters
    ----------
    path
        The ``.feather`` file.
    name
        Database name; default the file name without its extension, as in pySCENIC.
    validate
        Check that every motif's ranks are a permutation of 0..n_genes-1 (one pass over
        the ranks; the memory-mapped cache skips it on later loads).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ranking database {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise InputError(f"ranking database {str(path)!r} is empty (0 bytes); download it again")
    name = path.stem if name is None else name  # pySCENIC: the file name without its extension
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:4] == b"FEA1":
        database = _read_v1(path, name)
    elif magic == b"ARROW1":
        database = _read_v2(path, name)
    else:
        raise InputError(f"{str(path)!r} is not a Feather ranking database (its first bytes are {magic!r})")
    _check_names(database, str(path))
    if validate:
        check_permutations(database.ranks_by_gene, str(path))
    logger.info("read %s: %d motifs x %d genes", name, database.n_motifs, database.n_genes)
    return database


def _read_v2(path: Path, name: str) -> RankingDatabase:
    try:
        reader = ipc.open_file(str(path))
    except (pa.ArrowInvalid, OSError) as error:
        raise InputError(f"{str(path)!r} is not a readable Feather v2 file ({error}); it may be truncated: download it again") from None
    schema = reader.schema
    index_position, gene_positions, dtype = _layout(schema, path)
    motif_names = _read_columns(path, [index_position]).column(0).to_numpy(zero_copy_only=False).astype(str)
    ranks = np.empty((len(gene_positions), motif_names.size), dtype=dtype)
    for start in range(0, len(gene_positions), _COLUMNS_PER_READ):
        block = _read_columns(path, gene_positions[start : start + _COLUMNS_PER_READ])
        for offset, column in enumerate(block.columns):
            if column.null_count:
                raise InputError(f"{str(path)!r}: gene column {block.column_names[offset]!r} has missing ranks")
            ranks[start + offset] = column.to_numpy()
    gene_names = np.array([schema.field(i).name for i in gene_positions], dtype=str)
    return RankingDatabase(name, motif_names, gene_names, ranks)


def _read_columns(path: Path, positions: list[int]) -> pa.Table:
    try:
        options = ipc.IpcReadOptions(included_fields=positions)
        return ipc.open_file(str(path), options=options).read_all()
    except (pa.ArrowInvalid, OSError) as error:
        raise InputError(f"{str(path)!r} could not be read ({error}); it may be truncated: download it again") from None


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
    except (pa.ArrowInvalid, OSError, NotImplementedError) as error:
        raise InputError(f"{str(path)!r} is a legacy Feather v1 database this pyarrow cannot read ({error}); {advice}") from None
    logger.info("%s is a legacy Feather v1 file; reading it works today, but %s", path, advice)
    index_position, gene_positions, dtype = _layout(table.schema, path)
    ranks = np.empty((len(gene_positions), table.num_rows), dtype=dtype)
    for row, position in enumerate(gene_positions):
        ranks[row] = table.column(position).to_numpy()
    motif_names = table.column(index_position).to_numpy(zero_copy_only=False).astype(str)
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
    for what, names in (("gene", database.gene_names), ("motif", database.motif_names)):
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
