"""The public API keeps its documented shape, and `import flashscenic` stays light."""

import inspect
import subprocess
import sys

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
    for name in flashscenic.__all__:
        assert getattr(flashscenic, name) is not None, name


def test_import_is_light():
    code = "import sys, flashscenic; print(sorted(m for m in ('torch', 'dask', 'zarr', 'regdiffusion') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_binarize_stays_the_module_function_after_binarization_is_imported():
    code = ("import flashscenic, flashscenic.binarization, flashscenic.modules; "
            "print(flashscenic.binarize is flashscenic.modules.binarize)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_run_flashscenic_signature_is_the_documented_one():
    expected = dict(
        species="human", datasource="scenic", version="v10", cache_dir=None, tf_list_path=None, ranking_db_paths=None,
        motif_annotation_path=None, grn_n_steps=1000, grn_sparsity_threshold=1.5, module_k=50,
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
