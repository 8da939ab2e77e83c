"""The whole SCENIC pipeline: ``run_flashscenic`` in memory, ``run_pipeline`` on stores.

Both are built from the same stage functions, so a run on a Dask cluster computes exactly
what a run in one process computes:

====================  ==================================================================
``prepare_resources``  TF list, ranking databases, motif annotation (given or downloaded)
``infer_weights``      GRN: TF x gene weights (RegDiffusion), or the user's adjacencies
``make_modules``       pySCENIC's co-expression modules from the weights
``prune_task``         one (ranking database x shard of TFs) task: enriched motif rows
``merge_pruned``       the coordinator: rows of all tasks -> one table -> regulons
``aucell_block``       AUCell of a block of cells (any block: rows are independent)
====================  ==================================================================

Sharding cannot change the result: a module's motif AUCs and NES depend on that module
and database only, ``merge_pruned`` sorts rows into one canonical order before building
regulons, and AUCell scores each cell on its own with one gene permutation (the seed's).
Where the work runs is an *executor*: ``InProcessExecutor`` here, a Dask one in
``flashscenic.distributed``; both map a task function over arguments, in order.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .errors import InputError, MissingDependencyError

__all__ = ["run_flashscenic", "run_pipeline", "Resources", "prepare_resources", "infer_weights", "make_modules",
           "prune_task", "merge_pruned", "aucell_block", "InProcessExecutor", "STAGES"]

logger = logging.getLogger("flashscenic")

STAGES = ("grn", "modules", "pruning", "auc", "rss")  # completion markers in the results store


# ----------------------------------------------------------------------------- API


def run_flashscenic(
    exp_matrix,
    gene_names: Sequence[str],
    species: str = "human",
    *,
    datasource: str = "scenic",
    version: str = "v10",
    cache_dir: str | None = None,
    tf_list_path: str | None = None,
    ranking_db_paths: Sequence[str] | None = None,
    motif_annotation_path: str | None = None,
    grn_n_steps: int = 1000,
    grn_sparsity_threshold: float = 1.5,
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
    adj_matrix=None,
) -> dict:
    """Run SCENIC on an in-memory matrix: GRN, modules, cisTarget pruning, AUCell.

    Parameters
    ----------
    exp_matrix
        Cells x genes, log-transformed (numpy or scipy.sparse).
    gene_names
        One unique name per column, named like the databases (symbols).
    species
        Species of the downloaded resources: ``'human'``, ``'mouse'`` or ``'drosophila'``.
    datasource
        Resource registry used when a resource path is not given (see ``download_data``).
    version
        Motif collection of the downloaded resources (``'v10'`` or ``'v9'``).
    cache_dir
        Cache of downloaded resources (default ``$FLASHSCENIC_CACHE``, else ``./flashscenic_data``).
    tf_list_path
        TF list file (one name per line); default: the species' downloaded list.
    ranking_db_paths
        Feather ranking databases; default: the species' two downloaded databases.
    motif_annotation_path
        motif2tf annotation table; default: the species' downloaded table.
    grn_n_steps
        RegDiffusion training steps.
    grn_sparsity_threshold
        GRN weights below this are dropped (RegDiffusion's units: strong links are 5-10).
    module_k
        Size of the ``top{k}`` modules: each TF's k strongest targets.
    module_percentile_thresholds
        Percentiles of all GRN weights; ``weight>{q}%`` modules keep targets above them.
    module_top_n_per_target
        ``top{n}perTarget`` modules: each target's n strongest TFs, regrouped by TF.
    module_min_targets
        Drop modules with fewer genes than this, the TF included (pySCENIC's ``min_genes``).
    module_min_fraction
        Also drop modules holding fewer than this fraction of all genes (None: off).
    module_include_tf
        Put the TF in its own modules with weight 1.0, as pySCENIC does.
    pruning_rank_threshold
        Ranks considered by the recovery curves (must be below the database's gene count).
    pruning_auc_threshold
        Fraction of the database's genes under the recovery curve for the motif AUC.
    pruning_nes_threshold
        A motif is enriched when its normalised enrichment score reaches this.
    pruning_min_genes
        Drop regulons with fewer genes than this (pySCENIC: 0).
    pruning_merge_strategy
        ``'union'``: a regulon gathers the targets of all its enriched motifs (pySCENIC);
        ``'best'``: only the top-NES row of each (TF, motif) counts.
    annotation_motif_similarity_fdr
        Keep motif-to-TF annotations with a motif similarity q-value at most this.
    annotation_orthologous_identity
        Keep motif-to-TF annotations with an orthologous identity at least this.
    aucell_k
        Score at most the k strongest genes of each regulon; None scores every regulon
        gene, as pySCENIC does (flashscenic 0.2 capped at ``module_k``: a deliberate change).
    aucell_auc_threshold
        Fraction of the ranked genes under the recovery curve for a cell's AUC.
    aucell_batch_size
        Cells ranked at once (memory, not results).
    device
        ``'cuda'``, ``'cpu'`` or ``'auto'``; ``'cuda'`` without CUDA warns once and uses the CPU.
    seed
        Seed of the GRN's cell sample and training and of AUCell's tie order (pySCENIC's
        ``seed``); None draws one, recorded in ``parameters``.
    verbose
        Log each stage and show progress bars.
    adj_matrix
        Skip GRN inference and use these weights: a pySCENIC/GRNBoost2 adjacency table
        (columns TF, target, importance; used as it is) or a genes x genes matrix (rows
        regulate columns, RegDiffusion's layout, in ``gene_names`` order;
        ``grn_sparsity_threshold`` applies to it).

    Returns
    -------
    dict
        ``auc_scores`` (cells x regulons float32), ``regulon_names``, ``regulons`` (dicts:
        name, tf, genes, weights, motifs, nes, ...), ``regulon_adj`` (regulons x genes,
        1.0 on regulon genes: what AUCell scored) and ``parameters`` (everything used,
        resolved resource paths and the seed included).

    Raises
    ------
    ImportError
        GRN inference is needed and regdiffusion is not installed.
    ValueError
        Bad input, or no TF / no regulon survives; the message says how many were dropped
        at which step and why.
    """
    parameters = _parameters(run_flashscenic, locals(), exclude=("exp_matrix", "gene_names", "adj_matrix"))
    params = _Params(**{k: parameters[k] for k in _Params.__dataclass_fields__ if k in parameters})
    _configure_logging(verbose)
    gene_names = _gene_names(gene_names, exp_matrix.shape[1])
    if adj_matrix is None:
        _require_regdiffusion()
    resources = prepare_resources(species, datasource=datasource, version=version, cache_dir=cache_dir,
                                  tf_list_path=tf_list_path, ranking_db_paths=ranking_db_paths,
                                  motif_annotation_path=motif_annotation_path, verbose=verbose)
    tf_names = resources.check(gene_names, params)
    parameters.update(resources.as_parameters(), seed=params.seed)

    timer = _Timer()
    with timer("grn"):
        weights, tf_names = infer_weights(exp_matrix, gene_names, tf_names, params, adjacencies=adj_matrix)
    with timer("modules"):
        modules = make_modules(weights, tf_names, gene_names, params)
    with timer("pruning"):
        tables = [prune_task(str(db), modules, str(resources.motif_annotation), params)
                  for db in resources.ranking_databases]
        _, regulons = merge_pruned(tables, modules, params, resources)
    with timer("aucell"):
        names, adjacency = regulon_matrix(regulons, gene_names)
        auc = aucell_block(exp_matrix, adjacency, params)
    parameters["timings"] = timer.seconds
    logger.info("%d regulons scored in %d cells (%s)", len(names), auc.shape[0], timer)
    return {"auc_scores": auc, "regulon_names": names, "regulons": regulons, "regulon_adj": adjacency,
            "parameters": parameters}


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class _Params:
    """The numeric parameters the stage tasks need (picklable, hashable for caches).

    Defaults live in one place, ``run_flashscenic``'s signature: build it with
    ``params_from`` (or from that call's arguments). ``grn_max_cells`` is the store
    pipeline's own (``flashscenic run --grn-max-cells``).
    """

    grn_n_steps: int
    grn_sparsity_threshold: float
    module_k: int
    module_percentile_thresholds: tuple
    module_top_n_per_target: tuple
    module_min_targets: int
    module_min_fraction: float | None
    module_include_tf: bool
    pruning_rank_threshold: int
    pruning_auc_threshold: float
    pruning_nes_threshold: float
    pruning_min_genes: int
    pruning_merge_strategy: str
    annotation_motif_similarity_fdr: float
    annotation_orthologous_identity: float
    aucell_k: int | None
    aucell_auc_threshold: float
    aucell_batch_size: int
    device: str
    seed: int | None
    verbose: bool
    grn_max_cells: int | None = None

    def __post_init__(self):
        for name in ("module_percentile_thresholds", "module_top_n_per_target"):
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(value) if value is not None else ())
        if self.seed is None:
            object.__setattr__(self, "seed", int(np.random.SeedSequence().entropy % 2**31))
        if self.pruning_merge_strategy not in ("union", "best"):
            raise InputError(f"pruning_merge_strategy={self.pruning_merge_strategy!r} is not 'union' or 'best'")
        for name, low in [("module_k", 1), ("grn_n_steps", 1), ("module_min_targets", 0), ("pruning_min_genes", 0),
                          ("pruning_rank_threshold", 1), ("aucell_batch_size", 1), ("grn_max_cells", 1),
                          ("aucell_k", 1), ("seed", 0)]:
            value = getattr(self, name)
            if value is None and name in ("grn_max_cells", "aucell_k"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.seed >= 2**32:
            raise InputError(f"seed must be below 2**32 (numpy's RandomState), got {self.seed}")
        for name, high in [("pruning_auc_threshold", 1.0), ("aucell_auc_threshold", 1.0)]:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 < value <= high:
                raise InputError(f"{name} must be a number in (0, {high:g}], got {value!r}")
        for name in ("grn_sparsity_threshold", "pruning_nes_threshold", "annotation_motif_similarity_fdr",
                     "annotation_orthologous_identity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not np.isfinite(value):
                raise InputError(f"{name} must be a finite number, got {value!r}")


def _parameters(function: Callable, values: dict, exclude: Sequence[str] = ()) -> dict:
    """The call's arguments by name, as JSON-able values (tuples become lists)."""
    names = [n for n in inspect.signature(function).parameters if n not in exclude]
    return {n: list(values[n]) if isinstance(values[n], tuple) else values[n] for n in names}


def pipeline_parameters() -> dict[str, inspect.Parameter]:
    """``run_flashscenic``'s tunable parameters (not data or resources): the CLI's flags."""
    skip = {"exp_matrix", "gene_names", "species", "datasource", "version", "cache_dir", "tf_list_path",
            "ranking_db_paths", "motif_annotation_path", "adj_matrix", "verbose"}
    return {n: p for n, p in inspect.signature(run_flashscenic).parameters.items() if n not in skip}


def _gene_names(gene_names, n_columns: int) -> list[str]:
    names = [str(g) for g in gene_names]
    if len(names) != n_columns:
        raise InputError(f"{len(names)} gene names for {n_columns} expression columns")
    duplicated = sorted(pd.Index(names)[pd.Index(names).duplicated()].unique())
    if duplicated:
        raise InputError(f"duplicate gene names, e.g. {', '.join(duplicated[:5])}; make them unique "
                         "(e.g. adata.var_names_make_unique()) or drop the duplicates")
    return names


def _require_regdiffusion() -> None:
    try:
        import regdiffusion  # noqa: F401
    except ImportError:
        raise MissingDependencyError("GRN inference needs regdiffusion (pip install regdiffusion), or pass adj_matrix= "
                          "(pySCENIC/GRNBoost2 adjacencies) to skip it") from None


_OWN_HANDLER: list = []  # the handler added for a user who configured no logging


def _configure_logging(verbose: bool) -> None:
    """Stage messages reach a user who configured no logging: INFO when verbose, else WARNING.

    A user's own logging configuration (root handlers, or a level set on the
    ``flashscenic`` logger) is left alone.
    """
    if not _OWN_HANDLER:
        if logging.getLogger().handlers or logger.handlers or logger.level != logging.NOTSET:
            return
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[flashscenic] %(message)s"))
        logger.addHandler(handler)
        _OWN_HANDLER.append(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


class _Timer:
    """Seconds per stage, logged as each stage ends."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, stage: str):
        import contextlib

        @contextlib.contextmanager
        def timed():
            start = time.perf_counter()
            logger.info("%s ...", stage)
            yield
            self.seconds[stage] = time.perf_counter() - start
            logger.info("%s done in %.1f s", stage, self.seconds[stage])

        return timed()

    def __str__(self) -> str:
        return ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())


# ----------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class Resources:
    """Resolved resource paths of a run."""

    tf_list: Path
    ranking_databases: tuple[Path, ...]
    motif_annotation: Path

    def check(self, gene_names: Sequence[str], params: _Params) -> list[str]:
        """Fail early (gene overlap, TFs, annotation columns); return the TFs among the genes."""
        from .checks import check_inputs, read_tf_names

        report = check_inputs(gene_names, self.ranking_databases, read_tf_names(self.tf_list), self.motif_annotation)
        return list(report.tfs_found)

    def as_parameters(self) -> dict:
        return {"tf_list_path": str(self.tf_list), "ranking_db_paths": [str(p) for p in self.ranking_databases],
                "motif_annotation_path": str(self.motif_annotation)}


def prepare_resources(species: str = "human", *, datasource: str = "scenic", version: str = "v10", cache_dir=None,
                      tf_list_path=None, ranking_db_paths=None, motif_annotation_path=None,
                      verbose: bool = True) -> Resources:
    """The run's resources: the paths given, the rest downloaded (verified, cached) for ``species``."""
    if isinstance(ranking_db_paths, (str, Path)):
        ranking_db_paths = [ranking_db_paths]
    given = [n for n, v in [("tf_list_path", tf_list_path), ("ranking_db_paths", ranking_db_paths),
                            ("motif_annotation_path", motif_annotation_path)] if v]
    if given and len(given) < 3:
        missing = sorted({"tf_list_path", "ranking_db_paths", "motif_annotation_path"} - set(given))
        raise InputError(f"{', '.join(given)} given but not {', '.join(missing)}: give all three resource paths "
                         f"(TF list, ranking databases, motif annotation), or none to download the {species} "
                         f"{version} set")
    if not given:
        from .data import download_data

        got = download_data(species, version, datasource, cache_dir=cache_dir, verbose=verbose)
        tf_list_path = tf_list_path or got.tf_list
        ranking_db_paths = ranking_db_paths or got.ranking_databases
        motif_annotation_path = motif_annotation_path or got.motif_annotation
    # absolute: workers of an external cluster may run in another working directory
    paths = Resources(Path(tf_list_path).resolve(), tuple(Path(p).resolve() for p in ranking_db_paths),
                      Path(motif_annotation_path).resolve())
    for what, path in [("TF list", paths.tf_list), ("motif annotation", paths.motif_annotation),
                       *[("ranking database", p) for p in paths.ranking_databases]]:
        if not path.is_file():
            from .errors import MissingFileError

            raise MissingFileError(f"{what} {str(path)!r} does not exist")
    return paths


# ----------------------------------------------------------------------------- stages


def infer_weights(expression, gene_names: Sequence[str], tf_names: Sequence[str], params: _Params,
                  adjacencies=None) -> tuple[np.ndarray, list[str]]:
    """TF x gene weights: RegDiffusion on ``expression``, or the user's ``adjacencies``.

    Returns the weights (TFs with no positive weight kept as zero rows) and the TF names.
    """
    gene_names = list(gene_names)
    if adjacencies is not None:
        return _weights_from_adjacencies(adjacencies, gene_names, tf_names, params)
    from .grn import infer_grn

    result = infer_grn(expression, gene_names, tf_names, n_steps=params.grn_n_steps,
                       sparsity_threshold=params.grn_sparsity_threshold, max_cells=params.grn_max_cells,
                       device=params.device, seed=params.seed, verbose=params.verbose)
    return result.weights, list(result.tf_names)


def _weights_from_adjacencies(adjacencies, gene_names: list[str], tf_names, params: _Params):
    wanted = list(dict.fromkeys(str(t) for t in tf_names))
    if isinstance(adjacencies, pd.DataFrame):
        missing = {"TF", "target", "importance"} - set(adjacencies.columns)
        if missing:
            raise InputError(f"the adjacency table lacks column(s) {sorted(missing)}; pySCENIC's has TF, target, importance")
        table = adjacencies[adjacencies["TF"].astype(str).isin(wanted) & adjacencies["target"].astype(str).isin(gene_names)]
        tfs = [t for t in wanted if t in set(table["TF"].astype(str))]
        if not tfs:
            raise InputError(f"no TF of the adjacency table is in the TF list among the genes "
                             f"({adjacencies['TF'].nunique()} TFs in the table, {len(wanted)} in the list)")
        weights = np.zeros((len(tfs), len(gene_names)), dtype=np.float32)
        rows = pd.Index(tfs).get_indexer(table["TF"].astype(str))
        cols = pd.Index(gene_names).get_indexer(table["target"].astype(str))
        weights[rows, cols] = table["importance"].to_numpy(np.float32)
        return weights, tfs
    matrix = np.asarray(adjacencies, dtype=np.float32)
    if matrix.shape != (len(gene_names), len(gene_names)):
        raise InputError(f"adj_matrix has shape {matrix.shape}; give a genes x genes matrix "
                         f"({len(gene_names)} x {len(gene_names)}, rows regulate columns) or an adjacency table")
    index = {g: j for j, g in enumerate(gene_names)}
    tfs = [t for t in wanted if t in index]
    weights = matrix[[index[t] for t in tfs]].copy()
    weights[~(weights >= params.grn_sparsity_threshold)] = 0.0
    return weights, tfs


def make_modules(weights: np.ndarray, tf_names: Sequence[str], gene_names: Sequence[str], params: _Params,
                 expression=None) -> list:
    """pySCENIC's modules from TF x gene weights; raise, with counts, when none survives.

    With ``expression`` (cells x genes), links are split by correlation and only activating
    modules are kept, as pySCENIC's ``ctx`` does; without it (the pipeline's GRN weights
    are RegDiffusion's) no split is made.
    """
    from .modules import build_modules

    modules = build_modules(weights, list(tf_names), list(gene_names),
                            percentile_thresholds=params.module_percentile_thresholds,
                            top_n_targets=(params.module_k,), top_n_per_target=params.module_top_n_per_target,
                            min_genes=0, include_tf=params.module_include_tf, expression=expression,
                            device=params.device)
    n_built, n_tfs = len(modules), len({m.tf for m in modules})
    kept = [m for m in modules if len(m) >= params.module_min_targets]
    n_small = n_built - len(kept)
    if params.module_min_fraction is not None:
        minimum = float(params.module_min_fraction) * len(gene_names)
        kept = [m for m in kept if len(m) >= minimum]
    if not kept:
        with_links = int((np.asarray(weights) > 0).any(axis=1).sum())
        raise InputError(
            f"no TF survived module building: {len(tf_names)} TFs among the genes, {with_links} with a positive GRN "
            f"weight (RegDiffusion weights: those >= grn_sparsity_threshold={params.grn_sparsity_threshold}); "
            f"{n_built} modules of {n_tfs} TFs were built, "
            f"{n_small} had fewer than module_min_targets={params.module_min_targets} genes"
            + (f" and {n_built - n_small} fewer than module_min_fraction={params.module_min_fraction} of the genes"
               if params.module_min_fraction is not None else "")
            + ". Lower module_min_targets, or (RegDiffusion) grn_sparsity_threshold, or train the GRN longer "
            "(grn_n_steps); with your own adjacencies, check that they hold enough links per TF")
    logger.info("%d modules of %d TFs (%d dropped as too small)", len(kept), len({m.tf for m in kept}),
                n_built - len(kept))
    return kept


@functools.lru_cache(maxsize=4)
def _pruner(database_path: str, annotation_path: str, params: _Params):
    """One pruner per (database, annotation, parameters) per process: a worker loads a database once."""
    from .cistarget import CisTargetPruner

    pruner = CisTargetPruner(rank_threshold=params.pruning_rank_threshold, auc_threshold=params.pruning_auc_threshold,
                             nes_threshold=params.pruning_nes_threshold, device=params.device,
                             min_genes_per_regulon=params.pruning_min_genes,
                             merge_strategy=params.pruning_merge_strategy, verbose=params.verbose)
    pruner.load_database([database_path])
    pruner.load_annotations(annotation_path, motif_similarity_fdr=params.annotation_motif_similarity_fdr,
                            orthologous_identity_threshold=params.annotation_orthologous_identity)
    return pruner


def prune_task(database_path: str, modules: Sequence, annotation_path: str, params: _Params) -> pd.DataFrame:
    """Enriched, annotated motif rows of ``modules`` in one database (one pruning task)."""
    if not modules:
        from .regulons import MOTIF_COLUMNS

        return pd.DataFrame(columns=list(MOTIF_COLUMNS))
    pruner = _pruner(str(database_path), str(annotation_path), params)
    return pruner.motif_table([m.genes for m in modules], [m.tf for m in modules], (),
                              weights_list=[m.weights for m in modules], contexts=[m.context for m in modules])


def merge_pruned(tables: Sequence[pd.DataFrame], modules: Sequence, params: _Params,
                 resources: Resources | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """The coordinator's merge: all tasks' rows in one canonical order, then regulons.

    Rows are sorted by (TF, motif, database) with a stable sort over tasks given in
    (database, shard) order, which is the in-process order whatever the sharding.
    """
    from .cistarget import select_motif_rows
    from .regulons import MOTIF_COLUMNS, regulons_from_motifs

    frames = [t for t in tables if len(t)]
    table = (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(MOTIF_COLUMNS)))
    table = table.sort_values(["TF", "MotifID", "Database"], kind="stable").reset_index(drop=True)
    table = select_motif_rows(table, params.pruning_merge_strategy)
    regulons = regulons_from_motifs(table) if len(table) else []
    kept = [r for r in regulons if r["n_genes"] >= params.pruning_min_genes]
    if not kept:
        raise InputError(_no_regulon_message(table, regulons, modules, params, resources))
    logger.info("%d regulons from %d enriched motif rows", len(kept), len(table))
    return table, kept


def _no_regulon_message(table, regulons, modules, params: _Params, resources: Resources | None) -> str:
    """Why pruning left nothing: modules skipped by the 80% rule, motifs enriched, annotations."""
    parts = [f"no regulon survived pruning: {len(modules)} modules of {len({m.tf for m in modules})} TFs were pruned"]
    if resources is not None:
        from .cistarget import mostly_absent

        unannotated = 0
        for db in resources.ranking_databases:
            pruner = _pruner(str(db), str(resources.motif_annotation), params)
            database = pruner.kernels[0].database
            skipped = sum(mostly_absent(len(m), int(database.gene_indices(m.genes)[1].sum())) for m in modules)
            parts.append(f"{skipped} skipped in {db.name} (under 80% of their genes in it)")
            pruner.filter_for_annotation = False
            try:
                unannotated += len(pruner.motif_table([m.genes for m in modules], [m.tf for m in modules], (),
                                                      [m.weights for m in modules], [m.context for m in modules]))
            finally:
                pruner.filter_for_annotation = True
        parts.append(f"{unannotated} (module, motif) pairs reached NES >= {params.pruning_nes_threshold} before the "
                     f"annotation filter, {len(table)} after it (motifs annotated to the module's own TF with q-value "
                     f"<= {params.annotation_motif_similarity_fdr} and identity >= "
                     f"{params.annotation_orthologous_identity})")
    if regulons:
        parts.append(f"{len(regulons)} regulons had fewer than pruning_min_genes={params.pruning_min_genes} genes")
    return "; ".join(parts) + ". Check that the databases and annotation are of the data's species, or lower " \
        "pruning_nes_threshold"


def regulon_matrix(regulons: Sequence[dict], gene_names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Regulon names and the regulons x genes 0/1 matrix AUCell scores (pySCENIC's CLI: unweighted)."""
    from .regulons import regulons_to_adjacency

    return [r["name"] for r in regulons], regulons_to_adjacency(regulons, list(gene_names), weighted=False)


def aucell_block(expression, regulon_adjacency: np.ndarray, params: _Params) -> np.ndarray:
    """AUCell of a block of cells: each cell's scores depend on that cell only (and the seed)."""
    from .aucell import get_aucell

    return get_aucell(expression, regulon_adjacency, k=params.aucell_k, auc_threshold=params.aucell_auc_threshold,
                      device=params.device, batch_size=params.aucell_batch_size, seed=params.seed,
                      verbose=params.verbose)


# ----------------------------------------------------------------------------- executors


class InProcessExecutor:
    """Runs tasks one after another in this process (``--n-workers 0``)."""

    name = "in process"
    remote = False  # tasks see this process's state (a Dask executor's do not)
    slots = 1  # tasks that run at once

    def share(self, value):
        """A value every task needs (a Dask executor scatters it once)."""
        return value

    def map(self, function: Callable, arguments: Sequence[tuple], *, description: str, gpu: bool = False,
            verbose: bool = True) -> list:
        """``[function(*args) for args in arguments]``, with a progress bar."""
        return [function(*args) for args in tqdm(arguments, desc=description, unit="task",
                                                  disable=None if verbose and len(arguments) > 1 else True)]

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- stores


def _tf_shards(modules: Sequence, n_shards: int) -> list[list]:
    """Modules split into ``n_shards`` groups of whole TFs (every module of a TF in one shard).

    Balanced by work (a TF's module genes): the largest TFs first, each to the lightest
    shard so far (ties: the TF name, the lower shard), so the result depends on the
    modules only. Modules keep their order within a shard; the merge sorts rows anyway.
    """
    cost: dict[str, int] = {}
    for module in modules:
        cost[module.tf] = cost.get(module.tf, 0) + len(module)
    tfs = sorted(cost, key=lambda tf: (-cost[tf], tf))
    n_shards = max(1, min(n_shards, len(tfs)))
    load = [0] * n_shards
    shard_of = {}
    for tf in tfs:
        lightest = min(range(n_shards), key=lambda i: (load[i], i))
        shard_of[tf] = lightest
        load[lightest] += cost[tf]
    shards: list[list] = [[] for _ in range(n_shards)]
    for module in modules:
        shards[shard_of[module.tf]].append(module)
    return shards


def _grn_task(expression_path: str, tf_names: Sequence[str], params: _Params) -> tuple[np.ndarray, list[str]]:
    """GRN on one worker: it samples up to ``grn_max_cells`` cells from the store itself."""
    from .store import open_expression_store

    import os

    import torch

    store = open_expression_store(expression_path)
    positions = store.sample_cells(min(params.grn_max_cells or store.n_cells, store.n_cells), seed=params.seed)
    sample = store.read_cells(positions, "csr" if store.layout == "csr" else "dense")
    # The GRN is the only task running: on a CPU worker (whose torch threads are its share
    # of the host's cores) it may use every core it is allowed.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(max(threads, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                  else os.cpu_count() or 1))
        return infer_weights(sample, list(store.gene_names), tf_names, _replace(params, grn_max_cells=None))
    finally:
        torch.set_num_threads(threads)


def _aucell_chunk_task(results_path: str, expression_path: str, index: int, regulon_adjacency,
                       params: _Params) -> int:
    """Score AUC chunk ``index`` from the expression store and write it into the results store."""
    from .store import open_expression_store, open_results_store

    results = open_results_store(results_path)
    start, stop = results.auc_chunk_ranges()[index]
    store = open_expression_store(expression_path)
    block = store.read_rows(start, stop, "csr" if store.layout == "csr" else "dense")
    results.write_auc_chunk(index, aucell_block(block, regulon_adjacency, params))
    return index


def run_pipeline(
    expression_store,
    out,
    *,
    resources: Resources,
    params: _Params | None = None,
    executor=None,
    adjacencies: pd.DataFrame | None = None,
    cell_type_column: str | None = None,
    chunk_cells: int | None = None,
    n_prune_shards: int | None = None,
    resume: bool = False,
    verbose: bool = True,
):
    """Run every stage from an expression store into a results store at ``out``.

    Each finished stage is recorded in the results store; ``resume=True`` reuses them and
    the AUC chunks already written, so an interrupted run continues where it stopped
    (the ``auc`` stage records ``chunks_scored``: the chunks this run computed).
    ``executor`` runs the GRN, pruning and AUCell tasks (default: in this process; a
    ``flashscenic.distributed`` executor runs them on a Dask cluster, same results).
    ``chunk_cells`` (cells per AUC task) defaults to the store's chunks in process and to
    what the workers' memory and number allow on a cluster; ``n_prune_shards`` (TF shards
    per ranking database) to the number of tasks the executor runs at once.

    Returns
    -------
    ResultsStore
    """
    from .store import create_results_store, open_expression_store, open_results_store

    params = params or params_from({})
    executor = executor or InProcessExecutor()
    _configure_logging(verbose)
    store = expression_store if hasattr(expression_store, "read_rows") else open_expression_store(expression_store)
    gene_names = [str(g) for g in store.gene_names]
    tf_names = resources.check(gene_names, params)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.zarr"
    recorded = {"params": _json(params), "resources": resources.as_parameters(),
                "expression": str(Path(store.path).resolve()), "source": store.metadata.get("source")}
    if resume and results_path.exists():
        results = open_results_store(results_path)
        previous = results.parameters
        words = {"params": "parameters", "resources": "resources", "expression": "expression store", "source": "input"}
        changed = [words[k] for k in words if previous.get(k) != recorded[k]]
        if changed:
            raise InputError(f"--resume: {results_path} was made with other {' and '.join(changed)}; "
                             "run without --resume (or with the same settings) to start afresh")
        logger.info("resuming %s: complete stages %s", results_path, [s for s in STAGES if results.is_complete(s)])
        if chunk_cells is not None and chunk_cells != results.chunk_rows:
            logger.info("resuming with the AUC chunks of the first run (%d cells), not %d", results.chunk_rows,
                        chunk_cells)
    else:
        if chunk_cells is None and hasattr(executor, "plan_chunk_cells"):
            chunk_cells = executor.plan_chunk_cells(store.n_cells, store.n_genes, store.chunk_rows)
        results = create_results_store(results_path, expression=store, chunk_rows=chunk_cells, parameters=recorded,
                                       overwrite=True)
        labels = store.obs().drop(columns=["cell"], errors="ignore")
        if len(labels.columns):
            results.write_cell_labels(labels)
    labelled = [c for c in results.read_cells().columns if c != "cell"]
    if cell_type_column is not None and cell_type_column not in labelled:
        raise InputError(f"no cell-label column {cell_type_column!r} in {store.path}; it has {labelled} "
                         "(ingest with obs_columns=[...] / --obs-columns to keep one)")

    # GRN (one task: one device)
    if results.is_complete("grn"):
        weights, tf_rows, _ = results.read_tf_gene_weights()
    else:
        start = time.perf_counter()
        if adjacencies is None:
            _require_regdiffusion()
            [(weights, tf_rows)] = executor.map(_grn_task, [(recorded["expression"], tf_names, params)],
                                                description="GRN", gpu=True, verbose=False)
        else:
            weights, tf_rows = infer_weights(None, gene_names, tf_names, params, adjacencies=adjacencies)
        from .grn import weights_to_adjacencies

        results.write_tf_gene_weights(weights, tf_rows, gene_names)
        results.write_adjacencies(weights_to_adjacencies(weights, tf_rows, gene_names))
        results.record_timing("grn", time.perf_counter() - start)
        results.mark_complete("grn", n_tfs=len(tf_rows))

    # modules (coordinator; small, deterministic: recomputed on resume)
    start = time.perf_counter()
    modules = make_modules(weights, tf_rows, gene_names, params)
    results.record_timing("modules", time.perf_counter() - start)
    results.mark_complete("modules", n_modules=len(modules))

    # pruning: (database x TF shard) tasks, merged by the coordinator
    if results.is_complete("pruning"):
        regulons = results.read_regulons()
    else:
        start = time.perf_counter()
        shards = _tf_shards(modules, n_prune_shards or getattr(executor, "slots", 1))
        prune_params = _replace(params, verbose=False) if getattr(executor, "remote", False) else params
        tasks = [(str(db), shard, str(resources.motif_annotation), prune_params)
                 for db in resources.ranking_databases for shard in shards]
        tables = executor.map(prune_task, tasks, description="pruning", verbose=verbose)
        table, regulons = merge_pruned(tables, modules, params, resources)
        results.write_motifs(table)
        results.write_regulons(regulons, gene_names, weighted=False)
        results.record_timing("pruning", time.perf_counter() - start)
        results.mark_complete("pruning", n_regulons=len(regulons))

    # AUCell: row-chunk tasks writing straight into the results store
    if not results.is_complete("auc"):
        start = time.perf_counter()
        names, adjacency = regulon_matrix(regulons, gene_names)
        results.init_auc(names)
        missing = results.missing_auc_chunks()
        n_chunks = len(results.auc_chunk_ranges())
        logger.info("AUCell: %d of %d chunks to score (%d cells each)", len(missing), n_chunks, results.chunk_rows)
        shared = executor.share(adjacency)
        task_params = _replace(params, verbose=False)
        executor.map(_aucell_chunk_task, [(str(Path(results.path).resolve()), recorded["expression"], i, shared,
                                           task_params) for i in missing],
                     description="AUCell", gpu=True, verbose=verbose)
        del shared
        results.finish_auc(time.perf_counter() - start)
        results.mark_complete("auc", n_regulons=len(names), n_chunks=n_chunks, chunks_scored=len(missing),
                              chunk_cells=results.chunk_rows)

    # RSS per cell type, when the cells carry labels
    cells = results.read_cells()
    column = cell_type_column or next((c for c in cells.columns if c != "cell"), None)
    if column is not None and not results.is_complete("rss"):
        if column not in cells.columns:
            raise InputError(f"no cell-label column {column!r}; the store has {[c for c in cells.columns if c != 'cell']}")
        from .rss import regulon_specificity_scores

        start = time.perf_counter()
        labelled = cells[column].notna().to_numpy()  # unlabelled cells are no cell type
        rss = regulon_specificity_scores(results.read_auc(as_frame=True).iloc[labelled],
                                         cells.loc[labelled, column].astype(str).to_numpy())
        results.write_table("rss", rss.rename_axis("cell_type").reset_index())
        results.record_timing("rss", time.perf_counter() - start)
        results.mark_complete("rss", cell_type_column=column)
    return results


def _replace(params: _Params, **changes) -> _Params:
    import dataclasses

    return dataclasses.replace(params, **changes)


def _json(params: _Params) -> dict:
    import dataclasses

    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(params).items()
            if k != "verbose"}


def params_from(values: dict[str, Any]) -> _Params:
    """``_Params`` from a mapping of parameter names (the CLI's), unknown names refused."""
    unknown = set(values) - set(_Params.__dataclass_fields__)
    if unknown:
        raise InputError(f"unknown parameter(s): {sorted(unknown)}")
    defaults = {n: p.default for n, p in inspect.signature(run_flashscenic).parameters.items()
                if n in _Params.__dataclass_fields__}
    return _Params(**{**defaults, **values})
