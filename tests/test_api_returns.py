"""Every function of the documented API (../shared/API_REFERENCE.txt) returns what the
documentation says: its type, shape, dtype and keys, on tiny inputs (seconds in all).

test_package.py checks the signatures; this file checks what comes back, so that code
written against the documentation (or against upstream flashscenic) keeps working. The
upstream names beyond the reference (pruner and field aliases, the embedding module,
``binarize_auc_matrix``) are checked here too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import flashscenic as fs
from flashscenic.data import DownloadedResources, ResourceSet
from flashscenic.simulate import simulate_dataset
from test_data import HUMAN, clean_environment, server  # noqa: F401 (fixtures: a local file server)

N_CELLS, N_GENES = 150, 120


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A simulated dataset with 3 planted TFs, its resources on disk, and its planted edges."""
    data = simulate_dataset(n_cells=N_CELLS, n_genes=N_GENES, n_tfs=3, n_decoy_tfs=1, n_cell_types=3,
                            targets_per_tf=25, n_motifs=40, seed=0)
    paths = data.write_resources(tmp_path_factory.mktemp("resources"))
    genes = list(data.gene_names)
    edges = pd.DataFrame([(tf, genes[j], 2.0 + 2.0 * float(w)) for tf, weights in
                          zip(data.planted_tfs, data.regulon_weights) for j, w in enumerate(weights) if w > 0],
                         columns=["TF", "target", "importance"])
    return data, paths, edges


def module_of(data, i: int = 0) -> torch.Tensor:
    """The expression-gene indices of planted TF i's targets."""
    return torch.tensor([j for j, w in enumerate(data.regulon_weights[i]) if w > 0])


@pytest.fixture(scope="module")
def pruner(tiny):
    data, paths, _ = tiny
    pruner = fs.CisTargetPruner(device="cpu", verbose=False)
    assert pruner.load_database(str(paths["ranking_db"])) is None
    assert pruner.load_annotations(str(paths["motif_annotation"])) is None
    return pruner


def assert_tensor(value, dtype=None, shape=None):
    assert isinstance(value, torch.Tensor), type(value)
    if dtype is not None:
        assert value.dtype == dtype, value.dtype
    if shape is not None:
        assert tuple(value.shape) == shape, value.shape


# --- pipeline and resources ---------------------------------------------------------------------


def test_run_flashscenic_returns_the_documented_dict(tiny):
    data, paths, edges = tiny
    result = fs.run_flashscenic(data.expression, data.gene_names, tf_list_path=str(paths["tf_list"]),
                                ranking_db_paths=[str(paths["ranking_db"])],
                                motif_annotation_path=str(paths["motif_annotation"]), adj_matrix=edges, device="cpu",
                                seed=0, verbose=False)  # the planted network instead of training one
    assert {"auc_scores", "regulon_names", "regulons", "regulon_adj", "parameters"} <= set(result)
    n_regulons = len(result["regulon_names"])
    assert n_regulons > 0 and all(isinstance(name, str) for name in result["regulon_names"])
    assert isinstance(result["auc_scores"], np.ndarray) and result["auc_scores"].shape == (N_CELLS, n_regulons)
    assert isinstance(result["regulon_adj"], np.ndarray) and result["regulon_adj"].shape == (n_regulons, N_GENES)
    assert isinstance(result["regulons"], list) and all(isinstance(r, dict) and "genes" in r for r in result["regulons"])
    assert isinstance(result["parameters"], dict)


