"""The engine: ``run_flashscenic`` in memory, ``run_pipeline`` for a run folder.

Both call the stage functions of ``flashscenic.stages`` with one ``Params``, so a run on a
Dask cluster of CPU workers computes exactly what a run in one process computes (on GPUs
within the tolerances the README's "On a GPU" states). ``run_pipeline`` owns a
run's whole life (see ``flashscenic._runfolder`` for the folder's layout):

* every parameter and the input's genes are checked before any stage runs;
* the output folder is locked while the run writes it (a second run is refused at once);
* a finished run is never replaced without ``overwrite=True``, and then only once the new
  run has succeeded (it is built in ``DIR/.partial`` and swapped in);
* the run records a fingerprint of everything that determines its result (input,
  adjacencies, input flags, resources, parameters and seed); ``resume=True`` continues an
  interrupted run (finished stages and AUC chunks are kept) only when that fingerprint is
  unchanged, and otherwise names what changed;
* each stage is marked complete only after its data is written; RSS and the label column
  it used are computed once and stored; the report reads them.

Every ``flashscenic`` command is one call of a public function; ``flashscenic run`` is
``run_pipeline``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import _runfolder
from ._utils import is_anndata, release_freed_memory
from .errors import InputError, MissingFileError, ResumeMismatchError, RunExistsError
from .executors import InProcessExecutor
from .params import STORE_PIPELINE_ONLY, Params
from .stages import (Resources, announce_grn_time, aucell_block, aucell_chunk_task, coordinator_device, grn_genes,
                     grn_run_task, grn_task, infer_weights, make_modules, prune, regulon_matrix, regulons_of, release_gpu_memory,
                     require_regdiffusion, resources_of, sparse_weights)

__all__ = ["run_flashscenic", "run_pipeline"]

logger = logging.getLogger(__name__)

_API_PARAMS = [n for n in Params.names() if n not in STORE_PIPELINE_ONLY]  # run_flashscenic's, in its order


# ----------------------------------------------------------------------------- in memory


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
    adj_matrix=None,
) -> dict:
    """Run SCENIC on an in-memory matrix: GRN, modules, cisTarget pruning, AUCell.

    Parameters
    ----------
    exp_matrix
        Cells x genes, log-transformed (numpy or scipy.sparse).
    gene_names
        One unique name per column, named like the databases (symbols).
{parameters}
    adj_matrix
        Skip GRN inference and use these weights: a pySCENIC/GRNBoost2 adjacency table
        (columns TF, target, importance; used as it is) or a genes x genes matrix (rows
        regulate columns, RegDiffusion's layout, in ``gene_names`` order;
        ``grn_sparsity_threshold`` applies to it).

    Every parameter is checked before any work (``flashscenic.Params`` holds their
    defaults and checks); for runs that resume and never lose a result, use ``run_pipeline``.

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
    arguments = locals()
    params = Params(**{n: arguments[n] for n in _API_PARAMS}).with_seed()
    return _in_memory(exp_matrix, gene_names, params, adj_matrix=adj_matrix)


