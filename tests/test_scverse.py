"""scenic(adata) for scanpy users, and decoupler networks in and out (flashscenic.scverse, flashscenic.regulons)."""

from __future__ import annotations

import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import flashscenic
import flashscenic.pipeline
from flashscenic.aucell import get_aucell, rank_cutoff
from flashscenic.errors import InputError
from flashscenic.params import STORE_PIPELINE_ONLY, Params
from flashscenic.regulons import (network_for_aucell, network_to_adjacency, network_to_regulons,
                                  regulons_to_network)
from flashscenic.scverse import regulon_activity, regulons_from_anndata, scenic
from flashscenic.simulate import simulate_dataset
from pyscenic_oracle import _aucell_api, numpy_global_random_state
from test_pipeline import planted_adjacencies, resource_args

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(n_cells=300, n_genes=200, n_tfs=4, n_decoy_tfs=2, n_cell_types=3, targets_per_tf=25,
             n_database_genes=5100, n_motifs=100)
STEPS = 5  # GRN steps: these tests check plumbing and bits, not recovery
RUN = dict(device="cpu", seed=0, verbose=False)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    data = simulate_dataset(**SMALL, seed=3)
    paths = data.write_resources(tmp_path_factory.mktemp("resources"))
    return data, resource_args(paths)


def make_adata(data, sparse: bool = False) -> anndata.AnnData:
    obs = pd.DataFrame({"cell_type": pd.Categorical(data.cell_types)},
                       index=[f"cell{i}" for i in range(len(data.cell_types))])
    matrix = sp.csr_matrix(data.expression) if sparse else data.expression.copy()
    return anndata.AnnData(matrix, obs=obs, var=pd.DataFrame(index=list(data.gene_names)))


# ----------------------------------------------------------------------------- the signature


def test_scenic_takes_every_run_flashscenic_parameter_with_its_default_and_doc():
    ours = inspect.signature(scenic).parameters
    theirs = inspect.signature(flashscenic.run_flashscenic).parameters
    shared = [n for n in theirs if n not in ("exp_matrix", "gene_names")]
    assert list(ours)[-len(shared):] == shared
    assert list(ours)[:4] == ["adata", "layer", "key_added", "copy"]
    for name in shared:
        assert ours[name].default == theirs[name].default, name
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for n, p in ours.items() if n != "adata")
    fields = [f for f in dataclasses.fields(Params) if f.name not in STORE_PIPELINE_ONLY]
    assert [f.name for f in fields] == shared[:-1]  # all of Params' run_flashscenic fields, then adj_matrix
    multi = inspect.signature(flashscenic.multi_run_flashscenic).parameters
    # scenic's consensus parameters are multi_run_flashscenic's (our first names of its aggregation), with
    # scenic's own defaults: one run, and the mean network when n_runs > 1
    for name, default in [("n_runs", 1), ("cv_threshold", None), ("seeds", None), ("consensus", "mean"),
                          ("min_recurrence", 0.5)]:
        assert name in multi and ours[name].default == default
    assert ours["n_runs"].default == 1  # one GRN run unless asked, as run_flashscenic
    doc = inspect.getdoc(scenic)
    for field in fields:  # the docstring's entry is the field's help, word for word
        entry = re.search(rf"^{field.name}\n((?:    .*\n?)+)", doc, re.M).group(1)
        assert " ".join(entry.split()) == " ".join(field.metadata["help"].split()), field.name


