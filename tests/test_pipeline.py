"""run_flashscenic and run_pipeline on simulated data with a planted motif database."""

from __future__ import annotations

import sys

import flashscenic.pipeline
import numpy as np
import pandas as pd
import pytest

from flashscenic.aucell import get_aucell
from flashscenic.executors import InProcessExecutor
from flashscenic.params import Params
from flashscenic.pipeline import run_flashscenic, run_pipeline
from flashscenic.stages import prepare_resources
from flashscenic.simulate import evaluate_regulons, simulate_dataset
from flashscenic.store import ingest_expression

SMALL = dict(n_cells=1200, n_genes=400, n_tfs=8, n_decoy_tfs=4, n_cell_types=4, targets_per_tf=30, n_motifs=300)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    data = simulate_dataset(**SMALL, seed=3)
    paths = data.write_resources(tmp_path_factory.mktemp("resources"))
    return data, paths


def planted_adjacencies(data, seed=0) -> pd.DataFrame:
    """The planted edges (importance 2-4) plus weak random edges of every TF of the list."""
    rng = np.random.default_rng(seed)
    genes = list(data.gene_names)
    rows = [(tf, genes[j], 2.0 + 2.0 * float(w)) for tf, weights in zip(data.planted_tfs, data.regulon_weights)
            for j, w in enumerate(weights) if w > 0]
    for tf in [t for t in data.tf_names if t in set(genes)]:
        rows += [(tf, genes[j], float(rng.uniform(0.1, 1.5))) for j in rng.choice(len(genes), 25, replace=False)]
    return pd.DataFrame(rows, columns=["TF", "target", "importance"]).drop_duplicates(["TF", "target"])


def resource_args(paths) -> dict:
    return dict(tf_list_path=str(paths["tf_list"]), ranking_db_paths=[str(paths["ranking_db"])],
                motif_annotation_path=str(paths["motif_annotation"]))


def test_run_flashscenic_recovers_the_planted_regulons_from_the_grn(sim):
    data, paths = sim
    result = run_flashscenic(data.expression, data.gene_names, **resource_args(paths), grn_n_steps=150,
                             device="cpu", seed=0, verbose=False)
    assert set(result) == {"auc_scores", "regulon_names", "regulons", "regulon_adj", "parameters"}
    found = evaluate_regulons(result["regulons"], data, auc=result["auc_scores"])
    assert found["recall"] >= 0.8 and found["precision"] >= 0.8, found["table"]
    assert found["mean_target_jaccard"] > 0.15


def test_run_flashscenic_with_adjacencies(sim):
    data, paths = sim
    result = run_flashscenic(data.expression, data.gene_names, **resource_args(paths), adj_matrix=planted_adjacencies(data),
                             device="cpu", seed=5, verbose=False)
    found = evaluate_regulons(result["regulons"], data, auc=result["auc_scores"])
    assert found["recall"] == 1.0 and found["precision"] == 1.0, found["table"]
    names, adj, auc = result["regulon_names"], result["regulon_adj"], result["auc_scores"]
    assert names == [r["name"] for r in result["regulons"]]
    assert adj.shape == (len(names), data.expression.shape[1]) and set(np.unique(adj)) <= {0.0, 1.0}
    assert auc.dtype == np.float32 and auc.shape == (data.expression.shape[0], len(names))
    # AUCell scored every regulon gene (aucell_k=None) with the run's seed
    assert np.array_equal(auc, get_aucell(data.expression, adj, k=None, device="cpu", seed=5, verbose=False))
    parameters = result["parameters"]
    assert parameters["seed"] == 5 and parameters["grn_n_steps"] == 1000
    assert parameters["ranking_db_paths"] == [str(paths["ranking_db"])]
    assert set(parameters["timings"]) == {"grn", "modules", "pruning", "aucell"}


def test_a_genes_x_genes_matrix_is_accepted_as_adjacencies(sim):
    data, paths = sim
    table = planted_adjacencies(data)
    index = {g: j for j, g in enumerate(data.gene_names)}
    square = np.zeros((len(index), len(index)), dtype=np.float32)
    square[table["TF"].map(index), table["target"].map(index)] = table["importance"]
    # the sparsity threshold applies to a matrix (RegDiffusion's units), not to a table
    by_table = run_flashscenic(data.expression, data.gene_names, **resource_args(paths),
                               adj_matrix=table[table["importance"] >= 1.5],
                               device="cpu", seed=1, verbose=False)
    by_matrix = run_flashscenic(data.expression, data.gene_names, **resource_args(paths), adj_matrix=square,
                                device="cpu", seed=1, verbose=False)
    assert by_table["regulon_names"] == by_matrix["regulon_names"]
    assert np.array_equal(by_table["auc_scores"], by_matrix["auc_scores"])


