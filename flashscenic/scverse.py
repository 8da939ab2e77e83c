"""SCENIC for scanpy users: ``scenic(adata)`` writes its results into the AnnData, as ``sc.tl`` tools do.

====================================  ==========================================================
``adata.obsm[key_added]``             cells x regulons AUC (float32): the very array
                                      ``run_flashscenic(...)['auc_scores']`` returns
``adata.varm[key_added]``             genes x regulons weights (scipy.sparse CSR, float64): each
                                      regulon's genes among ``var_names`` with their weights (a
                                      pipeline regulon's GRN weights, its TF 1.0 with
                                      ``module_include_tf``; given regulons' own weights, no TF row)
``adata.uns['flashscenic'][key]``     ``regulon_names`` (the columns of both), ``regulons`` (a
                                      table: tf, type, n_genes, score, NES, motifs, ...; for given
                                      regulons ``n_genes`` counts the targets absent from
                                      ``var_names`` too, ``n_genes_present`` and ``scored`` not),
                                      ``params`` (everything used, the seed included),
                                      ``versions``, ``layer``, ``method``
====================================  ==========================================================

Everything is stored as AnnData stores it in h5ad and zarr: arrays, strings, numbers, None
and data frames, never an object it cannot write. Regulon names are values, never keys
(a name may hold characters that h5ad keys cannot). ``regulon_activity(adata)`` turns the
AUC into an AnnData (cells x regulons, the cells' ``obs`` and embeddings), which scanpy's
plots take as they are; ``regulons_to_network(regulons_from_anndata(adata))`` gives
decoupler the regulons.
"""

from __future__ import annotations

import functools
import logging
import math
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ._utils import check_unique, is_anndata
from .errors import InputError
from .params import STORE_PIPELINE_ONLY, Params

__all__ = ["scenic", "regulon_activity", "regulons_from_anndata"]

logger = logging.getLogger(__name__)

UNS_KEY = "flashscenic"
_API_PARAMS = [n for n in Params.names() if n not in STORE_PIPELINE_ONLY]  # run_flashscenic's, in its order
_SCORING_GROUPS = ("aucell", "execution")  # the parameters that apply when regulons are given
# regulon fields stored in the table, and how: the genes and weights go to varm
_TABLE_FIELDS = {"tf": str, "type": str, "n_genes": int, "score": float, "nes": float, "auc": float, "motif": str,
                 "motifs": list, "database": str, "context": list, "rank_at_max": int, "annotation": str,
                 "motif_similarity_qvalue": float, "orthologous_identity": float, "recurrence": float}


