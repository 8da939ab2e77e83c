"""The expression store and the results store: every input format round-trips into the store.

Round trips compare the values (as float32) and the names exactly, through our readers and
through ``anndata.read_zarr``, which must open every expression store as AnnData. The
checks of bad input, common to ingest and ``read_expression``, are in test_io.py.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import threading
import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import zarr

from flashscenic.errors import FlashscenicError, IncompleteStageError, InputError
from flashscenic.store import (
    EXPRESSION_FORMAT,
    STAGES,
    ExpressionStore,
    MissingFileError,
    ResultsStore,
    create_results_store,
    ingest_expression,
    open_expression_store,
    open_results_store,
)
from flashscenic.store.expression import _XWriter

N_CELLS, N_GENES = 203, 37


# --- shared data and helpers (test_export imports them) ----------------------------------


def make_counts(n_cells=N_CELLS, n_genes=N_GENES, seed=0, density=0.3) -> np.ndarray:
    """Sparse-ish non-negative float32 values with a few exact ties and zero genes."""
    rng = np.random.default_rng(seed)
    values = rng.negative_binomial(1.5, 0.4, size=(n_cells, n_genes)).astype(np.float32)
    values[rng.random((n_cells, n_genes)) > density] = 0
    values[:, 3] = 0  # an all-zero gene
    values[0, 0] = 7.0
    return values


def gene_names(n=N_GENES) -> list[str]:
    return [f"Gene{j}" for j in range(n)]


def cell_names(n=N_CELLS) -> list[str]:
    return [f"cell_{i:04d}" for i in range(n)]


def make_adata(dense=False, seed=0) -> ad.AnnData:
    x = make_counts(seed=seed)
    adata = ad.AnnData(X=x if dense else sp.csr_matrix(x))
    adata.obs_names = cell_names()
    adata.var_names = gene_names()
    rng = np.random.default_rng(seed)
    adata.obs["cell_type"] = pd.Categorical(rng.choice(["B", "T", "NK"], size=N_CELLS))
    adata.obs["n_counts"] = x.sum(axis=1)
    adata.layers["counts"] = sp.csr_matrix(np.round(x * 2))
    return adata


def write_loom(path, x: np.ndarray, genes, cells, labels=None) -> None:
    """A loom as loompy/pySCENIC write it: /matrix genes x cells, ASCII byte-string attributes."""
    with h5py.File(path, "w") as f:
        for group in ("attrs", "layers", "row_attrs", "col_attrs", "row_graphs", "col_graphs"):
            f.create_group(group)
        f.create_dataset("matrix", data=x.T, chunks=(min(64, x.shape[1]), min(64, x.shape[0])), compression="gzip")
        f["row_attrs/Gene"] = np.array([g.encode("ascii", "xmlcharrefreplace") for g in genes])
        f["col_attrs/CellID"] = np.array([c.encode("ascii", "xmlcharrefreplace") for c in cells])
        if labels is not None:
            f["col_attrs/ClusterName"] = np.array([s.encode() for s in labels])
        f["attrs/LOOM_SPEC_VERSION"] = np.bytes_(b"3.0.0")


def store_values(store: ExpressionStore) -> np.ndarray:
    return np.vstack([block for _, _, block in store.iter_chunks("dense", verbose=False)])


def assert_store(path, x: np.ndarray, genes, cells, layout=None) -> ExpressionStore:
    """Values, names and AnnData view of the store at ``path`` equal ``x``, ``genes``, ``cells``."""
    store = open_expression_store(path)
    expected = np.asarray(x, dtype=np.float32)
    assert store.shape == expected.shape
    np.testing.assert_array_equal(store_values(store), expected)
    assert store.gene_names.tolist() == list(genes)
    assert store.cell_names.tolist() == list(cells)
    if layout:
        assert store.layout == layout
    adata = ad.read_zarr(path)
    got = adata.X.toarray() if sp.issparse(adata.X) else adata.X
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    assert adata.var_names.tolist() == list(genes) and adata.obs_names.tolist() == list(cells)
    return store


def no_leftovers(folder) -> None:
    """Nothing half-written beside the store: no .partial or .old folders."""
    left = [p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    assert left == []


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dense", "csr", "csc", "dataframe"])
def test_arrays_round_trip(tmp_path, kind):
    x = make_counts()
    source = {"dense": x, "csr": sp.csr_matrix(x), "csc": sp.csc_matrix(x),
              "dataframe": pd.DataFrame(x, index=cell_names(), columns=gene_names())}[kind]
    names = {} if kind == "dataframe" else {"gene_names": gene_names(), "cell_names": cell_names()}
    ingest_expression(source, tmp_path / "s.zarr", chunk_rows=50, verbose=False, **names)
    store = assert_store(tmp_path / "s.zarr", x, gene_names(), cell_names(),
                         layout="dense" if kind in ("dense", "dataframe") else "csr")
    assert store.chunk_rows == 50 and store.n_chunks == 5
    no_leftovers(tmp_path)


@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
def test_compressions_round_trip(tmp_path, compression):
    x = make_counts()
    store = ingest_expression(sp.csr_matrix(x), tmp_path / "s.zarr", gene_names=gene_names(), compression=compression,
                              chunk_rows=64, verbose=False)
    assert store.metadata["compression"] == compression
    np.testing.assert_array_equal(store_values(store), x)
    codecs = zarr.open_array(tmp_path / "s.zarr" / "X" / "data", mode="r").metadata.codecs
    assert {"lz4": "BloscCodec", "zstd": "ZstdCodec", "none": "BytesCodec"}[compression] == type(codecs[-1]).__name__


@pytest.mark.parametrize("sparse_chunk", [97, 256, 10**6])
def test_csr_values_cross_zarr_chunks(tmp_path, monkeypatch, sparse_chunk):
    """Blocks of rows end anywhere inside the fixed-size chunks of data/indices; only whole chunks are written."""
    import flashscenic.store.expression

    monkeypatch.setattr(flashscenic.store.expression, "_SPARSE_CHUNK", sparse_chunk)
    x = make_counts()
    store = ingest_expression(sp.csr_matrix(x), tmp_path / "s.zarr", gene_names=gene_names(), chunk_rows=13,
                              verbose=False)
    np.testing.assert_array_equal(store_values(store), x)
    assert zarr.open_array(tmp_path / "s.zarr" / "X" / "data", mode="r").chunks == (sparse_chunk,)
    assert zarr.open_array(tmp_path / "s.zarr" / "X" / "data", mode="r").shape == (np.count_nonzero(x),)


def test_array_cell_names_default_to_positions(tmp_path):
    x = make_counts()
    store = ingest_expression(x.astype(np.int64), tmp_path / "s.zarr", gene_names=gene_names(), verbose=False)
    assert store.cell_names.tolist() == [str(i) for i in range(N_CELLS)]
    np.testing.assert_array_equal(store_values(store), x)


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
def test_h5ad_round_trip_with_labels(tmp_path, dense):
    adata = make_adata(dense=dense)
    adata.write_h5ad(tmp_path / "in.h5ad")
    ingest_expression(tmp_path / "in.h5ad", tmp_path / "s.zarr", obs_columns=["cell_type", "n_counts"],
                      chunk_rows=64, verbose=False)
    store = assert_store(tmp_path / "s.zarr", make_counts(), gene_names(), cell_names(),
                         layout="dense" if dense else "csr")
    obs = store.obs()
    assert obs["cell_type"].dtype == "category"
    assert obs["cell_type"].tolist() == adata.obs["cell_type"].tolist()
    np.testing.assert_array_equal(obs["n_counts"].to_numpy(), adata.obs["n_counts"].to_numpy())
    assert store.metadata["source"] == str(tmp_path / "in.h5ad")


def test_h5ad_layer_and_log1p(tmp_path):
    adata = make_adata()
    adata.write_h5ad(tmp_path / "in.h5ad")
    store = ingest_expression(tmp_path / "in.h5ad", tmp_path / "s.zarr", layer="counts", log1p=True, verbose=False)
    expected = np.log1p(np.round(make_counts() * 2).astype(np.float32))
    np.testing.assert_array_equal(store_values(store), expected)
    assert store.metadata["layer"] == "counts" and store.metadata["log1p"] is True


@pytest.mark.parametrize("backed", [False, True])
def test_anndata_object_round_trip(tmp_path, backed):
    adata = make_adata()
    if backed:
        adata.write_h5ad(tmp_path / "in.h5ad")
        adata = ad.read_h5ad(tmp_path / "in.h5ad", backed="r")
    ingest_expression(adata, tmp_path / "s.zarr", obs_columns=["cell_type"], chunk_rows=100, verbose=False)
    store = assert_store(tmp_path / "s.zarr", make_counts(), gene_names(), cell_names(), layout="csr")
    assert store.obs()["cell_type"].tolist() == list(adata.obs["cell_type"])
    if not backed:
        layer = ingest_expression(adata, tmp_path / "l.zarr", layer="counts", verbose=False)
        np.testing.assert_array_equal(store_values(layer), np.round(make_counts() * 2))


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data:UserWarning")
@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_anndata_zarr_round_trip(tmp_path, zarr_format):
    adata = make_adata()
    with ad.settings.override(zarr_write_format=zarr_format, auto_shard_zarr_v3=False):
        adata.write_zarr(tmp_path / "in.zarr")
    ingest_expression(tmp_path / "in.zarr", tmp_path / "s.zarr", obs_columns=["cell_type"], verbose=False)
    store = assert_store(tmp_path / "s.zarr", make_counts(), gene_names(), cell_names())
    assert store.obs()["cell_type"].tolist() == list(adata.obs["cell_type"])
    # an expression store is itself AnnData-on-zarr: it can be ingested again
    again = ingest_expression(tmp_path / "s.zarr", tmp_path / "t.zarr", layout="dense", verbose=False)
    np.testing.assert_array_equal(store_values(again), make_counts())


def test_loom_round_trip(tmp_path):
    x = make_counts()
    genes = [*gene_names()[:-1], "Gène-é"]  # non-ASCII survives as an XML character reference
    labels = [f"type{i % 3}" for i in range(N_CELLS)]
    write_loom(tmp_path / "in.loom", x, genes, cell_names(), labels)
    ingest_expression(tmp_path / "in.loom", tmp_path / "s.zarr", obs_columns=["ClusterName"], chunk_rows=64,
                      verbose=False)
    store = assert_store(tmp_path / "s.zarr", x, genes, cell_names(), layout="dense")
    assert store.obs()["ClusterName"].tolist() == labels


@pytest.mark.parametrize("name, sep", [("in.csv", ","), ("in.tsv.gz", "\t")])
def test_text_round_trip(tmp_path, name, sep):
    x = make_counts()
    frame = pd.DataFrame(x, index=pd.Index(cell_names(), name="Cell"), columns=gene_names())
    frame.to_csv(tmp_path / name, sep=sep)
    ingest_expression(tmp_path / name, tmp_path / "s.zarr", chunk_rows=40, verbose=False)
    assert_store(tmp_path / "s.zarr", x, gene_names(), cell_names(), layout="dense")


def test_transposed_csv(tmp_path):
    x = make_counts()
    pd.DataFrame(x.T, index=gene_names(), columns=cell_names()).to_csv(tmp_path / "in.csv")
    ingest_expression(tmp_path / "in.csv", tmp_path / "s.zarr", transpose=True, verbose=False)
    assert_store(tmp_path / "s.zarr", x, gene_names(), cell_names())


def test_gene_subset_keeps_input_order(tmp_path):
    x = make_counts()
    wanted = ["Gene9", "Gene2", "Gene30"]
    store = ingest_expression(sp.csr_matrix(x), tmp_path / "s.zarr", gene_names=gene_names(), genes=wanted,
                              verbose=False)
    assert store.gene_names.tolist() == ["Gene2", "Gene9", "Gene30"]
    np.testing.assert_array_equal(store_values(store), x[:, [2, 9, 30]])
    # input blocks sized for all 37 input genes (6 cells), store chunks for the 3 kept ones (85 cells)
    small = ingest_expression(x, tmp_path / "b.zarr", gene_names=gene_names(), genes=wanted, memory_budget="1KB",
                              verbose=False)
    assert small.chunk_rows == 1024 // (4 * 3)
    np.testing.assert_array_equal(store_values(small), x[:, [2, 9, 30]])
    (tmp_path / "genes.txt").write_text("# TFs\nGene30\n\nGene1\n")
    store = ingest_expression(x, tmp_path / "f.zarr", gene_names=gene_names(), genes=tmp_path / "genes.txt",
                              verbose=False)
    assert store.gene_names.tolist() == ["Gene1", "Gene30"]


@pytest.mark.parametrize("sparse", [False, True])
def test_top_variable_genes(tmp_path, sparse):
    x = make_counts()
    logged = np.log1p(x).astype(np.float64)
    expected = np.sort(np.argsort(-logged.var(axis=0, ddof=1), kind="stable")[:10])
    source = sp.csr_matrix(x) if sparse else x
    store = ingest_expression(source, tmp_path / "s.zarr", gene_names=gene_names(), n_top_genes=10, log1p=True,
                              chunk_rows=17, verbose=False)
    np.testing.assert_array_equal(source.toarray() if sparse else source, make_counts())  # input untouched
    assert store.gene_names.tolist() == [gene_names()[j] for j in expected]
    np.testing.assert_array_equal(store_values(store), np.log1p(x)[:, expected])


def test_chunk_rows_from_memory_budget(tmp_path):
    store = ingest_expression(make_counts(), tmp_path / "s.zarr", gene_names=gene_names(), memory_budget="4KB",
                              verbose=False)
    assert store.chunk_rows == 4096 // (4 * N_GENES)
    assert zarr.open_array(tmp_path / "s.zarr" / "X", mode="r").chunks == (store.chunk_rows, N_GENES)
    big = ingest_expression(make_counts(), tmp_path / "b.zarr", gene_names=gene_names(), verbose=False)
    assert big.chunk_rows == N_CELLS  # never more than the cells


def test_store_attributes_are_stamped(tmp_path):
    ingest_expression(sp.csr_matrix(make_counts()), tmp_path / "s.zarr", gene_names=gene_names(), verbose=False)
    root = zarr.open_group(tmp_path / "s.zarr", mode="r")
    assert root.metadata.zarr_format == 3
    assert root.attrs["encoding-type"] == "anndata" and root.attrs["encoding-version"] == "0.1.0"
    assert root["X"].attrs["encoding-type"] == "csr_matrix"
    assert list(root["X"].attrs["shape"]) == [N_CELLS, N_GENES]
    assert root["obs"].attrs["encoding-type"] == "dataframe"
    meta = root.attrs[EXPRESSION_FORMAT]
    assert meta["complete"] is True and meta["encoding-version"] == "0.1.0"
    assert meta["nnz"] == np.count_nonzero(make_counts())
    assert meta["versions"]["zarr"] == zarr.__version__


# --- reading the store -------------------------------------------------------------------


@pytest.fixture(scope="module")
def csr_store(tmp_path_factory) -> ExpressionStore:
    path = tmp_path_factory.mktemp("store") / "s.zarr"
    return ingest_expression(sp.csr_matrix(make_counts()), path, gene_names=gene_names(), cell_names=cell_names(),
                             chunk_rows=32, verbose=False)


def test_chunks_dense_and_csr(csr_store):
    x = make_counts()
    ranges = csr_store.chunk_ranges()
    assert ranges[0] == (0, 32) and ranges[-1] == (192, N_CELLS) and len(ranges) == csr_store.n_chunks
    for start, stop, block in csr_store.iter_chunks("csr", verbose=False):
        assert sp.isspmatrix_csr(block) and block.dtype == np.float32
        np.testing.assert_array_equal(block.toarray(), x[start:stop])
    for start, stop, block in csr_store.iter_chunks("dense", rows=100, verbose=False):
        assert isinstance(block, np.ndarray) and block.dtype == np.float32 and block.shape == (stop - start, N_GENES)
        np.testing.assert_array_equal(block, x[start:stop])
    np.testing.assert_array_equal(csr_store.read_rows(30, 70), x[30:70])


def test_sampling_is_reproducible(csr_store):
    a, b = csr_store.sample_cells(50, seed=3), csr_store.sample_cells(50, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, csr_store.sample_cells(50, seed=4))
    assert len(set(a)) == 50 and (np.diff(a) > 0).all()
    positions, rows = csr_store.sample(50, seed=3)
    np.testing.assert_array_equal(positions, a)
    np.testing.assert_array_equal(rows, make_counts()[a])
    assert csr_store.sample_cells(10**6).size == N_CELLS


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_read_cells_in_either_layout_and_kind(tmp_path, layout):
    x = make_counts()
    store = ingest_expression(x, tmp_path / "s.zarr", gene_names=gene_names(), cell_names=cell_names(),
                              chunk_rows=32, layout=layout, verbose=False)
    positions = np.array([0, 5, 31, 32, 33, 100, 191, N_CELLS - 1])
    for kind in ("dense", "csr"):
        rows = store.read_cells(positions, kind)
        assert rows.dtype == np.float32 and rows.shape == (positions.size, N_GENES)
        assert sp.isspmatrix_csr(rows) if kind == "csr" else isinstance(rows, np.ndarray)
        np.testing.assert_array_equal(rows.toarray() if kind == "csr" else rows, x[positions])
        assert store.read_cells(positions[:0], kind).shape == (0, N_GENES)


def test_store_pickles_small(csr_store):
    csr_store.read_rows(0, 10)
    blob = pickle.dumps(csr_store)
    assert len(blob) < 1000
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.read_rows(5, 9), make_counts()[5:9])


# --- ingest options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        pytest.param({"layout": "coo"}, "layout='coo'", id="layout"),
        pytest.param({"compression": "gzip"}, "compression='gzip' is not one of", id="compression"),
        pytest.param({"memory_budget": "lots"}, "not a size", id="budget"),
        pytest.param({"chunk_rows": 0}, "chunk_rows must be a positive integer", id="chunk-rows"),
        pytest.param({"genes": ["Gene1", "nope"]}, r"1 of the 2 requested genes are not in the input, e.g. \['nope'\]",
                     id="unknown-gene"),
        pytest.param({"genes": ["Gene1"], "n_top_genes": 3}, "not both", id="genes-and-top"),
        pytest.param({"n_top_genes": 0}, "n_top_genes must be a positive integer", id="top-zero"),
        pytest.param({"obs_columns": ["cell_type"]}, "needs an input with cell annotations", id="obs-on-array"),
        pytest.param({"gene_names": gene_names(3)}, "gene_names has 3 names but the array has 37 columns",
                     id="gene-count"),
        pytest.param({"gene_names": None}, "gene_names is required", id="no-gene-names"),
    ],
)
def test_bad_options(tmp_path, options, message):
    kwargs = {"gene_names": gene_names(), **options}
    with pytest.raises(InputError, match=message):
        ingest_expression(make_counts(), tmp_path / "s.zarr", verbose=False, **kwargs)
    assert not (tmp_path / "s.zarr").exists()


# --- atomic writes -----------------------------------------------------------------------


def test_failure_midway_leaves_no_store_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    old = ingest_expression(make_counts(seed=1), path, gene_names=gene_names(), verbose=False)
    with pytest.raises(InputError, match="already exists"):
        ingest_expression(make_counts(), path, gene_names=gene_names(), verbose=False)

    calls = []

    def failing_write(self, block):
        calls.append(block.shape[0])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C in the middle
        original(self, block)

    original = _XWriter.write
    monkeypatch.setattr(_XWriter, "write", failing_write)
    with pytest.raises(KeyboardInterrupt):
        ingest_expression(make_counts(), path, gene_names=gene_names(), chunk_rows=20, overwrite=True, verbose=False)
    monkeypatch.undo()
    assert len(calls) == 2
    assert not [t for t in threading.enumerate() if t.name == "flashscenic-ingest-reader"]  # the reader stopped
    np.testing.assert_array_equal(store_values(open_expression_store(path)), make_counts(seed=1))
    no_leftovers(tmp_path)
    new = ingest_expression(make_counts(), path, gene_names=gene_names(), overwrite=True, verbose=False)
    np.testing.assert_array_equal(store_values(new), make_counts())
    no_leftovers(tmp_path)
    del old


@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")
def test_incomplete_or_newer_store_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    ingest_expression(make_counts(), path, gene_names=gene_names(), verbose=False)
    group = zarr.open_group(path, mode="r+")
    meta = dict(group.attrs[EXPRESSION_FORMAT])
    group.attrs[EXPRESSION_FORMAT] = {**meta, "complete": False}
    with pytest.raises(InputError, match="incomplete expression store"):
        open_expression_store(path)
    group.attrs[EXPRESSION_FORMAT] = {**meta, "encoding-version": "9.0.0"}
    with pytest.raises(InputError, match=r"format 9.0.0, newer than this flashscenic reads .*upgrade flashscenic"):
        open_expression_store(path)
    with ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False):
        ad.AnnData(X=make_counts()).write_zarr(tmp_path / "plain.zarr")
    with pytest.raises(InputError, match="not a flashscenic expression store"):
        open_expression_store(tmp_path / "plain.zarr")
    with pytest.raises(MissingFileError):
        open_expression_store(tmp_path / "absent.zarr")


# --- results store -----------------------------------------------------------------------


@pytest.fixture
def results(tmp_path, csr_store) -> ResultsStore:
    return create_results_store(tmp_path / "run.zarr", expression=csr_store, parameters={"seed": 0, "k": None})


def test_results_store_layout_and_metadata(results, csr_store):
    root = zarr.open_group(results.path, mode="r")
    assert root.metadata.zarr_format == 3
    assert root.attrs["encoding-type"] == "flashscenic-results" and root.attrs["encoding-version"] == "0.1.0"
    assert results.parameters == {"seed": 0, "k": None}
    assert results.versions["zarr"] == zarr.__version__ and results.versions["python"] == sys.version.split()[0]
    assert results.chunk_rows == csr_store.chunk_rows and results.n_cells == N_CELLS
    assert results.cell_names.tolist() == cell_names()
    assert results.expression_store == str(csr_store.path.resolve())
    results.record_timing("grn", 1.5)
    results.update_parameters(grn_n_steps=1000)
    results.mark_complete("grn", tfs=3)
    again = open_results_store(results.path)
    assert again.timings == {"grn": 1.5}
    assert again.parameters["grn_n_steps"] == 1000
    assert again.is_complete("grn") and not again.is_complete("auc")
    assert again.stages["grn"]["tfs"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # parquet tables beside zarr nodes would make zarr warn
        assert sorted(name for name, _ in root.members()) == ["tables"]
    cells = pd.read_parquet(results.path / "tables" / "cells.parquet")  # the tables are plain parquet files
    assert cells["cell"].tolist() == cell_names()


def test_results_auc_chunks_resume(results):
    rng = np.random.default_rng(0)
    auc = rng.random((N_CELLS, 4), dtype=np.float32)
    names = ["A(+)", "B(+)", "B(-)", "C(+)"]
    results.init_auc(names)
    assert results.missing_auc_chunks() == list(range(7))
    for index in (0, 3, 6):
        start, stop = results.auc_chunk_ranges()[index]
        results.write_auc_chunk(index, auc[start:stop])
    with pytest.raises(InputError, match=r"4 AUC chunk\(s\) are not written yet"):
        results.finish_auc()
    results.init_auc(names)  # same regulons: a resumed run keeps the written chunks
    assert results.missing_auc_chunks() == [1, 2, 4, 5]
    for index in results.missing_auc_chunks():
        start, stop = results.auc_chunk_ranges()[index]
        open_results_store(results.path).write_auc_chunk(index, auc[start:stop])  # as another worker would
    results.finish_auc(seconds=0.25)
    assert not results.is_complete("auc") and results.timings["auc"] == 0.25  # the run marks the stage
    results.mark_complete("auc")
    assert results.is_complete("auc")
    np.testing.assert_array_equal(results.read_auc(), auc)
    frame = results.read_auc(as_frame=True)
    assert frame.index.tolist() == cell_names() and frame.columns.tolist() == names
    assert zarr.open_array(results.path / "auc", mode="r").chunks == (32, 4)
    results.init_auc(["X(+)"])  # other regulons: start afresh
    assert results.missing_auc_chunks() == list(range(7)) and not results.is_complete("auc")
    with pytest.raises(InputError, match=r"AUC chunk 1 must be \(32, 1\), got \(5, 1\)"):
        results.write_auc_chunk(1, np.zeros((5, 1)))


def test_results_tables_round_trip(results):
    from flashscenic.regulons import regulons_from_motifs

    adjacencies = pd.DataFrame({"TF": ["Gene1", "Gene1", "NA"], "target": ["Gene2", "NA", "Gene1"],
                                "importance": [0.5, 1e-300, 12345.678901234567]})
    results.write_adjacencies(adjacencies)
    pd.testing.assert_frame_equal(results.read_adjacencies(), adjacencies, check_dtype=False)

    weights = np.random.default_rng(1).random((3, N_GENES), dtype=np.float32)
    results.write_tf_gene_weights(weights, ["Gene1", "Gene4", "Gene8"], gene_names())
    got, tfs, genes = results.read_tf_gene_weights()
    np.testing.assert_array_equal(got, weights)
    assert tfs == ["Gene1", "Gene4", "Gene8"] and genes == gene_names()

    table = motif_table()
    results.write_motifs(table)
    got = results.read_motifs()
    assert_motif_tables_equal(got, table)

    regulons = regulons_from_motifs(table)
    results.write_regulons(regulons)
    assert_regulons_equal(results.read_regulons(), regulons)
    matrix, names, genes = results.read_regulon_weights()
    assert names == [r["name"] for r in regulons] and genes == gene_names()
    for row, regulon in zip(matrix, regulons):
        expected = dict(zip(regulon["genes"], regulon["weights"]))
        assert {genes[j]: float(row[j]) for j in np.flatnonzero(row)} == pytest.approx(expected)


def test_writers_leave_no_stage_markers(results):
    """Only the run knows when a stage is whole (e.g. pruning = motifs + regulons): writers mark nothing."""
    results.write_adjacencies(pd.DataFrame({"TF": ["Gene1"], "target": ["Gene2"], "importance": [0.5]}))
    results.write_tf_gene_weights(np.ones((1, N_GENES), dtype=np.float32), ["Gene1"], gene_names())
    results.write_motifs(motif_table())
    results.write_regulons(regulons_from_table())
    results.write_auc(np.zeros((N_CELLS, 2), dtype=np.float32), ["A(+)", "B(+)"])
    results.finish_auc(seconds=1.0)
    assert results.stages == {}
    assert not any(results.is_complete(stage) for stage in (*STAGES, "adjacencies", "motifs", "regulons"))


def test_require_names_the_missing_stages_and_resume(results):
    results.mark_complete("grn")
    results.mark_complete("modules")
    results.require("grn", "modules")
    with pytest.raises(IncompleteStageError) as caught:
        results.require("grn", "pruning", "auc")
    message = str(caught.value)
    assert "\n" not in message
    assert "'pruning', 'auc'" in message and "'grn'" not in message
    assert str(results.path) in message and "complete: grn, modules" in message
    assert "flashscenic run ... --resume" in message and "run_pipeline(..., resume=True)" in message
    assert isinstance(caught.value, InputError)  # one line on the command line, not a traceback
    assert STAGES == ("grn", "modules", "pruning", "auc", "rss")


def test_read_auc_of_an_incomplete_auc_is_refused(results):
    results.init_auc(["A(+)", "B(+)"])
    for index in (0, 2):
        start, stop = results.auc_chunk_ranges()[index]
        results.write_auc_chunk(index, np.ones((stop - start, 2)))
    with pytest.raises(IncompleteStageError, match=r"5 of 7 chunk\(s\) are not written yet.*--resume"):
        results.read_auc()
    with pytest.raises(IncompleteStageError):
        results.read_auc(as_frame=True)


def test_run_folder_renamed_keeps_its_expression_store(tmp_path):
    """A run folder holds expression.zarr beside results.zarr; it may be moved (staged, then renamed)."""
    run = tmp_path / ".staging-run"
    run.mkdir()
    ingest_expression(make_counts(), run / "expression.zarr", gene_names=gene_names(), verbose=False)
    create_results_store(run / "results.zarr", expression=run / "expression.zarr")
    assert zarr.open_group(run / "results.zarr", mode="r").attrs["expression_store"] == "expression.zarr"
    moved = tmp_path / "run"
    run.rename(moved)
    results = open_results_store(moved / "results.zarr")
    assert results.expression_store == str((moved / "expression.zarr").resolve())
    assert open_expression_store(results.expression_store).gene_names.tolist() == gene_names()
    results.write_regulons(regulons_from_table())  # the weights take the genes of the expression store
    assert results.read_regulon_weights()[2] == gene_names()
    # elsewhere: recorded absolute
    other = create_results_store(tmp_path / "other.zarr", expression=moved / "expression.zarr")
    assert zarr.open_group(other.path, mode="r").attrs["expression_store"] == str((moved / "expression.zarr").resolve())
    assert other.expression_store == str((moved / "expression.zarr").resolve())


def test_overwrite_replaces_a_results_store_whole(tmp_path):
    old = create_results_store(tmp_path / "r.zarr", cell_names=["a", "b"], parameters={"run": 1})
    old.mark_complete("grn")
    new = create_results_store(tmp_path / "r.zarr", cell_names=["c"], parameters={"run": 2}, overwrite=True)
    assert new.parameters == {"run": 2} and new.stages == {} and new.cell_names.tolist() == ["c"]
    no_leftovers(tmp_path)


def test_results_store_is_refused_when_newer_or_foreign(results, tmp_path):
    zarr.open_group(results.path, mode="r+").attrs["encoding-version"] = "1.0.0"
    with pytest.raises(InputError, match=r"newer than this flashscenic reads \(0.1.0\); upgrade flashscenic"):
        open_results_store(results.path)
    zarr.open_group(tmp_path / "other.zarr", mode="w", zarr_format=3)
    with pytest.raises(InputError, match="not a flashscenic results store"):
        open_results_store(tmp_path / "other.zarr")
    with pytest.raises(InputError, match="already exists"):
        create_results_store(results.path, cell_names=["a"])
    with pytest.raises(InputError, match="has no adjacencies table yet"):
        create_results_store(tmp_path / "new.zarr", cell_names=["a", "b"]).read_adjacencies()


@pytest.mark.parametrize(
    "frame, message",
    [
        pytest.param(pd.DataFrame({"TF": ["a"], "target": ["b"]}), r"lack column\(s\) \['importance'\]", id="columns"),
        pytest.param(pd.DataFrame({"TF": ["a"], "target": ["b"], "importance": ["x"]}), "not a finite number",
                     id="value"),
    ],
)
def test_bad_adjacencies(results, frame, message):
    with pytest.raises(InputError, match=message):
        results.write_adjacencies(frame)


# --- motif tables for the tests ------------------------------------------------------------


def regulons_from_table() -> list[dict]:
    from flashscenic.regulons import regulons_from_motifs

    return regulons_from_motifs(motif_table())


def motif_table() -> pd.DataFrame:
    """A small motif table with what real ones have: NaN annotations, repressing modules, logos."""
    rows = [
        ("Gene1", "m1", 0.11, 3.5, 1e-5, 1.0, "gene is directly annotated", {"activating", "top50", "db1"},
         [("Gene1", 1.0), ("Gene2", 0.5), ("Gene7", 0.25)], 120, "db1"),
        ("Gene1", "m2", 0.09, 3.1, np.nan, np.nan, "", {"activating", "weight>75.0%", "db2", "m2.png"},
         [("Gene2", 0.75), ("Gene9", 0.125)], 80, "db2"),
        ("Gene4", "m3", 0.2, 4.0, 0.0, 0.9, "motif similar to m9 ('x')", {"repressing", "top5perTarget", "db1"},
         [("Gene4", 1.0), ("Gene30", 0.0625)], 300, "db1"),
    ]
    columns = ["TF", "MotifID", "AUC", "NES", "MotifSimilarityQvalue", "OrthologousIdentity", "Annotation",
               "Context", "TargetGenes", "RankAtMax", "Database"]
    table = pd.DataFrame(rows, columns=columns)
    table["Context"] = [frozenset(c) for c in table["Context"]]
    return table


def assert_motif_tables_equal(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    from flashscenic.regulons import MOTIF_COLUMNS

    assert list(got.columns[: len(MOTIF_COLUMNS)]) == list(MOTIF_COLUMNS)
    assert len(got) == len(expected)
    for name in MOTIF_COLUMNS:
        a, b = got[name].tolist(), expected[name].tolist()
        if name in ("AUC", "NES", "MotifSimilarityQvalue", "OrthologousIdentity"):
            np.testing.assert_array_equal(np.asarray(a, float), np.asarray(b, float), err_msg=name)
        else:
            assert a == b, name


def assert_regulons_equal(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert set(a) == set(b), a["name"]
        for key in b:
            if isinstance(b[key], float) and np.isnan(b[key]):
                assert np.isnan(a[key]), (b["name"], key)
            else:
                assert a[key] == b[key], (b["name"], key)


# --- the ingest command ------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    """Run a ``flashscenic`` subcommand through ``cli.main`` once it is wired in; until then a
    parser made the same way, with ``main``'s handling of user errors (one line, status 2)."""
    from flashscenic import _cli_store, cli

    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if argv[0] in commands.choices:
        return cli.main(argv)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="flashscenic", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    _cli_store.add_ingest_parser(sub, common)
    _cli_store.add_export_parser(sub, common)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except FlashscenicError as exc:
        print(f"flashscenic: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2


def test_ingest_command(tmp_path, capsys):
    make_adata().write_h5ad(tmp_path / "in.h5ad")
    (tmp_path / "genes.txt").write_text("Gene0\nGene5\n")
    argv = ["ingest", str(tmp_path / "in.h5ad"), str(tmp_path / "s.zarr"), "--obs-columns", "cell_type",
            "--genes", str(tmp_path / "genes.txt"), "--layer", "counts", "--log1p", "--chunk-rows", "50", "--quiet"]
    assert run_cli(argv) == 0
    out = capsys.readouterr().out
    assert "cells x 2 genes, csr" in out and "5 chunk(s) of 50 cells" in out
    store = open_expression_store(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store_values(store), np.log1p(np.round(make_counts() * 2))[:, [0, 5]])
    assert store.obs().columns.tolist() == ["cell_type"]

    assert run_cli(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("flashscenic: error: ") and "already exists" in err[0]
    assert run_cli(["ingest", str(tmp_path / "nope.h5ad"), str(tmp_path / "t.zarr")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_results_store_without_an_expression_store_has_bounded_auc_chunks(tmp_path):
    from flashscenic.store.results import DEFAULT_AUC_CHUNK_ROWS

    cells = [f"c{i}" for i in range(DEFAULT_AUC_CHUNK_ROWS + 10)]
    big = create_results_store(tmp_path / "big.zarr", cell_names=cells)
    assert big.chunk_rows == DEFAULT_AUC_CHUNK_ROWS and len(big.auc_chunk_ranges()) == 2
    assert create_results_store(tmp_path / "small.zarr", cell_names=cells[:7]).chunk_rows == 7
