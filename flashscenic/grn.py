"""GRN inference with RegDiffusion: TF x gene weights from log-transformed expression.

RegDiffusion learns a genes x genes adjacency (rows regulate columns) in a diffusion
model; flashscenic keeps the rows of the TFs, zeroes weights below
``sparsity_threshold`` (RegDiffusion's weights are in units of the "regulatory norm",
1 / (n_genes - 1); strong links reach 5-10, 1.5 drops the noise floor), and hands the
result to the module builder. Users who already have GRNBoost2/pySCENIC adjacencies can
skip this step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._device import resolve_device
from .errors import InputError, MissingDependencyError

__all__ = ["GRNResult", "infer_grn", "weights_to_adjacencies", "GeneDispersion", "estimate_grn_seconds"]

logger = logging.getLogger(__name__)

MEMORY_EFFICIENT_ABOVE = 10_000  # genes: switch to RegDiffusion's memory-efficient model


@dataclass(frozen=True, eq=False)
class GRNResult:
    """TF x gene weights (float32, zeros below the threshold) and their names.

    ``trained_genes``: the genes RegDiffusion trained on when a gene budget chose them
    (``max_genes``), in ``gene_names`` order; None when every gene was offered.
    """

    weights: np.ndarray
    tf_names: list[str]
    gene_names: list[str]
    trained_genes: list[str] | None = None

    @property
    def adjacencies(self) -> pd.DataFrame:
        """The non-zero weights as pySCENIC's adjacency table (TF, target, importance)."""
        return weights_to_adjacencies(self.weights, self.tf_names, self.gene_names)