def test_download_data_returns_the_paths_under_ours_and_upstreams_names(server, tmp_path):  # noqa: F811
    got = fs.download_data("human", "v10", cache_dir=tmp_path, base_url=server.url, verbose=False)
    assert isinstance(got, DownloadedResources)
    assert got.ranking_dbs == got.ranking_databases and len(got.ranking_dbs) == 2  # upstream's name
    assert all(p.is_file() for p in (got.tf_list, got.motif_annotation, *got.ranking_dbs))
    assert got.cache_dir == tmp_path and got.directory == tmp_path / "scenic" / "human" / "v10"
    before = len(server.requests)
    again = fs.download_data("human", "v10", cache_dir=got.cache_dir, base_url=server.url, verbose=False)
    assert again == got and len(server.requests) == before  # upstream's cache_dir finds the same files
    with pytest.raises(AttributeError):
        got.ranking_dbs = ()  # read-only, as the dataclass's own fields


def test_list_available_resources_returns_resource_sets():
    sets = fs.list_available_resources(species="human")
    assert isinstance(sets, list) and sets and all(isinstance(s, ResourceSet) for s in sets)
    assert HUMAN in sets


# --- AUCell and cisTarget -----------------------------------------------------------------------


def test_get_aucell_returns_cells_x_regulons(tiny):
    data, _, _ = tiny
    adj = np.zeros((3, N_GENES))
    for i in range(3):
        adj[i, module_of(data, i).numpy()] = 1
    auc = fs.get_aucell(data.expression, adj, device="cpu", seed=0)
    assert isinstance(auc, np.ndarray) and auc.shape == (N_CELLS, 3)


def test_the_pruner_methods_return_what_they_document(tiny, pruner):
    data, _, _ = tiny
    genes = list(data.gene_names)
    indices = pruner.genes_to_indices([genes[j] for j in module_of(data).tolist()])
    assert_tensor(indices, torch.int64, (len(module_of(data)),))
    result = pruner.prune(indices, tf_name=data.planted_tfs[0])
    assert isinstance(result, dict) and all(isinstance(v, torch.Tensor) for v in result.values())
    names = pruner.get_enriched_motif_names(result)
    assert names and all(isinstance(n, str) for n in names)
    edges = pruner.get_leading_edge_genes(result, indices)
    assert len(edges) == len(names) and all(isinstance(g, str) for genes_ in edges for g in genes_)
    batch = pruner.prune_batch([indices, indices])
    assert isinstance(batch, list) and len(batch) == 2 and all(isinstance(r, dict) for r in batch)
    regulons = pruner.prune_modules([module_of(data)], [data.planted_tfs[0]], genes)
    assert isinstance(regulons, list) and regulons
    assert {"name", "tf", "motif", "n_genes", "genes", "context", "nes", "auc"} <= set(regulons[0])
    assert pruner.clear_gpu_memory() is None


def test_the_pruner_loads_from_a_tensor(tiny):
    data, _, _ = tiny
    pruner = fs.CisTargetPruner(device="cpu", verbose=False)
    ranks = torch.from_numpy(np.asarray(data.database_ranks))
    assert pruner.load_from_tensor(ranks, list(data.motif_names), list(data.database_gene_names)) is None
    assert_tensor(pruner.prune(pruner.genes_to_indices(list(data.database_gene_names[:30])))["nes"],
                  shape=(ranks.shape[0],))


def test_upstreams_pruner_names_are_the_pruner():
    assert fs.GPUCisTargetPruner is fs.CisTargetPruner and fs.MultiDatabaseCisTargetPruner is fs.CisTargetPruner
    assert {"GPUCisTargetPruner", "MultiDatabaseCisTargetPruner"} <= set(fs.__all__)