def scenic(
    adata,
    *,
    layer: str | None = None,
    key_added: str = "X_aucell",
    copy: bool = False,
    regulons=None,
    n_runs: int = 1,
    cv_threshold: float | None = None,
    seeds: Sequence[int] | None = None,
    consensus: str = "mean",
    min_recurrence: float = 0.5,
    n_workers: int | None = None,
    client=None,
    run_dir: str | None = None,
    species: str = "human",
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
):
    """SCENIC on an AnnData: GRN, modules, cisTarget pruning and AUCell, results written into it.

    Reads ``adata.X`` (or ``adata.layers[layer]``): cells x genes, log-normalised, gene
    symbols as ``var_names``; a sparse matrix stays sparse. Writes ``obsm[key_added]`` (cells
    x regulons AUC, float32, bit for bit what ``run_flashscenic`` returns for the same
    parameters), ``varm[key_added]`` (genes x regulons weights) and
    ``uns['flashscenic'][key_added]`` (regulon names and table, parameters, versions); see
    ``flashscenic.scverse``. ``regulon_activity(adata)`` gives the AUC as an AnnData to plot.

    Parameters
    ----------
    adata
        An in-memory AnnData.
    layer
        Score this layer instead of ``X``.
    key_added
        Key of the results in ``obsm``, ``varm`` and ``uns['flashscenic']`` (another key
        keeps an earlier result).
    copy
        Return a copy with the results and leave ``adata`` as it is; otherwise write into
        ``adata`` and return None (as scanpy's tools).
    regulons
        Skip GRN and pruning and score these: a decoupler network (``source``, ``target``
        [, ``weight``]; e.g. CollecTRI or DoRothEA) or regulon dicts (``name``, ``genes``,
        ``weights``; each with genes). Scored unweighted and whole with pySCENIC's AUCell:
        targets absent from the genes are ignored, and a regulon with fewer than 80% of its
        targets among them scores 0. Only the ``aucell_*``, ``device``, ``seed`` and
        ``verbose`` parameters apply (an ``aucell_k`` that would cut a regulon is refused).
    n_runs, cv_threshold, seeds, consensus, min_recurrence
        ``n_runs > 1``: the consensus of that many GRN runs (``multi_run_flashscenic``, with
        our first names of its ``aggregation_method``: ``consensus='mean'`` is
        ``'mean_adjacency'``, ``'recurrence'`` is ``'frequency'`` with ``frequency_threshold=
        min_recurrence`` and its ``min_genes_filter`` of 5); the regulons table then holds each
        regulon's ``recurrence`` and ``uns['flashscenic'][key_added]['target_recurrence']`` each
        target's.
    n_workers, client
        Run on the engine's executors (``run_pipeline``): an embedded Dask cluster of
        ``n_workers`` workers (0: the engine in this process), or the ``distributed.Client``
        given (left open). On the CPU the same results, bit for bit (on GPU workers: see the
        README, "On a GPU"). There ``seeds`` is not available, and ``adj_matrix`` must be a
        table.
    run_dir
        With ``n_workers`` or ``client``: the run folder (kept, with its report; must not
        hold a run). Default: a temporary folder, removed afterwards; on a cluster of several
        machines give a folder every worker can read and write.
{parameters}
    adj_matrix
        Skip GRN inference: pySCENIC/GRNBoost2 adjacencies (TF, target, importance) or a
        genes x genes matrix, as ``run_flashscenic``.

    Returns
    -------
    None, or the AnnData with the results when ``copy=True``.
    """
    arguments = locals()
    given = {n: arguments[n] for n in _API_PARAMS}
    if not is_anndata(adata):
        raise InputError(f"adata must be an AnnData, got {type(adata).__name__}; for a matrix use run_flashscenic")
    if adata.isbacked:
        raise InputError("scenic needs an in-memory AnnData (adata.to_memory()); for a file larger than memory, "
                         "run_pipeline('cells.h5ad', out) reads it by blocks")
    if not isinstance(key_added, str) or not key_added or "/" in key_added:
        raise InputError(f"key_added must be a non-empty str without '/', got {key_added!r}")
    if not isinstance(copy, bool):
        raise InputError(f"copy must be True or False, got {copy!r}")
    if adata.is_view and not copy:
        raise InputError("adata is a view of another AnnData, which scenic cannot write into: pass copy=True "
                         "or adata.copy()")
    if UNS_KEY in adata.uns and not isinstance(adata.uns[UNS_KEY], dict):
        raise InputError(f"adata.uns[{UNS_KEY!r}] holds a {type(adata.uns[UNS_KEY]).__name__}, not flashscenic's "
                         "results; move it away first")
    matrix = _matrix(adata, layer)
    genes = [str(g) for g in adata.var_names]
    check_unique(genes, "adata.var_names (gene names)")
    if isinstance(n_runs, bool) or not isinstance(n_runs, (int, np.integer)) or n_runs < 1:
        raise InputError(f"n_runs must be an integer >= 1, got {n_runs!r}")
    multi = {"n_runs": int(n_runs), "cv_threshold": cv_threshold, "seeds": seeds, "consensus": consensus,
             "min_recurrence": min_recurrence}
    engine = n_workers is not None or client is not None

    if regulons is not None:
        result = _score_given(matrix, genes, regulons, given, multi, engine, adj_matrix, run_dir)
        method = "regulons"
    elif engine:
        result = _on_engine(adata, layer, given, multi, n_workers, client, run_dir, adj_matrix)
        method = "pipeline" if n_runs == 1 else "multi_run"
    elif run_dir is not None:
        raise InputError("run_dir is the engine's run folder: give n_workers (0: in this process) or client too")
    elif n_runs > 1:
        if adj_matrix is not None:
            raise InputError("adj_matrix skips GRN inference; n_runs > 1 repeats it: give one or the other")
        from .multi_run import multi_run_flashscenic

        result = multi_run_flashscenic(matrix, genes, **multi, **given)
        method = "multi_run"
    else:
        _check_single_run(multi)
        from .pipeline import run_flashscenic

        result = run_flashscenic(matrix, genes, **given, adj_matrix=adj_matrix)
        method = "pipeline"

    out = adata.copy() if copy else adata
    _write(out, key_added, result, genes, layer=layer, method=method)
    return out if copy else None