# ----------------------------------------------------------------------------- scenic == run_flashscenic


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_scenic_equals_run_flashscenic_bit_for_bit(sim, sparse, monkeypatch):
    data, resources = sim
    adata = make_adata(data, sparse)
    expected = flashscenic.run_flashscenic(adata.X, adata.var_names, **resources, grn_n_steps=STEPS, **RUN)

    seen = []
    real = flashscenic.pipeline.run_flashscenic

    def spy(exp_matrix, *args, **kwargs):
        seen.append(exp_matrix)
        return real(exp_matrix, *args, **kwargs)

    monkeypatch.setattr(flashscenic.pipeline, "run_flashscenic", spy)
    assert scenic(adata, **resources, grn_n_steps=STEPS, **RUN) is None
    assert seen[0] is adata.X  # the AnnData's own matrix: a sparse X is never densified whole
    auc = adata.obsm["X_aucell"]
    assert auc.dtype == np.float32 and auc.tobytes() == expected["auc_scores"].tobytes()
    entry = adata.uns["flashscenic"]["X_aucell"]
    assert list(entry["regulon_names"]) == expected["regulon_names"]
    assert list(entry["regulons"].index) == expected["regulon_names"]
    assert entry["params"]["grn_n_steps"] == STEPS and entry["params"]["seed"] == 0
    assert entry["versions"]["flashscenic"] == flashscenic.__version__ and entry["method"] == "pipeline"
    weights = adata.varm["X_aucell"]
    assert weights.shape == (adata.n_vars, len(expected["regulon_names"]))
    genes = list(adata.var_names)
    for i, regulon in enumerate(expected["regulons"]):
        column = weights[:, i].toarray().ravel()
        assert [genes[j] for j in np.flatnonzero(column)] == sorted(regulon["genes"], key=genes.index)
        assert np.array_equal(column[[genes.index(g) for g in regulon["genes"]]], regulon["weights"])
    assert ((weights.toarray() != 0).T.astype(np.float32) == expected["regulon_adj"]).all()  # what AUCell scored


def test_key_added_layer_and_copy_are_honoured(sim):
    data, resources = sim
    adata = make_adata(data)
    adata.layers["log_norm"] = adata.X.copy()
    adata.X = np.random.default_rng(0).random(adata.shape, dtype=np.float32)  # not what should be scored
    run = dict(**resources, adj_matrix=planted_adjacencies(data), **RUN)
    expected = flashscenic.run_flashscenic(data.expression, data.gene_names, **run)

    before = adata.copy()
    copied = scenic(adata, layer="log_norm", key_added="X_planted", copy=True, **run)
    assert "X_planted" not in adata.obsm and "flashscenic" not in adata.uns and not len(adata.varm)  # untouched
    assert np.array_equal(adata.X, before.X)
    assert copied is not adata and copied.obsm["X_planted"].tobytes() == expected["auc_scores"].tobytes()
    assert copied.uns["flashscenic"]["X_planted"]["layer"] == "log_norm" and "X_aucell" not in copied.obsm

    # a second key keeps the first result
    scenic(copied, key_added="X_from_x", **run)
    assert copied.obsm["X_planted"].tobytes() == expected["auc_scores"].tobytes()
    assert set(copied.uns["flashscenic"]) == {"X_planted", "X_from_x"}
    assert copied.uns["flashscenic"]["X_from_x"]["layer"] is None
    assert not np.array_equal(copied.obsm["X_from_x"], copied.obsm["X_planted"])  # X, not the layer


def test_results_round_trip_through_h5ad_and_zarr(sim, tmp_path):
    data, resources = sim
    adata = make_adata(data, sparse=True)
    scenic(adata, **resources, adj_matrix=planted_adjacencies(data), **RUN)
    entry = adata.uns["flashscenic"]["X_aucell"]
    regulons = regulons_from_anndata(adata)
    for path, write, read in [(tmp_path / "a.h5ad", adata.write_h5ad, anndata.read_h5ad),
                              (tmp_path / "a.zarr", adata.write_zarr, anndata.read_zarr)]:
        write(path)
        back = read(path)
        assert back.obsm["X_aucell"].dtype == np.float32
        assert back.obsm["X_aucell"].tobytes() == adata.obsm["X_aucell"].tobytes()
        assert (back.varm["X_aucell"] != adata.varm["X_aucell"]).nnz == 0
        stored = back.uns["flashscenic"]["X_aucell"]
        assert [str(n) for n in stored["regulon_names"]] == list(entry["regulon_names"])
        pd.testing.assert_frame_equal(pd.DataFrame(stored["regulons"]), entry["regulons"], check_index_type=False)
        assert stored["params"]["seed"] == entry["params"]["seed"] == 0
        assert [str(p) for p in stored["params"]["ranking_db_paths"]] == entry["params"]["ranking_db_paths"]
        assert stored["params"]["module_min_fraction"] is None and stored["versions"] == entry["versions"]
        assert regulons_from_anndata(back) == regulons
        activity = regulon_activity(back)
        assert activity.shape == (adata.n_obs, len(regulons))
        assert list(activity.var_names) == list(entry["regulon_names"])
        assert list(activity.obs["cell_type"]) == list(adata.obs["cell_type"])