def infer_grn(expression, gene_names, tf_names, *, n_steps: int = 1000, sparsity_threshold: float = 1.5,
              max_cells: int | None = None, max_genes: int | None = None, memory_efficient: bool | None = None,
              device="cuda", seed: int | None = None, verbose: bool = True) -> GRNResult:
    """Infer TF -> gene weights with RegDiffusion.

    Parameters
    ----------
    expression
        Cells x genes, log-transformed (numpy or scipy.sparse; sparse stays sparse).
    gene_names
        One unique name per column.
    tf_names
        Candidate TFs (e.g. a TF list); those among ``gene_names`` become rows, in
        ``gene_names`` order.
    n_steps
        Training iterations.
    sparsity_threshold
        Weights below it become 0 (negative weights always do: they are not evidence of
        repression by themselves). None keeps the raw weights (multi-run consensus averages
        raw runs, then thresholds the mean, as upstream's ``multi_run_flashscenic``).
    max_cells
        Train on at most this many cells, sampled with ``seed`` (None: all).
    max_genes
        Train on at most this many genes: the most variable over the sampled cells by
        Seurat's dispersion rule (``GeneDispersion``). The TFs among them are the rows;
        the other genes get no links. None: every gene.
    memory_efficient
        RegDiffusion's memory-efficient model; None chooses it above 10,000 genes.
    device
        ``'cuda'``, ``'cpu'`` or ``'auto'``; ``'cuda'`` without CUDA warns and uses the CPU.
    seed
        Same seed, same cells and same weights (on the CPU; GPUs may differ in the last bits).
    verbose
        Show RegDiffusion's progress bar.

    Genes that never vary across the sampled cells cannot be modelled (RegDiffusion refuses
    them); they are left out of training and get no links.
    """
    try:
        import regdiffusion
    except ImportError:  # pragma: no cover - a dependency, but say what to do
        raise MissingDependencyError("GRN inference needs regdiffusion: pip install regdiffusion") from None

    gene_names = [str(g) for g in gene_names]
    n_cells, n_genes = expression.shape
    if len(gene_names) != n_genes:
        raise InputError(f"{len(gene_names)} gene names for {n_genes} expression columns")
    if len(set(gene_names)) != n_genes:
        raise InputError("gene names must be unique")
    wanted = set(map(str, tf_names))
    tf_columns = [j for j, g in enumerate(gene_names) if g in wanted]
    if not tf_columns:
        raise InputError(
            f"none of the {len(wanted)} TFs is among the {n_genes} genes (TFs start {sorted(wanted)[:3]}, "
            f"genes start {gene_names[:3]}): check the species and the gene identifiers (symbols vs Ensembl IDs)"
        )
    if max_genes is not None and (isinstance(max_genes, bool) or not isinstance(max_genes, (int, np.integer))
                                  or max_genes < 2):
        raise InputError(f"max_genes must be an integer >= 2 or None, got {max_genes!r}")
    if sparsity_threshold is not None and (isinstance(sparsity_threshold, bool) or not np.isfinite(sparsity_threshold)):
        raise InputError(f"sparsity_threshold must be a finite number, got {sparsity_threshold!r}")

    rng = np.random.default_rng(seed)
    # Copies only where needed: the sample of an atlas is the largest thing the GRN holds.
    sample = expression
    if max_cells is not None and max_cells < n_cells:
        sample = expression[np.sort(rng.choice(n_cells, max_cells, replace=False))]
    # C order whatever the input's: RegDiffusion's reductions then add in one order (the same bits).
    sample = (sample.tocsr().astype(np.float32, copy=False) if sp.issparse(sample)
              else np.ascontiguousarray(sample, dtype=np.float32))
    if sample.shape[0] < 2:
        raise InputError("GRN inference needs at least 2 cells")
    values = sample.data if sp.issparse(sample) else sample
    if not np.isfinite(values).all():  # a NaN column is not "constant": RegDiffusion would get inf
        raise InputError(f"the expression holds {int((~np.isfinite(values)).sum())} NaN or infinite value(s); "
                         "remove or impute them before GRN inference")
    chosen = None
    if max_genes is not None and max_genes < n_genes:  # the store path's rule (stages.grn_genes)
        dispersion = GeneDispersion(n_genes)  # it never chooses a constant gene
        dispersion.add(sample)
        chosen = dispersion.most_variable(max_genes)
        varying = np.zeros(n_genes, dtype=bool)
        varying[chosen] = True
        tf_columns = [j for j in tf_columns if varying[j]]
        if not tf_columns:
            raise InputError(f"none of the {len(wanted)} TFs is among the {max_genes} most variable genes: raise "
                             "the gene budget (grn_max_genes, --grn-max-genes)")
    else:
        varying = _varying_genes(sample)
    if varying.sum() < 2:
        raise InputError("fewer than 2 genes vary across the cells: nothing to infer")
    if not varying[tf_columns].any():
        raise InputError("no TF varies across the cells: nothing to infer")
    dropped = n_genes - int(varying.sum())
    if dropped and chosen is not None:
        logger.info("GRN on the %d most variable genes (%d TFs among them) of %d", varying.sum(), len(tf_columns),
                    n_genes)
    elif dropped:
        logger.info("%d constant gene(s) left out of GRN inference (no links)", dropped)
    train = sample[:, np.flatnonzero(varying)] if dropped else sample

    dev = resolve_device(device)
    use_me = memory_efficient if memory_efficient is not None else int(varying.sum()) > MEMORY_EFFICIENT_ABOVE
    trainer = regdiffusion.RegDiffusionTrainer(
        train, n_steps=n_steps, device=str(dev), memory_efficient=use_me, seed=seed,
        batch_size=min(128, train.shape[0]),
    )
    _train(trainer, verbose)
    learned = np.asarray(trainer.get_adj(), dtype=np.float32)  # varying x varying

    varying_index = np.flatnonzero(varying)
    position = np.full(n_genes, -1)
    position[varying_index] = np.arange(varying_index.size)
    weights = np.zeros((len(tf_columns), n_genes), dtype=np.float32)
    tf_rows = position[tf_columns]
    ok = tf_rows >= 0
    weights[np.ix_(np.flatnonzero(ok), varying_index)] = learned[tf_rows[ok]]
    if sparsity_threshold is not None:
        weights = sparsify(weights, sparsity_threshold)
    return GRNResult(weights, [gene_names[j] for j in tf_columns], gene_names,
                     None if chosen is None else [gene_names[j] for j in np.sort(chosen)])


