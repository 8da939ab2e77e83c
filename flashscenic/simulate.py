"""Simulated single-cell data with planted regulons: ground truth for the demo and the tests.

The model is deliberately small. Cells belong to ``n_cell_types`` types of (nearly) equal
size. Each regulon is a transcription factor ``TF<r>`` and ``genes_per_regulon`` target
genes with weights in [0.5, 1]; it is active in one cell type. In the cells of that type
the mean of every target is multiplied by ``MAX_FOLD ** weight`` (2x to 4x) and the mean
of the TF itself by ``MAX_FOLD``. Counts are negative-binomial around those means, with a
per-gene baseline (log-normal) and a per-cell size factor, so log1p expression has the
heavy ties of real count data.

Genes are laid out as the ``n_regulons`` TFs first (``TF0``, ``TF1``, ...), then the other
genes (``g0000``, ``g0001``, ...). Targets are drawn at random from the non-TF genes and
no two regulons share one, so every planted edge is unambiguous.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same arguments give the
same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._errors import InputError

__all__ = ["SimulatedData", "simulate_expression", "regulon_recovery"]

MAX_FOLD = 4.0  # mean fold change of a weight-1 target (and of the TF) where its regulon is active
DISPERSION = 2.0  # negative-binomial size parameter: variance = mu + mu**2 / DISPERSION
_WEIGHT_RANGE = (0.5, 1.0)
_BASELINE_LOG_SD = 1.0  # spread of per-gene baseline means (log scale, median 1 count)
_SIZE_FACTOR_LOG_SD = 0.25  # spread of per-cell library sizes (log scale)


@dataclass(frozen=True, eq=False)
class SimulatedData:
    """Simulated counts and the regulons planted in them.

    Attributes
    ----------
    counts
        int64, cells x genes: negative-binomial counts.
    expression
        float32, cells x genes: ``log1p(counts)``, what AUCell expects.
    gene_names
        str array, one per gene column: the TFs ``TF0``... first, then ``g0000``...
    cell_types
        str array, one label per cell (``'type0'``, ``'type1'``, ...).
    cell_type_names
        str array of the distinct labels in order ``type0, type1, ...``: the columns of
        ``active``.
    regulon_names
        str array, one per regulon, pySCENIC style: ``'TF3(+)'``.
    regulon_weights
        float32, regulons x genes: the planted target weights (> 0 on targets, 0 elsewhere).
        Pass it to ``get_aucell`` as ``adj_array``.
    active
        bool, regulons x cell types: ``active[r, t]`` is True where regulon r is switched on
        in cell type t.
    """

    counts: np.ndarray
    expression: np.ndarray
    gene_names: np.ndarray
    cell_types: np.ndarray
    cell_type_names: np.ndarray
    regulon_names: np.ndarray
    regulon_weights: np.ndarray
    active: np.ndarray


def simulate_expression(
    n_cells: int = 2000,
    n_genes: int = 500,
    n_cell_types: int = 4,
    n_regulons: int = 10,
    genes_per_regulon: int = 30,
    seed: int | None = 0,
) -> SimulatedData:
    """Simulate counts in which known regulons are active in known cell types.

    Parameters
    ----------
    n_cells
        Number of cells (at least ``n_cell_types``, so every type has a cell).
    n_genes
        Number of genes, TFs included: at least ``n_regulons * (1 + genes_per_regulon)``
        (310 with the defaults), as targets are not shared.
    n_cell_types
        Number of cell types; cells are split among them as evenly as possible.
    n_regulons
        Number of planted regulons, one TF each. Regulon r is active in one cell type;
        the types are dealt out in turn, so every type gets a regulon when
        ``n_regulons >= n_cell_types``.
    genes_per_regulon
        Target genes per regulon (the TF is not one of its own targets).
    seed
        Seed of ``numpy.random.default_rng``; ``None`` gives fresh data each call.

    Returns
    -------
    SimulatedData
        Counts, log1p expression, names, and the planted truth (``regulon_weights`` and
        ``active``).

    Examples
    --------
    >>> data = simulate_expression(n_cells=400, n_genes=400, seed=1)
    >>> data.expression.shape, data.regulon_weights.shape, data.active.shape
    ((400, 400), (10, 400), (10, 4))
    """
    for name, value in [("n_cells", n_cells), ("n_genes", n_genes), ("n_cell_types", n_cell_types),
                        ("n_regulons", n_regulons), ("genes_per_regulon", genes_per_regulon)]:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise InputError(f"seed must be a non-negative integer or None, got {seed!r}")
    if n_cells < n_cell_types:
        raise InputError(
            f"n_cells={n_cells} is fewer than n_cell_types={n_cell_types}; every cell type needs "
            "at least one cell"
        )
    needed = n_regulons * (1 + genes_per_regulon)
    if n_genes < needed:
        raise InputError(
            f"n_genes={n_genes} is too few for {n_regulons} regulons of {genes_per_regulon} targets "
            f"each (targets are not shared) plus their TFs; use n_genes >= {needed}, or fewer or "
            "smaller regulons"
        )

    rng = np.random.default_rng(seed)
    n_targets_pool = n_genes - n_regulons
    width = len(str(n_targets_pool - 1))
    gene_names = np.array([f"TF{r}" for r in range(n_regulons)]
                          + [f"g{j:0{width}d}" for j in range(n_targets_pool)])
    cell_type_names = np.array([f"type{t}" for t in range(n_cell_types)])
    cell_type_index = rng.permutation(np.arange(n_cells) % n_cell_types)

    # Planted truth: regulon r is active in one type, types dealt out in a shuffled order.
    active = np.zeros((n_regulons, n_cell_types), dtype=bool)
    active[np.arange(n_regulons), rng.permutation(n_cell_types)[np.arange(n_regulons) % n_cell_types]] = True
    # Targets: disjoint sets of non-TF genes, so each planted target has one regulator.
    targets = n_regulons + rng.permutation(n_targets_pool)[: n_regulons * genes_per_regulon]
    targets = targets.reshape(n_regulons, genes_per_regulon)
    weights = np.zeros((n_regulons, n_genes), dtype=np.float32)
    np.put_along_axis(weights, targets, rng.uniform(*_WEIGHT_RANGE, size=targets.shape), axis=1)

    # log fold change of every gene in every cell type: targets by weight, each TF by 1.
    effect = weights.astype(np.float64)
    effect[np.arange(n_regulons), np.arange(n_regulons)] = 1.0
    log_fold = (active.T.astype(np.float64) @ effect) * np.log(MAX_FOLD)  # types x genes

    baseline = np.exp(rng.normal(0.0, _BASELINE_LOG_SD, size=n_genes))
    size_factor = np.exp(rng.normal(0.0, _SIZE_FACTOR_LOG_SD, size=n_cells))
    mean = size_factor[:, None] * baseline[None, :] * np.exp(log_fold)[cell_type_index]
    counts = rng.negative_binomial(DISPERSION, DISPERSION / (DISPERSION + mean)).astype(np.int64)

    return SimulatedData(
        counts=counts,
        expression=np.log1p(counts).astype(np.float32),
        gene_names=gene_names,
        cell_types=cell_type_names[cell_type_index],
        cell_type_names=cell_type_names,
        regulon_names=np.array([f"TF{r}(+)" for r in range(n_regulons)]),
        regulon_weights=weights,
        active=active,
    )


def regulon_recovery(auc, data: SimulatedData) -> pd.DataFrame:
    """Compare regulon activity scores with the planted truth.

    Parameters
    ----------
    auc
        cells x regulons scores for ``data`` (e.g. ``get_aucell(data.expression,
        data.regulon_weights)``), in the order of ``data.regulon_names``.
    data
        The simulation that was scored.

    Returns
    -------
    pandas.DataFrame
        One row per regulon (index: regulon name) with columns ``planted`` (the cell
        type(s) where it is active, comma-separated), the mean score in each cell type
        (one column per ``data.cell_type_names``), ``top`` (the type with the highest
        mean) and ``recovered`` (``top`` is a planted type).
    """
    auc = np.asarray(auc)
    expected = (data.cell_types.size, data.regulon_names.size)
    if auc.shape != expected:
        raise InputError(
            f"auc has shape {auc.shape}; expected {expected} (cells x regulons of this simulation)"
        )
    index = pd.Index(data.cell_type_names).get_indexer(data.cell_types)
    sums = np.zeros((data.cell_type_names.size, auc.shape[1]))
    np.add.at(sums, index, auc.astype(np.float64))
    means = sums / np.bincount(index, minlength=data.cell_type_names.size)[:, None]  # types x regulons
    top = means.argmax(axis=0)

    table = pd.DataFrame(means.T, index=pd.Index(data.regulon_names, name="regulon"),
                         columns=list(data.cell_type_names))
    table.insert(0, "planted", [", ".join(data.cell_type_names[row]) for row in data.active])
    table["top"] = data.cell_type_names[top]
    table["recovered"] = data.active[np.arange(auc.shape[1]), top]
    return table