def _in_memory(exp_matrix, gene_names, params: Params, *, adj_matrix=None, runs: dict | None = None) -> dict:
    """The in-memory pipeline: one GRN (or ``adj_matrix``), or the consensus of ``runs``."""
    gene_names = _gene_names(gene_names, exp_matrix.shape[1])
    _check_finite(exp_matrix)
    if adj_matrix is None:
        require_regdiffusion()
    resources = resources_of(params)
    tf_names = resources.check(gene_names, params)
    parameters = {k: v for k, v in {**params.as_dict(), **resources.as_parameters()}.items()
                  if k not in STORE_PIPELINE_ONLY}
    out: dict = {}

    timer = _Timer(params.verbose)
    if adj_matrix is None:
        announce_grn_time(len(gene_names), exp_matrix.shape[0], params, runs=len(runs["seeds"]) if runs else 1)
    with timer("grn"):
        if runs is None:
            weights, tf_names, trained = infer_weights(exp_matrix, gene_names, tf_names, params,
                                                       adjacencies=adj_matrix)
            if trained is not None:
                parameters["grn_genes"] = trained
        else:
            weights, tf_names, out = _consensus_in_memory(exp_matrix, gene_names, tf_names, params, resources, runs)
            if (trained := out.pop("grn_genes")) is not None:
                parameters["grn_genes"] = trained
            parameters.update(seeds=runs["seeds"], n_runs=len(runs["seeds"]), cv_threshold=params.grn_cv_threshold,
                              aggregation_method=params.grn_aggregation,
                              frequency_threshold=params.grn_frequency_threshold,
                              min_genes_filter=params.grn_min_genes_filter)
    if runs is not None and params.grn_aggregation == "frequency":
        from .consensus import frequency_consensus

        regulons, out["tf_frequency_scores"] = frequency_consensus(out["runs"], params.grn_frequency_threshold,
                                                                   params.grn_min_genes_filter)
        if not regulons:
            raise InputError(f"no regulon kept {params.grn_min_genes_filter} or more targets found in at least "
                             f"frequency_threshold={params.grn_frequency_threshold} of the {len(runs['seeds'])} runs; "
                             "lower frequency_threshold or min_genes_filter, or use aggregation_method="
                             "'mean_adjacency'")
    else:
        with timer("modules"):
            modules = make_modules(weights, tf_names, gene_names, params)
        with timer("pruning"):
            _, regulons = prune(modules, params, resources)
    if runs is not None:
        out.setdefault("tf_frequency_scores", None)
        regulons = [{**r, "recurrence": float(out["regulon_recurrence"].get(r["name"], 0.0))} for r in regulons]
        del out["runs"]
    with timer("aucell"):
        release_gpu_memory()
        names, adjacency = regulon_matrix(regulons, gene_names)
        auc = aucell_block(exp_matrix, adjacency, params)
    parameters["timings"] = timer.seconds
    timer.log("%d regulons scored in %d cells (%s)", len(names), auc.shape[0], timer)
    return {"auc_scores": auc, "regulon_names": names, "regulons": regulons, "regulon_adj": adjacency,
            "parameters": parameters, **out}


def _consensus_in_memory(exp_matrix, gene_names, tf_names, params: Params, resources: Resources, runs: dict):
    """The runs one after another, added in run order; each run's regulons for the recurrence."""
    from .consensus import WeightMoments, cv_filter, regulon_recurrence
    from .stages import regulons_of, sparse_weights

    moments, matrices, found = WeightMoments(), [], []
    for seed in runs["seeds"]:
        weights, tf_rows, trained = infer_weights(exp_matrix, gene_names, tf_names, params.replace(seed=seed),
                                                  raw=True)
        moments.add(weights)
        if runs["return_adj_matrices"]:
            matrices.append(weights)
        found.append(regulons_of(sparse_weights(weights, params), tf_rows, gene_names, params, resources,
                                 InProcessExecutor(), 1))
    mean, cv = moments.mean(), moments.cv()
    consensus, n_filtered = cv_filter(mean, cv, params.grn_cv_threshold)
    consensus = sparse_weights(consensus, params)
    recurrence, targets = regulon_recurrence(found)
    return consensus, tf_rows, {"adj_mean": mean, "adj_cv": cv, "adj_tf_names": tf_rows,
                                "adj_matrices": matrices if runs["return_adj_matrices"] else None,
                                "n_runs": len(runs["seeds"]), "cv_threshold": params.grn_cv_threshold,
                                "n_edges_cv_filtered": n_filtered, "regulon_recurrence": recurrence,
                                "target_recurrence": targets, "runs": found, "grn_genes": trained}


run_flashscenic.__doc__ = run_flashscenic.__doc__.format(parameters=Params.numpydoc(_API_PARAMS))


def _gene_names(gene_names, n_columns: int) -> list[str]:
    from ._utils import check_unique

    names = [str(g) for g in gene_names]
    if len(names) != n_columns:
        raise InputError(f"{len(names)} gene names for {n_columns} expression columns")
    check_unique(names, "gene names")
    return names


def _check_finite(matrix) -> None:
    """Refuse NaN or infinite expression before any work, naming how many and the first cell and gene."""
    import scipy.sparse as sp

    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if not np.issubdtype(values.dtype, np.number):
        raise InputError(f"exp_matrix holds {values.dtype} values; give numbers (cells x genes)")
    bad = ~np.isfinite(values)
    if bad.any():
        if sp.issparse(matrix):
            coo = matrix.tocoo()
            cell, gene = int(coo.row[bad][0]), int(coo.col[bad][0])
        else:
            cell, gene = (int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"exp_matrix holds {int(bad.sum())} NaN or infinite value(s), first at cell {cell}, gene "
                         f"{gene}; remove or impute them before running SCENIC")