def sparsify(weights: np.ndarray, sparsity_threshold: float) -> np.ndarray:
    """The weights with those below ``sparsity_threshold`` set to 0 (float32, a new array)."""
    return np.where(weights >= sparsity_threshold, weights, 0).astype(np.float32)


def weights_to_adjacencies(weights: np.ndarray, tf_names, gene_names) -> pd.DataFrame:
    """Non-zero TF x gene weights as pySCENIC's adjacency table, TF by TF, strongest first."""
    weights = np.asarray(weights)
    tf_index, gene_index = np.nonzero(weights)
    table = pd.DataFrame({
        "TF": np.asarray(tf_names, dtype=object)[tf_index],
        "target": np.asarray(gene_names, dtype=object)[gene_index],
        "importance": weights[tf_index, gene_index].astype(np.float64),
    })
    return table.sort_values(["TF", "importance"], ascending=[True, False], kind="stable").reset_index(drop=True)


class GeneDispersion:
    """Seurat's highly-variable-gene rule, accumulated over blocks of cells.

    The rule of ``scanpy.pp.highly_variable_genes(flavor='seurat')`` on log data: per gene,
    the mean and variance (ddof 1) of ``expm1`` of the values, the log of their ratio (the
    dispersion), normalised within 20 equal-width bins of ``log1p(mean)``; a bin of one
    gene gets 1. Blocks (CSR or dense rows) are added one at a time, so a sample of any
    size is never held whole; sums are float64. ``most_variable(n)`` takes the ``n`` highest
    normalised dispersions, a tie going to the earlier gene (scanpy keeps every gene tied
    at its cut-off, so its count can exceed ``n``); constant genes are never chosen.
    """

    N_BINS = 20

    BLOCK_ROWS = 4096  # rows converted to float64 at a time

    def __init__(self, n_genes: int):
        self.n_cells = 0
        self.total = np.zeros(n_genes)
        self.squares = np.zeros(n_genes)
        self.low = np.full(n_genes, np.inf)  # the exact range: a constant gene never varies, whatever the rounding
        self.high = np.full(n_genes, -np.inf)

    def add(self, block) -> None:
        if block.shape[0] > self.BLOCK_ROWS:
            for start in range(0, block.shape[0], self.BLOCK_ROWS):
                self.add(block[start:start + self.BLOCK_ROWS])
            return
        n_genes = self.total.size
        if sp.issparse(block):
            block = block.tocsr()
            if not block.has_canonical_format:
                block = block.copy()
                block.sum_duplicates()
            values = np.expm1(block.data, dtype=np.float64)
            self.total += np.bincount(block.indices, weights=values, minlength=n_genes)
            self.squares += np.bincount(block.indices, weights=values * values, minlength=n_genes)
        else:
            block = np.asarray(block)
            values = np.expm1(block, dtype=np.float64)
            self.total += values.sum(axis=0)
            self.squares += np.square(values).sum(axis=0)
        low, high = _gene_range(block)
        self.low, self.high = np.minimum(self.low, low), np.maximum(self.high, high)
        self.n_cells += block.shape[0]

    def normalized_dispersion(self) -> np.ndarray:
        """Per gene; NaN for genes that never vary."""
        n = self.n_cells
        if n < 2:
            raise InputError(f"choosing the most variable genes needs at least 2 cells, got {n}")
        mean = self.total / n
        variance = np.maximum(self.squares - n * mean * mean, 0.0) / (n - 1)
        mean[mean == 0] = 1e-12
        with np.errstate(divide="ignore", invalid="ignore"):
            dispersion = variance / mean
            dispersion[dispersion == 0] = np.nan
            dispersion = np.log(dispersion)
        bins = pd.cut(pd.Series(np.log1p(mean)), bins=self.N_BINS)
        grouped = pd.Series(dispersion).groupby(bins, observed=True)
        average, spread = grouped.transform("mean").to_numpy(), grouped.transform("std").to_numpy()
        alone = np.isnan(spread)  # one gene in its bin: Seurat's (and scanpy's) dispersion of 1
        spread = np.where(alone, average, spread)
        average = np.where(alone, 0.0, average)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = (dispersion - average) / spread
        score[~(self.high > self.low)] = np.nan  # constant: its variance is rounding, not signal
        return score

    def most_variable(self, n: int) -> np.ndarray:
        """Positions of the ``n`` most variable genes, highest first (fewer when fewer vary)."""
        score = self.normalized_dispersion()
        candidates = np.flatnonzero(~np.isnan(score))
        order = candidates[np.lexsort((candidates, -score[candidates]))]
        return order[:n]