@pytest.fixture(scope="module")
def multi_run(sim):
    """Two GRN runs' arguments and multi_run_flashscenic's result for them (shared: a few seconds)."""
    data, resources = sim
    run = dict(**resources, grn_n_steps=STEPS, n_runs=2, cv_threshold=5.0, **RUN)
    return run, flashscenic.multi_run_flashscenic(data.expression, data.gene_names, **run,
                                                  aggregation_method="mean_adjacency")  # scenic's consensus="mean"


def test_multi_run_equals_multi_run_flashscenic_bit_for_bit(sim, multi_run):
    run, expected = multi_run
    adata = make_adata(sim[0])
    scenic(adata, **run)
    entry = adata.uns["flashscenic"]["X_aucell"]
    assert adata.obsm["X_aucell"].tobytes() == expected["auc_scores"].tobytes() and entry["method"] == "multi_run"
    recurrence = [expected["regulon_recurrence"][n] for n in expected["regulon_names"]]
    assert list(entry["regulons"]["recurrence"]) == recurrence
    assert entry["params"]["seeds"] == expected["parameters"]["seeds"] and entry["params"]["n_runs"] == 2
    targets = entry["target_recurrence"]
    assert {(r, g): f for r, g, f in targets.itertuples(index=False)} == \
        {(r, g): f for r, genes in expected["target_recurrence"].items() for g, f in genes.items()}


def test_the_engine_in_process_equals_in_memory_bit_for_bit(sim, tmp_path):
    data, resources = sim
    adata = make_adata(data, sparse=True)
    run = dict(**resources, adj_matrix=planted_adjacencies(data), **RUN)
    here = scenic(adata, copy=True, **run)
    engine = scenic(adata, copy=True, n_workers=0, run_dir=str(tmp_path / "run"), **run)
    assert engine.obsm["X_aucell"].tobytes() == here.obsm["X_aucell"].tobytes()
    assert list(engine.uns["flashscenic"]["X_aucell"]["regulon_names"]) == \
        list(here.uns["flashscenic"]["X_aucell"]["regulon_names"])
    assert (engine.varm["X_aucell"] != here.varm["X_aucell"]).nnz == 0
    assert (tmp_path / "run" / "results.zarr").is_dir() and (tmp_path / "run" / "report.html").is_file()


def test_the_engine_reads_the_layer_asked_for(sim, tmp_path):
    data, resources = sim
    adata = make_adata(data, sparse=True)
    adata.layers["log_norm"] = adata.X.copy()
    adata.X = sp.csr_matrix(np.random.default_rng(0).random(adata.shape, dtype=np.float32))  # not what is scored
    run = dict(**resources, adj_matrix=planted_adjacencies(data), **RUN)
    expected = flashscenic.run_flashscenic(data.expression, data.gene_names, **run)
    scenic(adata, layer="log_norm", n_workers=0, **run)
    assert adata.obsm["X_aucell"].tobytes() == expected["auc_scores"].tobytes()
    entry = adata.uns["flashscenic"]["X_aucell"]
    assert entry["layer"] == "log_norm" and list(entry["regulon_names"]) == expected["regulon_names"]


def test_the_engine_with_several_runs_equals_multi_run_flashscenic_bit_for_bit(sim, multi_run):
    run, expected = multi_run
    adata = make_adata(sim[0])
    scenic(adata, n_workers=0, **run)
    entry = adata.uns["flashscenic"]["X_aucell"]
    assert entry["method"] == "multi_run" and list(entry["regulon_names"]) == expected["regulon_names"]
    assert adata.obsm["X_aucell"].tobytes() == expected["auc_scores"].tobytes()
    assert list(entry["regulons"]["recurrence"]) == [expected["regulon_recurrence"][n] for n in
                                                     expected["regulon_names"]]
    assert {(r, g): f for r, g, f in entry["target_recurrence"].itertuples(index=False)} == \
        {(r, g): f for r, genes in expected["target_recurrence"].items() for g, f in genes.items()}