class _Timer:
    """Seconds per stage, logged as each stage ends (INFO when verbose, else DEBUG)."""

    def __init__(self, verbose: bool = True):
        self.seconds: dict[str, float] = {}
        self.level = logging.INFO if verbose else logging.DEBUG

    def log(self, message: str, *args) -> None:
        logger.log(self.level, message, *args)

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        self.log("%s ...", stage)
        yield
        self.seconds[stage] = time.perf_counter() - start
        self.log("%s done in %.1f s", stage, self.seconds[stage])

    def __str__(self) -> str:
        return ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())


# ----------------------------------------------------------------------------- a run folder


def run_pipeline(
    input,
    out: str | os.PathLike,
    *,
    params: Params | None = None,
    resources: Resources | None = None,
    adjacencies=None,
    layer: str | None = None,
    log1p: bool = False,
    transpose: bool = False,
    cell_type_column: str | None = None,
    executor=None,
    chunk_cells: int | None = None,
    n_prune_shards: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    report: bool = True,
):
    """Run SCENIC from an input into the run folder ``out``; return its ``ResultsStore``.

    ``out`` receives ``results.zarr`` (weights, motifs, regulons, AUC, RSS, timings, the
    parameters and fingerprint), ``expression.zarr`` (unless ``input`` is an expression
    store) and ``report.html``.

    Parameters
    ----------
    input
        An expression file (h5ad, AnnData zarr, loom, CSV/TSV; cells x genes, log
        expression), an ``AnnData``, or an expression store (``ExpressionStore`` or its path).
    out
        The run folder (created). A folder that holds a run is refused unless ``resume``
        or ``overwrite`` says what to do with it.
    params
        A ``flashscenic.Params`` (default: ``Params()``; a seed of None is drawn and recorded).
    resources
        Prepared resources (``prepare_resources``); default: from ``params``' resource fields.
    adjacencies
        Skip GRN inference: a pySCENIC adjacencies file (TF, target, importance) or DataFrame.
    layer, log1p, transpose
        How to read a file input: an AnnData/loom layer instead of X, log1p of raw counts, a
        genes x cells CSV/TSV. They do not apply to an expression store (fixed at its ingest).
    cell_type_column
        The cell-label column (kept in the run) for RSS and the report; default: for an
        expression-store input, its first non-numeric label column (a file's or AnnData's
        labels are kept only when named).
    executor
        Where tasks run: an executor (``flashscenic.distributed.start_executor(...)``; left
        open, the caller closes what it started), or a function that starts one (e.g.
        ``functools.partial(start_executor, n_workers=4)``: started once every check has
        passed, closed in the background once the stages are done); default: in this process.
    chunk_cells
        Cells per AUCell task (default: the store's chunks in process, from worker memory
        on a cluster); a resumed run keeps its first chunks.
    n_prune_shards
        TF shards per ranking database (default: the executor's concurrent tasks).
    resume
        Continue the run in ``out`` made with these settings (an interrupted one first, else
        the finished one, which is completed: e.g. its report): finished stages and AUC
        chunks are kept. Refused, naming what changed for each run, when the input,
        adjacencies, input flags, resources or parameters differ. A seed of None takes the
        run's recorded seed. An empty ``out`` starts the run.
    overwrite
        Replace the run in ``out``; the old one stays intact until the new one succeeds.
    report
        Write ``out/report.html``.

    Raises
    ------
    RunExistsError
        ``out`` holds a run and neither ``resume`` nor ``overwrite`` was given.
    ResumeMismatchError
        ``resume`` with other settings than the run's.
    RunLockedError
        Another live process is writing ``out``.
    """
    params = params if params is not None else Params()
    if not isinstance(params, Params):
        raise InputError(f"params must be a flashscenic.Params, got {type(params).__name__} (Params.from_dict(...) "
                         "builds one from a mapping)")
    for name, value in [("chunk_cells", chunk_cells), ("n_prune_shards", n_prune_shards)]:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise InputError(f"{name} must be a positive integer or None, got {value!r}")
    if resume and overwrite:
        raise InputError("resume and overwrite exclude each other: resume continues the run in the folder, "
                         "overwrite replaces it")
    folder = _runfolder.RunFolder(out)
    source = _Input(input, folder, layer=layer, log1p=log1p, transpose=transpose, cell_type_column=cell_type_column)
    adjacency_table, adjacency_print = _adjacencies(adjacencies)
    params.warn_unused_cv_threshold()
    if params.grn_aggregation == "frequency" and params.grn_runs == 1:
        raise InputError("grn_aggregation 'frequency' combines several GRN runs: give grn_runs > 1 (--grn-runs N)")
    if adjacency_table is None:
        require_regdiffusion()
    elif params.grn_runs > 1 or params.grn_cv_threshold is not None:
        raise InputError("grn_runs and grn_cv_threshold repeat GRN inference; with adjacencies there is none to "
                         "repeat (drop --adjacencies or --grn-runs)")
    start_executor = _executor_starter(executor)
    with folder.lock(), contextlib.ExitStack() as cleanup:
        candidates = _existing_runs(folder, resume=resume, overwrite=overwrite)
        resources = resources or resources_of(params)
        tf_names = resources.check(source.gene_names(), params)  # before any ingest or download of data
        fingerprint = {"input": source.fingerprint(), "adjacencies": adjacency_print, "input_flags": source.flags,
                       "resources": _resource_prints(resources)}
        if candidates:
            work, params, previous = _matching_run(folder, candidates, params, fingerprint)
            logger.info("resuming %s", work)
        else:
            work, params, previous = folder.start_afresh(), params.with_seed(), None
        fingerprint["params"] = _result_params(params)
        started = cleanup.enter_context(_Started(start_executor())) if start_executor else None
        executor = started.executor if started else executor or InProcessExecutor()
        ingest_start = time.perf_counter()
        store = source.expression_store(work, params.verbose)
        ingest_seconds = time.perf_counter() - ingest_start
        release_freed_memory()  # what the ingest freed, before the next stages take their share
        results = _results_store(work, store, previous, chunk_cells,
                                 {"params": params.as_dict(), "resources": resources.as_parameters(),
                                  "input": source.description, "fingerprint": fingerprint,
                                  "run_id": uuid.uuid4().hex})
        if source.store is None and "ingest" not in results.timings:  # a file or AnnData was ingested
            results.record_timing("ingest", ingest_seconds)
        release_freed_memory()  # and what making the results store freed (the cell names of an atlas)
        _stages(results, store, tf_names, params, resources, adjacency_table, executor, n_prune_shards,
                chunk_cells)
        if started:
            started.close_soon()
        _rss(results, source.cell_type_column)
        if work == folder.partial:
            folder.publish()
        results = _open_results(folder.path / _runfolder.RESULTS)
        if report and not (folder.path / _runfolder.REPORT).exists():  # after the swap: it names the final paths
            from .report import write_report

            report_start = time.perf_counter()
            write_report(results, folder.path / _runfolder.REPORT)
            results.record_timing("report", time.perf_counter() - report_start)
    return results