def _matrix(adata, layer):
    if layer is not None:
        if not isinstance(layer, str) or layer not in adata.layers:
            raise InputError(f"the AnnData has no layer {layer!r}; its layers are {list(adata.layers)}")
        return adata.layers[layer]
    if adata.X is None:
        raise InputError("the AnnData has no X; give the layer of log-normalised expression (layer=...)")
    return adata.X


def _check_single_run(multi: dict) -> None:
    extra = [f"{k}={multi[k]!r}" for k, default in (("cv_threshold", None), ("seeds", None), ("consensus", "mean"),
                                                  ("min_recurrence", 0.5)) if multi[k] != default]
    if extra:
        raise InputError(f"{', '.join(extra)} apply to a consensus of GRN runs: give n_runs > 1")


# ----------------------------------------------------------------------------- the three ways


def _score_given(matrix, genes, regulons, given: dict, multi: dict, engine: bool, adj_matrix, run_dir) -> dict:
    """AUCell of the regulons given (pySCENIC's rules for absent genes); no GRN, no pruning, no resources."""
    from .regulons import network_to_adjacency, network_to_regulons, regulons_to_network
    from .stages import aucell_block

    params = Params(**given)
    defaults = Params()
    ignored = [n for n in _API_PARAMS if Params.spec(n).metadata["group"] not in _SCORING_GROUPS
               and getattr(params, n) != getattr(defaults, n)]
    ignored += [f"{k}" for k, default in (("n_runs", 1), ("cv_threshold", None), ("seeds", None),
                                          ("consensus", "mean"), ("min_recurrence", 0.5)) if multi[k] != default]
    ignored += [n for n, v in (("adj_matrix", adj_matrix), ("n_workers/client", engine or None),
                               ("run_dir", run_dir)) if v is not None]
    if ignored:
        raise InputError(f"with regulons given, GRN and pruning are skipped, so {', '.join(ignored)} do not apply; "
                         "drop them (only aucell_*, device, seed and verbose do)")
    if not isinstance(regulons, (pd.DataFrame, list, tuple)):
        raise InputError(f"regulons must be a decoupler network (DataFrame: source, target[, weight]) or a list of "
                         f"regulon dicts, got {type(regulons).__name__}")
    if isinstance(regulons, pd.DataFrame):
        network = regulons
        found = network_to_regulons(network)
    else:
        network = regulons_to_network(list(regulons))
        for i, regulon in enumerate(regulons):
            _check_given_fields(regulon, i)
        # keep the caller's fields (motifs, NES, ...) beside the genes, matched by name
        by_name = {r["name"]: r for r in network_to_regulons(network)}
        found = [{**by_name[r["name"]], **r} for r in regulons]
    params = params.with_seed()
    names, adjacency, scored = network_to_adjacency(network, genes)
    largest = int(np.count_nonzero(adjacency, axis=1).max())
    if params.aucell_k is not None and params.aucell_k < largest:
        raise InputError(f"aucell_k={params.aucell_k} would cut sources of up to {largest} targets among the genes; "
                         "a network is scored whole, as pySCENIC: drop aucell_k")
    start = time.perf_counter()
    auc = aucell_block(matrix, adjacency, params)
    auc[:, ~scored] = 0.0
    for regulon, row, ok in zip(found, adjacency, scored):
        regulon["n_genes_present"] = int(np.count_nonzero(row))
        regulon["scored"] = bool(ok)
    parameters = {n: v for n, v in params.as_dict().items() if Params.spec(n).metadata["group"] in _SCORING_GROUPS}
    parameters["timings"] = {"aucell": time.perf_counter() - start}
    return {"auc_scores": auc, "regulon_names": names, "regulons": found, "parameters": parameters}


def _check_given_fields(regulon: dict, i: int) -> None:
    """A given regulon's genes and table fields, checked before any work: storing them never fails or cuts."""
    name = regulon["name"]
    if not list(regulon["genes"]):
        raise InputError(f"regulons[{i}] ({name}) has no genes: nothing to score; drop it")
    for field, kind in _TABLE_FIELDS.items():
        value = regulon.get(field)
        if _missing(value):
            continue
        if kind is str:
            ok = isinstance(value, str)
        elif kind is list:
            ok = isinstance(value, (list, tuple))
        elif isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            ok = False
        else:  # an int field takes a whole float too (a table column with gaps reads back as floats)
            ok = kind is float or float(value).is_integer()
        if not ok:
            wanted = {str: "a str", list: "a list", int: "an integer", float: "a number"}[kind]
            raise InputError(f"regulons[{i}] ({name}): {field}={value!r} is not {wanted} (or None)")


