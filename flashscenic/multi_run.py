"""Upstream flashscenic's multi-run API: ``from flashscenic.multi_run import multi_run_flashscenic``.

RegDiffusion is stochastic: one seed is one network. ``multi_run_flashscenic`` trains it
``n_runs`` times and combines the runs in one of upstream's two ways
(``flashscenic.consensus`` has the arithmetic):

===================  ===========================================================================
``'frequency'``      (default, upstream's best against CollecTRI) each run's network goes through
                     modules and pruning; a (TF, target) pair is kept when it is in at least
                     ``frequency_threshold`` of the runs' regulons; regulons left with fewer than
                     ``min_genes_filter`` targets are dropped. Our first name for it:
                     ``consensus='recurrence'``, ``min_recurrence``.
``'mean_adjacency'`` the runs' raw weights are averaged, edges whose coefficient of variation
                     reaches ``cv_threshold`` dropped, and modules and pruning run once on that
                     mean network. Our first name: ``consensus='mean'``.
===================  ===========================================================================

Either way every regulon gets its recurrence (the fraction of runs that found it, and per
target the fraction that found it with that target). ``flashscenic run --grn-runs N
--grn-aggregation frequency`` is the same on a results store and a Dask cluster.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from .errors import InputError
from .params import AGGREGATION_METHODS, Params

__all__ = ["multi_run_flashscenic", "AGGREGATION_METHODS"]

_OUR_NAMES = {"mean": "mean_adjacency", "recurrence": "frequency"}  # consensus= -> aggregation_method=


def multi_run_flashscenic(
    exp_matrix,
    gene_names: Sequence[str],
    species: str = "human",
    *,
    n_runs: int = 15,
    aggregation_method: str = "frequency",
    frequency_threshold: float = 0.5,
    min_genes_filter: int = 5,
    cv_threshold: float | None = None,
    return_adj_matrices: bool = False,
    seeds: Sequence[int] | None = None,
    consensus: str | None = None,
    min_recurrence: float | None = None,
    datasource: str = "scenic",
    version: str = "v10",
    cache_dir: str | None = None,
    tf_list_path: str | None = None,
    ranking_db_paths: Sequence[str] | None = None,
    motif_annotation_path: str | None = None,
    grn_n_steps: int = 1000,
    grn_sparsity_threshold: float = 1.5,
    grn_max_genes: int | None = None,
    module_k: int = 50,
    module_percentile_thresholds: Sequence[float] = (75,),
    module_top_n_per_target: Sequence[int] = (5, 10, 50),
    module_min_targets: int = 20,
    module_min_fraction: float | None = None,
    module_include_tf: bool = True,
    pruning_rank_threshold: int = 5000,
    pruning_auc_threshold: float = 0.05,
    pruning_nes_threshold: float = 3.0,
    pruning_min_genes: int = 0,
    pruning_merge_strategy: str = "union",
    annotation_motif_similarity_fdr: float = 0.001,
    annotation_orthologous_identity: float = 0.0,
    aucell_k: int | None = None,
    aucell_auc_threshold: float = 0.05,
    aucell_batch_size: int = 32,
    device: str = "cuda",
    seed: int | None = None,
    verbose: bool = True,
) -> dict:
    """SCENIC on a consensus of ``n_runs`` GRN runs (upstream flashscenic's parameters and defaults).

    Each run trains RegDiffusion with its own seed (``seeds``, else spawned from ``seed`` with
    ``numpy.random.SeedSequence``); runs are trained one after another, keeping a running
    mean and variance (the memory of one network, not ``n_runs``). AUCell scores the
    consensus regulons once.

    Parameters
    ----------
    exp_matrix, gene_names, species
        As ``run_flashscenic``; every other ``run_flashscenic`` parameter too (keywords).
    n_runs
        GRN runs.
    aggregation_method
        ``'frequency'`` (recurrent (TF, target) pairs of the runs' pruned regulons) or
        ``'mean_adjacency'`` (the mean network); see the module's docstring.
    frequency_threshold
        With ``'frequency'``: the fraction of runs (0 < t <= 1) a pair must reach.
    min_genes_filter
        With ``'frequency'``: drop regulons left with fewer targets than this (TF not counted).
    cv_threshold
        With ``'mean_adjacency'``: drop edges whose CV over the runs (std / |mean|) reaches
        this (None: keep every edge). With ``'frequency'`` it has no effect (a warning says so).
    return_adj_matrices
        Also return each run's raw TF x gene weights (``adj_matrices``; memory: ``n_runs`` networks).
    seeds
        One seed per run (``len(seeds) == n_runs``); default: spawned from ``seed``.
    consensus, min_recurrence
        Our first names of ``aggregation_method`` (``'recurrence'`` = ``'frequency'``, ``'mean'``
        = ``'mean_adjacency'``) and ``frequency_threshold``; kept for code written for them.

    Returns
    -------
    dict
        What ``run_flashscenic`` returns, plus ``adj_mean`` and ``adj_cv`` (TF x gene, rows
        ``adj_tf_names``), ``adj_matrices`` (or None), ``n_runs``, ``cv_threshold``,
        ``n_edges_cv_filtered``, ``tf_frequency_scores`` (with ``'frequency'``: per TF, the
        mean frequency of its kept targets; else None), ``regulon_recurrence`` (name ->
        fraction of runs), ``target_recurrence`` (name -> {gene -> fraction});
        ``parameters['seeds']``, ``['aggregation_method']``, ``['frequency_threshold']``,
        ``['min_genes_filter']``.

    Raises
    ------
    ValueError
        A bad parameter (before any run), or no regulon survives the consensus.
    """
    from .consensus import run_seeds
    from .pipeline import _API_PARAMS, _in_memory

    arguments = locals()
    aggregation_method = _alias("aggregation_method", aggregation_method, "frequency", "consensus", consensus,
                                _OUR_NAMES)
    frequency_threshold = _alias("frequency_threshold", frequency_threshold, 0.5, "min_recurrence", min_recurrence)
    if isinstance(n_runs, bool) or not isinstance(n_runs, numbers.Integral) or n_runs < 1:
        raise InputError(f"n_runs must be an integer >= 1, got {n_runs!r}")
    if aggregation_method not in AGGREGATION_METHODS:
        raise InputError(f"aggregation_method must be 'frequency' or 'mean_adjacency', got {aggregation_method!r}")
    if (isinstance(frequency_threshold, bool) or not isinstance(frequency_threshold, numbers.Real)
            or not math.isfinite(frequency_threshold) or not 0 < frequency_threshold <= 1):
        raise InputError(f"frequency_threshold must be in (0, 1], got {frequency_threshold!r}")
    if isinstance(min_genes_filter, bool) or not isinstance(min_genes_filter, numbers.Integral) or min_genes_filter < 0:
        raise InputError(f"min_genes_filter must be an integer >= 0, got {min_genes_filter!r}")
    params = Params(**{n: arguments[n] for n in _API_PARAMS}, grn_runs=n_runs, grn_cv_threshold=cv_threshold,
                    grn_aggregation=aggregation_method, grn_frequency_threshold=float(frequency_threshold),
                    grn_min_genes_filter=int(min_genes_filter)).with_seed()
    params.warn_unused_cv_threshold()
    runs = {"seeds": run_seeds(params.seed, n_runs, seeds), "return_adj_matrices": bool(return_adj_matrices)}
    return _in_memory(exp_matrix, gene_names, params, runs=runs)


def _alias(name: str, value, default, alias: str, alias_value, translate: dict | None = None):
    """``value``, or the alias's (translated) value when only the alias was given; both differing is refused."""
    if alias_value is None:
        return value
    if translate is not None:
        if alias_value not in translate:
            raise InputError(f"{alias} must be one of {', '.join(map(repr, translate))} (or None), got "
                             f"{alias_value!r}")
        alias_value = translate[alias_value]
    if value != default and value != alias_value:
        raise InputError(f"{alias}={alias_value!r} and {name}={value!r} disagree; {alias} is our first name of {name}: "
                         f"give one")
    return alias_value