def _executor_starter(executor):
    """A function that starts the executor after the checks, or None when ``executor`` is one already."""
    from .executors import is_executor

    if executor is None or is_executor(executor):
        return None
    if type(executor).__name__ == "Client" and hasattr(executor, "scheduler_info"):  # a distributed.Client
        from .distributed import start_executor

        return functools.partial(start_executor, client=executor)
    if callable(executor):
        return executor
    raise InputError(f"executor must be an executor (flashscenic.distributed.start_executor(...)), a function that "
                     f"starts one, or a distributed.Client; got {executor!r}")


class _Started:
    """The executor this run started: closed in the background once the stages are done (RSS
    and the report, which need no worker, go on meanwhile), and in any case before the run
    returns or fails."""

    def __init__(self, executor):
        self.executor, self._closing = executor, None

    def close_soon(self) -> None:
        if self._closing is None:
            self._closing = threading.Thread(target=self._close, name="flashscenic-dask-close", daemon=True)
            self._closing.start()

    def _close(self) -> None:
        try:
            self.executor.close()
        except Exception as error:  # the run's results are written; a cluster that closes badly is a warning
            logger.warning("closing the Dask cluster: %s", error)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        if self._closing is None:
            self.executor.close()
        else:
            self._closing.join()


def _open_results(path):
    from .store import open_results_store

    return open_results_store(path)


