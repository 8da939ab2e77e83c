"""Multi-run consensus: multi_run_flashscenic in memory and `flashscenic run --grn-runs` on a cluster."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import flashscenic
from flashscenic.cli import main
from flashscenic.store import open_results_store

from test_pipeline import resource_args, sim  # noqa: F401 (the fixture)
from test_run_life import files  # noqa: F401 (the fixture)

STEPS = 40  # RegDiffusion steps: enough for runs to differ and regulons to be found, fast


def test_signature_is_upstreams_with_run_flashscenics_parameters():
    from flashscenic.multi_run import multi_run_flashscenic  # where upstream's code imports it from

    assert flashscenic.multi_run_flashscenic is multi_run_flashscenic  # one implementation
    single = inspect.signature(flashscenic.run_flashscenic).parameters
    multi = inspect.signature(multi_run_flashscenic).parameters
    extra = ["n_runs", "aggregation_method", "frequency_threshold", "min_genes_filter", "cv_threshold",
             "return_adj_matrices", "seeds", "consensus", "min_recurrence"]
    assert list(multi) == ["exp_matrix", "gene_names", "species", *extra,
                           *[n for n in single if n not in ("exp_matrix", "gene_names", "species", "adj_matrix")]]
    assert [multi[n].default for n in extra] == [15, "frequency", 0.5, 5, None, False, None, None, None]
    for name, parameter in single.items():
        if name != "adj_matrix":
            assert multi[name].default == parameter.default and multi[name].kind == parameter.kind, name


@pytest.fixture(scope="module")
def three_runs(sim):  # noqa: F811
    data, paths = sim
    return flashscenic.multi_run_flashscenic(data.expression, data.gene_names, **resource_args(paths), n_runs=3,
                                             grn_n_steps=STEPS, device="cpu", seed=11, verbose=False,
                                             return_adj_matrices=True, aggregation_method="mean_adjacency")


def test_same_seed_same_result_and_the_consensus_is_the_mean_of_the_runs(sim, three_runs):  # noqa: F811
    data, paths = sim
    result = three_runs
    for key in ("auc_scores", "regulon_names", "regulons", "regulon_adj", "adj_mean", "adj_cv", "n_runs",
                "cv_threshold", "n_edges_cv_filtered", "regulon_recurrence", "target_recurrence"):
        assert key in result, key
    assert result["n_runs"] == 3 and len(result["parameters"]["seeds"]) == 3
    stacked = np.stack(result["adj_matrices"]).astype(np.float64)
    np.testing.assert_allclose(result["adj_mean"], stacked.mean(axis=0), rtol=1e-6, atol=1e-7)
    assert not np.array_equal(result["adj_matrices"][0], result["adj_matrices"][1])  # seeds differ, runs differ
    again = flashscenic.multi_run_flashscenic(data.expression, data.gene_names, **resource_args(paths), n_runs=3,
                                              grn_n_steps=STEPS, device="cpu", seed=11, verbose=False,
                                              consensus="mean")  # our first name of 'mean_adjacency'
    assert again["parameters"]["aggregation_method"] == "mean_adjacency" and again["tf_frequency_scores"] is None
    assert again["regulon_names"] == result["regulon_names"]
    assert np.array_equal(again["auc_scores"], result["auc_scores"]) and again["adj_matrices"] is None
    assert again["parameters"]["seeds"] == result["parameters"]["seeds"]


def test_recurrence_is_a_fraction_of_runs(three_runs):
    recurrence = three_runs["regulon_recurrence"]
    assert recurrence and all(0 < value <= 1 for value in recurrence.values())
    assert set(recurrence.values()) <= {1 / 3, 2 / 3, 1.0} and 1.0 in recurrence.values()
    for regulon in three_runs["regulons"]:
        assert regulon["recurrence"] == recurrence.get(regulon["name"], 0.0)
    for name, genes in three_runs["target_recurrence"].items():
        assert all(0 < value <= recurrence[name] for value in genes.values())


def test_cv_filter_and_seeds_are_checked(sim):  # noqa: F811
    data, paths = sim
    run = dict(**resource_args(paths), grn_n_steps=STEPS, device="cpu", verbose=False)
    filtered = flashscenic.multi_run_flashscenic(data.expression, data.gene_names, n_runs=2, seeds=[1, 2],
                                                 cv_threshold=0.05, aggregation_method="mean_adjacency", **run)
    cv, mean = filtered["adj_cv"], filtered["adj_mean"]
    assert filtered["n_edges_cv_filtered"] == int(((cv >= 0.05) & (mean != 0)).sum()) > 0
    assert filtered["parameters"]["seeds"] == [1, 2]
    with pytest.raises(ValueError, match="seeds"):
        flashscenic.multi_run_flashscenic(data.expression, data.gene_names, n_runs=3, seeds=[1, 2], **run)
    with pytest.raises(ValueError, match="consensus must be one of 'mean', 'recurrence'"):
        flashscenic.multi_run_flashscenic(data.expression, data.gene_names, consensus="vote", **run)
    with pytest.raises(ValueError, match="aggregation_method must be 'frequency' or 'mean_adjacency', got 'vote'"):
        flashscenic.multi_run_flashscenic(data.expression, data.gene_names, aggregation_method="vote", **run)
    for bad in (0, 0.0, -0.1, 1.01, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="frequency_threshold must be in \\(0, 1\\]"):
            flashscenic.multi_run_flashscenic(data.expression, data.gene_names, frequency_threshold=bad, **run)
    with pytest.raises(ValueError, match="min_genes_filter must be an integer >= 0"):
        flashscenic.multi_run_flashscenic(data.expression, data.gene_names, min_genes_filter=-1, **run)
    with pytest.raises(ValueError, match="disagree"):
        flashscenic.multi_run_flashscenic(data.expression, data.gene_names, consensus="recurrence",
                                          aggregation_method="mean_adjacency", **run)


def test_recurrence_consensus_scores_the_recurrent_regulons(sim, three_runs):  # noqa: F811
    data, paths = sim
    result = flashscenic.multi_run_flashscenic(data.expression, data.gene_names, **resource_args(paths), n_runs=3,
                                               grn_n_steps=STEPS, device="cpu", seed=11, verbose=False,
                                               consensus="recurrence", min_recurrence=1.0, min_genes_filter=0)
    always = sorted(n for n, f in three_runs["regulon_recurrence"].items() if f == 1.0)
    assert result["regulon_names"] == always
    assert all(r["recurrence"] == 1.0 for r in result["regulons"])


def test_grn_runs_on_a_two_worker_cluster_equal_in_process_and_in_memory_bit_for_bit(files, tmp_path,  # noqa: F811
                                                                                       monkeypatch):
    import anndata

    import flashscenic.pipeline

    common = [str(files["input"]), "--tf-list", str(files["tf_list"]), "--ranking-db", str(files["ranking_db"]),
              "--motif-annotation", str(files["motif_annotation"]), "--grn-runs", "3", "--grn-n-steps", str(STEPS),
              "--device", "cpu", "--seed", "5", "--quiet", "--no-report", "--cell-type-column", "cell_type",
              "--grn-cv-threshold", "0.03"]
    assert main(["run", *common, "--out", str(tmp_path / "here"), "--n-workers", "0"]) == 0
    assert main(["run", *common, "--out", str(tmp_path / "cluster"), "--n-workers", "2",
                 "--dashboard-address", "none"]) == 0
    here, cluster = (open_results_store(tmp_path / name / "results.zarr") for name in ("here", "cluster"))
    grn = here.stages["grn"]
    assert grn["n_runs"] == 3 and grn["seeds"] == cluster.stages["grn"]["seeds"]
    assert grn["n_edges_cv_filtered"] == cluster.stages["grn"]["n_edges_cv_filtered"] > 0
    assert np.array_equal(here.read_tf_gene_weights()[0], cluster.read_tf_gene_weights()[0])
    assert here.regulon_names == cluster.regulon_names
    assert here.read_auc().tobytes() == cluster.read_auc().tobytes()
    recurrence = here.read_table("regulon_recurrence")
    assert recurrence["recurrence"].between(0, 1).all() and len(recurrence)
    assert recurrence.equals(cluster.read_table("regulon_recurrence"))

    # in memory, the same seeds: the same consensus and the same scores
    adata = anndata.read_h5ad(files["input"])
    memory = flashscenic.multi_run_flashscenic(
        adata.X, list(adata.var_names), n_runs=3, cv_threshold=0.03, aggregation_method="mean_adjacency",
        grn_n_steps=STEPS, device="cpu", seed=5,
        verbose=False, tf_list_path=str(files["tf_list"]), ranking_db_paths=[str(files["ranking_db"])],
        motif_annotation_path=str(files["motif_annotation"]))
    assert memory["parameters"]["seeds"] == grn["seeds"] and memory["n_edges_cv_filtered"] == grn["n_edges_cv_filtered"]
    assert memory["regulon_names"] == here.regulon_names
    assert memory["auc_scores"].tobytes() == here.read_auc().tobytes()

    # a run interrupted after its first GRN run resumes with the two others only, to the same bits
    real = flashscenic.pipeline.grn_run_task

    def first_only(results_path, expression_path, tf_names, params, run_id, index, genes=None):
        if index > 0:
            raise KeyboardInterrupt  # as Ctrl-C after the first run
        return real(results_path, expression_path, tf_names, params, run_id, index, genes)

    monkeypatch.setattr(flashscenic.pipeline, "grn_run_task", first_only)
    with pytest.raises(KeyboardInterrupt):
        main(["run", *common, "--out", str(tmp_path / "resumed"), "--n-workers", "0"])
    monkeypatch.setattr(flashscenic.pipeline, "grn_run_task", real)
    assert main(["run", *common, "--out", str(tmp_path / "resumed"), "--n-workers", "0", "--resume"]) == 0
    resumed = open_results_store(tmp_path / "resumed" / "results.zarr")
    assert resumed.stages["grn"]["runs_computed"] == 2
    assert resumed.read_auc().tobytes() == here.read_auc().tobytes()
    assert resumed.read_table("regulon_recurrence").equals(recurrence)


def test_the_frequency_consensus_in_process_on_a_two_worker_cluster_and_in_memory_is_the_same(files,  # noqa: F811
                                                                                                 tmp_path):
    import anndata

    common = [str(files["input"]), "--tf-list", str(files["tf_list"]), "--ranking-db", str(files["ranking_db"]),
              "--motif-annotation", str(files["motif_annotation"]), "--grn-runs", "2", "--grn-n-steps", str(STEPS),
              "--device", "cpu", "--seed", "8", "--quiet", "--no-report", "--grn-aggregation", "frequency",
              "--grn-frequency-threshold", "0.6", "--grn-min-genes-filter", "3"]
    assert main(["run", *common, "--out", str(tmp_path / "here"), "--n-workers", "0"]) == 0
    assert main(["run", *common, "--out", str(tmp_path / "cluster"), "--n-workers", "2",
                 "--dashboard-address", "none"]) == 0
    here, cluster = (open_results_store(tmp_path / name / "results.zarr") for name in ("here", "cluster"))
    assert here.stages["pruning"]["aggregation"] == "frequency" and "modules" not in here.stages
    import json

    same = lambda regulons: json.dumps(regulons, sort_keys=True)  # noqa: E731 (their score is NaN: no motif)
    assert same(here.read_regulons()) == same(cluster.read_regulons()) and here.regulon_names
    assert here.read_auc().tobytes() == cluster.read_auc().tobytes()
    scores = here.read_table("tf_frequency_scores")
    assert scores.equals(cluster.read_table("tf_frequency_scores"))
    assert list(scores["tf"]) == sorted({r["tf"] for r in here.read_regulons()})
    recurrence = here.read_table("target_recurrence").set_index(["regulon", "gene"])["recurrence"]
    for regulon in here.read_regulons():  # every kept target in >= 60% of the runs (both), and >= 3 of them
        targets = [g for g in regulon["genes"] if g != regulon["tf"]]
        assert len(targets) >= 3 and all(recurrence[(regulon["name"], g)] >= 0.6 for g in targets)
    assert len(here.read_motifs()) == 0  # no single motif table for a frequency consensus

    adata = anndata.read_h5ad(files["input"])
    memory = flashscenic.multi_run_flashscenic(
        adata.X, list(adata.var_names), n_runs=2, frequency_threshold=0.6, min_genes_filter=3, grn_n_steps=STEPS,
        device="cpu", seed=8, verbose=False, tf_list_path=str(files["tf_list"]),
        ranking_db_paths=[str(files["ranking_db"])], motif_annotation_path=str(files["motif_annotation"]))
    assert memory["parameters"]["aggregation_method"] == "frequency"
    assert memory["regulon_names"] == here.regulon_names
    assert [r["genes"] for r in memory["regulons"]] == [r["genes"] for r in here.read_regulons()]
    assert memory["tf_frequency_scores"] == dict(zip(scores["tf"], scores["score"]))
    assert memory["auc_scores"].tobytes() == here.read_auc().tobytes()


def test_cv_threshold_with_the_frequency_aggregation_warns(sim):  # noqa: F811
    from flashscenic.params import Params

    with pytest.warns(UserWarning, match="cv_threshold=0.5 has no effect with aggregation 'frequency'"):
        Params(grn_runs=2, grn_cv_threshold=0.5, grn_aggregation="frequency").warn_unused_cv_threshold()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Params(grn_runs=2, grn_cv_threshold=0.5).warn_unused_cv_threshold()  # the mean network: it filters


def test_the_frequency_aggregation_of_one_run_is_refused_on_a_store(files, tmp_path):  # noqa: F811
    from flashscenic.params import Params
    from flashscenic.pipeline import run_pipeline

    with pytest.raises(ValueError, match="grn_aggregation 'frequency' combines several GRN runs"):
        run_pipeline(files["input"], tmp_path / "run", params=Params(grn_aggregation="frequency", device="cpu"))
    assert not (tmp_path / "run").exists()


def test_runs_with_adjacencies_are_refused(files, tmp_path):  # noqa: F811
    from flashscenic.params import Params
    from flashscenic.pipeline import run_pipeline

    with pytest.raises(ValueError, match="with adjacencies there is none to repeat"):
        run_pipeline(files["input"], tmp_path / "run", adjacencies=files["adjacencies"],
                     params=Params(grn_runs=3, tf_list_path=str(files["tf_list"]), device="cpu",
                                   ranking_db_paths=(str(files["ranking_db"]),),
                                   motif_annotation_path=str(files["motif_annotation"])))
    assert not (tmp_path / "run").exists()


def test_the_report_shows_the_recurrence(files, tmp_path):  # noqa: F811
    from flashscenic.params import Params
    from flashscenic.pipeline import run_pipeline

    params = Params(tf_list_path=str(files["tf_list"]), ranking_db_paths=(str(files["ranking_db"]),),
                    motif_annotation_path=str(files["motif_annotation"]), device="cpu", seed=2, grn_runs=2,
                    grn_n_steps=STEPS, verbose=False)
    results = run_pipeline(files["input"], tmp_path / "run", params=params, cell_type_column="cell_type")
    page = (tmp_path / "run" / "report.html").read_text()
    table = results.read_table("regulon_recurrence")
    assert "Regulon recurrence over GRN runs" in page and f"2 GRN runs (seeds {results.stages['grn']['seeds'][0]}" in page
    targets = results.read_table("target_recurrence")
    for name, fraction in zip(table["regulon"], table["recurrence"]):
        every = int(((targets["regulon"] == name) & (targets["recurrence"] == 1.0)).sum())
        assert f"<td>{name}</td><td>{fraction:.0%}</td><td>{every:,}</td>" in page
    # imported regulons replace pruning: the recurrence of the old ones is no longer shown
    from flashscenic.export import import_pyscenic, write_regulons_gmt
    from flashscenic.report import write_report

    write_regulons_gmt(results.read_regulons()[:1], tmp_path / "one.gmt")
    import_pyscenic(results, regulons=tmp_path / "one.gmt")
    assert "Regulon recurrence" not in write_report(results, tmp_path / "again.html").read_text()
