"""The input readers: every format whole and by blocks, names without the matrix, bad input refused clearly.

The checks of bad input run through both entry points that read input, ``ingest_expression``
(into a store) and ``read_expression`` (into memory): they must refuse the same things with
the same messages.
"""

from __future__ import annotations

import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import flashscenic.io
from flashscenic.errors import InputError
from flashscenic.io import FORMATS, ExpressionSource, open_expression, read_expression, read_gene_names
from flashscenic.store import MissingFileError, ingest_expression
from test_store import N_CELLS, N_GENES, cell_names, gene_names, make_adata, make_counts, no_leftovers, write_loom

# anndata writes zarr with consolidated metadata, which zarr 3 reads with a notice
pytestmark = pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")

# --- every format ------------------------------------------------------------------------

KINDS = ["h5ad-csr", "h5ad-dense", "h5ad-csc", "zarr", "expression-store", "loom", "csv", "tsv.gz",
         "csv-transposed", "numpy", "scipy", "dataframe", "anndata", "anndata-backed"]


def make_input(kind: str, tmp_path):
    """``(source, options, sparse)``: make_counts() with gene_names() and cell_names(), in format ``kind``."""
    x = make_counts()
    names = {"gene_names": gene_names(), "cell_names": cell_names()}
    if kind.startswith("h5ad") or kind == "anndata-backed":
        adata = make_adata(dense=kind == "h5ad-dense")
        if kind == "h5ad-csc":
            adata.X = sp.csc_matrix(adata.X)
        adata.write_h5ad(tmp_path / "in.h5ad")
        if kind == "anndata-backed":
            return ad.read_h5ad(tmp_path / "in.h5ad", backed="r"), {}, True
        return tmp_path / "in.h5ad", {}, kind != "h5ad-dense"
    if kind == "zarr":
        with ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False):
            make_adata().write_zarr(tmp_path / "in.zarr")
        return tmp_path / "in.zarr", {}, True
    if kind == "expression-store":
        ingest_expression(sp.csr_matrix(x), tmp_path / "expression", chunk_rows=40, verbose=False, **names)
        return tmp_path / "expression", {}, True  # a store is found by its zarr.json, whatever its name
    if kind == "loom":
        write_loom(tmp_path / "in.loom", x, gene_names(), cell_names())
        return tmp_path / "in.loom", {}, False
    if kind in ("csv", "tsv.gz"):
        frame = pd.DataFrame(x, index=pd.Index(cell_names(), name="Cell"), columns=gene_names())
        frame.to_csv(tmp_path / f"in.{kind}", sep="," if kind == "csv" else "\t")
        return tmp_path / f"in.{kind}", {}, False
    if kind == "csv-transposed":
        pd.DataFrame(x.T, index=gene_names(), columns=cell_names()).to_csv(tmp_path / "in.csv")
        return tmp_path / "in.csv", {"transpose": True}, False
    if kind == "numpy":
        return x, names, False
    if kind == "scipy":
        return sp.csr_matrix(x), names, True
    if kind == "dataframe":
        return pd.DataFrame(x, index=cell_names(), columns=gene_names()), {}, False
    return make_adata(), {}, True


@pytest.mark.parametrize("kind", KINDS)
def test_read_expression_of_every_format(tmp_path, kind):
    source, options, sparse = make_input(kind, tmp_path)
    adata = read_expression(source, **options)
    assert isinstance(adata, ad.AnnData)
    assert sp.issparse(adata.X) == sparse and adata.X.dtype == np.float32
    if sparse:
        assert isinstance(adata.X, (sp.csr_matrix, sp.csr_array))
    np.testing.assert_array_equal(adata.X.toarray() if sparse else adata.X, make_counts())
    assert adata.obs_names.tolist() == cell_names() and adata.var_names.tolist() == gene_names()
    assert list(adata.obs.columns) == []


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_of_every_format(tmp_path, kind):
    source, options, sparse = make_input(kind, tmp_path)
    with open_expression(source, **options) as src:
        assert isinstance(src, ExpressionSource) and src.sparse == sparse
        assert list(src.gene_names) == gene_names()
        if kind in ("csv", "tsv.gz"):  # known only once read
            assert src.n_cells is None and src.cell_names is None
        else:
            assert src.n_cells == N_CELLS and list(src.cell_names) == cell_names()
        starts, blocks = zip(*src.blocks(50))
        assert starts == (0, 50, 100, 150, 200)
        values = np.vstack([b.toarray() if sp.issparse(b) else np.asarray(b) for b in blocks])
        np.testing.assert_array_equal(values, make_counts())
        assert src.n_cells == N_CELLS and list(src.cell_names) == cell_names()
        assert src.obs([]).index.tolist() == cell_names()
        assert str(src.description)