def _existing_runs(folder: _runfolder.RunFolder, *, resume: bool, overwrite: bool) -> list[Path]:
    """The runs ``resume`` may continue (the interrupted one first); none for a new run.

    Without ``resume`` or ``overwrite`` a folder that holds a run is refused.
    """
    runs = [p for p, there in [(folder.partial, folder.interrupted), (folder.path, folder.finished)] if there]
    if resume:
        if not runs:
            logger.info("nothing to resume in %s: starting the run", folder.path)
        return runs
    if runs and not overwrite:
        what = "a finished run" if folder.finished else "an interrupted run"
        raise RunExistsError(f"{folder.path} holds {what}; resume it (--resume: same settings, finished stages "
                             "kept) or replace it (--overwrite: the old run is kept until the new one succeeds), "
                             "or choose another output folder")
    return []


def _matching_run(folder, candidates: list[Path], params: Params, fingerprint: dict):
    """(folder, params, recorded parameters) of the first run made with these settings.

    A seed of None takes each run's recorded seed. When none matches, the refusal names
    what changed for each run (an interrupted overwrite and the finished run it was to replace).
    """
    refusals = []
    for work in candidates:
        recorded = _open_results(work / _runfolder.RESULTS).parameters
        tried = params if params.seed is not None else params.replace(seed=recorded.get("params", {}).get("seed"))
        old = dict(recorded.get("fingerprint", {}))
        if isinstance(old.get("params"), dict):  # a run made before a parameter existed had its default
            old["params"] = {**_result_params(Params()), **old["params"]}
        changed = _runfolder.changes(old, {**fingerprint, "params": _result_params(tried)})
        if not changed:
            return work, tried, recorded
        which = "the interrupted run in " + str(work) if work == folder.partial else "the finished run"
        refusals.append(f"{which} was made with other {', and other '.join(changed)}")
    raise ResumeMismatchError(f"cannot resume {folder.path}: {'; '.join(refusals)}; run with that run's settings, "
                              "or with overwrite (--overwrite) to replace it")


def _result_params(params: Params) -> dict:
    """The parameters that can change the numbers, less the resource paths (fingerprinted by content)."""
    return {k: v for k, v in params.as_dict(results_only=True).items() if k not in Params.names(group="resources")}


def _resource_prints(resources: Resources) -> dict:
    return {str(p): _runfolder.path_fingerprint(p) for p in
            (resources.tf_list, *resources.ranking_databases, resources.motif_annotation)}


def _adjacencies(adjacencies):
    """(table or None, fingerprint) of the ``adjacencies`` argument: a file or a DataFrame."""
    if adjacencies is None:
        return None, None
    import pandas as pd

    if isinstance(adjacencies, pd.DataFrame):
        return adjacencies, _runfolder.content_fingerprint(adjacencies)
    from .export import read_adjacencies

    path = Path(adjacencies)
    if not path.is_file():
        raise MissingFileError(f"adjacency file {str(path)!r} does not exist")
    return read_adjacencies(path), _runfolder.path_fingerprint(path)