def test_seed_none_draws_a_seed_and_records_it(sim):
    data, paths = sim
    result = run_flashscenic(data.expression, data.gene_names, **resource_args(paths), adj_matrix=planted_adjacencies(data),
                             device="cpu", seed=None, verbose=False)
    seed = result["parameters"]["seed"]
    assert isinstance(seed, int)
    again = get_aucell(data.expression, result["regulon_adj"], k=None, device="cpu", seed=seed, verbose=False)
    assert np.array_equal(result["auc_scores"], again)


@pytest.mark.parametrize(
    "change, message",
    [
        pytest.param(dict(module_min_targets=10_000), "no TF survived module building", id="no-module"),
        pytest.param(dict(grn_sparsity_threshold=100.0), "0 with a positive GRN weight", id="no-link"),
        pytest.param(dict(pruning_nes_threshold=1000.0), "no regulon survived pruning", id="no-motif"),
        pytest.param(dict(pruning_min_genes=10_000), "fewer than pruning_min_genes=10000", id="too-small"),
    ],
)
def test_nothing_surviving_says_where_and_why(sim, change, message):
    data, paths = sim
    adjacencies = planted_adjacencies(data) if "grn_sparsity_threshold" not in change else \
        planted_adjacencies(data).pipe(lambda t: _square(t, data))
    with pytest.raises(ValueError, match=message) as error:
        run_flashscenic(data.expression, data.gene_names, **resource_args(paths), adj_matrix=adjacencies,
                        device="cpu", seed=0, verbose=False, **change)
    if "pruning" in message or "pruning" in str(change):
        assert "modules of" in str(error.value)


def _square(table, data):
    index = {g: j for j, g in enumerate(data.gene_names)}
    square = np.zeros((len(index), len(index)), dtype=np.float32)
    square[table["TF"].map(index), table["target"].map(index)] = table["importance"]
    return square


def test_no_regulon_message_counts_the_annotation_filter(sim, tmp_path):
    data, paths = sim
    # every motif annotated, but to a TF no module has: the filter removes every enriched motif
    annotation = pd.read_csv(paths["motif_annotation"], sep="\t")
    annotation["gene_name"] = "NOT_A_TF"
    annotation.to_csv(tmp_path / "other.tbl", sep="\t", index=False)
    with pytest.raises(ValueError) as error:
        run_flashscenic(data.expression, data.gene_names, **{**resource_args(paths),
                                                             "motif_annotation_path": str(tmp_path / "other.tbl")},
                        adj_matrix=planted_adjacencies(data), device="cpu", verbose=False)
    text = str(error.value)
    assert "before the annotation filter, 0 after it" in text
    reached = int(text.split(" (module, motif) pairs reached")[0].rsplit(" ", 1)[-1])
    assert reached > 0


def test_input_errors(sim, tmp_path):
    data, paths = sim
    run = dict(**resource_args(paths), adj_matrix=planted_adjacencies(data), device="cpu", verbose=False)
    with pytest.raises(ValueError, match="399 gene names for 400 expression columns"):
        run_flashscenic(data.expression, data.gene_names[:-1], **run)
    genes = list(data.gene_names)
    genes[1] = genes[0]
    with pytest.raises(ValueError, match="duplicate"):
        run_flashscenic(data.expression, genes, **run)
    with pytest.raises(ValueError, match="are in the ranking database"):
        run_flashscenic(data.expression, [f"X{g}" for g in data.gene_names], **run)
    other_tfs = tmp_path / "tfs.txt"
    other_tfs.write_text("FOXP3\nSPI1\n")
    with pytest.raises(ValueError, match="TF"):
        run_flashscenic(data.expression, data.gene_names, **{**run, "tf_list_path": str(other_tfs)})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_flashscenic(data.expression, data.gene_names, **{**run, "motif_annotation_path": str(tmp_path / "no.tbl")})
    with pytest.raises(ValueError, match="pruning_merge_strategy"):
        run_flashscenic(data.expression, data.gene_names, **run, pruning_merge_strategy="intersection")