@pytest.mark.parametrize("kind", ["h5ad-csr", "h5ad-dense", "h5ad-csc", "zarr", "loom", "csv", "tsv.gz",
                                  "csv-transposed", "anndata-backed"])
def test_read_gene_names_does_not_read_the_matrix(tmp_path, monkeypatch, caplog, kind):
    source, options, _ = make_input(kind, tmp_path)
    if kind.startswith(("csv", "tsv")):  # a value that is not a number: reading the table would fail
        x = make_counts().astype(object)
        x[5, -1] = "oops"
        frame = pd.DataFrame(x, index=cell_names(), columns=gene_names())
        (frame.T if kind == "csv-transposed" else frame).to_csv(source, sep="\t" if kind == "tsv.gz" else ",")

    def refuse(self, rows):
        raise AssertionError("the matrix was read")

    for cls in (flashscenic.io._ArraySource, flashscenic.io._GroupSource, flashscenic.io._LoomSource,
                flashscenic.io._TextSource):
        monkeypatch.setattr(cls, "blocks", refuse)
    with caplog.at_level("WARNING", logger="flashscenic.io"):
        assert read_gene_names(source, **options) == gene_names()
    assert "CSC" not in caplog.text  # a CSC matrix is read whole only when its rows are asked for
    with open_expression(source, **options) as src:
        assert list(src.gene_names) == gene_names()


def test_h5ad_csc_is_read_whole_with_a_warning(tmp_path, caplog, read):
    adata = make_adata()
    adata.X = sp.csc_matrix(adata.X)
    adata.write_h5ad(tmp_path / "in.h5ad")
    with caplog.at_level("WARNING", logger="flashscenic.io"):
        got = read(tmp_path / "in.h5ad", chunk_rows=30)
    assert "CSC" in caplog.text
    assert sp.issparse(got.X)  # CSR, as the input is sparse
    np.testing.assert_array_equal(got.X.toarray(), make_counts())
    assert got.obs_names.tolist() == cell_names() and got.var_names.tolist() == gene_names()


def test_read_expression_options_and_stores(tmp_path):
    adata = make_adata()
    adata.write_h5ad(tmp_path / "in.h5ad")
    got = read_expression(tmp_path / "in.h5ad", layer="counts", log1p=True, obs_columns=["cell_type", "n_counts"])
    np.testing.assert_array_equal(got.X.toarray(), np.log1p(np.round(make_counts() * 2).astype(np.float32)))
    assert got.obs.columns.tolist() == ["cell_type", "n_counts"]
    assert got.obs["cell_type"].dtype == "category"
    assert got.obs["cell_type"].tolist() == adata.obs["cell_type"].tolist()
    # an expression store reads back whole, labels included
    store = ingest_expression(tmp_path / "in.h5ad", tmp_path / "s.zarr", obs_columns=["cell_type"], chunk_rows=50,
                              verbose=False)
    again = read_expression(store.path, obs_columns=["cell_type"])
    np.testing.assert_array_equal(again.X.toarray(), make_counts())
    assert again.obs["cell_type"].tolist() == adata.obs["cell_type"].tolist()
    assert again.obs_names.tolist() == cell_names() and again.var_names.tolist() == gene_names()
    assert FORMATS == ("h5ad", "zarr", "loom", "csv", "tsv")


def test_read_expression_does_not_change_the_callers_matrix():
    x = make_counts()
    got = read_expression(x, gene_names=gene_names(), log1p=True)
    np.testing.assert_array_equal(x, make_counts())
    np.testing.assert_array_equal(got.X, np.log1p(make_counts()))
    assert not np.shares_memory(got.X, x)