class _Input:
    """The run's expression input: its genes (read first, for the early checks), its
    fingerprint, and the expression store the stages read (ingested into the run folder
    unless the input is a store)."""

    def __init__(self, input, folder: _runfolder.RunFolder, *, layer, log1p, transpose, cell_type_column):
        from .store import ExpressionStore, is_expression_store, open_expression_store

        self.input, self.cell_type_column = input, cell_type_column
        self.flags = {"layer": layer, "log1p": bool(log1p), "transpose": bool(transpose),
                      "cell_type_column": cell_type_column}
        self.store = None
        if isinstance(input, ExpressionStore):
            self.store = input
        elif isinstance(input, (str, os.PathLike)):
            if not Path(input).exists():
                raise MissingFileError(f"input {str(input)!r} does not exist")
            if is_expression_store(input):
                self.store = open_expression_store(input)
        elif not is_anndata(input):
            raise InputError(f"input must be an expression file, an AnnData or an expression store, got "
                             f"{type(input).__name__}; for an in-memory matrix use run_flashscenic")
        else:
            if layer is not None and layer not in input.layers:
                raise InputError(f"the AnnData has no layer {layer!r}; its layers are {list(input.layers)}")
            if cell_type_column is not None and cell_type_column not in input.obs.columns:
                raise InputError(f"the AnnData has no obs column {cell_type_column!r}; it has "
                                 f"{list(input.obs.columns)}")
        if self.store is not None:
            if folder.path.resolve() in self.store.path.resolve().parents:
                raise InputError(f"the input store {self.store.path} lies in the run folder {folder.path}, which a "
                                 "run replaces; give the original input file, or another output folder")
            given = [f"{k}={v!r}" for k, v in self.flags.items() if k != "cell_type_column" and v]
            if given:
                raise InputError(f"{', '.join(given)} do not apply to an expression store (they were fixed when it "
                                 "was ingested); give the original file instead")
            labelled = [c for c in self.store.obs().columns if c != "cell"]
            if cell_type_column is not None and cell_type_column not in labelled:
                raise InputError(f"no cell-label column {cell_type_column!r} in {self.store.path}; it has "
                                 f"{labelled} (ingest with obs_columns=[...] / --obs-columns to keep one)")
        self.description = str(Path(input).resolve()) if isinstance(input, (str, os.PathLike)) else \
            str(self.store.path.resolve()) if self.store is not None else type(input).__name__

    def gene_names(self) -> list[str]:
        if self.store is not None:
            return [str(g) for g in self.store.gene_names]
        if is_anndata(self.input):
            return [str(g) for g in self.input.var_names]
        from .io import read_gene_names

        return read_gene_names(self.input, layer=self.flags["layer"], transpose=self.flags["transpose"])

    def fingerprint(self) -> dict:
        if self.store is not None:
            meta = self.store.metadata
            return {"store": str(self.store.path.resolve()), "created": meta.get("created"),
                    "shape": list(self.store.shape), "nnz": meta.get("nnz")}
        if is_anndata(self.input):
            adata = self.input
            if adata.isbacked:  # its matrix is its file's
                return {**_runfolder.path_fingerprint(adata.filename),
                        **_runfolder.content_fingerprint(list(adata.obs_names), list(adata.var_names))}
            matrix = adata.layers[self.flags["layer"]] if self.flags["layer"] else adata.X
            return _runfolder.content_fingerprint(matrix, list(adata.obs_names), list(adata.var_names))
        return _runfolder.path_fingerprint(self.input)

    def expression_store(self, work: Path, verbose: bool):
        """The store the stages read: the input store, the one this run ingested before, or a new ingest."""
        from .store import ingest_expression, is_expression_store, open_expression_store

        if self.store is not None:
            return self.store
        path = work / _runfolder.EXPRESSION
        if is_expression_store(path):  # resuming: the fingerprint says it is this input's
            return open_expression_store(path)
        columns = [self.cell_type_column] if self.cell_type_column else []
        return ingest_expression(self.input, path, layer=self.flags["layer"], log1p=self.flags["log1p"],
                                 transpose=self.flags["transpose"], obs_columns=columns, overwrite=True,
                                 verbose=verbose)


def _results_store(work: Path, store, previous: dict | None, chunk_cells, recorded: dict):
    from .store import create_results_store

    path = work / _runfolder.RESULTS
    if previous is not None:
        results = _open_results(path)
        return results
    results = create_results_store(path, expression=store, chunk_rows=chunk_cells, parameters=recorded)
    labels = store.obs().drop(columns=["cell"], errors="ignore")
    if len(labels.columns):
        results.write_cell_labels(labels)
    return results