def test_missing_regdiffusion_is_an_import_error(sim, monkeypatch):
    data, paths = sim
    monkeypatch.setitem(sys.modules, "regdiffusion", None)
    with pytest.raises(ImportError, match="pip install regdiffusion"):
        run_flashscenic(data.expression, data.gene_names, **resource_args(paths), device="cpu", verbose=False)
    # with adjacencies no GRN is needed
    run_flashscenic(data.expression, data.gene_names, **resource_args(paths), adj_matrix=planted_adjacencies(data),
                    device="cpu", verbose=False)


@pytest.fixture(scope="module")
def store(sim, tmp_path_factory):
    data, _ = sim
    import anndata

    adata = anndata.AnnData(data.expression, obs=pd.DataFrame({"cell_type": data.cell_types},
                                                              index=[f"cell{i}" for i in range(len(data.cell_types))]),
                            var=pd.DataFrame(index=list(data.gene_names)))
    return ingest_expression(adata, tmp_path_factory.mktemp("store") / "expression.zarr", chunk_rows=250,
                             obs_columns=["cell_type"], verbose=False)


def test_run_pipeline_equals_run_flashscenic(sim, store, tmp_path):
    data, paths = sim
    adjacencies = planted_adjacencies(data)
    expected = run_flashscenic(data.expression, data.gene_names, **resource_args(paths), adj_matrix=adjacencies,
                               device="cpu", seed=2, verbose=False)
    resources = prepare_resources(**{k.replace("_path", "_path"): v for k, v in resource_args(paths).items()})
    results = run_pipeline(store, tmp_path / "run", resources=resources, params=Params(device="cpu", seed=2, verbose=False),
                           adjacencies=adjacencies, chunk_cells=333, n_prune_shards=3)
    assert results.regulon_names == expected["regulon_names"]
    assert np.array_equal(results.read_auc(), expected["auc_scores"])
    stored = {r["name"]: r["genes"] for r in results.read_regulons()}
    assert stored == {r["name"]: list(r["genes"]) for r in expected["regulons"]}
    assert all(results.is_complete(s) for s in ("grn", "modules", "pruning", "auc", "rss"))
    # every stage of the run is timed; an expression-store input is not ingested again
    assert set(results.timings) == {"grn", "modules", "pruning", "auc", "rss", "report"}
    rss = results.read_table("rss").set_index("cell_type")
    assert list(rss.index) == sorted(set(data.cell_types)) and list(rss.columns) == expected["regulon_names"]


def test_run_pipeline_resume_keeps_finished_stages(sim, store, tmp_path):
    data, paths = sim
    resources = prepare_resources(**resource_args(paths))
    params = Params(device="cpu", seed=4, verbose=False)
    first = run_pipeline(store, tmp_path / "run", resources=resources, params=params,
                         adjacencies=planted_adjacencies(data))
    stamps = {s: first.stages[s]["at"] for s in ("grn", "pruning", "auc")}
    again = run_pipeline(store, tmp_path / "run", resources=resources, params=params, resume=True,
                         adjacencies=planted_adjacencies(data), executor=InProcessExecutor())
    assert {s: again.stages[s]["at"] for s in stamps} == stamps  # nothing recomputed
    with pytest.raises(ValueError, match="other adjacency file \\(given before, none now\\)"):
        run_pipeline(store, tmp_path / "run", resources=resources, params=params, resume=True)
    with pytest.raises(ValueError, match="other parameters"):
        run_pipeline(store, tmp_path / "run", resources=resources, params=Params(device="cpu", seed=5, verbose=False),
                     adjacencies=planted_adjacencies(data), resume=True)


def test_partial_resource_paths_are_refused_not_downloaded(sim):
    data, paths = sim
    with pytest.raises(ValueError, match="give all three resource paths"):
        run_flashscenic(data.expression, data.gene_names, ranking_db_paths=[str(paths["ranking_db"])],
                        motif_annotation_path=str(paths["motif_annotation"]), adj_matrix=planted_adjacencies(data),
                        device="cpu", verbose=False)