def test_a_view_is_refused_unless_copied(sim):
    data, _ = sim
    adata = make_adata(data)
    view = adata[:100]
    network = pd.DataFrame({"source": "A", "target": list(adata.var_names[:10])})
    with pytest.raises(InputError, match="adata is a view .*: pass copy=True or adata.copy\\(\\)") as error:
        scenic(view, regulons=network, **RUN)
    assert "\n" not in str(error.value) and view.is_view and "X_aucell" not in adata.obsm
    copied = scenic(view, regulons=network, copy=True, **RUN)
    assert copied.obsm["X_aucell"].shape == (100, 1) and view.is_view and "X_aucell" not in view.obsm


@pytest.mark.parametrize("call, message", [
    (lambda a, r: scenic(a.X, **r), "adata must be an AnnData"),
    (lambda a, r: scenic(a, layer="counts", **r), "no layer 'counts'; its layers are"),
    (lambda a, r: scenic(a, key_added="a/b", **r), "key_added must be a non-empty str without '/'"),
    (lambda a, r: scenic(a, copy="yes", **r), "copy must be True or False"),
    (lambda a, r: scenic(a, seeds=[1, 2], **r), "seeds=\\[1, 2\\] apply to a consensus of GRN runs"),
    (lambda a, r: scenic(a, n_runs=0, **r), "n_runs must be an integer >= 1"),
    (lambda a, r: scenic(a, run_dir="x", **r), "run_dir is the engine's run folder"),
    (lambda a, r: scenic(a, n_workers=0, client=object(), **r), "give n_workers .* or client .*, not both"),
    (lambda a, r: scenic(a, n_workers=0, consensus="recurrence", **r), "consensus='recurrence' apply to a "
                                                                          "consensus of GRN runs"),
    (lambda a, r: scenic(a, n_workers=0, n_runs=2, seeds=[1, 2], **r), "not available on the engine"),
    (lambda a, r: scenic(a, aucell_auc_threshold=1.0, **r), "aucell_auc_threshold must be a number in"),
    (lambda a, r: scenic(a, regulons=pd.DataFrame({"source": ["A"], "target": ["B"]}), grn_n_steps=3,
                         **{k: v for k, v in r.items() if k.endswith("path") or k == "device"}),
     "with regulons given, GRN and pruning are skipped, so .*grn_n_steps"),
])
def test_a_user_mistake_is_one_line_before_any_work(sim, call, message):
    data, resources = sim
    adata = make_adata(data)
    with pytest.raises(InputError, match=message) as error:
        call(adata, dict(**resources, **RUN))
    assert "\n" not in str(error.value)
    assert "X_aucell" not in adata.obsm and "flashscenic" not in adata.uns


def test_duplicated_var_names_are_refused_with_the_fix(sim):
    data, resources = sim
    adata = make_adata(data)
    adata.var_names = [adata.var_names[0]] * 2 + list(adata.var_names[2:])
    with pytest.raises(InputError, match="var_names_make_unique"):
        scenic(adata, **resources, **RUN)


# ----------------------------------------------------------------------------- decoupler networks


def test_regulons_to_network_to_regulons_is_the_identity(sim):
    data, resources = sim
    result = flashscenic.run_flashscenic(data.expression, data.gene_names, **resources,
                                         adj_matrix=planted_adjacencies(data), **RUN)
    regulons = result["regulons"]
    network = regulons_to_network(regulons)
    assert list(network.columns) == ["source", "target", "weight"] and network["weight"].dtype == np.float64
    assert len(network) == sum(len(r["genes"]) for r in regulons)
    back = network_to_regulons(network)
    keys = ("name", "tf", "type", "genes", "weights", "n_genes")
    assert back == [{k: r[k] for k in keys} for r in regulons]
    assert network_to_regulons(regulons_to_network(back)) == back
    pd.testing.assert_frame_equal(regulons_to_network(network_to_regulons(network)), network)