def _on_engine(adata, layer, given: dict, multi: dict, n_workers, client, run_dir, adj_matrix) -> dict:
    """``run_pipeline`` into a run folder on the executor asked for; its results read back."""
    from .distributed import start_executor
    from .pipeline import run_pipeline

    if n_workers is not None and client is not None:
        raise InputError("give n_workers (an embedded cluster) or client (yours), not both")
    if multi["n_runs"] == 1:
        _check_single_run(multi)
    if multi["consensus"] not in ("mean", "recurrence"):
        raise InputError(f"consensus must be 'mean' or 'recurrence', got {multi['consensus']!r}")
    params = Params(**given, grn_runs=multi["n_runs"], grn_cv_threshold=multi["cv_threshold"],
                    grn_aggregation="frequency" if multi["consensus"] == "recurrence" else "mean_adjacency",
                    grn_frequency_threshold=multi["min_recurrence"])
    if multi["seeds"] is not None:
        raise InputError(f"seeds={multi['seeds']!r} is not available on the engine (its runs' seeds come from "
                         "seed); drop n_workers/client to use them")
    if adj_matrix is not None and not isinstance(adj_matrix, pd.DataFrame):
        raise InputError("on the engine adj_matrix must be an adjacency table (TF, target, importance), not a matrix")
    starter = (functools.partial(start_executor, client=client, verbose=params.verbose) if client is not None
               else functools.partial(start_executor, n_workers=n_workers, device=params.device,
                                 verbose=params.verbose))
    with tempfile.TemporaryDirectory(prefix="flashscenic-") as scratch:
        folder = Path(run_dir) if run_dir is not None else Path(scratch) / "run"
        results = run_pipeline(adata, folder, params=params, adjacencies=adj_matrix, layer=layer, executor=starter,
                               report=run_dir is not None)
        recorded = results.parameters
        out = {"auc_scores": results.read_auc(), "regulon_names": list(results.regulon_names),
               "regulons": results.read_regulons(),
               "parameters": {**recorded.get("params", {}), **recorded.get("resources", {}),
                              "timings": results.timings, "run_dir": str(run_dir) if run_dir is not None else None}}
        if params.grn_runs > 1:
            table = results.read_table("target_recurrence")
            out["target_recurrence"] = {}
            for name, gene, fraction in table[["regulon", "gene", "recurrence"]].itertuples(index=False):
                out["target_recurrence"].setdefault(str(name), {})[str(gene)] = float(fraction)
    return out


# ----------------------------------------------------------------------------- writing and reading back


def _write(adata, key: str, result: dict, genes: list[str], *, layer, method: str) -> None:
    """The results into ``adata``: AUC in obsm, weights in varm, the rest in uns (nothing is written on failure)."""
    import scipy.sparse as sp

    names = [str(n) for n in result["regulon_names"]]
    regulons = {r["name"]: r for r in result["regulons"]}
    column = {g: j for j, g in enumerate(genes)}
    rows, cols, values = [], [], []
    for i, name in enumerate(names):
        for gene, weight in zip(regulons[name]["genes"], regulons[name]["weights"]):
            if gene in column:
                rows.append(column[gene])
                cols.append(i)
                values.append(float(weight))
    weights = sp.csr_matrix((np.asarray(values, dtype=np.float64), (rows, cols)), shape=(len(genes), len(names)))
    entry = {
        "regulon_names": np.array(names, dtype=object),
        "regulons": _regulon_table([regulons[n] for n in names]),
        "params": _storable(result["parameters"]),
        "versions": _versions(),
        "layer": layer,
        "method": method,
    }
    if result.get("target_recurrence") is not None:
        entry["target_recurrence"] = pd.DataFrame(
            [(name, gene, float(f)) for name, targets in result["target_recurrence"].items()
             for gene, f in targets.items()], columns=["regulon", "gene", "recurrence"])
    auc = result["auc_scores"]
    if auc.dtype != np.float32 or auc.shape != (adata.n_obs, len(names)):
        raise AssertionError(f"AUC of shape {auc.shape} and dtype {auc.dtype} for {adata.n_obs} cells")
    adata.obsm[key] = auc
    adata.varm[key] = weights
    if UNS_KEY not in adata.uns:
        adata.uns[UNS_KEY] = {}
    adata.uns[UNS_KEY][key] = entry