# --- loom names ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["h5py-strings", "utf8-bytes"])
def test_loom_keeps_non_ascii_names(tmp_path, encoding):
    genes = [*gene_names()[:-2], "Gène-α", "Ñ1"]
    cells = [*cell_names()[:-1], "célula-δ"]
    labels = [("Zelltyp-ü" if i % 2 else "T") for i in range(N_CELLS)]

    def strings(values):
        if encoding == "h5py-strings":
            return np.array(values, dtype=h5py.string_dtype("utf-8"))
        return np.array([v.encode("utf-8") for v in values])

    x = make_counts()
    with h5py.File(tmp_path / "in.loom", "w") as f:
        for group in ("attrs", "layers", "row_attrs", "col_attrs", "row_graphs", "col_graphs"):
            f.create_group(group)
        f["matrix"] = x.T
        f["row_attrs/Gene"] = strings(genes)
        f["col_attrs/CellID"] = strings(cells)
        f["col_attrs/ClusterName"] = strings(labels)
    assert read_gene_names(tmp_path / "in.loom") == genes
    got = read_expression(tmp_path / "in.loom", obs_columns=["ClusterName"])
    assert got.var_names.tolist() == genes and got.obs_names.tolist() == cells
    assert got.obs["ClusterName"].tolist() == labels
    store = ingest_expression(tmp_path / "in.loom", tmp_path / "s.zarr", verbose=False)
    assert store.gene_names.tolist() == genes and store.cell_names.tolist() == cells


# --- raw counts ---------------------------------------------------------------------------