def test_a_decoupler_network_reads_and_writes_back():
    network = pd.DataFrame({"source": ["SPI1", "SPI1", "GATA3(-)", "CEBPB(+)"],
                            "target": ["CSF1R", "LYZ", "CD3E", "LYZ"],
                            "weight": [1, -1, 1, 1], "confidence": ["A", "B", "A", "C"]})
    regulons = network_to_regulons(network)
    assert [(r["name"], r["tf"], r["type"], r["genes"], r["weights"]) for r in regulons] == [
        ("SPI1", "SPI1", "activating", ["CSF1R", "LYZ"], [1.0, -1.0]),
        ("GATA3(-)", "GATA3", "repressing", ["CD3E"], [1.0]),
        ("CEBPB(+)", "CEBPB", "activating", ["LYZ"], [1.0])]
    pd.testing.assert_frame_equal(regulons_to_network(regulons), network[["source", "target", "weight"]].astype(
        {"weight": np.float64}))
    unweighted = network_to_regulons(network.drop(columns=["weight", "confidence"]))
    assert [r["weights"] for r in unweighted] == [[1.0, 1.0], [1.0], [1.0]]


@pytest.mark.parametrize("network, message", [
    (pd.DataFrame({"source": ["A"], "tgt": ["B"]}), "lacks column\\(s\\) \\['target'\\]; a decoupler network has"),
    (pd.DataFrame({"source": ["A", "A"], "target": ["B", "B"]}), "network row 1 repeats the edge \\('A', 'B'\\)"),
    (pd.DataFrame({"source": ["A"], "target": ["B"], "weight": ["high"]}), "column weight must be numeric"),
    (pd.DataFrame({"source": ["A"], "target": ["B"], "weight": [np.inf]}), "row 0, column weight: inf is not a"),
    (pd.DataFrame({"source": ["A", None], "target": ["B", "C"]}), "row 1, column source: expected a non-empty str"),
    (pd.DataFrame({"source": pd.Series([], dtype=object), "target": pd.Series([], dtype=object)}), "has no rows"),
    ([("A", "B")], "must be a pandas DataFrame"),
])
def test_a_bad_network_is_one_line(network, message):
    with pytest.raises(InputError, match=message) as error:
        network_to_regulons(network)
    assert "\n" not in str(error.value)


def test_bad_regulons_are_one_line():
    with pytest.raises(InputError, match="the name 'A' is used twice"):
        regulons_to_network([{"name": "A", "genes": ["x"], "weights": [1]}] * 2)
    with pytest.raises(InputError, match="has 2 genes but 1 weights"):
        regulons_to_network([{"name": "A", "genes": ["x", "y"], "weights": [1]}])
    with pytest.raises(InputError, match="lists a gene twice"):
        regulons_to_network([{"name": "A", "genes": ["x", "x"], "weights": [1, 2]}])


def _net_and_expression(seed=0):
    """A network over g00000.. with every rule of pySCENIC's for absent targets exercised."""
    rng = np.random.default_rng(seed)
    expression = np.log1p(rng.negative_binomial(2, 0.3, size=(120, 400))).astype(np.float32)
    genes = [f"g{j:05d}" for j in range(400)]
    edges = []
    for s in range(12):
        targets = [genes[j] for j in rng.choice(400, size=int(rng.integers(8, 60)), replace=False)]
        edges += [(f"TF{s}", t, float(rng.choice([-1.0, 1.0]))) for t in targets]
    edges += [("ABSENT_SOME", t, 1.0) for t in genes[:9] + ["nowhere"]]  # 9 of 10 present: scored
    edges += [("FOUR_OF_FIVE", t, 1.0) for t in genes[10:14] + ["nowhere"]]  # 4/5 = 80%: scored
    edges += [("SEVEN_OF_TEN", t, 1.0) for t in genes[20:27] + ["x1", "x2", "x3"]]  # 70%: 0 in every cell
    edges += [("NONE_HERE", t, -1.0) for t in ["x1", "x2"]]  # no target among the genes: 0
    return expression, genes, pd.DataFrame(edges, columns=["source", "target", "weight"])


def _pyscenic_network_aucell(expression, genes, network, seed, auc_threshold=0.05):
    """pySCENIC's aucell on the network's sources, unweighted, absent targets included in the signatures."""
    aucell, GeneSignature = _aucell_api()
    signatures = [GeneSignature(name=name, gene2weight={t: 1.0 for t in group["target"]})
                  for name, group in network.groupby("source", sort=False)]
    frame = pd.DataFrame(expression, columns=genes)
    with numpy_global_random_state():
        result = aucell(frame, signatures, auc_threshold=auc_threshold, seed=seed, num_workers=1)
    return result[[s.name for s in signatures]].to_numpy()