# Seconds per RegDiffusion training step: c + a * genes**2 + b * genes**3 core-seconds on a CPU,
# shared by torch's threads (fit of benchmarks/grn_cost.py on 2 cores, regdiffusion 0.2.3, see
# BENCHMARKS.md "GRN cost"), and on a GPU scaled from RegDiffusion's authors' report (15,000
# genes, 1,000 steps, under 5 minutes on one GPU): a rough guide, not a promise.
_CPU_STEP = (0.152, 1.46e-7, 5.28e-11)
_GPU_STEP = (0.005, 1.3e-9, 0.0)


def estimate_grn_seconds(n_genes: int, n_steps: int, device: str, *, threads: int | None = None) -> float:
    """RegDiffusion's training time on ``n_genes`` genes for ``n_steps`` steps on ``device``.

    A step trains one batch of 128 cells, so the cell count does not enter; on the CPU
    the core-seconds are divided by ``threads`` (default: torch's thread count).
    """
    if str(device).startswith("cuda"):
        c, a, b = _GPU_STEP
        per_core = 1
    else:
        c, a, b = _CPU_STEP
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        per_core = max(1, int(threads))
    return n_steps * (c + a * n_genes**2 + b * n_genes**3) / per_core


def _varying_genes(sample) -> np.ndarray:
    low, high = _gene_range(sample)
    return high > low


def _gene_range(block) -> tuple[np.ndarray, np.ndarray]:
    """Each gene's smallest and largest value over the rows of ``block`` (CSR or dense).

    CSR from the stored values, without a column-major copy; a gene with fewer stored values
    than rows also holds a 0, and a value stored twice is their sum."""
    if not sp.issparse(block):
        block = np.asarray(block)
        if not block.shape[0]:
            return np.full(block.shape[1], np.inf), np.full(block.shape[1], -np.inf)
        return block.min(axis=0), block.max(axis=0)
    block = block.tocsr()
    if not block.has_canonical_format:
        block = block.copy()
        block.sum_duplicates()
    n_genes = block.shape[1]
    high = np.full(n_genes, -np.inf, dtype=np.float64)
    low = np.full(n_genes, np.inf, dtype=np.float64)
    np.maximum.at(high, block.indices, block.data)
    np.minimum.at(low, block.indices, block.data)
    implicit_zero = np.bincount(block.indices, minlength=n_genes) < block.shape[0]
    return np.where(implicit_zero, np.minimum(low, 0.0), low), np.where(implicit_zero, np.maximum(high, 0.0), high)


def _train(trainer, verbose: bool) -> None:
    """Train; RegDiffusion's progress bar is shown only when verbose and on a terminal
    (in a log file it would print a line per step)."""
    import sys

    if verbose and sys.stderr.isatty():
        trainer.train()
        return
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        trainer.train()