@pytest.mark.parametrize("change, message", [
    (dict(seed=-1), "seed must be an integer in 0..4294967295 or None"),
    (dict(seed=2**32), "seed must be an integer in 0..4294967295 or None"),
    (dict(aucell_auc_threshold=2.0), "aucell_auc_threshold must be a number in"),
    (dict(pruning_auc_threshold=0.0), "pruning_auc_threshold must be a number in"),
    (dict(grn_n_steps=0), "grn_n_steps must be an integer >= 1"),
    (dict(pruning_nes_threshold=float("nan")), "pruning_nes_threshold must be a finite number"),
    (dict(aucell_auc_threshold=1.0), "aucell_auc_threshold must be a number in \\(0, 1\\)"),
    (dict(module_percentile_thresholds=(150,)), "each of module_percentile_thresholds must be a number in \\[0, 100\\]"),
    (dict(pruning_rank_threshold=10**6), "pruning_rank_threshold=1000000 must be below the"),
    (dict(annotation_orthologous_identity=1.01), "annotation_orthologous_identity must be a number in \\[0, 1\\]"),
    (dict(module_top_n_per_target=(0,)), "each of module_top_n_per_target must be an integer >= 1"),
    (dict(device="gpu"), "device must be one of 'auto', 'cpu', 'cuda'"),
    (dict(module_include_tf="yes"), "module_include_tf must be True or False"),
])
def test_parameters_are_checked_before_any_work(sim, change, message, monkeypatch):
    """Refused before the GRN: training would raise, and the refusal takes well under 5 s."""
    import time

    import flashscenic.stages

    def no_grn(*args, **kwargs):
        raise AssertionError("the GRN ran before the parameters were checked")

    monkeypatch.setattr(flashscenic.stages, "infer_weights", no_grn)
    monkeypatch.setattr(flashscenic.pipeline, "infer_weights", no_grn)
    data, paths = sim
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        run_flashscenic(data.expression, data.gene_names, **{"device": "cpu", **change}, **resource_args(paths),
                        verbose=False)
    assert time.perf_counter() - start < 5


def test_nan_in_a_matrix_is_refused_before_any_work(sim):
    data, paths = sim
    x = data.expression.astype(np.float32).copy()
    x[7, 3] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite value\\(s\\), first at cell 7, gene 3"):
        run_flashscenic(x, data.gene_names, **resource_args(paths), device="cpu", verbose=False)
    import scipy.sparse as sp

    with pytest.raises(ValueError, match="first at cell 7, gene 3"):
        run_flashscenic(sp.csr_matrix(x), data.gene_names, **resource_args(paths), device="cpu", verbose=False)


def test_logging_is_the_callers_and_verbose_false_is_quiet(sim, tmp_path):
    """In a fresh process: the library adds no logging handler; with the caller's logging at
    INFO, verbose=True logs the stages (logger flashscenic.pipeline) and verbose=False does not."""
    import subprocess

    data, paths = sim
    planted_adjacencies(data).to_csv(tmp_path / "adj.csv", index=False)
    np.save(tmp_path / "x.npy", data.expression)
    (tmp_path / "genes.txt").write_text("\n".join(data.gene_names))
    code = f"""
import logging, sys
import numpy as np, pandas as pd
from flashscenic import run_flashscenic
x = np.load({str(tmp_path / "x.npy")!r}); genes = open({str(tmp_path / "genes.txt")!r}).read().split()
run = dict(tf_list_path={str(paths["tf_list"])!r}, ranking_db_paths=[{str(paths["ranking_db"])!r}],
           motif_annotation_path={str(paths["motif_annotation"])!r}, device="cpu",
           adj_matrix=pd.read_csv({str(tmp_path / "adj.csv")!r}))
run_flashscenic(x, genes, **run, verbose=True)
handlers = [h for name in ("", "flashscenic", "flashscenic.pipeline") for h in logging.getLogger(name).handlers]
print("HANDLERS", len(handlers), file=sys.stderr, flush=True)
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
for verbose in (True, False, True, False):
    print("RUN", verbose, file=sys.stderr, flush=True)
    run_flashscenic(x, genes, **run, verbose=verbose)
"""
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stderr
    before, _, after = err.partition("HANDLERS ")
    assert after.startswith("0\n"), err
    assert "pruning done" not in before  # nothing printed without the caller's logging
    runs = after.split("RUN ")[1:]
    assert [r.split()[0] for r in runs] == ["True", "False", "True", "False"]
    for text in runs:
        said = "flashscenic.pipeline: pruning done" in text
        assert said == text.startswith("True"), text