def test_a_network_scored_with_get_aucell_equals_pyscenic(caplog):
    expression, genes, network = _net_and_expression()
    theirs = _pyscenic_network_aucell(expression, genes, network, seed=7)
    values, adjacency, scored = network_for_aucell(pd.DataFrame(expression, columns=genes), network, None)
    names = network_to_adjacency(network, genes)[0]
    assert names == list(dict.fromkeys(network["source"]))
    assert dict(zip(names, scored)) == {**{n: True for n in names}, "SEVEN_OF_TEN": False, "NONE_HERE": False}
    ours = get_aucell(values, adjacency, k=None, seed=7, device="cpu", verbose=False)
    ours[:, ~scored] = 0.0
    assert np.abs(ours - theirs).max() < 1e-6
    assert (theirs[:, ~scored] == 0).all() and (theirs[:, scored] > 0).any(axis=0).all()
    assert "SEVEN_OF_TEN" in caplog.text  # the sources scored 0 are named


def test_get_aucell_takes_a_network_and_equals_pyscenic():
    expression, genes, network = _net_and_expression(seed=1)
    theirs = _pyscenic_network_aucell(expression, genes, network, seed=3)
    by_names = get_aucell(expression, network, k=None, seed=3, device="cpu", verbose=False, gene_names=genes)
    by_frame = get_aucell(pd.DataFrame(expression, columns=genes), network, k=None, seed=3, device="cpu",
                          verbose=False)
    assert np.abs(by_names - theirs).max() < 1e-6 and by_frame.tobytes() == by_names.tobytes()
    with pytest.raises(InputError, match="needs the expression's gene names"):
        get_aucell(expression, network, k=None, device="cpu")


def test_scenic_with_a_network_scores_it_as_pyscenic_without_grn_or_resources(monkeypatch):
    import flashscenic.stages

    def no_resources(*args, **kwargs):
        raise AssertionError("regulons given: no resource may be looked up or downloaded")

    monkeypatch.setattr(flashscenic.stages, "prepare_resources", no_resources)
    expression, genes, network = _net_and_expression(seed=2)
    adata = anndata.AnnData(sp.csr_matrix(expression), var=pd.DataFrame(index=genes))
    scenic(adata, regulons=network, key_added="X_net", seed=11, device="cpu", verbose=False)
    theirs = _pyscenic_network_aucell(expression, genes, network, seed=11)
    assert np.abs(adata.obsm["X_net"] - theirs).max() < 1e-6
    entry = adata.uns["flashscenic"]["X_net"]
    assert entry["method"] == "regulons" and entry["params"]["seed"] == 11 and "grn_n_steps" not in entry["params"]
    table = entry["regulons"]
    assert table.loc["SEVEN_OF_TEN", "scored"] == False and table.loc["SEVEN_OF_TEN", "n_genes"] == 10  # noqa: E712
    assert table.loc["SEVEN_OF_TEN", "n_genes_present"] == 7
    # the network comes back from the AnnData, less the targets that are not among the genes
    back = regulons_to_network(regulons_from_anndata(adata, "X_net"))
    present = network[network["target"].isin(genes)]
    assert set(map(tuple, back[["source", "target", "weight"]].to_numpy().tolist())) == \
        set(map(tuple, present.to_numpy().tolist()))
    # regulon dicts score the same as their network, their own fields kept
    regulons = [{**r, "motif": "m"} for r in network_to_regulons(network)]
    again = scenic(adata, regulons=regulons, copy=True, seed=11, device="cpu", verbose=False)
    assert again.obsm["X_aucell"].tobytes() == adata.obsm["X_net"].tobytes()
    assert set(again.uns["flashscenic"]["X_aucell"]["regulons"]["motif"]) == {"m"}


