"""A planted-truth SCENIC dataset: counts, a motif ranking database, annotations and a TF list.

SCENIC has three steps that can each go wrong silently: the GRN must link a TF to the genes
it drives, cisTarget must keep the TFs whose motif is enriched in those genes, and AUCell
must score the result per cell. This module simulates all inputs of the pipeline with a
known answer, so the whole chain can be checked end to end and each step's contribution
seen.

Expression model
----------------
Cells belong to ``n_cell_types`` types of unequal size. Every *planted* TF k has a latent
activity per cell, ``a_k(cell) = ACTIVITY_ON * on_k(type) + ACTIVITY_WITHIN_SD * z``: high
in one or two types (``active``) and varying from cell to cell within every type. The
within-type part is what makes the TF -> target dependency visible cell by cell; were the
targets driven by the cell type alone, every TF switched on in the same type would explain
them equally well and no GRN method could tell the regulator apart.

* the TF's own log-mean follows its activity: ``log mu_TF = log base + a_k``;
* a target's log-mean follows the activity of each of its regulators times the edge weight
  (``log mu_g = log base + sum_k w_gk a_k``, w in [0.5, 1]); a gene has at most two
  regulators, and ``targets_per_tf`` targets per TF;
* *decoy* TFs (in the TF list, expressed with the same cell-type and within-type pattern as
  planted TFs, with motifs of their own) regulate nothing: precision is a real test;
* background genes regulate and follow nothing but, for a third of them, a cell-type shift
  (marker genes), which correlates them with the TFs active in that type.

Counts are negative binomial (size ``DISPERSION``) around ``size_factor * mu``; the
expression is ``log1p(counts)``, with the heavy ties of real UMI data. With the defaults
about 60% of the entries are 0 (45% for TFs) and, within a cell type, a TF's expression
correlates with its targets' at r ~ 0.1-0.2, not 0.9: a GRN method has to work for it.

Motif database model
--------------------
Genes in a promoter ranking are ordered by a motif score. Every motif has a *hit set*
(genes whose promoter carries it) scored ``N(HIT_SCORE, 1)`` above the N(0, 1) background
plus a small per-gene bias shared by all motifs (promoters rich in motifs rank early
everywhere, as in real databases, which is why cisTarget normalises by NES). The hit set
of a planted TF's motif holds a random fraction (``MOTIF_SENSITIVITY``) of that TF's
targets plus ``OFF_TARGET_HIT_FRACTION`` of the database's genes from anywhere; other motifs (those of
decoy TFs, of TFs absent from the expression, and unannotated ones) hit random genes
only. So a planted motif ranks its TF's targets early, but noisily: some targets are not
hits at all, some hits fall beyond the AUC cut-off.

The database holds more genes than the expression matrix (the expressed genes, less a few
background ones, plus genome-only genes), as real databases do: the pipeline's default
``rank_threshold=5000`` must be below the database's gene count.

The annotation table follows the motif2tf layout. Planted and decoy TFs are annotated to
their motifs directly (q-value 0), by orthology (identity < 1) or by motif similarity
(q-value <= 0.001); in addition some planted motifs are annotated to decoy TFs with a
similarity q-value above 0.001, which the default filter must drop.

Evaluation
----------
``evaluate_regulons`` scores the pipeline's regulons at the TF level (precision: found
regulons whose TF is planted; recall: planted TFs found), at the target level (Jaccard
index of a regulon's genes and the planted targets) and, given AUCell scores, at the cell
level (is a regulon most active in a cell type where its TF is active).

Everything is drawn from ``numpy.random.default_rng(seed)``: the same arguments give the
same dataset, bit for bit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ._utils import atomic_path
from .errors import InputError

__all__ = ["SimulatedDataset", "simulate_dataset", "write_simulated_h5ad", "evaluate_regulons"]

logger = logging.getLogger(__name__)

# Expression model (log scale unless said otherwise).
ACTIVITY_ON = 1.0  # mean activity shift of a TF in the cell types where it is active
ACTIVITY_WITHIN_SD = 0.6  # cell-to-cell spread of a TF's activity within every cell type
WEIGHT_RANGE = (0.5, 1.0)  # TF -> target edge weights
MAX_REGULATORS = 2  # regulators per target gene, at most
TF_BASE_MEDIAN = 0.8  # median baseline count of a TF (median cell, activity 0)
GENE_BASE_MEDIAN = 0.4  # median baseline count of other genes
BASE_LOG_SD = 1.0  # spread of per-gene baselines
MARKER_FRACTION = 1 / 3  # background genes with a cell-type shift
MARKER_SD = 0.5  # size of those shifts
SIZE_FACTOR_LOG_SD = 0.3  # spread of per-cell library sizes
DISPERSION = 3.0  # negative-binomial size: variance = mu + mu**2 / DISPERSION
# Motif database model.
HIT_SCORE = 3.0  # mean score of a motif hit, in units of the background noise
GENE_BIAS_SD = 0.3  # per-gene score bias shared by all motifs
MOTIF_SENSITIVITY = (0.5, 0.8)  # fraction of its TF's targets a planted motif hits
OFF_TARGET_HIT_FRACTION = 0.025  # genes of the database a motif hits outside its TF's targets
MISSING_FROM_DATABASE = 0.02  # fraction of background genes absent from the database
ANNOTATION_QVALUE = 0.001  # the default motif-similarity filter the table is built around


@dataclass(frozen=True, eq=False)
class SimulatedDataset:
    """Simulated counts, the matching cisTarget resources, and the planted truth.

    Attributes
    ----------
    counts
        int32, cells x genes: negative-binomial counts (None from ``write_simulated_h5ad``:
        the cells are in its file, as are ``expression``'s).
    expression
        float32, cells x genes: ``log1p(counts)``, what the pipeline expects.
    gene_names
        str array, one per expression column, sorted.
    cell_types
        str array, one label per cell (``'type0'``, ...).
    cell_type_names
        str array: the distinct labels, in order; the columns of ``active``.
    tf_names
        str array: the TF list (planted, decoy, and TFs absent from the expression), sorted.
    planted_tfs
        str array: the planted TFs, sorted; the rows of ``regulon_weights``, ``active`` and
        the columns of ``activity``.
    decoy_tfs
        str array: TFs that are expressed and have motifs but regulate nothing.
    regulon_weights
        float32, planted TFs x genes: the edge weight of each planted target (0 elsewhere;
        the TF itself is not among its targets). Pass it to ``get_aucell`` as ``adj_array``.
    active
        bool, planted TFs x cell types: where each TF's mean activity is high.
    activity
        float32, cells x planted TFs: the latent activity that drives each TF and its targets
        (None from ``write_simulated_h5ad``).
    database_ranks
        int16, motifs x database genes: 0-based ranks, each row a permutation.
    motif_names
        str array, one per database row.
    database_gene_names
        str array, one per database column, sorted: most expressed genes plus genome-only genes.
    motif_annotation
        DataFrame in the motif2tf layout (``#motif_id``, ..., ``description``), all rows,
        including those the default q-value filter drops.
    planted_motifs
        dict TF -> tuple of the motifs whose hits hold that planted TF's targets.
    seed
        The seed it was made with.
    """

    counts: np.ndarray
    expression: np.ndarray
    gene_names: np.ndarray
    cell_types: np.ndarray
    cell_type_names: np.ndarray
    tf_names: np.ndarray
    planted_tfs: np.ndarray
    decoy_tfs: np.ndarray
    regulon_weights: np.ndarray
    active: np.ndarray
    activity: np.ndarray
    database_ranks: np.ndarray
    motif_names: np.ndarray
    database_gene_names: np.ndarray
    motif_annotation: pd.DataFrame
    planted_motifs: dict = field(default_factory=dict)
    seed: int | None = None

    @property
    def planted(self) -> dict[str, dict[str, float]]:
        """TF -> {target gene: edge weight}, the planted regulons (TF not included)."""
        out = {}
        for tf, row in zip(self.planted_tfs.tolist(), self.regulon_weights):
            targets = np.flatnonzero(row)
            out[tf] = {self.gene_names[j]: float(row[j]) for j in targets}
        return out

    @property
    def regulon_names(self) -> list[str]:
        """pySCENIC names of the planted regulons, ``'TF(+)'``, in ``planted_tfs`` order."""
        return [f"{tf}(+)" for tf in self.planted_tfs.tolist()]

    def planted_regulons(self) -> list[dict]:
        """The planted regulons in the form ``CisTargetPruner.prune_modules`` returns
        (name, tf, type, genes, weights, n_genes): a perfect pipeline's answer, for
        comparisons and for scoring the truth with AUCell."""
        regulons = []
        for tf, targets in self.planted.items():
            genes = sorted(targets)
            regulons.append({"name": f"{tf}(+)", "tf": tf, "type": "activating", "genes": genes,
                             "weights": [targets[g] for g in genes], "n_genes": len(genes)})
        return regulons

    def write_resources(self, directory) -> dict[str, Path]:
        """Write the cisTarget resources where the pipeline can read them.

        Files, in the layouts of the real Aertslab resources:

        * ``ranking_db``: ``simulated.genes_vs_motifs.rankings.feather``, Feather v2 (lz4),
          one int16 column of 0-based ranks per gene, the motif names in a last column
          named ``motifs``;
        * ``motif_annotation``: ``motifs-simulated-m0.001-o0.0.tbl``, the motif2tf TSV;
        * ``tf_list``: ``allTFs_simulated.txt``, one TF per line.

        Parameters
        ----------
        directory
            Created if missing; existing files of these names are replaced.

        Returns
        -------
        dict
            ``{'ranking_db': path, 'motif_annotation': path, 'tf_list': path}``.
        """
        import pyarrow as pa
        import pyarrow.feather as feather

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {
            "ranking_db": directory / "simulated.genes_vs_motifs.rankings.feather",
            "motif_annotation": directory / "motifs-simulated-m0.001-o0.0.tbl",
            "tf_list": directory / "allTFs_simulated.txt",
        }
        columns = {g: pa.array(self.database_ranks[:, j]) for j, g in enumerate(self.database_gene_names.tolist())}
        columns["motifs"] = pa.array(self.motif_names.tolist(), type=pa.string())
        _replace(paths["ranking_db"], lambda p: feather.write_feather(pa.table(columns), p, compression="lz4"))
        _replace(paths["motif_annotation"],
                 lambda p: self.motif_annotation.to_csv(p, sep="\t", index=False, float_format="%.6g"))
        _replace(paths["tf_list"], lambda p: Path(p).write_text("".join(f"{t}\n" for t in self.tf_names.tolist())))
        return paths


def _replace(path: Path, write) -> None:
    """``write(temporary path)``, then rename it to ``path``: a reader never sees half a file."""
    with atomic_path(path) as tmp:
        write(str(tmp))


# --------------------------------------------------------------------------- simulation


def simulate_dataset(
    n_cells: int = 5000,
    n_genes: int = 1000,
    n_tfs: int = 30,
    n_decoy_tfs: int = 20,
    n_cell_types: int = 6,
    targets_per_tf: int = 30,
    n_database_genes: int = 6000,
    n_motifs: int = 1000,
    seed: int | None = 0,
) -> SimulatedDataset:
    """Simulate counts with planted regulons and a motif database that supports them.

    Parameters
    ----------
    n_cells
        Cells; at least ``n_cell_types``.
    n_genes
        Expression columns, TFs included: planted and decoy TFs, their targets and
        background genes.
    n_tfs
        Planted TFs, each with ``targets_per_tf`` targets and one to three motifs.
    n_decoy_tfs
        TFs expressed like planted ones, with motifs, but regulating nothing.
    n_cell_types
        Cell types; each planted TF is active in one or two of them.
    targets_per_tf
        Targets of each planted TF; a gene is the target of at most two TFs, so
        ``n_genes - n_tfs - n_decoy_tfs >= (n_tfs + 1) * targets_per_tf / 2``.
    n_database_genes
        Gene columns of the ranking database: at least ``n_genes``. Keep it above the
        pipeline's ``rank_threshold`` (default 5000), as a real database is.
    n_motifs
        Database rows: 1-3 motifs per planted TF, 1-2 per other TF, the rest unannotated
        (they make the background against which cisTarget's NES is computed); at least
        ``3 * n_tfs + 2 * (n_decoy_tfs + absent TFs)``, absent TFs being ``max(1, n_tfs // 10)``
        TFs of the list that are in the database but not in the expression.
    seed
        Seed of ``numpy.random.default_rng``; ``None`` gives fresh data each call.

    Returns
    -------
    SimulatedDataset

    Examples
    --------
    >>> data = simulate_dataset(n_cells=300, n_genes=200, n_tfs=4, n_decoy_tfs=2,
    ...                         n_cell_types=3, targets_per_tf=20, n_database_genes=400,
    ...                         n_motifs=50, seed=1)
    >>> data.expression.shape, data.regulon_weights.shape, data.database_ranks.shape
    ((300, 200), (4, 200), (50, 400))
    """
    n_absent_tfs = _check_sizes(n_cells, n_genes, n_tfs, n_decoy_tfs, n_cell_types, targets_per_tf,
                                n_database_genes, n_motifs, seed)
    rng = np.random.default_rng(seed)
    names = _names(rng, n_genes, n_tfs, n_decoy_tfs, n_absent_tfs, n_database_genes)

    # -- cells and cell types -----------------------------------------------------------
    share = rng.uniform(0.5, 1.5, n_cell_types)
    sizes = np.maximum(1, np.floor(share / share.sum() * n_cells).astype(int))
    while sizes.sum() > n_cells:
        sizes[np.argmax(sizes)] -= 1
    sizes[np.argsort(-share)[: n_cells - sizes.sum()]] += 1
    cell_type_index = rng.permutation(np.repeat(np.arange(n_cell_types), sizes))

    active, regulators, regulon_weights = _regulation(rng, names, n_tfs, n_cell_types, targets_per_tf)
    decoy_active = _active_types(rng, n_decoy_tfs, n_cell_types)
    on = np.concatenate([active, decoy_active]).astype(np.float64)  # (planted + decoy) x types
    latent = ACTIVITY_ON * on.T[cell_type_index] + ACTIVITY_WITHIN_SD * rng.standard_normal((n_cells, on.shape[0]))
    genes = _gene_means(rng, names, regulators, n_cell_types)
    log_mean = _log_mean(genes, names, regulon_weights, cell_type_index, latent, n_tfs)
    log_mean += SIZE_FACTOR_LOG_SD * rng.standard_normal((n_cells, 1))
    counts = _counts(rng, log_mean)
    database = _database(rng, names, genes["background"], regulon_weights, n_database_genes, n_motifs)
    cell_type_names = np.array([f"type{t}" for t in range(n_cell_types)])
    return SimulatedDataset(
        counts=counts,
        expression=np.log1p(counts).astype(np.float32),
        gene_names=names["gene_names"],
        cell_types=cell_type_names[cell_type_index],
        cell_type_names=cell_type_names,
        tf_names=names["tf_names"],
        planted_tfs=names["planted_tfs"],
        decoy_tfs=names["decoy_tfs"],
        regulon_weights=regulon_weights,
        active=active,
        activity=latent[:, :n_tfs].astype(np.float32),
        seed=seed,
        **database,
    )


BLOCK_CELLS = 10_000  # cells per block of write_simulated_h5ad (fixed, so the data never depend on memory)
CALIBRATION_CELLS = 1_000  # cells drawn apart to find the baseline shift of a requested density


def write_simulated_h5ad(
    path: str | Path,
    n_cells: int,
    n_genes: int = 1000,
    n_tfs: int = 30,
    n_decoy_tfs: int = 20,
    n_cell_types: int = 6,
    targets_per_tf: int = 30,
    n_database_genes: int = 6000,
    n_motifs: int = 1000,
    *,
    density: float | None = None,
    sparse: bool = True,
    seed: int | None = 0,
) -> SimulatedDataset:
    """Simulate as ``simulate_dataset`` does, a block of cells at a time, straight into an h5ad
    file: atlas sizes (a million cells) in the memory of one block.

    The model is ``simulate_dataset``'s; the random stream is not (the genes, the database and
    each block of ``BLOCK_CELLS`` cells draw from streams of their own, spawned from ``seed``),
    so the first k cells are the same for any ``n_cells >= k``. Cell types are drawn cell by
    cell with the types' shares.

    The file (written to a temporary name, then renamed) holds X = ``log1p(counts)``, float32,
    CSR when ``sparse`` else dense; obs: the cell names (``cell0``, ... zero-padded) and a
    ``cell_type`` column; var: the gene names.

    Parameters
    ----------
    path
        The h5ad file to write (its folder must exist); replaced if present.
    n_cells, n_genes, n_tfs, n_decoy_tfs, n_cell_types, targets_per_tf, n_database_genes, n_motifs, seed
        As ``simulate_dataset``'s.
    density
        Fraction of non-zero entries to aim for, in (0, 1): every gene's baseline is shifted by
        one constant (log scale), found on ``CALIBRATION_CELLS`` cells drawn apart; None keeps
        the model's (about 40%).
    sparse
        Write X as CSR (else dense).

    Returns
    -------
    SimulatedDataset
        The world and every cell's type; ``counts``, ``expression`` and ``activity`` are None
        (the cells are in the file).
    """
    n_absent_tfs = _check_sizes(n_cells, n_genes, n_tfs, n_decoy_tfs, n_cell_types, targets_per_tf,
                                n_database_genes, n_motifs, seed)
    if density is not None and (isinstance(density, bool) or not isinstance(density, (int, float))
                                or not 0 < density < 1):
        raise InputError(f"density must be a fraction in (0, 1) or None, got {density!r}")
    if not isinstance(sparse, bool):
        raise InputError(f"sparse must be True or False, got {sparse!r}")
    world_seed, calibration_seed, cells_seed = np.random.SeedSequence(seed).spawn(3)
    rng = np.random.default_rng(world_seed)
    names = _names(rng, n_genes, n_tfs, n_decoy_tfs, n_absent_tfs, n_database_genes)
    share = rng.uniform(0.5, 1.5, n_cell_types)
    share /= share.sum()
    active, regulators, regulon_weights = _regulation(rng, names, n_tfs, n_cell_types, targets_per_tf)
    decoy_active = _active_types(rng, n_decoy_tfs, n_cell_types)
    genes = _gene_means(rng, names, regulators, n_cell_types)
    database = _database(rng, names, genes["background"], regulon_weights, n_database_genes, n_motifs)
    on = np.concatenate([active, decoy_active]).astype(np.float64)

    def block(block_rng, rows: int):
        """(cell types, log-means) of ``rows`` cells."""
        types = block_rng.choice(n_cell_types, size=rows, p=share)
        latent = ACTIVITY_ON * on.T[types] + ACTIVITY_WITHIN_SD * block_rng.standard_normal((rows, on.shape[0]))
        log_mean = _log_mean(genes, names, regulon_weights, types, latent, n_tfs)
        log_mean += SIZE_FACTOR_LOG_SD * block_rng.standard_normal((rows, 1))
        return types, log_mean

    if density is not None:
        _, sample = block(np.random.default_rng(calibration_seed), CALIBRATION_CELLS)
        genes["log_base"] = genes["log_base"] + _density_shift(sample, density)
    n_blocks = -(-n_cells // BLOCK_CELLS)
    cell_types = np.empty(n_cells, dtype=np.int64)
    cell_type_names = np.array([f"type{t}" for t in range(n_cell_types)])
    with atomic_path(path) as tmp:
        writer = _H5adWriter(tmp, n_cells, n_genes, sparse)
        try:
            for b, block_seed in enumerate(cells_seed.spawn(n_blocks)):
                start = b * BLOCK_CELLS
                rows = min(BLOCK_CELLS, n_cells - start)
                block_rng = np.random.default_rng(block_seed)
                types, log_mean = block(block_rng, BLOCK_CELLS)  # a whole block: the same for any n_cells
                cell_types[start : start + rows] = types[:rows]
                counts = _inverse_cdf_counts(block_rng, log_mean)[:rows]
                del log_mean
                writer.write(np.log1p(counts, dtype=np.float32))
            writer.finish(cell_type_names[cell_types], names["gene_names"])
        finally:
            writer.close()
    logger.debug("wrote %d cells x %d genes to %s", n_cells, n_genes, path)
    return SimulatedDataset(
        counts=None, expression=None, activity=None, gene_names=names["gene_names"],
        cell_types=cell_type_names[cell_types], cell_type_names=cell_type_names, tf_names=names["tf_names"],
        planted_tfs=names["planted_tfs"], decoy_tfs=names["decoy_tfs"], regulon_weights=regulon_weights,
        active=active, seed=seed, **database,
    )


def _inverse_cdf_counts(rng, log_mean: np.ndarray) -> np.ndarray:
    """Negative-binomial counts (size ``DISPERSION``, mean ``exp(log_mean)``) by the inverse CDF of
    one uniform per entry: quick when most counts are 0 (float32 decides which are; only the
    others walk the CDF, in float64)."""
    mean = np.exp(log_mean.astype(np.float32)).ravel()
    q = mean / (np.float32(DISPERSION) + mean)
    uniform = rng.random(mean.size, dtype=np.float32)
    where = np.flatnonzero(uniform >= (1 - q) ** np.float32(DISPERSION))  # P(0) = (1 - q)**D
    del mean
    counts = np.zeros(log_mean.size, dtype=np.int32)
    uniform, q = uniform[where].astype(np.float64), q[where].astype(np.float64)
    pmf = (1 - q) ** DISPERSION
    cdf = pmf.copy()
    k = 0
    while where.size:
        pmf = pmf * ((k + DISPERSION) / (k + 1)) * q  # P(k + 1) from P(k)
        k += 1
        cdf += pmf
        done = (cdf >= uniform) | (pmf == 0)  # pmf 0: rounding left the CDF a hair below the uniform
        counts[where[done]] = k
        keep = ~done
        where, uniform, q, pmf, cdf = where[keep], uniform[keep], q[keep], pmf[keep], cdf[keep]
    return counts.reshape(log_mean.shape)


def _density_shift(log_mean: np.ndarray, density: float) -> float:
    """The log shift of every mean that makes the expected fraction of non-zero counts ``density``.

    P(count > 0) of a negative binomial of size D and mean mu is 1 - (D / (D + mu))**D,
    increasing in mu: bisection on the shift."""
    def expected(shift: float) -> float:
        return float(np.mean(-np.expm1(-DISPERSION * np.log1p(np.exp(log_mean + shift) / DISPERSION))))

    low, high = -20.0, 20.0
    for _ in range(30):  # to 4e-8
        middle = (low + high) / 2
        low, high = (middle, high) if expected(middle) < density else (low, middle)
    return (low + high) / 2


class _H5adWriter:
    """An h5ad (anndata's on-disk layout) written a block of rows at a time."""

    def __init__(self, path: Path, n_cells: int, n_genes: int, sparse: bool):
        import h5py

        self.file = h5py.File(path, "w")
        self.file.attrs["encoding-type"] = "anndata"
        self.file.attrs["encoding-version"] = "0.1.0"
        self.sparse, self.row = sparse, 0
        if sparse:
            x = self.file.create_group("X")
            x.attrs["encoding-type"] = "csr_matrix"
            x.attrs["encoding-version"] = "0.1.0"
            x.attrs["shape"] = np.array([n_cells, n_genes])
            self.data = x.create_dataset("data", shape=(0,), maxshape=(None,), dtype="float32", chunks=(2**20,))
            self.indices = x.create_dataset("indices", shape=(0,), maxshape=(None,), dtype="int32", chunks=(2**20,))
            self.indptr = np.zeros(n_cells + 1, dtype=np.int64)
        else:
            self.x = self.file.create_dataset("X", shape=(n_cells, n_genes), dtype="float32",
                                              chunks=(max(1, min(n_cells, 2**20 // n_genes)), n_genes))
            self.x.attrs["encoding-type"] = "array"
            self.x.attrs["encoding-version"] = "0.2.0"

    def write(self, values: np.ndarray) -> None:
        rows = values.shape[0]
        if self.sparse:
            row, col = np.nonzero(values)
            nnz = self.indptr[self.row]
            for dataset, part in ((self.data, values[row, col]), (self.indices, col.astype(np.int32))):
                dataset.resize((nnz + row.size,))
                dataset[nnz:] = part
            self.indptr[self.row + 1 : self.row + rows + 1] = nnz + np.cumsum(np.bincount(row, minlength=rows))
        else:
            self.x[self.row : self.row + rows] = values
        self.row += rows

    def finish(self, cell_types: np.ndarray, gene_names: np.ndarray) -> None:
        from anndata.io import write_elem

        if self.sparse:
            self.file["X"].create_dataset("indptr", data=self.indptr)
        width = len(str(max(cell_types.size - 1, 0)))
        obs = pd.DataFrame({"cell_type": pd.Categorical(cell_types)},
                           index=pd.Index([f"cell{i:0{width}d}" for i in range(cell_types.size)], dtype=object))
        write_elem(self.file, "obs", obs)
        write_elem(self.file, "var", pd.DataFrame(index=pd.Index(gene_names.tolist(), dtype=object)))
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(self.file, key, {})

    def close(self) -> None:
        self.file.close()


def _check_sizes(n_cells, n_genes, n_tfs, n_decoy_tfs, n_cell_types, targets_per_tf, n_database_genes, n_motifs,
                 seed) -> int:
    """Check the arguments of a simulation (one-line errors); return the number of absent TFs."""
    positive = dict(n_cells=n_cells, n_genes=n_genes, n_tfs=n_tfs, n_cell_types=n_cell_types,
                    targets_per_tf=targets_per_tf, n_database_genes=n_database_genes, n_motifs=n_motifs)
    for name, value in positive.items():
        if not _is_int(value) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if not _is_int(n_decoy_tfs) or n_decoy_tfs < 0:
        raise InputError(f"n_decoy_tfs must be an integer >= 0, got {n_decoy_tfs!r}")
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise InputError(f"seed must be a non-negative integer or None, got {seed!r}")
    if n_cells < n_cell_types:
        raise InputError(f"n_cells={n_cells} is fewer than n_cell_types={n_cell_types}; every cell type "
                         "needs at least one cell")
    needed = n_tfs + n_decoy_tfs + max(targets_per_tf, -(-(n_tfs + 1) * targets_per_tf // MAX_REGULATORS))
    if n_genes < needed:
        raise InputError(
            f"n_genes={n_genes} is too few for {n_tfs} planted TFs with {targets_per_tf} targets each (a gene "
            f"has at most {MAX_REGULATORS} regulators) plus {n_decoy_tfs} decoy TFs; use n_genes >= {needed}, "
            "or fewer TFs or targets"
        )
    if n_database_genes < n_genes:
        raise InputError(f"n_database_genes={n_database_genes} is below n_genes={n_genes}; the database "
                         "holds the expressed genes and more, as real ones do")
    n_absent_tfs = min(max(1, n_tfs // 10), n_database_genes - n_genes)
    most_annotated = 3 * n_tfs + 2 * (n_decoy_tfs + n_absent_tfs)  # motifs per TF: 1-3 planted, 1-2 others
    if n_motifs < most_annotated:
        raise InputError(f"n_motifs={n_motifs} is fewer than the up to {most_annotated} motifs annotated to the "
                         f"{n_tfs + n_decoy_tfs + n_absent_tfs} TFs; use n_motifs >= {most_annotated}")
    return n_absent_tfs


def _names(rng, n_genes, n_tfs, n_decoy_tfs, n_absent_tfs, n_database_genes) -> dict:
    """TF and gene names (nothing in a name gives away what a gene is) and their columns."""
    n_all_tfs = n_tfs + n_decoy_tfs + n_absent_tfs
    tf_width = len(str(n_all_tfs))
    tf_pool = np.array([f"TF{i:0{tf_width}d}" for i in range(1, n_all_tfs + 1)])
    tf_pool = tf_pool[rng.permutation(n_all_tfs)]
    planted_tfs = np.sort(tf_pool[:n_tfs])
    decoy_tfs = np.sort(tf_pool[n_tfs : n_tfs + n_decoy_tfs])
    absent_tfs = np.sort(tf_pool[n_tfs + n_decoy_tfs :])
    # Non-TF gene names: the expressed pool first, genome-only genes (database only) from
    # the rest, as many as the database needs once the genes missing from it are known.
    pool = n_genes - n_tfs - n_decoy_tfs
    n_plain = pool + n_database_genes
    gene_width = len(str(n_plain))
    plain = np.array([f"G{i:0{gene_width}d}" for i in range(1, n_plain + 1)])[rng.permutation(n_plain)]
    pool_names = plain[:pool]
    gene_names = np.sort(np.concatenate([planted_tfs, decoy_tfs, pool_names]))
    column = {g: j for j, g in enumerate(gene_names.tolist())}
    planted_cols = np.array([column[t] for t in planted_tfs])
    decoy_cols = np.array([column[t] for t in decoy_tfs], dtype=np.int64)
    return {"tf_names": np.sort(tf_pool), "planted_tfs": planted_tfs, "decoy_tfs": decoy_tfs, "absent_tfs": absent_tfs,
            "plain": plain, "pool": pool, "gene_names": gene_names,
            "pool_cols": np.array([column[g] for g in pool_names]),
            "tf_cols": np.concatenate([planted_cols, decoy_cols])}


def _regulation(rng, names: dict, n_tfs, n_cell_types, targets_per_tf):
    """Who regulates what: (active TFs x types, regulators per pool gene, planted TFs x genes weights)."""
    pool, pool_cols = names["pool"], names["pool_cols"]
    active = _active_types(rng, n_tfs, n_cell_types)
    regulators = np.zeros(pool, dtype=np.int64)
    regulon_weights = np.zeros((n_tfs, names["gene_names"].size), dtype=np.float32)
    for k in range(n_tfs):
        room = MAX_REGULATORS - regulators
        chosen = rng.choice(pool, size=targets_per_tf, replace=False, p=room / room.sum())
        regulators[chosen] += 1
        regulon_weights[k, pool_cols[chosen]] = rng.uniform(*WEIGHT_RANGE, size=targets_per_tf)
    return active, regulators, regulon_weights


def _gene_means(rng, names: dict, regulators, n_cell_types) -> dict:
    """Per-gene log baselines, per-type marker shifts, and the background (unregulated) columns."""
    n_genes, tf_cols, pool_cols = names["gene_names"].size, names["tf_cols"], names["pool_cols"]
    log_base = np.log(GENE_BASE_MEDIAN) + BASE_LOG_SD * rng.standard_normal(n_genes)
    log_base[tf_cols] = np.log(TF_BASE_MEDIAN) + BASE_LOG_SD * rng.standard_normal(tf_cols.size)
    type_shift = np.zeros((n_cell_types, n_genes))
    background = pool_cols[regulators == 0]
    markers = background[rng.random(background.size) < MARKER_FRACTION]
    type_shift[:, markers] = MARKER_SD * rng.standard_normal((n_cell_types, markers.size))
    return {"log_base": log_base, "type_shift": type_shift, "background": background}


def _log_mean(genes: dict, names: dict, regulon_weights, cell_type_index, latent, n_tfs) -> np.ndarray:
    """Cells x genes log-means before the library size: baseline + marker shift + regulation."""
    log_mean = genes["log_base"] + genes["type_shift"][cell_type_index] \
        + latent[:, :n_tfs] @ regulon_weights.astype(np.float64)
    log_mean[:, names["tf_cols"]] += latent
    return log_mean


def _counts(rng, log_mean: np.ndarray) -> np.ndarray:
    mean = np.exp(log_mean)
    return rng.negative_binomial(DISPERSION, DISPERSION / (DISPERSION + mean)).astype(np.int32)


def _database(rng, names: dict, background, regulon_weights, n_database_genes, n_motifs) -> dict:
    """The motif ranking database, its annotation table and the planted motifs."""
    gene_names, planted_tfs, decoy_tfs, absent_tfs = (names[k] for k in ("gene_names", "planted_tfs", "decoy_tfs",
                                                                          "absent_tfs"))
    missing = background[rng.random(background.size) < MISSING_FROM_DATABASE]
    in_db = np.setdiff1d(np.arange(gene_names.size), missing)
    pool = names["pool"]
    genome_names = names["plain"][pool : pool + n_database_genes - in_db.size - absent_tfs.size]
    database_gene_names = np.sort(np.concatenate([gene_names[in_db], absent_tfs, genome_names]))
    db_column = {g: j for j, g in enumerate(database_gene_names.tolist())}
    n_db = database_gene_names.size

    n_off_target = max(1, round(OFF_TARGET_HIT_FRACTION * n_db))
    motif_tfs, hit_sets = [], []  # per annotated motif: its TF, and the db columns it hits
    planted_motifs: dict[str, tuple] = {}
    for k, tf in enumerate(planted_tfs.tolist()):
        targets = np.array([db_column[g] for g in gene_names[np.flatnonzero(regulon_weights[k])]])
        for _ in range(rng.integers(1, 4)):
            sensitivity = rng.uniform(*MOTIF_SENSITIVITY)
            hits = targets[rng.random(targets.size) < sensitivity]
            motif_tfs.append((tf, True))
            hit_sets.append(np.union1d(hits, rng.choice(n_db, n_off_target, replace=False)))
    for tf in np.concatenate([decoy_tfs, absent_tfs]).tolist():
        for _ in range(rng.integers(1, 3)):
            motif_tfs.append((tf, False))
            hit_sets.append(rng.choice(n_db, n_off_target, replace=False))
    for _ in range(n_motifs - len(hit_sets)):
        hit_sets.append(rng.choice(n_db, n_off_target, replace=False))

    order = rng.permutation(n_motifs)  # database row of each motif: annotated ones are not first
    motif_width = len(str(n_motifs))
    motif_names = np.array([f"simdb__M{i:0{motif_width}d}" for i in range(1, n_motifs + 1)])
    names_by_motif = motif_names[order]
    ranks = _rank_motifs(rng, hit_sets, order, n_db)

    for (tf, is_planted), name in zip(motif_tfs, names_by_motif.tolist()):
        if is_planted:
            planted_motifs[tf] = planted_motifs.get(tf, ()) + (name,)
    annotation = _annotation_table(rng, motif_tfs, names_by_motif, motif_names, decoy_tfs)
    return {"database_ranks": ranks, "motif_names": motif_names, "database_gene_names": database_gene_names,
            "motif_annotation": annotation, "planted_motifs": planted_motifs}


def _is_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def _active_types(rng, n: int, n_cell_types: int) -> np.ndarray:
    """Each of ``n`` TFs active in one type (dealt in turn, so every type gets one when
    ``n >= n_cell_types``) and, for about a third of them, in a second type."""
    active = np.zeros((n, n_cell_types), dtype=bool)
    if n == 0:
        return active
    first = rng.permutation(n_cell_types)[np.arange(n) % n_cell_types]
    active[np.arange(n), first] = True
    if n_cell_types > 1:
        second = (first + rng.integers(1, n_cell_types, n)) % n_cell_types
        twice = rng.random(n) < 1 / 3
        active[np.flatnonzero(twice), second[twice]] = True
    return active


def _rank_motifs(rng, hit_sets, order, n_db: int) -> np.ndarray:
    """Ranks (0 = best) of every gene under every motif: the genes sorted by score, where
    score = N(0, 1) noise + a per-gene bias shared by all motifs + N(HIT_SCORE, 1) on hits.
    Row ``order[i]`` holds motif i."""
    n_motifs = len(hit_sets)
    bias = GENE_BIAS_SD * rng.standard_normal(n_db)
    ranks = np.empty((n_motifs, n_db), dtype=np.int16 if n_db <= 2**15 else np.int32)
    positions = np.arange(n_db, dtype=ranks.dtype)
    for i, hits in enumerate(hit_sets):
        score = bias + rng.standard_normal(n_db)
        score[hits] += HIT_SCORE + rng.standard_normal(hits.size)
        ranks[order[i], np.argsort(-score, kind="stable")] = positions
    return ranks


_ANNOTATION_HEADER = ["#motif_id", "motif_name", "motif_description", "source_name", "source_version",
                      "gene_name", "motif_similarity_qvalue", "similar_motif_id", "similar_motif_description",
                      "orthologous_identity", "orthologous_gene_name", "orthologous_species", "description"]


def _annotation_table(rng, motif_tfs, names_by_motif, motif_names, decoy_tfs) -> pd.DataFrame:
    """The motif2tf rows: each annotated motif to its TF (directly, by orthology or by
    motif similarity, all passing the default filter), plus, for a quarter of the planted
    motifs, a similarity annotation to a decoy TF with a q-value above 0.001."""
    rows = []
    unannotated = np.setdiff1d(motif_names, names_by_motif[: len(motif_tfs)])

    def row(motif, tf, qvalue=0.0, similar=None, identity=1.0, ortholog=None, description="gene is directly annotated"):
        return [motif, motif, motif.split("__")[1], "simdb", "v1", tf, qvalue, similar,
                None if similar is None else similar.split("__")[1], identity, ortholog,
                None if ortholog is None else "Mus musculus", description]

    for (tf, is_planted), motif in zip(motif_tfs, names_by_motif.tolist()):
        kind = rng.choice(["direct", "orthologous", "similar"], p=[0.5, 0.25, 0.25])
        if kind == "direct":
            rows.append(row(motif, tf))
        elif kind == "orthologous":
            ortholog = tf.capitalize()
            identity = round(float(rng.uniform(0.6, 0.99)), 3)
            rows.append(row(motif, tf, identity=identity, ortholog=ortholog,
                            description=f"gene is orthologous to {ortholog} in M. musculus (identity = {identity})"))
        else:
            similar = str(rng.choice(unannotated)) if unannotated.size else motif
            qvalue = float(10.0 ** rng.uniform(-8, np.log10(ANNOTATION_QVALUE)))
            rows.append(row(motif, tf, qvalue=qvalue, similar=similar,
                            description=f"motif similar to {similar} ('{similar.split('__')[1]}'; q-value = {qvalue:.3g}) "
                                        "which is directly annotated"))
        if is_planted and decoy_tfs.size and rng.random() < 0.25:
            decoy = str(rng.choice(decoy_tfs))
            qvalue = float(10.0 ** rng.uniform(np.log10(ANNOTATION_QVALUE) + 0.3, -0.5))
            rows.append(row(motif, decoy, qvalue=qvalue, similar=motif,
                            description=f"motif similar to {motif} ('{motif.split('__')[1]}'; q-value = {qvalue:.3g})"))
    table = pd.DataFrame(rows, columns=_ANNOTATION_HEADER)
    return table.sort_values(["#motif_id", "gene_name"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- evaluation


def evaluate_regulons(regulons, dataset: SimulatedDataset, auc=None) -> dict:
    """Compare regulons found by the pipeline with the planted truth.

    A regulon is *correct* when its TF is planted and it is activating (``type``
    'activating', or a name not ending in ``(-)``), and it is the first such regulon of that
    TF. Everything else (regulons of decoy TFs or of other TFs of the list, repressing
    regulons, a second regulon of one TF) is a false discovery, because the planted truth
    has exactly one activating regulon per planted TF.

    Parameters
    ----------
    regulons
        Sequence of dicts with at least ``tf`` and ``genes`` (and ``name`` or ``type``), as
        ``CisTargetPruner.prune_modules`` and ``flashscenic.regulons.regulons_from_motifs``
        return them.
    dataset
        The simulation the regulons were inferred from.
    auc
        Optional cells x regulons AUCell scores, columns in the order of ``regulons``. Adds
        the AUCell-level check: the cell type where each regulon's mean AUC is highest
        should be one where its TF is active.

    Returns
    -------
    dict
        ``planted_tfs``: the planted TFs.
        ``recovered_tfs``: planted TFs with a correct regulon.
        ``false_regulons``: names of the other regulons.
        ``precision``: correct regulons / all regulons (NaN when there are none).
        ``recall``: recovered TFs / planted TFs.
        ``mean_target_jaccard``: mean over correct regulons of the Jaccard index of the
        regulon's genes (its TF left out) and the planted targets; NaN when none is correct.
        ``table``: DataFrame, one row per planted TF (in ``planted_tfs`` order) and then one
        per false regulon, with columns tf, role ('planted', 'decoy', 'absent' for a TF of
        the list that is not expressed, 'other'), regulon (name, '' when not found),
        correct, n_planted, n_found, n_shared (targets; the TF itself is not counted),
        jaccard (NaN unless correct), active_types; with ``auc`` also top_type (the type of
        highest mean AUC, '' when not found) and type_match.
        With ``auc`` also ``type_accuracy``: the fraction of correct regulons whose top
        type is one where their TF is active (NaN when none is correct).
    """
    regulons = list(regulons)
    for i, regulon in enumerate(regulons):
        if not isinstance(regulon, dict) or "tf" not in regulon or "genes" not in regulon:
            raise InputError(f"regulon {i} must be a dict with 'tf' and 'genes' (as prune_modules returns), "
                             f"got {regulon!r:.80}")
    type_means = None
    if auc is not None:
        auc = np.asarray(auc, dtype=np.float64)
        expected = (dataset.cell_types.size, len(regulons))
        if auc.shape != expected:
            raise InputError(f"auc has shape {auc.shape}; expected {expected} (cells x the given regulons, "
                             "in their order)")
        type_index = pd.Index(dataset.cell_type_names).get_indexer(dataset.cell_types)
        type_means = np.zeros((dataset.cell_type_names.size, auc.shape[1]))
        np.add.at(type_means, type_index, auc)
        type_means /= np.maximum(np.bincount(type_index, minlength=dataset.cell_type_names.size), 1)[:, None]

    planted = dataset.planted
    active = {tf: [str(t) for t in dataset.cell_type_names[row]]
              for tf, row in zip(dataset.planted_tfs.tolist(), dataset.active)}
    roles = {tf: "absent" for tf in dataset.tf_names.tolist()}
    roles.update({tf: "decoy" for tf in dataset.decoy_tfs.tolist()})
    roles.update({tf: "planted" for tf in planted})
    correct: dict[str, int] = {}  # planted TF -> position of its correct regulon
    false: list[int] = []
    for i, regulon in enumerate(regulons):
        tf = str(regulon["tf"])
        if tf in planted and _activating(regulon) and tf not in correct:
            correct[tf] = i
        else:
            false.append(i)

    def row(tf: str, i: int | None) -> dict:
        targets = planted.get(tf, {})
        out = {"tf": tf, "role": roles.get(tf, "other"), "regulon": "", "correct": i is not None and correct.get(tf) == i,
               "n_planted": len(targets), "n_found": 0, "n_shared": 0, "jaccard": np.nan,
               "active_types": ", ".join(active.get(tf, []))}
        if i is not None:
            genes = {str(g) for g in regulons[i]["genes"]} - {tf}
            shared = len(genes & set(targets))
            out.update(regulon=_name(regulons[i]), n_found=len(genes), n_shared=shared)
            if out["correct"]:
                out["jaccard"] = shared / len(genes | set(targets))
        if type_means is not None:
            out["top_type"] = "" if i is None else str(dataset.cell_type_names[int(np.argmax(type_means[:, i]))])
            out["type_match"] = out["top_type"] in active.get(tf, [])
        return out

    table = pd.DataFrame([row(tf, correct.get(tf)) for tf in planted] + [row(str(regulons[i]["tf"]), i) for i in false])
    if table.empty:
        table = pd.DataFrame(columns=["tf", "role", "regulon", "correct", "n_planted", "n_found", "n_shared",
                                      "jaccard", "active_types"] + ([] if auc is None else ["top_type", "type_match"]))
    hits = table[table["correct"].astype(bool)]
    result = {
        "planted_tfs": list(planted),
        "recovered_tfs": sorted(correct),
        "false_regulons": [_name(regulons[i]) for i in false],
        "precision": len(correct) / len(regulons) if regulons else float("nan"),
        "recall": len(correct) / len(planted) if planted else float("nan"),
        "mean_target_jaccard": float(hits["jaccard"].mean()) if len(hits) else float("nan"),
        "table": table,
    }
    if auc is not None:
        result["type_accuracy"] = float(hits["type_match"].mean()) if len(hits) else float("nan")
    return result


def _activating(regulon: dict) -> bool:
    kind = regulon.get("type")
    if kind is not None:
        return kind == "activating"
    return not str(regulon.get("name", "")).endswith("(-)")


def _name(regulon: dict) -> str:
    return str(regulon.get("name") or f"{regulon['tf']}({'+' if _activating(regulon) else '-'})")
