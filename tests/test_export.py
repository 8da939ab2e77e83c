"""pySCENIC, AnnData and SCope formats: every export reads back with the same values and names.

The reg.csv test uses the real pySCENIC ``ctx`` output in ../shared/fixtures (skipped
with the reason when absent); GMT files are also read with ctxcore, pySCENIC's reader.
"""

from __future__ import annotations

import base64
import errno
import gzip
import json
import re
import warnings
import zlib
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest

from flashscenic.errors import IncompleteStageError, InputError
from flashscenic.export import (
    EXPORT_FORMATS,
    export_results,
    import_pyscenic,
    read_adjacencies,
    read_auc_csv,
    read_pyscenic_loom,
    read_regulons_gmt,
    read_regulons_json,
    results_to_anndata,
    write_adjacencies,
    write_auc_csv,
    write_regulons_gmt,
    write_regulons_json,
    write_scope_loom,
)
from flashscenic.regulons import read_motifs_csv, regulons_from_motifs
from flashscenic.store import MissingFileError, create_results_store, ingest_expression, open_expression_store
from pyscenic_fixtures import FIXTURES
from test_store import (
    N_CELLS,
    assert_motif_tables_equal,
    assert_regulons_equal,
    cell_names,
    gene_names,
    make_adata,
    make_counts,
    motif_table,
    run_cli,
    store_values,
    write_loom,
)

MOTIFS_CSV = FIXTURES / "GSE60361.motifs.csv.gz"


def regulons() -> list[dict]:
    return regulons_from_motifs(motif_table())


def auc_values(n_regulons=2, seed=0) -> np.ndarray:
    """Float32 AUCs with values that need all digits (and an exact 0)."""
    values = np.random.default_rng(seed).random((N_CELLS, n_regulons), dtype=np.float32) / 3
    values[0, 0] = 0.0
    return values


@pytest.fixture
def run(tmp_path):
    """A finished run: expression store with cell types, and a results store with every part."""
    adata = make_adata()
    adata.write_h5ad(tmp_path / "in.h5ad")
    expression = ingest_expression(tmp_path / "in.h5ad", tmp_path / "expr.zarr", obs_columns=["cell_type"],
                                   chunk_rows=64, verbose=False)
    results = create_results_store(tmp_path / "run.zarr", expression=expression)
    results.write_adjacencies(pd.DataFrame({"TF": ["Gene1", "Gene4"], "target": ["Gene2", "NA"],
                                            "importance": [0.123456789012345, 7.0]}))
    table = motif_table()
    results.write_motifs(table)
    found = regulons_from_motifs(table)
    results.write_regulons(found)
    results.write_auc(auc_values(len(found)), [r["name"] for r in found])
    for stage in ("grn", "pruning", "auc"):  # the pipeline marks its stages, not the store's writers
        results.mark_complete(stage)
    return results


# --- single formats ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adj.tsv", "adj.csv", "adj.tsv.gz"])
def test_adjacencies_round_trip(tmp_path, name):
    frame = pd.DataFrame({"TF": ["Sox2", "NA", "Sox2"], "target": ["nan", "Pou5f1", "Sox2"],
                          "importance": [0.1 + 0.2, 1e-12, 123456.78901234567]})
    path = write_adjacencies(frame, tmp_path / name)
    got = read_adjacencies(path)
    pd.testing.assert_frame_equal(got, frame, check_dtype=False)
    assert got["importance"].tolist() == frame["importance"].tolist()  # every bit of the float64
    if name == "adj.tsv":
        assert path.read_text().splitlines()[0] == "TF\ttarget\timportance"  # what `pyscenic grn` writes