def _stages(results, store, tf_names, params: Params, resources: Resources, adjacencies, executor,
            n_prune_shards, chunk_cells=None) -> None:
    """GRN, modules, pruning, AUCell: each skipped when complete, marked complete after its data is written.

    A lone GRN task runs in this process when the workers are CPU processes of this
    machine (``local_cpus``): in a worker it would use every core just the same, with the
    other workers idle, and here the cluster finishes starting while it trains (the
    per-stage timings in ``BENCHMARKS.md``, "Whole run", show what that saves).
    """
    from .grn import weights_to_adjacencies

    gene_names = [str(g) for g in store.gene_names]
    expression = str(Path(store.path).resolve())
    run_id = results.parameters["run_id"]
    timer = _Timer(params.verbose)
    if results.is_complete("pruning"):
        pass  # the weights are needed by the modules only
    elif results.is_complete("grn"):
        weights, tf_rows, _ = results.read_tf_gene_weights()
    else:
        info = {}
        with timer("grn"), executor.stage("grn"):
            if adjacencies is not None:
                weights, tf_rows, _ = infer_weights(None, gene_names, tf_names, params, adjacencies=adjacencies)
            else:
                genes = _budget_genes(results, store, tf_names, params, executor)
                if params.grn_runs == 1:
                    runner = InProcessExecutor() if getattr(executor, "local_cpus", False) else executor
                    [(weights, tf_rows)] = runner.map(grn_task, [(expression, tf_names, params, run_id, False, genes)],
                                                      description="GRN", gpu=True, verbose=False)
                else:
                    weights, tf_rows, info = _grn_runs(results, expression, gene_names, tf_names, params, run_id,
                                                       executor, genes)
                if genes is not None:
                    info["n_grn_genes"] = len(genes)
            results.write_tf_gene_weights(weights, tf_rows, gene_names)
            results.write_adjacencies(weights_to_adjacencies(weights, tf_rows, gene_names))
        _mark(results, timer, "grn", n_tfs=len(tf_rows), **info)
        release_freed_memory()

    if results.is_complete("pruning"):
        regulons = results.read_regulons()
    else:
        frequency = params.grn_runs > 1 and params.grn_aggregation == "frequency"
        if not frequency:  # the frequency consensus builds modules per run, not of the mean network
            with timer("modules"):  # small and deterministic: recomputed on resume, not stored
                modules = make_modules(weights, tf_rows, gene_names, params,
                                       device=coordinator_device(executor, params))
            _mark(results, timer, "modules", n_modules=len(modules))
        with timer("pruning"), executor.stage("pruning"):
            shards = n_prune_shards or executor.slots  # here: a starting cluster's slots wait for it
            runs = _run_regulons(results, gene_names, params, resources, executor, shards) if params.grn_runs > 1 \
                else None
            if frequency:
                table, regulons = _frequency_regulons(runs, params, results)
            else:
                table, regulons = prune(modules, params, resources, executor, shards)
            if runs is not None:
                regulons = _with_recurrence(results, regulons, runs)
            results.write_motifs(table)
            results.write_regulons(regulons, gene_names, weighted=False)
        _mark(results, timer, "pruning", n_regulons=len(regulons), recurrence=runs is not None,
              aggregation=params.grn_aggregation if runs is not None else None)

    if not results.is_complete("auc"):
        with timer("auc"), executor.stage("aucell"):
            names, adjacency = regulon_matrix(regulons, gene_names)
            if results.has_auc(names):
                if chunk_cells is not None and chunk_cells != results.chunk_rows:
                    logger.info("resuming with the AUC chunks of the first run (%d cells), not %d",
                                results.chunk_rows, chunk_cells)
            elif chunk_cells is None and hasattr(executor, "plan_chunk_cells"):
                chunk_cells = executor.plan_chunk_cells(store.n_cells, store.n_genes, store.chunk_rows)
            results.init_auc(names, chunk_rows=chunk_cells)
            missing = results.missing_auc_chunks()
            n_chunks = len(results.auc_chunk_ranges())
            timer.log("AUCell: %d of %d chunks to score (%d cells each)", len(missing), n_chunks, results.chunk_rows)
            shared = executor.share(adjacency)
            executor.map(aucell_chunk_task, [(str(Path(results.path).resolve()), expression, i, shared,
                                              params.replace(verbose=False), run_id) for i in missing],
                         description="AUCell", gpu=True, verbose=params.verbose)
            del shared
            results.finish_auc()
        _mark(results, timer, "auc", n_regulons=len(names), n_chunks=n_chunks, chunks_scored=len(missing),
              chunk_cells=results.chunk_rows)