def test_given_regulons_are_matched_by_name_and_checked_before_any_work(monkeypatch):
    expression, genes, network = _net_and_expression(seed=2)
    adata = anndata.AnnData(expression, var=pd.DataFrame(index=genes))
    regulons = [{**r, "nes": 3.5 + i, "rank_at_max": 100 + i} for i, r in enumerate(network_to_regulons(network))]
    scored = scenic(adata, regulons=regulons[::-1], copy=True, seed=0, device="cpu", verbose=False)
    table = scored.uns["flashscenic"]["X_aucell"]["regulons"]
    assert list(table.index) == [r["name"] for r in regulons[::-1]]
    for regulon in regulons:  # each row holds its own regulon's fields and counts
        row = table.loc[regulon["name"]]
        assert (row["nes"], row["rank_at_max"], row["n_genes"]) == (regulon["nes"], regulon["rank_at_max"],
                                                                    len(regulon["genes"]))
        assert row["n_genes_present"] == sum(g in set(genes) for g in regulon["genes"])

    import flashscenic.stages

    def no_aucell(*args, **kwargs):
        raise AssertionError("a mistake must be refused before AUCell")

    monkeypatch.setattr(flashscenic.stages, "aucell_block", no_aucell)
    first = regulons[0]["name"]
    for given, message in [
        ([{"name": "EMPTY", "genes": [], "weights": []}, regulons[0]], "regulons\\[0\\] \\(EMPTY\\) has no genes"),
        ([regulons[0], {**regulons[1], "nes": "high"}], "regulons\\[1\\] .*nes='high' is not a number"),
        ([{**regulons[0], "rank_at_max": 3.5}],
         f"regulons\\[0\\] \\({re.escape(first)}\\): rank_at_max=3.5 is not an integer"),
        ([{**regulons[0], "motifs": "m1,m2"}], "motifs='m1,m2' is not a list"),
    ]:
        with pytest.raises(InputError, match=message) as error:
            scenic(adata, regulons=given, seed=0, device="cpu", verbose=False)
        assert "\n" not in str(error.value) and "X_aucell" not in adata.obsm
    largest = int(network[network["target"].isin(genes)].groupby("source").size().max())
    with pytest.raises(InputError, match=f"aucell_k={largest - 1} would cut sources of up to {largest} targets"):
        scenic(adata, regulons=network, aucell_k=largest - 1, seed=0, device="cpu", verbose=False)


def _decoupler_aucell(expression: np.ndarray, sets: list[np.ndarray]) -> np.ndarray:
    """decoupler 2.x's ``dc.mt.aucell`` (``extract``'s ``_break_ties``, ``_func_aucell``, ``_auc``),
    transcribed: the columns shuffled by ``default_rng(0)``, ordinal ranks (ties by that order),
    n_up = ceil(0.05 * n_genes), each set's AUC divided by its best possible AUC. Checked against
    decoupler 2.2.0 itself on this test's data and on tied log counts (max |difference| 0)."""
    n_genes = expression.shape[1]
    n_up = int(np.clip(np.ceil(0.05 * n_genes), 2, n_genes))
    shuffle = np.random.default_rng(0).choice(np.arange(n_genes), n_genes, replace=False)
    out = np.zeros((expression.shape[0], len(sets)))
    for i, row in enumerate(expression):
        ranks = np.empty(n_genes, dtype=np.int64)
        ranks[shuffle[np.argsort(-row[shuffle], kind="stable")]] = np.arange(1, n_genes + 1)
        for j, members in enumerate(sets):
            x_th = np.arange(1, members.size + 1)
            x_th = x_th[x_th < n_up]
            max_auc = np.sum(np.diff(np.append(x_th, n_up)) * x_th)
            x = np.sort(ranks[members][ranks[members] <= n_up])
            out[i, j] = np.sum(np.diff(np.append(x, n_up)) * (np.arange(x.size) + 1)) / max_auc
    return out


