"""The public API keeps its documented shape, and `import flashscenic` stays light."""

import inspect
import subprocess
import sys

import pytest

import flashscenic


def test_get_aucell_signature():
    params = inspect.signature(flashscenic.get_aucell).parameters
    documented = {"exp_array": inspect.Parameter.empty, "k": 50, "auc_threshold": 0.05,
                  "device": "cuda", "batch_size": 32, "seed": None}
    assert list(params)[:7] == ["exp_array", "adj_array", "k", "auc_threshold", "device", "batch_size", "seed"]
    for name, default in documented.items():
        assert params[name].default == default, name
    assert params["ties"].default == "pyscenic"


def test_public_names_resolve():
    import importlib

    for name in flashscenic.__all__:  # each name is its module's object (the lazy table points right)
        module = importlib.import_module(f"flashscenic.{flashscenic._API[name]}")
        assert getattr(flashscenic, name) is getattr(module, name), name


def test_import_is_light():
    heavy = "('torch', 'dask', 'zarr', 'regdiffusion', 'scanpy', 'anndata')"
    code = f"import sys, flashscenic; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_binarize_stays_the_module_function_after_binarization_is_imported():
    code = ("import flashscenic, flashscenic.binarization, flashscenic.modules; "
            "print(flashscenic.binarize is flashscenic.modules.binarize)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_run_flashscenic_signature_is_the_documented_one():
    """The reference's parameters, in its order, keyword-only after species; the one addition
    (issue 22's gene budget, grn_max_genes=None) is keyword-only too, so code written against
    the reference runs unchanged."""
    expected = dict(
        species="human", datasource="scenic", version="v10", cache_dir=None, tf_list_path=None, ranking_db_paths=None,
        motif_annotation_path=None, grn_n_steps=1000, grn_sparsity_threshold=1.5, grn_max_genes=None, module_k=50,
        module_percentile_thresholds=(75,), module_top_n_per_target=(5, 10, 50), module_min_targets=20,
        module_min_fraction=None, module_include_tf=True, pruning_rank_threshold=5000, pruning_auc_threshold=0.05,
        pruning_nes_threshold=3.0, pruning_min_genes=0, pruning_merge_strategy="union",
        annotation_motif_similarity_fdr=0.001, annotation_orthologous_identity=0.0, aucell_k=None,
        aucell_auc_threshold=0.05, aucell_batch_size=32, device="cuda", seed=None, verbose=True, adj_matrix=None,
    )
    params = inspect.signature(flashscenic.run_flashscenic).parameters
    assert list(params) == ["exp_matrix", "gene_names", *expected]
    assert params["species"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    for name, default in expected.items():
        assert params[name].default == default, name
        if name != "species":
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name


# Each documented function (flashscenic's API reference, upstream 0.2.0 and later) -> its documented
# parameters in order: (name, default), all positional-or-keyword; REQUIRED has no default.
REQUIRED = inspect.Parameter.empty
DEVICE = ("device", "cuda")
ADJ = ("adj", REQUIRED)
DOCUMENTED = {
    "get_aucell": [("exp_array", REQUIRED), ("adj_array", REQUIRED), ("k", 50), ("auc_threshold", 0.05), DEVICE,
                   ("batch_size", 32), ("seed", None)],
    "CisTargetPruner": [("rank_threshold", 5000), ("auc_threshold", 0.05), ("nes_threshold", 3.0), DEVICE,
                        ("min_genes_per_regulon", 0), ("merge_strategy", "union")],
    "CisTargetPruner.load_database": [("paths", REQUIRED), ("database_names", None)],
    "CisTargetPruner.load_annotations": [("annotation_file", REQUIRED), ("filter_for_annotation", True),
                                         ("motif_similarity_fdr", 0.001), ("orthologous_identity_threshold", 0.0)],
    "CisTargetPruner.load_from_tensor": [("rankings", REQUIRED), ("motif_names", None), ("gene_names", None)],
    "CisTargetPruner.genes_to_indices": [("genes", REQUIRED)],
    "CisTargetPruner.prune": [("module_gene_indices", REQUIRED), ("weights", None), ("tf_name", None)],
    "CisTargetPruner.prune_batch": [("modules", REQUIRED), ("weights_list", None)],
    "CisTargetPruner.get_enriched_motif_names": [("result", REQUIRED)],
    "CisTargetPruner.get_leading_edge_genes": [("result", REQUIRED), ("module_gene_indices", REQUIRED)],
    "CisTargetPruner.prune_modules": [("modules", REQUIRED), ("tf_names", REQUIRED), ("gene_names", REQUIRED),
                                      ("weights_list", None)],
    "CisTargetPruner.clear_gpu_memory": [],
    "MotifAnnotation.load_from_file": [("fname", REQUIRED), ("motif_similarity_fdr", 0.001),
                                       ("orthologous_identity_threshold", 0.0), ("column_names", None)],
    "MotifAnnotation.has_annotation": [("motif_id", REQUIRED), ("tf_name", None)],
    "MotifAnnotation.get_annotation": [("motif_id", REQUIRED), ("tf_name", None)],
    "filter_by_annotations": [("result", REQUIRED), ("motif_names", REQUIRED), ("motif_annotations", REQUIRED),
                              ("filter_for_annotation", True), ("tf_name", None)],
    "compute_recovery_aucs": [("rankings", REQUIRED), ("module_gene_indices", REQUIRED), ("rank_threshold", REQUIRED),
                              ("auc_threshold", REQUIRED), ("weights", None)],
    "compute_nes": [("aucs", REQUIRED)],
    "prune_single_module": [("rankings", REQUIRED), ("module_gene_indices", REQUIRED), ("rank_threshold", 5000),
                            ("auc_threshold", 0.05), ("nes_threshold", 3.0), ("weights", None)],
    "select_topk_targets": [ADJ, ("k", 50), ("include_tf", True), ("tf_indices", None), DEVICE],
    "select_threshold_targets": [ADJ, ("threshold", 0.0), ("percentile", None), ("include_tf", True),
                                 ("tf_indices", None), DEVICE],
    "select_top_n_per_target": [ADJ, ("n", 5), ("include_tf", True), ("tf_indices", None), DEVICE],
    "select_mixture_model_targets": [ADJ, ("n_components", 2), ("method", "intersection"), ("include_tf", True),
                                     ("tf_indices", None), DEVICE],
    "select_knee_targets": [ADJ, ("sensitivity", 1.0), ("per_tf", False), ("include_tf", True), ("tf_indices", None),
                            DEVICE],
    "filter_by_min_targets": [ADJ, ("min_targets", 20), ("min_fraction", None), DEVICE],
    "filter_by_mapped_fraction": [ADJ, ("reference_indices", None), ("min_fraction", 0.8), DEVICE],
    "get_target_indices": [ADJ, DEVICE],
    "binarize": [ADJ, DEVICE],
    "to_numpy": [("tensor", REQUIRED)],
    "download_data": [("species", "human"), ("version", "v10"), ("datasource", "scenic"), ("cache_dir", None),
                      ("force", False)],
    "list_available_resources": [("datasource", None), ("species", None), ("version", None)],
    "regulon_specificity_scores": [("auc_matrix", REQUIRED), ("cell_type_labels", REQUIRED), ("regulon_names", None)],
    "regulons_to_adjacency": [("regulons", REQUIRED), ("gene_names", REQUIRED)],
    # upstream flashscenic's newest release, beyond the reference (its embedding functions call the AUC X)
    "GPUCisTargetPruner": [("rank_threshold", 5000), ("auc_threshold", 0.05), ("nes_threshold", 3.0), DEVICE,
                           ("min_genes_per_regulon", 0), ("merge_strategy", "union")],
    "binarize_auc_matrix": [("auc_matrix", REQUIRED), ("method", "gmm"), ("random_state", 42)],
    "embedding.gpu_knn": [("auc", REQUIRED), ("n_neighbors", 15), DEVICE, ("batch_size", 1024)],
    "embedding.run_umap": [("auc", REQUIRED), ("n_neighbors", 15), ("n_components", 2), ("min_dist", 0.1),
                           ("metric", "euclidean"), DEVICE, ("knn_batch_size", 1024), ("random_state", 42)],
}
@pytest.mark.parametrize("qualname", DOCUMENTED)
def test_documented_signature(qualname):
    """Documented parameters come first, in order, with their kinds and defaults; anything of
    ours beyond them is keyword-only, so no documented positional call can change meaning."""
    obj = flashscenic
    for part in qualname.split("."):
        obj = getattr(obj, part)
    params = [p for p in inspect.signature(obj).parameters.values() if p.name != "self"]
    documented = DOCUMENTED[qualname]
    got = [(p.name, p.kind, type(p.default), p.default) for p in params[: len(documented)]]
    expected = [(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, type(default), default) for name, default in documented]
    assert got == expected
    extras = params[len(documented):]
    keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD)
    assert all(p.kind in keyword for p in extras), [p.name for p in extras]


def test_every_public_name_has_a_docstring():
    for name in flashscenic.__all__:
        obj = getattr(flashscenic, name)
        if inspect.isclass(obj) or inspect.isroutine(obj):
            doc = obj.__doc__ or ""  # a class's own, never inherited
            assert doc.strip() and not doc.startswith(f"{name}("), name  # not a dataclass's generated one
        else:  # a constant cannot carry a docstring: its module's docstring documents it
            assert f"``{name}``" in sys.modules[f"flashscenic.{flashscenic._API[name]}"].__doc__, name
