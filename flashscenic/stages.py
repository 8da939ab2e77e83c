"""The stage functions every path calls: in process (``run_flashscenic``), on stores
(``run_pipeline``) and on Dask workers.

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
Stage functions take arrays and a ``Params``; they read no run folder and know no executor.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError, MissingDependencyError, MissingFileError
from .params import DEFAULT_DATASOURCE, DEFAULT_SPECIES, DEFAULT_VERSION, Params

__all__ = ["Resources", "prepare_resources", "infer_weights", "make_modules", "prune_task", "merge_pruned",
           "regulon_matrix", "aucell_block", "score_regulons", "require_regdiffusion",
           "resources_of", "load_annotation", "grn_run_task", "regulons_of",
           "sparse_weights", "prune"]

logger = logging.getLogger(__name__)


def require_regdiffusion() -> None:
    try:
        import regdiffusion  # noqa: F401
    except ImportError:
        raise MissingDependencyError("GRN inference needs regdiffusion (pip install regdiffusion), or pass adj_matrix= "
                          "(pySCENIC/GRNBoost2 adjacencies) to skip it") from None


# ----------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class Resources:
    """Resolved resource paths of a run (absolute: workers may run in another folder)."""

    tf_list: Path
    ranking_databases: tuple[Path, ...]
    motif_annotation: Path

    def check(self, gene_names: Sequence[str], params: Params) -> list[str]:
        """Fail early, before any stage: gene overlap, TFs, annotation (columns, numbers, rows
        kept), the rank threshold against each database's size, AUCell's threshold against the
        number of genes; return the TFs among the genes."""
        from .checks import check_inputs, read_tf_names

        report = check_inputs(gene_names, self.ranking_databases, read_tf_names(self.tf_list))
        for overlap in report.gene_overlaps:
            if params.pruning_rank_threshold >= overlap.n_database_genes:
                raise InputError(f"pruning_rank_threshold={params.pruning_rank_threshold} must be below the "
                                 f"{overlap.n_database_genes} genes of the ranking database {overlap.database}")
        load_annotation(self.motif_annotation, params)
        from .aucell import rank_cutoff

        try:
            rank_cutoff(params.aucell_auc_threshold, len(gene_names))
        except InputError as error:
            raise InputError(f"aucell_{error}") from None
        return list(report.tfs_found)

    def as_parameters(self) -> dict:
        return {"tf_list_path": str(self.tf_list), "ranking_db_paths": [str(p) for p in self.ranking_databases],
                "motif_annotation_path": str(self.motif_annotation)}


def _stamp(path) -> tuple[int, int]:
    """Size and modification time: a file changed at the same path is read again by the caches."""
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def load_annotation(path, params: Params):
    """The motif annotation with ``params``' filters, checked (columns, numbers, rows kept) and
    read once per process and file version: the early check and every pruner share it."""
    return _annotation(str(path), _stamp(path), params.annotation_motif_similarity_fdr,
                       params.annotation_orthologous_identity)


@functools.lru_cache(maxsize=4)
def _annotation(path: str, stamp: tuple, fdr: float, identity: float):
    """The motif annotation, read once per process and file version (by the early check, then the pruners)."""
    from .checks import check_motif_annotation

    return check_motif_annotation(path, fdr, identity)


def prepare_resources(species: str = DEFAULT_SPECIES, *, datasource: str = DEFAULT_DATASOURCE,
                      version: str = DEFAULT_VERSION, cache_dir=None,
                      tf_list_path=None, ranking_db_paths=None, motif_annotation_path=None,
                      verbose: bool = True) -> Resources:
    """The run's resources: the paths given, the rest downloaded (verified, cached) for ``species``.

    ``resources_of(params)`` calls this with a ``Params``' resource fields.
    """
    if isinstance(ranking_db_paths, (str, os.PathLike)):
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
        tf_list_path, ranking_db_paths, motif_annotation_path = got.tf_list, got.ranking_databases, \
            got.motif_annotation
    paths = Resources(Path(tf_list_path).resolve(), tuple(Path(p).resolve() for p in ranking_db_paths),
                      Path(motif_annotation_path).resolve())
    for what, path in [("TF list", paths.tf_list), ("motif annotation", paths.motif_annotation),
                       *[("ranking database", p) for p in paths.ranking_databases]]:
        if not path.is_file():
            raise MissingFileError(f"{what} {str(path)!r} does not exist")
    return paths


def resources_of(params: Params) -> Resources:
    """``prepare_resources`` with the resource fields of ``params``."""
    return prepare_resources(params.species, datasource=params.datasource, version=params.version,
                             cache_dir=params.cache_dir, tf_list_path=params.tf_list_path,
                             ranking_db_paths=params.ranking_db_paths,
                             motif_annotation_path=params.motif_annotation_path, verbose=params.verbose)


# ----------------------------------------------------------------------------- stages


def infer_weights(expression, gene_names: Sequence[str], tf_names: Sequence[str], params: Params,
                  adjacencies=None, raw: bool = False) -> tuple[np.ndarray, list[str], list[str] | None]:
    """TF x gene weights: RegDiffusion on ``expression``, or the user's ``adjacencies``.

    Returns the weights (TFs with no positive weight kept as zero rows), the TF names, and
    the genes the GRN trained on when ``grn_max_genes`` chose them (else None).
    """
    gene_names = list(gene_names)
    if adjacencies is not None:
        return (*_weights_from_adjacencies(adjacencies, gene_names, tf_names, params), None)
    from .grn import infer_grn

    result = infer_grn(expression, gene_names, tf_names, n_steps=params.grn_n_steps,
                       sparsity_threshold=None if raw else params.grn_sparsity_threshold,
                       max_cells=params.grn_max_cells, max_genes=params.grn_max_genes,
                       device=params.device, seed=params.seed, verbose=params.verbose)
    return result.weights, list(result.tf_names), result.trained_genes


def announce_grn_time(n_genes: int, n_cells: int, params: Params, device=None, *,
                      threads: int | None = None, runs: int = 1) -> float:
    """Log the GRN's estimated time before it starts; on a CPU, warn when it exceeds an hour.

    ``n_genes``: the genes offered (the budget caps them); ``device``: where the GRN runs
    (default ``params.device``); ``threads``: the CPU threads it gets (default torch's);
    ``runs``: GRN trainings one after another (a consensus's runs).

    The estimate is ``flashscenic.grn.estimate_grn_seconds`` (a measured per-step cost
    model); the warning names the gene budget, which is what brings a CPU run back to minutes.
    """
    from ._device import resolve_device
    from .grn import estimate_grn_seconds

    n_genes = min(n_genes, params.grn_max_genes or n_genes)
    where = resolve_device(params.device if device is None else device).type
    seconds = runs * estimate_grn_seconds(n_genes, params.grn_n_steps, where, threads=threads)
    logger.info("GRN: %d genes x %d cells, %d steps%s on the %s: about %s (estimate)", n_genes, n_cells,
                params.grn_n_steps, f" x {runs} runs" if runs > 1 else "", "GPU" if where == "cuda" else "CPU",
                _duration(seconds))
    if where == "cpu" and seconds > 3600:
        hint = (f"lower the gene budget (--grn-max-genes / grn_max_genes, now {params.grn_max_genes})"
                if params.grn_max_genes else "train on the most variable genes with --grn-max-genes N "
                "(grn_max_genes=N; 2,000-3,000 genes take minutes to an hour)")
        warnings.warn(f"RegDiffusion on {n_genes} genes for {params.grn_n_steps} steps"
                      f"{f' x {runs} runs' if runs > 1 else ''} on this CPU takes about "
                      f"{_duration(seconds)}: {hint}, or run on a GPU", UserWarning, stacklevel=3)
    return seconds


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def grn_genes(store, params: Params) -> list[str] | None:
    """The genes a gene budget (``grn_max_genes``) trains the GRN on, in gene order; None: every gene.

    Seurat's dispersion rule (``flashscenic.grn.GeneDispersion``) over the GRN's cell
    sample (``grn_max_cells`` cells drawn with the seed), read chunk by chunk: the
    coordinator never holds the sample, and every GRN run of a consensus trains on the
    same genes.
    """
    from .grn import GeneDispersion

    if params.grn_max_genes is None or params.grn_max_genes >= store.n_genes:
        return None
    positions = store.sample_cells(min(params.grn_max_cells or store.n_cells, store.n_cells), seed=params.seed)
    dispersion = GeneDispersion(store.n_genes)
    for block in store.iter_cells(positions, "csr" if store.layout == "csr" else "dense"):
        dispersion.add(block)
    chosen = np.sort(dispersion.most_variable(params.grn_max_genes))
    return [str(store.gene_names[j]) for j in chosen]


def _weights_from_adjacencies(adjacencies, gene_names: list[str], tf_names, params: Params):
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


def make_modules(weights: np.ndarray, tf_names: Sequence[str], gene_names: Sequence[str], params: Params,
                 expression=None, device=None) -> list:
    """pySCENIC's modules from TF x gene weights; raise, with counts, when none survives.

    With ``expression`` (cells x genes), links are split by correlation and only activating
    modules are kept, as pySCENIC's ``ctx`` does; without it (the pipeline's GRN weights
    are RegDiffusion's) no split is made. ``device`` (default ``params.device``): a
    coordinator of GPU workers builds them on the CPU, so no second process holds a GPU.
    """
    from .modules import build_modules

    modules = build_modules(weights, list(tf_names), list(gene_names),
                            percentile_thresholds=params.module_percentile_thresholds,
                            top_n_targets=(params.module_k,), top_n_per_target=params.module_top_n_per_target,
                            min_genes=0, include_tf=params.module_include_tf, expression=expression,
                            device=params.device if device is None else device)
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
def _pruner(database_path: str, annotation_path: str, params: Params, stamps: tuple):
    """One pruner per (database, annotation, parameters, file versions) per process: a worker loads a
    database once."""
    from .cistarget import CisTargetPruner

    pruner = CisTargetPruner(rank_threshold=params.pruning_rank_threshold, auc_threshold=params.pruning_auc_threshold,
                             nes_threshold=params.pruning_nes_threshold, device=params.device,
                             min_genes_per_regulon=params.pruning_min_genes,
                             merge_strategy=params.pruning_merge_strategy, verbose=params.verbose)
    pruner.load_database([database_path])
    pruner.motif_annotations = load_annotation(annotation_path, params)
    pruner.filter_for_annotation = True
    return pruner


def prune_task(database_path: str, modules: Sequence, annotation_path: str, params: Params) -> pd.DataFrame:
    """Enriched, annotated motif rows of ``modules`` in one database (one pruning task)."""
    if not modules:
        from .regulons import MOTIF_COLUMNS

        return pd.DataFrame(columns=list(MOTIF_COLUMNS))
    pruner = _pruner(str(database_path), str(annotation_path), params, (_stamp(database_path), _stamp(annotation_path)))
    return pruner.motif_table([m.genes for m in modules], [m.tf for m in modules], (),
                              weights_list=[m.weights for m in modules], contexts=[m.context for m in modules])


def merge_pruned(tables: Sequence[pd.DataFrame], modules: Sequence, params: Params,
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


def _no_regulon_message(table, regulons, modules, params: Params, resources: Resources | None) -> str:
    """Why pruning left nothing: modules skipped by the 80% rule, motifs enriched, annotations."""
    parts = [f"no regulon survived pruning: {len(modules)} modules of {len({m.tf for m in modules})} TFs were pruned"]
    if resources is not None:
        from .cistarget import mostly_absent

        unannotated = 0
        for db in resources.ranking_databases:
            pruner = _pruner(str(db), str(resources.motif_annotation), params,
                             (_stamp(db), _stamp(resources.motif_annotation)))
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


def aucell_block(expression, regulon_adjacency: np.ndarray, params: Params) -> np.ndarray:
    """AUCell of a block of cells: each cell's scores depend on that cell only (and the seed)."""
    from .aucell import get_aucell

    return get_aucell(expression, regulon_adjacency, k=params.aucell_k, auc_threshold=params.aucell_auc_threshold,
                      device=params.device, batch_size=params.aucell_batch_size, seed=params.seed,
                      verbose=params.verbose)


def score_regulons(expression, gene_names: Sequence[str], regulons: Sequence[dict], params: Params,
                   weighted: bool = False) -> np.ndarray:
    """AUCell of regulons read from files: pySCENIC's rule included, a regulon fewer than 80%
    of whose genes are expression columns scores 0 in every cell (ctxcore's ``aucs``)."""
    from .regulons import regulons_to_adjacency

    if not regulons:
        raise InputError("no regulon to score")
    adjacency = regulons_to_adjacency(regulons, list(gene_names), weighted=weighted)
    present = np.count_nonzero(adjacency, axis=1) / np.array([max(len(r["genes"]), 1) for r in regulons])
    auc = aucell_block(expression, adjacency, params)
    auc[:, present < 0.8] = 0.0
    return auc


# ----------------------------------------------------------------------------- tasks of the store pipeline


def tf_shards(modules: Sequence, n_shards: int) -> list[list]:
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


def grn_task(expression_path: str, tf_names: Sequence[str], params: Params, run_id: str = "",
             raw: bool = False, genes: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """GRN on one worker: it samples up to ``grn_max_cells`` cells from the store itself.

    ``run_id`` is part of the task's key (its arguments), so a task of an earlier run into
    the same folder, still running on a worker, is never taken for this run's. ``raw``: no
    sparsity threshold. ``genes``: train on these only (the gene budget, ``grn_genes``);
    only their columns of the sample are read, and the other genes get zero weights.

    On a CPU worker (whose torch threads are its share of the host's cores) the GRN uses
    every core it is allowed, as in process: torch's CPU reductions depend on the thread
    count, and the same threads give the same bits on any executor. GRN runs of a consensus
    that run side by side on one host therefore share its cores.
    """
    import torch

    from .store import open_expression_store

    store = open_expression_store(expression_path)
    gene_names = [str(g) for g in store.gene_names]
    columns = None if genes is None else pd.Index(gene_names).get_indexer(list(genes))
    positions = store.sample_cells(min(params.grn_max_cells or store.n_cells, store.n_cells), seed=params.seed)
    sample = store.read_cells(positions, "csr" if store.layout == "csr" else "dense", genes=columns)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(max(threads, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                  else os.cpu_count() or 1))
        weights, tf_rows, _ = infer_weights(sample, gene_names if genes is None else list(genes), tf_names,
                                            params.replace(grn_max_cells=None, grn_max_genes=None), raw=raw)
    finally:
        torch.set_num_threads(threads)
    if columns is None:
        return weights, tf_rows
    full = np.zeros((weights.shape[0], len(gene_names)), dtype=weights.dtype)
    full[:, columns] = weights
    return full, tf_rows


def grn_run_task(results_path: str, expression_path: str, tf_names: Sequence[str], params: Params, run_id: str,
                 index: int, genes: Sequence[str] | None = None) -> int:
    """GRN run ``index`` of a multi-run consensus (``params`` carries the run's seed): its raw
    weights (not thresholded: the consensus thresholds the mean) go straight into the results
    store, so the coordinator never holds more than one run."""
    from .store import open_results_store

    def check(results):  # before training, and again before writing: training takes minutes to hours
        if results.parameters.get("run_id") != run_id:
            raise InputError(f"{results_path} now holds another run; this GRN task of run {run_id} is obsolete")
        return results

    check(open_results_store(results_path))
    weights, tf_rows = grn_task(expression_path, tf_names, params, run_id, raw=True, genes=genes)
    check(open_results_store(results_path)).write_grn_run(index, weights, tf_rows)
    return index


def sparse_weights(weights: np.ndarray, params: Params) -> np.ndarray:
    """Raw GRN weights with ``grn_sparsity_threshold`` applied (what ``infer_weights`` returns)."""
    from .grn import sparsify

    return sparsify(weights, params.grn_sparsity_threshold)


def regulons_of(weights: np.ndarray, tf_names: Sequence[str], gene_names: Sequence[str], params: Params,
                resources: Resources, executor, n_shards: int) -> list[dict]:
    """The regulons of one network (modules, pruning tasks, merge); none when nothing survives."""
    try:
        modules = make_modules(weights, tf_names, gene_names, params, device=coordinator_device(executor, params))
    except InputError:
        return []
    try:
        return prune(modules, params, resources, executor, n_shards, verbose=False)[1]
    except InputError:
        return []


def coordinator_device(executor, params: Params) -> str:
    """Where the coordinator computes its small steps (modules, the no-regulon diagnosis): the
    run's device in process, the CPU when tasks run elsewhere (GPU workers own the GPUs)."""
    return "cpu" if getattr(executor, "remote", False) else params.device


def release_gpu_memory() -> None:
    """In a process that uses CUDA: free its pruners (their databases live on the GPU) and
    torch's cached blocks, so AUCell after pruning gets the GPU's memory back. Nothing on the
    CPU, where the pruners stay cached for the next run."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized() and _pruner.cache_info().currsize:  # once after pruning
        _pruner.cache_clear()
        torch.cuda.empty_cache()


def prune(modules: Sequence, params: Params, resources: Resources, executor=None, n_shards: int = 1,
          verbose: bool | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """Pruning of ``modules``: (database x TF shard) tasks on ``executor`` (default: in this
    process), merged by ``merge_pruned``; the motif table and the regulons."""
    from .executors import InProcessExecutor

    executor = executor or InProcessExecutor()
    task_params = params.replace(verbose=False) if executor.remote else params
    tasks = [(str(db), shard, str(resources.motif_annotation), task_params)
             for db in resources.ranking_databases for shard in tf_shards(modules, n_shards)]
    tables = executor.map(prune_task, tasks, description="pruning", gpu=True,
                          verbose=params.verbose if verbose is None else verbose)
    return merge_pruned(tables, modules, params.replace(device=coordinator_device(executor, params)), resources)


def aucell_chunk_task(results_path: str, expression_path: str, index: int, regulon_adjacency,
                      params: Params, run_id: str | None = None) -> int:
    """Score AUC chunk ``index`` from the expression store and write it into the results store.

    With ``run_id``, refuse to write into a results store of another run: a task of a killed
    run, still running on a worker, must not write into the next run built at the same path.
    """
    from .store import open_expression_store, open_results_store

    results = open_results_store(results_path)
    if run_id is not None and results.parameters.get("run_id") != run_id:
        raise InputError(f"{results_path} now holds another run; this AUCell task of run {run_id} is obsolete")
    release_gpu_memory()
    start, stop = results.auc_chunk_ranges()[index]
    store = open_expression_store(expression_path)
    block = store.read_rows(start, stop, "csr" if store.layout == "csr" else "dense")
    results.write_auc_chunk(index, aucell_block(block, regulon_adjacency, params))
    return index