def _regulon_table(regulons: list[dict]) -> pd.DataFrame:
    """One row per regulon (index: the names), the fields of ``_TABLE_FIELDS`` it has; lists as comma-joined text."""
    columns = {}
    extra = [k for k in ("n_genes_present", "scored") if any(k in r for r in regulons)]
    for field, kind in [*_TABLE_FIELDS.items(), *[(k, int if k == "n_genes_present" else bool) for k in extra]]:
        if not any(field in r for r in regulons):
            continue
        values = [None if _missing(r.get(field)) else r.get(field) for r in regulons]
        if field == "n_genes":
            values = [len(r["genes"]) if v is None else v for r, v in zip(regulons, values)]
        if kind is list:
            columns[field] = pd.Series([",".join(map(str, v or [])) for v in values], dtype=object)
        elif kind is str:
            columns[field] = pd.Series(["" if v is None else str(v) for v in values], dtype=object)
        elif kind is bool and all(v is not None for v in values):
            columns[field] = np.asarray(values, dtype=bool)
        elif kind is int and all(v is not None for v in values):
            columns[field] = np.asarray(values, dtype=np.int64)
        else:
            columns[field] = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    table = pd.DataFrame(columns)
    table.index = pd.Index([str(r["name"]) for r in regulons], dtype=object)
    return table


def _missing(value) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _storable(value):
    """``value`` as AnnData writes it to h5ad and zarr: dicts, lists, str, numbers, bool, None."""
    if isinstance(value, dict):
        return {str(k): _storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_storable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("flashscenic", "numpy", "scipy", "pandas", "anndata", "torch", "regdiffusion"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = ""
    return out


def _entry(adata, key: str) -> dict:
    if not is_anndata(adata):
        raise InputError(f"adata must be an AnnData, got {type(adata).__name__}")
    results = adata.uns.get(UNS_KEY, {})
    if key not in adata.obsm or not isinstance(results, dict) or key not in results:
        keys = sorted(results) if isinstance(results, dict) else []
        raise InputError(f"the AnnData holds no flashscenic results under {key!r} (run flashscenic.scenic(adata) "
                         f"first; its results are under {keys})")
    return results[key]


def regulon_activity(adata, key: str = "X_aucell"):
    """The AUC of ``scenic(adata, key_added=key)`` as an AnnData: cells x regulons, for scanpy's plots.

    ``X`` is ``obsm[key]``; ``var`` is the regulons table (index: regulon names); ``obs``,
    the embeddings in ``obsm`` and the ``*_colors`` of ``uns`` are the cells', so
    ``sc.pl.umap(activity, color='SPI1(+)')`` and ``sc.pl.matrixplot(activity,
    activity.var_names, groupby='cell_type')`` work as on genes (decoupler's ``get_obsm``).
    """
    import anndata

    entry = _entry(adata, key)
    names = [str(n) for n in entry["regulon_names"]]
    var = pd.DataFrame(entry["regulons"]).copy()
    var.index = pd.Index(names, dtype=object)
    obsm = {k: v for k, v in adata.obsm.items() if k != key}
    uns = {k: v for k, v in adata.uns.items() if str(k).endswith("_colors")}
    return anndata.AnnData(X=np.asarray(adata.obsm[key]), obs=adata.obs.copy(), var=var, obsm=obsm, uns=uns)


def regulons_from_anndata(adata, key: str = "X_aucell") -> list[dict]:
    """The regulons ``scenic`` stored under ``key``: dicts with ``name``, ``tf``, ``type``,
    ``genes`` (those among the var names, in var order) and ``weights``, and the table's
    other fields (``motifs`` and ``context`` as lists). ``regulons_to_network`` turns them
    into a decoupler network."""
    entry = _entry(adata, key)
    names = [str(n) for n in entry["regulon_names"]]
    table = pd.DataFrame(entry["regulons"])
    import scipy.sparse as sp

    # the stored entries are the genes (a weight of 0 from a network is a gene too)
    weights = sp.csc_matrix(adata.varm[key])
    weights.sort_indices()
    genes = np.asarray(adata.var_names, dtype=object)
    out = []
    for i, name in enumerate(names):
        span = slice(weights.indptr[i], weights.indptr[i + 1])
        regulon = {"name": name}
        for field, value in table.iloc[i].items():
            value = value.item() if isinstance(value, np.generic) else value
            if _TABLE_FIELDS.get(field) is list:
                value = str(value).split(",") if value else []
            regulon[field] = value
        regulon["genes"] = [str(g) for g in genes[weights.indices[span]]]
        regulon["weights"] = [float(w) for w in weights.data[span]]
        out.append(regulon)
    return out


scenic.__doc__ = scenic.__doc__.format(parameters=Params.numpydoc(_API_PARAMS))