def _reads(entry, source, tmp_path, **options):
    """Read ``source`` through ``entry`` and return the warnings that say 'raw counts'."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if entry == "ingest":
            ingest_expression(source, tmp_path / "s.zarr", gene_names=gene_names(), chunk_rows=16, verbose=False,
                              overwrite=True, **options)
        else:
            read_expression(source, gene_names=gene_names(), **options)
    return [w for w in caught if "raw counts" in str(w.message)]


@pytest.mark.parametrize("entry", ["ingest", "read_expression"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_raw_counts_are_named_once(tmp_path, entry, sparse):
    counts = make_counts() * 5  # whole numbers, the largest 75
    found = _reads(entry, sp.csr_matrix(counts) if sparse else counts, tmp_path)
    assert len(found) == 1 and found[0].category is UserWarning
    message = str(found[0].message)
    assert "looks like raw counts" in message and "largest 75" in message
    assert "RegDiffusion" in message and "log1p=True (CLI --log1p)" in message
    assert found[0].filename == __file__  # it points at the caller
    # not for counts taken log1p of, nor for log data, nor for small whole numbers
    assert _reads(entry, counts, tmp_path, log1p=True) == []
    assert _reads(entry, np.log1p(counts), tmp_path) == []
    assert _reads(entry, make_counts(), tmp_path) == []  # the largest is 15


def test_simulated_data_is_not_taken_for_counts():
    from flashscenic.simulate import simulate_dataset

    data = simulate_dataset(n_cells=5000, n_genes=1000, n_tfs=30, seed=0)  # the demo's data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_expression(data.expression, gene_names=data.gene_names)


# --- bad input ---------------------------------------------------------------------------


@pytest.fixture(params=["ingest", "read_expression"])
def read(request, tmp_path, monkeypatch):
    """Read an input through ``ingest_expression`` (into tmp_path/s.zarr) or ``read_expression``.

    Either way the result is an AnnData; read_expression reads blocks of 16 cells, so the
    checks run over several blocks there too (``chunk_rows`` is for ingest only).
    """
    if request.param == "ingest":
        def read(source, chunk_rows=None, **options):
            ingest_expression(source, tmp_path / "s.zarr", chunk_rows=chunk_rows, verbose=False, **options)
            return ad.read_zarr(tmp_path / "s.zarr")
        return read

    monkeypatch.setattr(flashscenic.io, "_BLOCK_BYTES", 16 * 4 * N_GENES)

    def read(source, chunk_rows=None, **options):
        return read_expression(source, **options)
    return read


def test_text_keeps_names_as_text(tmp_path, read):
    x = make_counts(5, 4)
    (tmp_path / "in.csv").write_text(",NA,001,TRUE,1e3\n" + "".join(
        f"{name},{','.join(str(v) for v in row)}\n" for name, row in zip(["007", "NA", "nan", "x", "1.0"], x)))
    got = read(tmp_path / "in.csv")
    assert got.var_names.tolist() == ["NA", "001", "TRUE", "1e3"]
    assert got.obs_names.tolist() == ["007", "NA", "nan", "x", "1.0"]


def _bad_dense(kind):
    x = make_counts()
    if kind == "nan":
        x[5, 7] = np.nan
        x[5, 9] = np.nan
        x[9, 1] = np.nan
    elif kind == "inf":
        x[12, 4] = -np.inf
    return x


@pytest.mark.parametrize(
    "make, message",
    [
        pytest.param(None, "does not exist", id="missing-file"),
        pytest.param(("junk.h5ad", b"not hdf5"), r"cannot open .*junk.h5ad as HDF5 \(h5ad\)", id="unreadable-h5ad"),
        pytest.param(("junk.loom", b""), "cannot open .* as HDF5 \\(loom\\)", id="empty-loom"),
        pytest.param(("x.xyz", b"a,b"), "cannot tell the format of .*x.xyz from its name", id="unknown-format"),
        pytest.param(("e.csv", b""), "e.csv is empty", id="empty-csv"),
        pytest.param(("dir.zarr", None), "cannot open .*dir.zarr as a zarr group", id="not-zarr"),
    ],
)
def test_bad_files(tmp_path, make, message, read):
    if make is None:
        source = tmp_path / "absent.h5ad"
    else:
        source = tmp_path / make[0]
        source.mkdir() if make[1] is None else source.write_bytes(make[1])
    with pytest.raises(InputError, match=message):
        read(source)
    assert not (tmp_path / "s.zarr").exists()
    no_leftovers(tmp_path)


def test_missing_file_is_also_file_not_found(tmp_path, read):
    with pytest.raises(FileNotFoundError):
        read(tmp_path / "absent.csv")
    assert issubclass(MissingFileError, InputError)


@pytest.mark.parametrize(
    "kind, message",
    [
        pytest.param("nan", r"3 NaN or infinite value\(s\), first at cell 5 \('cell_0005'\), gene 7 \('Gene7'\): nan",
                     id="nan"),
        pytest.param("inf", r"1 NaN or infinite value\(s\), first at cell 12 \('cell_0012'\), gene 4 \('Gene4'\): -inf",
                     id="inf"),
    ],
)
@pytest.mark.parametrize("container", ["dense", "csr", "anndata"])
def test_nan_and_inf_are_counted_and_located(tmp_path, kind, message, container, read):
    x = _bad_dense(kind)
    if container == "anndata":
        adata = ad.AnnData(X=x, obs=pd.DataFrame(index=cell_names()), var=pd.DataFrame(index=gene_names()))
        source, names = adata, {}
    else:
        source, names = (sp.csr_matrix(x) if container == "csr" else x), {"gene_names": gene_names(),
                                                                           "cell_names": cell_names()}
    with pytest.raises(InputError, match=message):
        read(source, chunk_rows=4, **names)
    assert not (tmp_path / "s.zarr").exists()
    no_leftovers(tmp_path)


def test_nan_in_a_late_chunk_of_a_csv(tmp_path, read):
    x = make_counts()
    x[150, 2] = np.nan
    pd.DataFrame(x, index=cell_names(), columns=gene_names()).to_csv(tmp_path / "in.csv")
    with pytest.raises(InputError, match=r"1 NaN .* cell 150 \('cell_0150'\), gene 2 \('Gene2'\)"):
        read(tmp_path / "in.csv", chunk_rows=16)
    assert not (tmp_path / "s.zarr").exists()
    no_leftovers(tmp_path)


def test_log1p_refuses_negative_values(tmp_path, read):
    x = make_counts()
    x[3, 8] = -1.5
    with pytest.raises(InputError, match=r"log1p=True but .* 1 negative value\(s\), first at cell 3 .*gene 8"):
        read(x, gene_names=gene_names(), log1p=True)


@pytest.mark.parametrize("axis", ["genes", "cells"])
def test_duplicate_names(tmp_path, axis, read):
    adata = make_adata()
    names = (adata.var_names if axis == "genes" else adata.obs_names).tolist()
    names[5] = names[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata's own notice about non-unique names
        if axis == "genes":
            adata.var_names = names
        else:
            adata.obs_names = names
        adata.write_h5ad(tmp_path / "in.h5ad")
    expected = r"var_names \(gene names\) has 1 duplicated name\(s\) \('Gene2' x2\)" if axis == "genes" else \
        r"obs_names \(cell names\) has 1 duplicated name\(s\) \('cell_0002' x2\)"
    with pytest.raises(InputError, match=expected):
        read(tmp_path / "in.h5ad")
    assert not (tmp_path / "s.zarr").exists()


def test_duplicate_gene_in_csv_header(tmp_path, read):
    (tmp_path / "in.csv").write_text(",A,B,A\nc1,1,2,3\nc2,4,5,6\n")
    with pytest.raises(InputError, match=r"has 1 duplicated name\(s\) \('A' x2\)"):
        read(tmp_path / "in.csv")


def test_duplicate_cells_in_csv(tmp_path, read):
    (tmp_path / "in.csv").write_text(",A,B\nc1,1,2\nc1,4,5\n")
    with pytest.raises(InputError, match=r"cell names .* \('c1' x2\)"):
        read(tmp_path / "in.csv")
    assert not (tmp_path / "s.zarr").exists()
    no_leftovers(tmp_path)


def test_duplicate_cells_in_a_transposed_csv(tmp_path, read):
    (tmp_path / "in.csv").write_text(",c1,c1\nA,1,2\nB,4,5\n")
    with pytest.raises(InputError, match=r"cell names \(header, transposed\) has 1 duplicated name\(s\) \('c1' x2\)"):
        read(tmp_path / "in.csv", transpose=True)


@pytest.mark.parametrize(
    "shape, message",
    [
        pytest.param((0, 5), "is empty", id="no-cells"),
        pytest.param((5, 0), "is empty", id="no-genes"),
        pytest.param((6, 5), "every value in .* is 0", id="all-zero"),
    ],
)
def test_empty_matrix(tmp_path, shape, message, read):
    with pytest.raises(InputError, match=message):
        read(np.zeros(shape, dtype=np.float32), gene_names=gene_names(shape[1]), cell_names=cell_names(shape[0]))
    assert not (tmp_path / "s.zarr").exists()
    no_leftovers(tmp_path)


def test_csv_with_header_only_is_empty(tmp_path, read):
    (tmp_path / "in.csv").write_text(",A,B\n")
    with pytest.raises(InputError, match="no cells"):
        read(tmp_path / "in.csv")


def test_genes_by_cells_is_named(tmp_path, read):
    barcodes = [f"AAACCTGAGA{i:06d}".replace("0", "A").replace("1", "C")[:12] + "GTCA-1" for i in range(N_CELLS)]
    barcodes = [f"{b[:-2]}{i}" for i, b in enumerate(barcodes)]  # unique
    x = make_counts()
    frame = pd.DataFrame(x.T, index=gene_names(), columns=barcodes)  # genes x cells
    frame.to_csv(tmp_path / "in.csv")
    with pytest.raises(InputError, match=r"looks like genes x cells.*transpose=True"):
        read(tmp_path / "in.csv", chunk_rows=8)
    ensembl = [f"ENSG{j:011d}" for j in range(N_GENES)]
    with pytest.raises(InputError, match=r"rows are named like genes \(e.g. 'ENSG00000000000'\)"):
        read(x.T, gene_names=cell_names(), cell_names=ensembl)
    # transposed, both read as intended
    got = read(tmp_path / "in.csv", transpose=True)
    assert got.obs_names.tolist() == barcodes
    no_leftovers(tmp_path)


def test_gene_symbols_and_barcodes_the_right_way_round_pass(tmp_path, read):
    barcodes = [f"ACGTACGTACGT{i:04d}-1" for i in range(N_CELLS)]
    ensembl = [f"ENSMUSG{j:011d}" for j in range(N_GENES)]
    got = read(make_counts(), gene_names=ensembl, cell_names=barcodes)
    assert got.shape == (N_CELLS, N_GENES)


def test_bad_file_options(tmp_path, read):
    make_adata().write_h5ad(tmp_path / "in.h5ad")
    with pytest.raises(InputError, match=r"no layer 'raw'; it has \['counts'\]"):
        read(tmp_path / "in.h5ad", layer="raw")
    with pytest.raises(InputError, match=r"no obs column\(s\) \['tissue'\]"):
        read(tmp_path / "in.h5ad", obs_columns=["tissue"])
    with pytest.raises(InputError, match="transpose=True works for CSV/TSV files only"):
        read(tmp_path / "in.h5ad", transpose=True)
    with pytest.raises(InputError, match="format='xlsx' is not one of"):
        read(tmp_path / "in.h5ad", format="xlsx")
    with pytest.raises(InputError, match="not a number"):
        (tmp_path / "t.csv").write_text(",A,B\nc1,1,x\n")
        read(tmp_path / "t.csv")
    no_leftovers(tmp_path)