@pytest.mark.parametrize("name", ["regulons.gmt", "regulons.json"])
def test_regulon_lists_round_trip(tmp_path, name):
    found = regulons()
    write, read = (write_regulons_gmt, read_regulons_gmt) if name.endswith("gmt") else \
        (write_regulons_json, read_regulons_json)
    got = read(write(found, tmp_path / name))
    assert [(r["name"], r["tf"], r["type"], r["genes"]) for r in got] == \
        [(r["name"], r["tf"], r["type"], r["genes"]) for r in found]
    assert all(r["weights"] == [1.0] * len(r["genes"]) for r in got)
    if name.endswith("json"):
        assert json.loads((tmp_path / name).read_text()) == {r["name"]: r["genes"] for r in found}  # pySCENIC's


def test_json_with_weights_round_trip(tmp_path):
    found = regulons()
    got = read_regulons_json(write_regulons_json(found, tmp_path / "r.json", weights=True))
    assert [(r["name"], r["genes"], r["weights"]) for r in got] == [(r["name"], r["genes"], r["weights"]) for r in found]


def test_gmt_reads_with_ctxcore(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ctxcore's pkg_resources notice
        from ctxcore.genesig import GeneSignature
    found = regulons()
    signatures = GeneSignature.from_gmt(str(write_regulons_gmt(found, tmp_path / "r.gmt")))
    assert [(s.name, sorted(s.genes)) for s in signatures] == [(r["name"], r["genes"]) for r in found]


def test_auc_csv_round_trip(tmp_path):
    values = auc_values(3)
    names = ["Sox2(+)", "Pou5f1(-)", "NA"]
    path = write_auc_csv(values, tmp_path / "auc.csv", cell_names(), names)
    assert path.read_text().splitlines()[0] == "Cell,Sox2(+),Pou5f1(-),NA"  # pyscenic aucell's header
    got = read_auc_csv(path)
    assert got.index.tolist() == cell_names() and got.columns.tolist() == names
    np.testing.assert_array_equal(got.to_numpy().astype(np.float32), values)  # float32 exactly
    pandas_view = pd.read_csv(path, index_col=0)  # how pySCENIC's load_exp_matrix reads it
    np.testing.assert_array_equal(pandas_view.to_numpy(np.float32), values)


def test_motifs_fixture_through_a_results_store(tmp_path):
    """The real pySCENIC reg.csv: import, store as parquet, export, read: the same table and regulons."""
    if not MOTIFS_CSV.exists():
        pytest.skip(f"real pySCENIC fixture {MOTIFS_CSV} is absent (../shared/fixtures/pyscenic beside the repo)")
    original = read_motifs_csv(MOTIFS_CSV)
    # a new results store needs its cells: an AUC file lists them
    auc_path = write_auc_csv(np.zeros((3, 1), np.float32), tmp_path / "auc.csv", ["a", "b", "c"], ["X(+)"])
    store = import_pyscenic(tmp_path / "run.zarr", motifs=MOTIFS_CSV, auc=auc_path)
    assert store.is_complete("pruning") and store.is_complete("auc")  # motifs and regulons: the pruning stage
    assert_motif_tables_equal(store.read_motifs(), original)
    expected_regulons = regulons_from_motifs(original)
    assert_regulons_equal(store.read_regulons(), expected_regulons)
    written = export_results(store, ["motifs", "gmt"], tmp_path)
    assert_motif_tables_equal(read_motifs_csv(written["motifs"]), original)
    assert [r["name"] for r in read_regulons_gmt(written["gmt"])] == [r["name"] for r in expected_regulons]


# --- AnnData and loom --------------------------------------------------------------------


def test_anndata_export(run, tmp_path):
    found = run.read_regulons()
    path = export_results(run, "anndata", tmp_path)["anndata"]
    adata = ad.read_h5ad(path)
    assert adata.obs_names.tolist() == cell_names()
    np.testing.assert_array_equal(adata.obsm["X_aucell"], run.read_auc())
    assert adata.uns["aucell"]["regulon_names"].tolist() == run.regulon_names
    assert adata.var_names.tolist() == gene_names()
    for regulon in found:
        stored = adata.uns["regulons"][regulon["name"]]
        assert stored["genes"].tolist() == regulon["genes"]
        assert stored["weights"].tolist() == regulon["weights"]
        assert stored["tf"] == regulon["tf"] and stored["type"] == regulon["type"]
        assert float(stored["score"]) == regulon["score"]
        assert stored["motifs"].tolist() == regulon["motifs"]


def test_anndata_results_added_to_a_users_object_in_its_order(run):
    user = make_adata()[::-1].copy()
    out = results_to_anndata(run, user)
    np.testing.assert_array_equal(out.obsm["X_aucell"], run.read_auc()[::-1])
    assert "X_aucell" not in user.obsm  # the user's object is left alone
    with pytest.raises(InputError, match="not the results' cells"):
        results_to_anndata(run, make_adata()[:10].copy())


def test_scope_loom_round_trip(run, tmp_path):
    auc = run.read_auc()
    names = run.regulon_names
    thresholds = {names[0]: 0.125}
    path = write_scope_loom(run, tmp_path / "scope.loom", cell_annotations="cell_type", auc_thresholds=thresholds,
                            title="test run", genome="mm10", tree_structure=["a", "b"], verbose=False)
    got_auc, got_regulons = read_pyscenic_loom(path)
    assert got_auc.index.tolist() == cell_names() and got_auc.columns.tolist() == names
    np.testing.assert_array_equal(got_auc.to_numpy(), auc)
    expected = {r["name"]: r["genes"] for r in run.read_regulons()}
    assert {r["name"]: r["genes"] for r in got_regulons} == expected  # all regulon genes are expressed genes

    with h5py.File(path, "r") as f:  # pySCENIC's export2loom layout, as loompy and SCope read it
        assert sorted(f.keys()) == ["attrs", "col_attrs", "col_graphs", "layers", "matrix", "row_attrs", "row_graphs"]
        np.testing.assert_array_equal(f["matrix"][:], make_counts().T)
        assert f["attrs/LOOM_SPEC_VERSION"][()] == b"3.0.0"
        assert f["attrs/title"][()] == b"test run" and f["attrs/Genome"][()] == b"mm10"
        assert [f[f"attrs/SCopeTreeL{i}"][()] for i in (1, 2, 3)] == [b"a", b"b", b""]
        assert set(f["col_attrs"]) == {"CellID", "nGene", "RegulonsAUC", "Embedding", "Embeddings_X", "Embeddings_Y",
                                       "Clusterings", "ClusterID"}
        np.testing.assert_array_equal(f["col_attrs/nGene"][:], np.count_nonzero(make_counts(), axis=1))
        assert f["col_attrs/Embedding"].dtype.names == ("_X", "_Y")
        assert f["col_attrs/Embeddings_X"].dtype.names == ("-1",)
        meta = json.loads(f["attrs/MetaData"][()].decode())
        labels = [x.decode() for x in f["col_attrs/CellID"][:]]
        cluster_ids = f["col_attrs/ClusterID"][:]
        np.testing.assert_array_equal(f["col_attrs/Clusterings"]["0"], cluster_ids)
    assert labels == cell_names()
    clusters = {c["id"]: c["description"] for c in meta["clusterings"][0]["clusters"]}
    cell_type = open_expression_store(run.expression_store).obs()["cell_type"].astype(str).tolist()
    assert [clusters[i] for i in cluster_ids] == cell_type
    assert meta["embeddings"] == [{"id": -1, "name": "PCA of AUC (default)"}]
    assert meta["regulonThresholds"] == [{
        "regulon": names[0], "defaultThresholdValue": 0.125, "defaultThresholdName": "gaussian_mixture_split",
        "allThresholds": {"gaussian_mixture_split": 0.125}, "motifData": "m2.png"}]  # the logo in its context

    # the loom is also an expression input: ingest gives back the expression
    again = ingest_expression(path, tmp_path / "again.zarr", verbose=False)
    np.testing.assert_array_equal(store_values(again), make_counts())
    assert again.gene_names.tolist() == gene_names()


def test_scope_loom_embedding_and_compressed_metadata(run, tmp_path):
    coordinates = np.random.default_rng(0).normal(size=(N_CELLS, 2))
    frame = pd.DataFrame(coordinates, index=cell_names())[::-1]  # any order: matched by cell name
    path = write_scope_loom(run, tmp_path / "s.loom", embedding=frame, compress_metadata=True, verbose=False)
    with h5py.File(path, "r") as f:
        embedding = f["col_attrs/Embedding"][:]
        meta = json.loads(zlib.decompress(base64.b64decode(f["attrs/MetaData"][()])))
    np.testing.assert_array_equal(np.column_stack([embedding["_X"], embedding["_Y"]]), coordinates)
    assert meta["regulonThresholds"] == [] and meta["embeddings"][0]["id"] == -1
    with pytest.raises(InputError, match=r"embedding must be cells x 2"):
        write_scope_loom(run, tmp_path / "t.loom", embedding=np.zeros((3, 2)), verbose=False)
    assert not (tmp_path / "t.loom").exists()


def test_pca_embedding_is_the_top_two_components(run, tmp_path):
    from flashscenic.export import _pca2

    auc = run.read_auc().astype(np.float64)
    got = _pca2(auc)
    centred = auc - auc.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(got), np.abs(u[:, :2] * s[:2]), atol=1e-9)


