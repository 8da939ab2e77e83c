"""flashscenic: SCENIC with pySCENIC's numbers, on a GPU, a CPU or a Dask cluster.

``import flashscenic`` stays light: each public name is imported from its module on first
use, so torch is loaded only when a kernel is needed.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flashscenic")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# public name -> module that defines it
_API = {
    "get_aucell": "aucell",
    "CisTargetPruner": "cistarget",
    "GPUCisTargetPruner": "cistarget",
    "MultiDatabaseCisTargetPruner": "cistarget",
    "MotifAnnotation": "cistarget",
    "filter_by_annotations": "cistarget",
    "compute_recovery_aucs": "cistarget",
    "compute_nes": "cistarget",
    "prune_single_module": "cistarget",
    "MOTIF_COLUMNS": "regulons",
    "validate_motif_table": "regulons",
    "read_motifs_csv": "regulons",
    "write_motifs_csv": "regulons",
    "regulons_from_motifs": "regulons",
    "regulons_to_adjacency": "regulons",
    "network_to_regulons": "regulons",
    "regulons_to_network": "regulons",
    "network_to_adjacency": "regulons",
    "scenic": "scverse",
    "regulon_activity": "scverse",
    "regulons_from_anndata": "scverse",
    "Module": "modules",
    "build_modules": "modules",
    "positive_weight_percentile": "modules",
    "select_topk_targets": "modules",
    "select_threshold_targets": "modules",
    "select_top_n_per_target": "modules",
    "select_mixture_model_targets": "modules",
    "select_knee_targets": "modules",
    "filter_by_min_targets": "modules",
    "filter_by_mapped_fraction": "modules",
    "get_target_indices": "modules",
    "binarize": "modules",
    "to_numpy": "modules",
    "regulon_specificity_scores": "rss",
    "rss_table": "rss",
    "binarize_auc": "binarization",
    "binarize_auc_matrix": "binarization",
    "derive_threshold": "binarization",
    "dip_statistic": "binarization",
    "infer_grn": "grn",
    "GRNResult": "grn",
    "download_data": "data",
    "list_available_resources": "data",
    "register_resource_set": "data",
    "DownloadedResources": "data",
    "ResourceSet": "data",
    "check_inputs": "checks",
    "check_gene_overlap": "checks",
    "check_tf_overlap": "checks",
    "check_motif_annotation": "checks",
    "read_database_gene_names": "rankdb",
    "ingest_expression": "store",
    "open_expression_store": "store",
    "ExpressionStore": "store",
    "create_results_store": "store",
    "open_results_store": "store",
    "ResultsStore": "store",
    "export_results": "export",
    "import_pyscenic": "export",
    "read_adjacencies": "export",
    "write_adjacencies": "export",
    "read_regulons_gmt": "export",
    "write_regulons_gmt": "export",
    "read_regulons_json": "export",
    "write_regulons_json": "export",
    "read_auc_csv": "export",
    "write_auc_csv": "export",
    "results_to_anndata": "export",
    "write_scope_loom": "export",
    "read_pyscenic_loom": "export",
    "RankingDatabase": "rankdb",
    "read_ranking_database": "rankdb",
    "simulate_dataset": "simulate",
    "SimulatedDataset": "simulate",
    "evaluate_regulons": "simulate",
    "run_flashscenic": "pipeline",
    "run_pipeline": "pipeline",
    "multi_run_flashscenic": "multi_run",
    "Params": "params",
    "prepare_resources": "stages",
    "Resources": "stages",
    "InProcessExecutor": "executors",
    "start_executor": "distributed",
    "run_grn": "steps",
    "run_ctx": "steps",
    "run_aucell": "steps",
    "run_rss": "steps",
    "run_demo": "demo",
    "read_expression": "io",
    "read_gene_names": "io",
    "open_expression": "io",
    "FlashscenicError": "errors",
    "InputError": "errors",
    "MissingFileError": "errors",
    "MissingDependencyError": "errors",
    "DownloadError": "errors",
    "ChecksumError": "errors",
    "ResourceNotFoundError": "errors",
    "RunExistsError": "errors",
    "ResumeMismatchError": "errors",
    "RunLockedError": "errors",
    "IncompleteStageError": "errors",
    "write_report": "report",
}

__all__ = sorted(_API)

# modules whose functions are used through the module: flashscenic.embedding.umap(auc)
_MODULES = ("embedding",)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'flashscenic' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_MODULES))