def test_the_documented_relation_to_decouplers_aucell():
    """README: with no ties in the top ranks and ceil(0.05 n) == round(0.05 n), pySCENIC's AUC is
    decoupler's times max_auc / (K * m), m the set's genes, K = round(0.05 n)."""
    rng = np.random.default_rng(4)
    expression = rng.standard_normal((50, 400)).astype(np.float32)  # continuous: no ties
    sets = [np.sort(rng.choice(400, size=m, replace=False)) for m in (5, 19, 20, 21, 60)]
    weights = np.zeros((len(sets), 400), dtype=np.float32)
    for j, members in enumerate(sets):
        weights[j, members] = 1.0
    ours = get_aucell(expression, weights, k=None, seed=0, device="cpu", verbose=False)
    theirs = _decoupler_aucell(expression, sets)
    n_up = rank_cutoff(0.05, 400) + 1
    assert n_up == int(np.ceil(0.05 * 400))
    for j, members in enumerate(sets):
        steps = np.arange(1, min(members.size, n_up - 1) + 1)
        max_auc = np.sum(n_up - steps)
        assert np.abs(ours[:, j] - theirs[:, j] * max_auc / (n_up * members.size)).max() < 1e-6


# ----------------------------------------------------------------------------- the example


PBMC_TFS = ["EGR1", "FOS", "GATA3", "HMGB2", "ID2", "IRF1", "IRF7", "IRF8", "JUNB", "KLF6", "POU2AF1", "SPI1", "SPIB",
            "PAX5", "TBX21"]  # the last two are not among pbmc68k_reduced's genes


def pbmc_resources(directory: Path, genes: list[str]) -> list[str]:
    """Resources over pbmc68k_reduced's genes: each TF's motif ranks those genes first (shuffled),
    random motifs rank every gene at random, so any module of a TF is enriched for its motif,
    whatever the GRN found. The database has 5,100 genes (above the rank threshold, as real ones)."""
    import pyarrow as pa
    import pyarrow.feather as feather

    rng = np.random.default_rng(0)
    db_genes = genes + [f"FILLER{i:04d}" for i in range(5100 - len(genes))]
    tfs = [t for t in PBMC_TFS if t in set(genes)]
    ranks = []
    for _ in tfs:
        ranks.append(np.concatenate([rng.permutation(len(genes)), len(genes) + rng.permutation(5100 - len(genes))]))
    for _ in range(150):
        ranks.append(rng.permutation(5100))
    ranks = np.array(ranks, dtype=np.int16)
    motifs = [f"testdb__{t}" for t in tfs] + [f"testdb__R{i:03d}" for i in range(150)]
    columns = {g: pa.array(ranks[:, j]) for j, g in enumerate(db_genes)}
    columns["motifs"] = pa.array(motifs, type=pa.string())
    database = directory / "pbmc.genes_vs_motifs.rankings.feather"
    feather.write_feather(pa.table(columns), database)
    annotation = pd.DataFrame({"#motif_id": motifs[: len(tfs)], "motif_name": motifs[: len(tfs)],
                               "motif_description": tfs, "source_name": "testdb", "source_version": "v1",
                               "gene_name": tfs, "motif_similarity_qvalue": 0.0, "similar_motif_id": None,
                               "similar_motif_description": None, "orthologous_identity": 1.0,
                               "orthologous_gene_name": None, "orthologous_species": None,
                               "description": "gene is directly annotated"})
    annotation.to_csv(directory / "motifs-pbmc.tbl", sep="\t", index=False)
    (directory / "tfs.txt").write_text("".join(f"{t}\n" for t in PBMC_TFS))
    return ["--tf-list", str(directory / "tfs.txt"), "--ranking-db", str(database),
            "--motif-annotation", str(directory / "motifs-pbmc.tbl")]


def test_the_pbmc68k_reduced_example_runs_and_writes_its_plots_and_h5ad(tmp_path):
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()  # ships with scanpy: no download
    flags = pbmc_resources(tmp_path, list(adata.var_names))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "pbmc68k_reduced.py"), "--out", str(out),
                           "--grn-n-steps", "3", "--device", "cpu", *flags], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "700 cells x 765 genes" in done.stdout and "Most specific regulon per cell type" in done.stdout
    for name in ("umap_regulons.png", "matrixplot_regulons.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    result = anndata.read_h5ad(out / "pbmc68k_scenic.h5ad")
    entry = result.uns["flashscenic"]["X_aucell"]
    assert result.obsm["X_aucell"].shape == (700, len(entry["regulon_names"])) and len(entry["regulon_names"]) >= 5
    assert entry["layer"] == "log_norm" and entry["params"]["grn_n_steps"] == 3
    assert not list(out.glob(".*partial*"))