# --- imports -----------------------------------------------------------------------------


def test_import_pyscenic_files_into_a_new_store(tmp_path):
    """Every stage from pySCENIC's files: a results store equal to what they hold."""
    values = auc_values(2)
    found = regulons()
    names = [r["name"] for r in found]
    order = np.random.default_rng(1).permutation(N_CELLS)
    write_auc_csv(pd.DataFrame(values, index=cell_names(), columns=names).iloc[order], tmp_path / "auc.csv")
    adjacencies = pd.DataFrame({"TF": ["Gene1"], "target": ["Gene2"], "importance": [2.5]})
    write_adjacencies(adjacencies, tmp_path / "adj.tsv")
    write_regulons_gmt(found, tmp_path / "r.gmt")
    expression = ingest_expression(make_counts(), tmp_path / "e.zarr", gene_names=gene_names(),
                                   cell_names=cell_names(), verbose=False)

    store = import_pyscenic(tmp_path / "run.zarr", adjacencies=tmp_path / "adj.tsv", regulons=tmp_path / "r.gmt",
                            auc=tmp_path / "auc.csv", expression=expression)
    assert store.cell_names.tolist() == cell_names()  # the store's cells, not the CSV's order
    np.testing.assert_array_equal(store.read_auc(), values)
    assert store.regulon_names == names
    pd.testing.assert_frame_equal(store.read_adjacencies(), adjacencies)
    assert [r["genes"] for r in store.read_regulons()] == [r["genes"] for r in found]
    weights, rows, genes = store.read_regulon_weights()  # gene names from the expression store
    assert rows == names and genes == gene_names()
    assert store.stages.keys() >= {"grn", "pruning", "auc"}  # adjacencies: grn; regulons: pruning

    # new adjacencies into the same store: what was computed from the old ones is no longer complete
    store.mark_complete("rss", cell_type_column="x")
    store = import_pyscenic(tmp_path / "run.zarr", adjacencies=tmp_path / "adj.tsv")
    assert store.is_complete("grn") and not any(store.is_complete(s) for s in ("modules", "pruning", "auc", "rss"))
    with pytest.raises(IncompleteStageError, match="pruning"):
        export_results(store, "gmt", tmp_path)