def test_compute_recovery_aucs_and_prune_single_module_return_their_documented_tensors():
    rng = np.random.default_rng(0)
    ranks = torch.from_numpy(np.argsort(rng.random((12, 400)), axis=1).astype(np.int32))
    module = torch.arange(0, 40, 2)
    rccs, aucs = fs.compute_recovery_aucs(ranks, module, rank_threshold=100, auc_threshold=0.1)
    assert_tensor(rccs, shape=(12, 100))
    assert_tensor(aucs, shape=(12,))
    ranks[:3, module] = torch.arange(20, dtype=torch.int32)  # three motifs rank the module first
    result = fs.prune_single_module(ranks, module, rank_threshold=100, auc_threshold=0.1, nes_threshold=1.0)
    n_enriched = int(result["enriched_mask"].sum())
    assert n_enriched >= 3
    assert_tensor(result["enriched_mask"], torch.bool, (12,))
    assert_tensor(result["nes"], shape=(12,))
    assert_tensor(result["aucs"], shape=(12,))
    assert_tensor(result["rccs"], shape=(n_enriched, 100))
    assert_tensor(result["leading_edge_masks"], torch.bool, (n_enriched, 20))
    assert_tensor(result["rank_at_max"], shape=(n_enriched,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_compute_nes_keeps_the_input_dtype(dtype):
    aucs = torch.tensor([0.1, 0.2, 0.25, 0.3, 0.9], dtype=dtype)
    nes = fs.compute_nes(aucs)
    assert_tensor(nes, dtype, (5,))
    expected = (aucs.double() - aucs.double().mean()) / aucs.double().std(unbiased=False)
    torch.testing.assert_close(nes, expected.to(dtype))
    assert fs.compute_nes(aucs.numpy()).dtype == dtype  # a numpy array keeps its dtype too


def test_motif_annotations_and_their_filter(tiny):
    data, paths, _ = tiny
    annotations = fs.MotifAnnotation.load_from_file(str(paths["motif_annotation"]))
    assert isinstance(annotations, fs.MotifAnnotation)
    tf = data.planted_tfs[0]
    motif = data.planted_motifs[tf][0]
    assert annotations.has_annotation(motif, tf) is True and annotations.has_annotation("no such motif") is False
    assert isinstance(annotations.get_annotation(motif, tf), dict) and annotations.get_annotation("none") is None
    rankings = torch.from_numpy(np.asarray(data.database_ranks))
    gene_of = {g: i for i, g in enumerate(data.database_gene_names)}
    module = torch.tensor([gene_of[data.gene_names[j]] for j in module_of(data).tolist()])
    result = fs.prune_single_module(rankings, module)
    filtered = fs.filter_by_annotations(result, list(data.motif_names), annotations, tf_name=tf)
    assert isinstance(filtered, dict) and all(isinstance(v, torch.Tensor) for v in filtered.values())
    assert {"enriched_mask", "nes", "aucs"} <= set(filtered)


# --- module utilities ---------------------------------------------------------------------------


ADJ = np.random.default_rng(0).random((4, 30)) * (np.random.default_rng(1).random((4, 30)) < 0.6)
TF_INDICES = np.array([0, 5, 9, 12])


@pytest.mark.parametrize("name, kwargs", [
    ("select_topk_targets", dict(k=5, tf_indices=TF_INDICES)),
    ("select_threshold_targets", dict(percentile=50, tf_indices=TF_INDICES)),
    ("select_top_n_per_target", dict(n=2, tf_indices=TF_INDICES)),
    ("binarize", {}),
])
def test_selections_return_a_tfs_x_genes_tensor(name, kwargs):
    assert_tensor(getattr(fs, name)(ADJ, device="cpu", **kwargs), shape=ADJ.shape)


@pytest.mark.parametrize("name, keys", [
    ("select_mixture_model_targets", {"threshold", "means", "stds", "weights", "converged", "method"}),
    ("select_knee_targets", {"threshold", "knee_index", "per_tf"}),
])
def test_data_driven_selections_return_the_tensor_and_their_info(name, keys):
    filtered, info = getattr(fs, name)(ADJ, tf_indices=TF_INDICES, device="cpu")
    assert_tensor(filtered, shape=ADJ.shape)
    assert isinstance(info, dict) and keys <= set(info)


@pytest.mark.parametrize("call", [
    pytest.param(lambda: fs.filter_by_min_targets(ADJ, min_targets=10, device="cpu"), id="min_targets"),
    pytest.param(lambda: fs.filter_by_mapped_fraction(ADJ, np.arange(25), device="cpu"), id="mapped_fraction"),
])
def test_filters_return_the_kept_rows_and_their_mask(call):
    filtered, kept = call()
    assert_tensor(kept, torch.bool, (ADJ.shape[0],))
    assert_tensor(filtered, shape=(int(kept.sum()), ADJ.shape[1]))


def test_get_target_indices_and_to_numpy():
    indices, positions = fs.get_target_indices(ADJ, device="cpu")
    assert_tensor(indices, shape=(int((ADJ > 0).sum()),))
    assert_tensor(positions, shape=(ADJ.shape[0] + 1,))  # TF i's targets: indices[positions[i]:positions[i + 1]]
    assert isinstance(fs.to_numpy(torch.ones(2)), np.ndarray)


# --- analysis and helpers -----------------------------------------------------------------------


def test_regulon_specificity_scores_returns_the_documented_dict():
    auc = np.random.default_rng(0).random((12, 3))
    labels = ["b", "a", "c"] * 4
    result = fs.regulon_specificity_scores(auc, labels, regulon_names=["R1", "R2", "R3"])
    assert isinstance(result, dict) and set(result) == {"rss", "cell_types", "regulon_names"}
    assert isinstance(result["rss"], np.ndarray) and result["rss"].shape == (3, 3)
    assert result["cell_types"] == ["a", "b", "c"] and result["regulon_names"] == ["R1", "R2", "R3"]
    table = fs.rss_table(auc, labels, regulon_names=["R1", "R2", "R3"])  # pySCENIC's form, its own name
    assert isinstance(table, pd.DataFrame)
    np.testing.assert_array_equal(table.to_numpy(), result["rss"])


def test_regulons_to_adjacency_returns_regulons_x_genes():
    regulons = [{"genes": ["g1", "g3"], "weights": [1.0, 0.5]}, {"genes": ["g2"], "weights": [2.0]}]  # as pruned
    adj = fs.regulons_to_adjacency(regulons, ["g1", "g2", "g3", "g4"])
    assert isinstance(adj, np.ndarray) and adj.shape == (2, 4)
    np.testing.assert_array_equal(adj, [[1, 0, 1, 0], [0, 1, 0, 0]])


@pytest.mark.parametrize("method", ["gmm", "zscore"])
def test_binarize_auc_matrix_returns_uint8_on_off(method):
    rng = np.random.default_rng(0)
    auc = rng.normal(0.05, 0.01, (60, 2)).clip(0)
    auc[:6, 0] += 0.5  # a tenth of the cells clearly on
    binary = fs.binarize_auc_matrix(auc, method=method)
    assert isinstance(binary, np.ndarray) and binary.dtype == np.uint8 and binary.shape == auc.shape
    np.testing.assert_array_equal(binary[:, 0], np.r_[np.ones(6), np.zeros(54)])


def test_the_embedding_returns_a_knn_graph_and_a_umap():
    auc = np.random.default_rng(0).random((20, 3))
    indices, distances = fs.embedding.gpu_knn(auc, 5, device="cpu")
    assert indices.shape == distances.shape == (20, 5)
    assert indices.dtype == np.int64 and distances.dtype == np.float32
    embedding = fs.embedding.run_umap(auc, device="cpu")  # umap-learn: the umap extra, in the test extra
    assert isinstance(embedding, np.ndarray) and embedding.shape == (20, 2) and embedding.dtype == np.float32


def test_every_documented_function_is_checked_here():
    """A function added to the documented API (test_package.DOCUMENTED) gets its return checked here too."""
    from test_package import DOCUMENTED

    source = Path(__file__).read_text(encoding="utf-8")
    names = [qualname.rsplit(".", 1)[-1] for qualname in [*DOCUMENTED, "run_flashscenic"]]
    assert [name for name in names if f".{name}(" not in source and f'"{name}"' not in source] == []
