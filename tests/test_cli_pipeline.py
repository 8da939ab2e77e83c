"""The pipeline subcommands: demo, run, grn, ctx, aucell, rss, report (happy path and a bad input each)."""

from __future__ import annotations

import json

import anndata
import numpy as np
import pandas as pd
import pytest

from flashscenic.aucell import get_aucell
from flashscenic.cli import main
from flashscenic.export import read_adjacencies, read_auc_csv, write_adjacencies
from flashscenic.regulons import read_motifs_csv, regulons_from_motifs, regulons_to_adjacency
from flashscenic.simulate import simulate_dataset
from flashscenic.store import open_results_store

from test_pipeline import SMALL, planted_adjacencies


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The small simulation as a user has it: an h5ad with cell types, resources, adjacencies."""
    root = tmp_path_factory.mktemp("cli")
    data = simulate_dataset(**SMALL, seed=3)
    resources = data.write_resources(root / "resources")
    cells = pd.DataFrame({"cell_type": data.cell_types}, index=[f"c{i}" for i in range(len(data.cell_types))])
    anndata.AnnData(data.expression, obs=cells, var=pd.DataFrame(index=list(data.gene_names))).write_h5ad(root / "x.h5ad")
    write_adjacencies(planted_adjacencies(data), root / "adj.tsv")
    cells.to_csv(root / "cell_types.csv")
    return {"root": root, "data": data, "h5ad": str(root / "x.h5ad"), "adj": str(root / "adj.tsv"),
            "cell_types": str(root / "cell_types.csv"), **{k: str(v) for k, v in resources.items()}}


def resources(files) -> list[str]:
    return ["--tf-list", files["tf_list"], "--ranking-db", files["ranking_db"], "--motif-annotation",
            files["motif_annotation"]]


def one_line_error(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress messages may come before the error
    errors = [line for line in err if line.startswith("flashscenic: error: ")]
    assert len(errors) == 1 and err[-1] == errors[0] and message in errors[0], err
    assert not any(line.startswith("Traceback") for line in err)


@pytest.mark.parametrize("workers", ["0", "1"])
def test_demo_small(tmp_path, capsys, workers):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--n-cells", "800", "--n-genes", "400", "--n-tfs", "8", "--grn-n-steps", "60",
            "--n-workers", workers, "--device", "cpu", "--quiet", "--dashboard-address", "none"]
    assert main(argv) == 0
    assert main(argv) == 0  # a second demo replaces the first
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    for key in ("planted_tfs", "recovered_tfs", "precision", "recall", "mean_target_jaccard", "n_cells", "n_genes",
                "seconds"):
        assert key in summary
    assert summary["n_cells"] == 800 and summary["n_genes"] == 400 and len(summary["planted_tfs"]) == 8
    assert summary["recall"] == len(summary["recovered_tfs"]) / 8
    assert f"Recovered {len(summary['recovered_tfs'])}/8 planted TFs" in printed
    assert all(tf in printed for tf in summary["planted_tfs"])
    assert (out / "report.html").stat().st_size > 10_000
    assert open_results_store(out / "results.zarr").is_complete("rss")
    assert summary["executor"] == "in process" if workers == "0" else summary["executor"].startswith("LocalCluster")


def test_demo_bad_sizes(capsys, tmp_path):
    one_line_error(capsys, ["demo", "--out", str(tmp_path), "--n-cells", "0"], "n_cells")


def test_run_in_process(files, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", files["h5ad"], "--out", str(out), *resources(files), "--adjacencies", files["adj"],
            "--cell-type-column", "cell_type", "--n-workers", "0", "--device", "cpu", "--seed", "3", "--quiet"]
    assert main(argv) == 0
    assert "8 regulons scored in 1,200 cells" in capsys.readouterr().out
    results = open_results_store(out / "results.zarr")
    assert results.parameters["params"]["seed"] == 3
    regulons = results.read_regulons()
    data = files["data"]
    adjacency = regulons_to_adjacency(regulons, list(data.gene_names))
    assert np.array_equal(results.read_auc(), get_aucell(data.expression, adjacency, k=None, device="cpu", seed=3,
                                                         verbose=False))
    assert (out / "report.html").is_file()
    # resuming a finished run recomputes nothing
    stamp = results.stages["auc"]["at"]
    assert main([*argv, "--resume"]) == 0
    assert open_results_store(out / "results.zarr").stages["auc"]["at"] == stamp


def test_run_bad_input(files, tmp_path, capsys):
    one_line_error(capsys, ["run", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "o"), *resources(files),
                            "--n-workers", "0"], "missing.h5ad")
    one_line_error(capsys, ["run", files["h5ad"], "--out", str(tmp_path / "o"), *resources(files)[:-2],
                            "--motif-annotation", str(tmp_path / "none.tbl"), "--n-workers", "0"], "none.tbl")


def test_run_flag_types_are_checked(files, tmp_path, capsys):
    assert main(["run", files["h5ad"], "--out", str(tmp_path), "--grn-n-steps", "many"]) == 2
    assert "expected an integer, got 'many'" in capsys.readouterr().err


def test_grn(files, tmp_path, capsys):
    out = tmp_path / "adj.tsv"
    assert main(["grn", files["h5ad"], files["tf_list"], "-o", str(out), "--grn-n-steps", "20", "--device", "cpu",
                 "--quiet"]) == 0
    table = read_adjacencies(out)
    assert len(table) and set(table["TF"]) <= set(files["data"].tf_names)
    assert (table["importance"] >= 1.5).all()
    assert f"{len(table):,} links" in capsys.readouterr().out


def test_grn_bad_tf_list(files, tmp_path, capsys):
    tfs = tmp_path / "tfs.txt"
    tfs.write_text("NOT_A_GENE\n")
    one_line_error(capsys, ["grn", files["h5ad"], str(tfs), "-o", str(tmp_path / "a.tsv")], "none of the 1 TFs")


def test_ctx_then_aucell_equal_the_api(files, tmp_path, capsys):
    motifs = tmp_path / "reg.csv"
    assert main(["ctx", files["adj"], files["ranking_db"], "--annotations", files["motif_annotation"], "-o",
                 str(motifs), "--device", "cpu", "--quiet"]) == 0
    table = read_motifs_csv(motifs)
    regulons = regulons_from_motifs(table)
    assert {r["tf"] for r in regulons} == set(files["data"].planted_tfs)

    auc_path = tmp_path / "auc.csv"
    assert main(["aucell", files["h5ad"], str(motifs), "-o", str(auc_path), "--seed", "7", "--device", "cpu",
                 "--quiet"]) == 0
    auc = read_auc_csv(auc_path)
    data = files["data"]
    expected = get_aucell(data.expression, regulons_to_adjacency(regulons, list(data.gene_names)), k=None,
                          device="cpu", seed=7, verbose=False)
    assert list(auc.columns) == [r["name"] for r in regulons]
    assert np.array_equal(auc.to_numpy(np.float32), expected)


def test_ctx_with_expression_splits_by_correlation(files, tmp_path):
    motifs = tmp_path / "reg.csv"
    assert main(["ctx", files["adj"], files["ranking_db"], "--annotations", files["motif_annotation"],
                 "--expression", files["h5ad"], "-o", str(motifs), "--device", "cpu", "--quiet"]) == 0
    contexts = set().union(*read_motifs_csv(motifs)["Context"])
    assert "activating" in contexts and "repressing" not in contexts


def test_ctx_bad_database(files, tmp_path, capsys):
    bad = tmp_path / "db.feather"
    bad.write_bytes(b"not a feather file")
    one_line_error(capsys, ["ctx", files["adj"], str(bad), "--annotations", files["motif_annotation"], "-o",
                            str(tmp_path / "reg.csv")], "db.feather")


def test_aucell_bad_regulon_file(files, tmp_path, capsys):
    path = tmp_path / "regulons.txt"
    path.write_text("TF(+)\tA\tB\n")
    one_line_error(capsys, ["aucell", files["h5ad"], str(path), "-o", str(tmp_path / "auc.csv")],
                   "reg.csv (.csv), a .gmt or a .json")


@pytest.fixture(scope="module")
def finished_run(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    assert main(["run", files["h5ad"], "--out", str(out), *resources(files), "--adjacencies", files["adj"],
                 "--cell-type-column", "cell_type", "--n-workers", "0", "--device", "cpu", "--quiet",
                 "--no-report"]) == 0
    return out


def test_rss_from_results_and_from_csv(files, finished_run, tmp_path):
    from flashscenic.export import write_auc_csv
    from flashscenic.rss import rss_table

    results = open_results_store(finished_run / "results.zarr")
    assert main(["rss", str(results.path), "-o", str(tmp_path / "a.csv")]) == 0
    from_store = pd.read_csv(tmp_path / "a.csv", index_col=0, float_precision="round_trip")
    auc = results.read_auc(as_frame=True)
    write_auc_csv(auc, tmp_path / "auc.csv")
    assert main(["rss", str(tmp_path / "auc.csv"), "--cell-types", files["cell_types"], "-o", str(tmp_path / "b.csv")]) == 0
    from_csv = pd.read_csv(tmp_path / "b.csv", index_col=0, float_precision="round_trip")
    expected = rss_table(auc, files["data"].cell_types)
    np.testing.assert_array_equal(from_store.to_numpy(), expected.to_numpy())
    np.testing.assert_allclose(from_csv.to_numpy(), expected.to_numpy(), rtol=1e-6)  # AUC went through text
    assert list(from_store.index) == list(expected.index)


def test_rss_without_labels(finished_run, tmp_path, capsys):
    from flashscenic.export import write_auc_csv

    auc = open_results_store(finished_run / "results.zarr").read_auc(as_frame=True)
    write_auc_csv(auc, tmp_path / "auc.csv")
    one_line_error(capsys, ["rss", str(tmp_path / "auc.csv"), "-o", str(tmp_path / "r.csv")], "no cell labels")


def test_report(finished_run, tmp_path, capsys):
    assert main(["report", str(finished_run / "results.zarr"), "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert html.count("<img") >= 5 and "cell_type" in html
    one_line_error(capsys, ["report", str(tmp_path), "-o", str(tmp_path / "x.html")], "")


def test_path_mistakes_are_one_line_errors(files, tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    one_line_error(capsys, ["run", files["h5ad"], "--out", str(a_file), *resources(files), "--n-workers", "0"],
                   "file.txt")
    one_line_error(capsys, ["run", files["h5ad"], "--out", str(tmp_path / "o"), "--ranking-db", files["ranking_db"],
                            "--motif-annotation", files["motif_annotation"], "--n-workers", "0"],
                   "give all three resource paths")
    one_line_error(capsys, ["aucell", files["h5ad"], str(tmp_path / "missing.csv"), "-o", str(tmp_path / "a.csv")],
                   "missing.csv")
    one_line_error(capsys, ["grn", files["h5ad"], str(tmp_path / "no_tfs.txt"), "-o", str(tmp_path / "a.tsv")],
                   "no_tfs.txt")
    one_line_error(capsys, ["run", files["h5ad"], "--out", str(tmp_path / "o2"), *resources(files), "--seed", "-1",
                            "--adjacencies", files["adj"], "--n-workers", "0"], "seed must be an integer in 0..4294967295")


def test_rss_leaves_unlabelled_cells_out(files, finished_run, tmp_path):
    from flashscenic.export import write_auc_csv
    from flashscenic.rss import rss_table

    auc = open_results_store(finished_run / "results.zarr").read_auc(as_frame=True)
    write_auc_csv(auc, tmp_path / "auc.csv")
    labels = pd.read_csv(files["cell_types"], index_col=0)
    labels.iloc[:100, 0] = np.nan
    labels.to_csv(tmp_path / "labels.csv")
    assert main(["rss", str(tmp_path / "auc.csv"), "--cell-types", str(tmp_path / "labels.csv"), "-o",
                 str(tmp_path / "r.csv")]) == 0
    got = pd.read_csv(tmp_path / "r.csv", index_col=0, float_precision="round_trip")
    expected = rss_table(read_auc_csv(tmp_path / "auc.csv").iloc[100:], files["data"].cell_types[100:])
    np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy())


def test_run_without_regdiffusion_is_a_one_line_error_before_any_work(files, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "regdiffusion", None)
    out = tmp_path / "run"
    one_line_error(capsys, ["run", files["h5ad"], "--out", str(out), *resources(files), "--n-workers", "0"],
                   "pip install regdiffusion")
    assert not out.exists()  # refused before ingesting anything


def test_stage_verbs_do_not_mention_their_temporary_store(files, tmp_path, capsys):
    motifs = tmp_path / "reg.csv"
    assert main(["ctx", files["adj"], files["ranking_db"], "--annotations", files["motif_annotation"], "-o",
                 str(motifs), "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["aucell", files["h5ad"], str(motifs), "-o", str(tmp_path / "auc.csv"), "--device", "cpu"]) == 0
    assert "ingested" not in capsys.readouterr().err