def test_import_loom_and_export_again(run, tmp_path):
    path = write_scope_loom(run, tmp_path / "s.loom", verbose=False)
    store = import_pyscenic(tmp_path / "imported.zarr", loom=path)
    np.testing.assert_array_equal(store.read_auc(), run.read_auc())
    assert [r["name"] for r in store.read_regulons()] == run.regulon_names
    exported = export_results(store, ["auc", "gmt", "json"], tmp_path)
    np.testing.assert_array_equal(read_auc_csv(exported["auc"]).to_numpy(np.float32), run.read_auc())


def test_export_every_format(run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    written = export_results(run, list(EXPORT_FORMATS), out, verbose=False)
    assert {fmt: path.name for fmt, path in written.items()} == EXPORT_FORMATS
    assert all(path.exists() and path.stat().st_size > 0 for path in written.values())
    pd.testing.assert_frame_equal(read_adjacencies(written["adjacencies"]), run.read_adjacencies())
    assert_motif_tables_equal(read_motifs_csv(written["motifs"]), motif_table())
    single = export_results(run, "auc", output=tmp_path / "mine.tsv")
    assert single == {"auc": tmp_path / "mine.tsv"}
    np.testing.assert_array_equal(read_auc_csv(tmp_path / "mine.tsv").to_numpy(np.float32), run.read_auc())


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, reader, message",
    [
        pytest.param("a.tsv", "tf\ttarget\tweight\nA\tB\t1\n", read_adjacencies, "'TF', 'target', 'importance'",
                     id="adjacency-header"),
        pytest.param("a.tsv", "TF\ttarget\timportance\nA\tB\tbig\n", read_adjacencies,
                     r"a.tsv', line 2, column 'importance': 'big' is not a number", id="adjacency-value"),
        pytest.param("a.tsv", "TF\ttarget\timportance\nA\tB\tinf\n", read_adjacencies, "not a finite number",
                     id="adjacency-infinite"),
        pytest.param("a.csv", "Cell,R(+)\nc1,high\n", read_auc_csv, r"a.csv', line 2, column 'R\(\+\)': 'high' is not a number",
                     id="auc-text"),
        pytest.param("a.csv", "Cell,R(+)\nc1,0.1\nc1,0.2\n", read_auc_csv, r"\('c1' x2\)", id="auc-duplicate-cells"),
        pytest.param("r.gmt", "just-a-name\n", read_regulons_gmt, "found no tab", id="gmt"),
        pytest.param("r.json", "[1, 2]", read_regulons_json, "expected an object", id="json-shape"),
        pytest.param("r.json", "{oops", read_regulons_json, "cannot read .* as JSON", id="json-syntax"),
        pytest.param("x.loom", "", read_pyscenic_loom, "cannot open .* as a loom", id="loom-junk"),
    ],
)
def test_bad_files(tmp_path, name, content, reader, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(InputError, match=message):
        reader(tmp_path / name)


def test_missing_files_and_wrong_requests(run, tmp_path):
    for reader in (read_adjacencies, read_auc_csv, read_regulons_gmt, read_regulons_json, read_pyscenic_loom):
        with pytest.raises(MissingFileError, match="does not exist"):
            reader(tmp_path / "absent.txt")
    write_loom(tmp_path / "plain.loom", make_counts(), gene_names(), cell_names())
    with pytest.raises(InputError, match="no 'RegulonsAUC' attribute"):
        read_pyscenic_loom(tmp_path / "plain.loom")
    with pytest.raises(InputError, match=r"unknown export format\(s\) \['csv'\]"):
        export_results(run, ["auc", "csv"])
    with pytest.raises(InputError, match="with several formats use out_dir"):
        export_results(run, ["auc", "gmt"], output=tmp_path / "x")
    with pytest.raises(InputError, match="has no obs column 'tissue'"):
        write_scope_loom(run, tmp_path / "s.loom", cell_annotations="tissue", verbose=False)
    with pytest.raises(InputError, match="nothing to import"):
        import_pyscenic(tmp_path / "new.zarr")
    with pytest.raises(InputError, match="does not exist yet"):
        import_pyscenic(tmp_path / "new.zarr", adjacencies=tmp_path / "absent.tsv")
    other = create_results_store(tmp_path / "bare.zarr", cell_names=cell_names())
    with pytest.raises(IncompleteStageError, match=r"'grn'.*--resume"):
        export_results(other, "adjacencies", tmp_path)
    with pytest.raises(InputError, match="has no adjacencies table yet"):
        other.read_adjacencies()
    with pytest.raises(InputError, match="records no expression store; pass expression="):
        write_scope_loom(other, tmp_path / "s.loom", verbose=False)


@pytest.mark.parametrize(
    "reader, name, content",
    [
        pytest.param(read_adjacencies, "adj.tsv", b"TF\ttarget\timportance\nA\tB\t1\nCaf\xe9\tB\t2\n", id="adjacencies"),
        pytest.param(read_adjacencies, "adj.tsv.gz", b"TF\ttarget\timportance\nA\tB\t1\nCaf\xe9\tB\t2\n",
                     id="adjacencies-gz"),
        pytest.param(read_auc_csv, "auc.csv", b"Cell,R(+)\nc1,0.5\nc\xe9,0.25\n", id="auc"),
        pytest.param(read_regulons_gmt, "r.gmt", b"A(+)\td\tG1\nB(+)\td\tG2\nC(+)\td\tG\xe9\n", id="gmt"),
        pytest.param(read_regulons_json, "r.json", b'{\n"A(+)": ["G1"],\n"B(+)": ["G\xe9"]\n}\n', id="json"),
    ],
)
def test_text_that_is_not_utf8_is_refused_naming_file_and_line(tmp_path, reader, name, content):
    path = tmp_path / name
    path.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)  # latin-1 'é' on line 3
    with pytest.raises(InputError, match=rf"{re.escape(name)}' is not UTF-8 text: line 3 .*0xe9") as caught:
        reader(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "reader, name, content, column",
    [
        pytest.param(read_adjacencies, "adj.tsv", "TF\ttarget\timportance\nA\tB\t1\nC\tD\tabc\n", "importance",
                     id="adjacencies"),
        pytest.param(read_adjacencies, "adj.csv", "TF,target,importance\nA,B,1\nC,D,abc\n", "importance",
                     id="adjacencies-csv"),
        pytest.param(read_auc_csv, "auc.csv", "Cell,R(+),S(-)\nc1,0.5,0.1\nc2,0.2,abc\n", "S(-)", id="auc"),
    ],
)
def test_text_in_a_number_column_is_refused_naming_file_line_and_column(tmp_path, reader, name, content, column):
    (tmp_path / name).write_text(content)
    with pytest.raises(InputError, match=rf"{re.escape(name)}', line 3, column {re.escape(repr(column))}: 'abc' is not a number"):
        reader(tmp_path / name)