def _budget_genes(results, store, tf_names, params: Params, executor) -> list[str] | None:
    """The gene budget's genes (chosen once, recorded in the run's parameters; a resumed run
    keeps them), after logging the GRN's time estimate for the device it runs on."""
    genes = results.parameters.get("grn_genes") or grn_genes(store, params)
    if genes is not None:
        if not set(genes) & set(tf_names):
            raise InputError(f"none of the {len(set(tf_names))} TFs is among the {len(genes)} most variable genes: "
                             "raise the gene budget (grn_max_genes, --grn-max-genes)")
        results.update_parameters(grn_genes=genes)
    # CPU workers of this machine have no GPU: asking would wait for the cluster's start
    on_gpu = not getattr(executor, "local_cpus", False) and getattr(executor, "has_gpu", False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # GRN runs of a consensus share the cores (CPU) or take one GPU each
    rounds = -(-params.grn_runs // max(1, executor.slots)) if on_gpu else params.grn_runs
    announce_grn_time(len(genes or store.gene_names), min(params.grn_max_cells or store.n_cells, store.n_cells),
                      params, "cuda" if on_gpu else None, threads=None if on_gpu else cores, runs=rounds)
    return genes


def _grn_runs(results, expression: str, gene_names: list[str], tf_names, params: Params, run_id: str, executor,
              genes: list[str] | None):
    """``grn_runs`` GRN tasks (kept on resume), then their consensus: the mean network, with the
    edges whose CV over the runs reaches ``grn_cv_threshold`` dropped. Runs are read back and
    added in run order, one at a time: the same bits on any executor, the memory of one run."""
    from .consensus import WeightMoments, cv_filter, run_seeds

    seeds = run_seeds(params.seed, params.grn_runs)
    tf_set = set(tf_names)
    tf_rows = [g for g in genes or gene_names if g in tf_set]  # infer_grn's rows: the TFs in gene order
    results.init_grn_runs(seeds, tf_rows, gene_names)
    missing = results.missing_grn_runs()
    path = str(Path(results.path).resolve())
    executor.map(grn_run_task, [(path, expression, tf_names, params.replace(seed=seeds[i]), run_id, i, genes)
                                for i in missing], description="GRN runs", gpu=True, verbose=params.verbose)
    moments = WeightMoments()
    for index in range(len(seeds)):
        moments.add(results.read_grn_run(index))
    weights, n_filtered = cv_filter(moments.mean(), moments.cv(), params.grn_cv_threshold)
    return sparse_weights(weights, params), tf_rows, {"n_runs": len(seeds), "seeds": seeds, "runs_computed": len(missing),
                              "cv_threshold": params.grn_cv_threshold, "n_edges_cv_filtered": n_filtered}


def _run_regulons(results, gene_names, params: Params, resources, executor, n_shards: int) -> list[list[dict]]:
    """Each GRN run's own network through modules and pruning (its sparsity threshold applied)."""
    tf_rows = results.grn_run_tf_names
    return [regulons_of(sparse_weights(results.read_grn_run(i), params), tf_rows, gene_names, params, resources,
                        executor, n_shards) for i in range(len(results.grn_run_seeds))]


def _frequency_regulons(runs: list[list[dict]], params: Params, results):
    """The frequency consensus of the runs' regulons (``consensus.frequency_consensus``), its TF
    scores stored; no single motif table (each regulon comes from several runs' motifs), so
    the stored motif table is empty."""
    import pandas as pd

    from .consensus import frequency_consensus
    from .regulons import motif_frame

    regulons, scores = frequency_consensus(runs, params.grn_frequency_threshold, params.grn_min_genes_filter)
    if not regulons:
        raise InputError(f"no regulon kept {params.grn_min_genes_filter} or more targets found in at least "
                         f"{params.grn_frequency_threshold:g} of the {len(runs)} GRN runs; lower "
                         "--grn-frequency-threshold or --grn-min-genes-filter, or use --grn-aggregation mean_adjacency")
    results.write_table("tf_frequency_scores", pd.DataFrame({"tf": list(scores), "score": list(scores.values())}))
    return motif_frame(), regulons


def _with_recurrence(results, regulons: list[dict], runs: list[list[dict]]) -> list[dict]:
    """Store how often each regulon (and each of its targets) recurs over the runs, and give
    each consensus regulon its ``recurrence``."""
    import pandas as pd

    from .consensus import regulon_recurrence

    recurrence, targets = regulon_recurrence(runs)
    results.write_table("regulon_recurrence", pd.DataFrame({"regulon": list(recurrence),
                                                            "recurrence": list(recurrence.values())}))
    results.write_table("target_recurrence", pd.DataFrame(
        [(name, gene, fraction) for name, genes in targets.items() for gene, fraction in genes.items()],
        columns=["regulon", "gene", "recurrence"]))
    return [{**r, "recurrence": float(recurrence.get(r["name"], 0.0))} for r in regulons]


def _mark(results, timer: _Timer, stage: str, **info) -> None:
    results.record_timing(stage, timer.seconds[stage])
    results.mark_complete(stage, **info)


def _rss(results, cell_type_column: str | None) -> None:
    """RSS per cell type, computed once and stored with the label column it used."""
    from .rss import default_label_column, rss_of_store

    cells = results.read_cells()
    column = cell_type_column or default_label_column(cells)
    if column is None or results.is_complete("rss"):
        return
    start = time.perf_counter()
    labels = cells.set_index("cell")[column]
    rss = rss_of_store(results, labels)
    results.write_table("rss", rss.rename_axis("cell_type").reset_index())
    results.record_timing("rss", time.perf_counter() - start)
    results.mark_complete("rss", cell_type_column=column)