def test_ctx_command_refuses_a_bad_adjacency_file_in_one_line(tmp_path, capsys):
    for content, expected in ((b"TF\ttarget\timportance\nA\tB\t1\nCaf\xe9\tB\t2\n", "is not UTF-8 text: line 3"),
                              (b"TF\ttarget\timportance\nA\tB\t1\nC\tD\tabc\n", "line 3, column 'importance'")):
        (tmp_path / "adj.tsv").write_bytes(content)
        argv = ["ctx", str(tmp_path / "adj.tsv"), str(tmp_path / "db.feather"), "--annotations",
                str(tmp_path / "a.tbl"), "-o", str(tmp_path / "reg.csv")]
        assert run_cli(argv) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("flashscenic: error: ") and expected in err[0]
        assert "adj.tsv" in err[0]


# --- unfinished stages and interrupted writes ----------------------------------------------


def test_export_refuses_unfinished_stages_before_writing_anything(tmp_path, capsys):
    store = create_results_store(tmp_path / "run.zarr", cell_names=cell_names(), chunk_rows=64)
    store.write_regulons(regulons())
    store.mark_complete("pruning")
    store.init_auc(["A(+)", "B(+)"])
    store.write_auc_chunk(0, np.ones((64, 2)))  # 1 of 4 chunks: the AUC stage is not complete
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IncompleteStageError, match=r"'auc'.*--resume"):
        export_results(store, "auc", out)
    with pytest.raises(IncompleteStageError, match=r"'auc'"):
        export_results(store, ["gmt", "auc"], out)  # gmt could be written, but nothing is
    assert list(out.iterdir()) == []
    assert run_cli(["export", str(store.path), "--format", "auc", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("flashscenic: error: ") and "'auc'" in err[0] and "--resume" in err[0]
    assert list(out.iterdir()) == []
    assert export_results(store, "gmt", out) == {"gmt": out / "regulons.gmt"}  # a finished stage exports


def _full_disk() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def _break_writer(monkeypatch, fmt: str) -> None:
    """Make the writer of ``fmt`` write part of its output, then fail as a full disk would."""
    if fmt in ("adjacencies", "motifs", "auc"):
        def to_csv(self, handle, *args, **kwargs):
            handle.write("TF\ttar")
            raise _full_disk()
        monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    elif fmt in ("gmt", "json"):
        real = Path.write_text

        def write_text(self, data, *args, **kwargs):
            real(self, data[: len(data) // 2], *args, **kwargs)
            raise _full_disk()
        monkeypatch.setattr(Path, "write_text", write_text)
    elif fmt == "anndata":
        def write_h5ad(self, filename, *args, **kwargs):
            Path(filename).write_bytes(b"\x89HDF\r\n\x1a\nhalf")
            raise _full_disk()
        monkeypatch.setattr(ad.AnnData, "write_h5ad", write_h5ad)
    else:
        from flashscenic import export

        def structured(*args, **kwargs):  # called once the loom holds its expression matrix
            raise _full_disk()
        monkeypatch.setattr(export, "_structured", structured)


@pytest.mark.parametrize("fmt", list(EXPORT_FORMATS))
def test_a_writer_failing_midway_leaves_the_previous_file(run, tmp_path, monkeypatch, fmt):
    out = tmp_path / "out"
    out.mkdir()
    target = export_results(run, fmt, out, verbose=False)[fmt]
    before = target.read_bytes()
    _break_writer(monkeypatch, fmt)
    with pytest.raises(OSError, match="No space left"):
        export_results(run, fmt, out, verbose=False)
    assert target.read_bytes() == before
    assert [p.name for p in out.iterdir()] == [target.name]  # no partial file left beside it
    monkeypatch.undo()
    (out / target.name).unlink()
    _break_writer(monkeypatch, fmt)
    with pytest.raises(OSError, match="No space left"):
        export_results(run, fmt, out, verbose=False)
    assert list(out.iterdir()) == []  # nothing under the final name either


# --- the export command ------------------------------------------------------------------


def test_export_command(run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    argv = ["export", str(run.path), "--format", "auc", "--format", "loom", "--out-dir", str(out),
            "--cell-annotations", "cell_type", "--genome", "hg38", "--quiet"]
    assert run_cli(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"auc: {out / 'auc.csv'}", f"loom: {out / 'scope.loom'}"]
    with h5py.File(out / "scope.loom", "r") as f:
        assert f["attrs/Genome"][()] == b"hg38"
    assert run_cli(["export", str(run.path), "--format", "gmt", "-o", str(tmp_path / "x.gmt")]) == 0
    assert (tmp_path / "x.gmt").exists()
    capsys.readouterr()
    assert run_cli(["export", str(tmp_path / "absent.zarr"), "--format", "auc"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("flashscenic: error: ") and "does not exist" in err[0]
