"""The GRN's gene budget (``grn_max_genes``), its time estimate, and an input larger than memory.

The budget chooses the most variable genes by Seurat's rule (checked against scanpy's
``highly_variable_genes(flavor='seurat')``), the same genes in process, from a store and on
a cluster; the GRN trains on them only, AUCell still ranks every gene of the input, and a
resume with another budget is refused.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import flashscenic.pipeline
from flashscenic.aucell import get_aucell
from flashscenic.errors import InputError, ResumeMismatchError
from flashscenic.grn import GeneDispersion, estimate_grn_seconds, infer_grn
from flashscenic.params import Params
from flashscenic.pipeline import run_flashscenic, run_pipeline
from flashscenic.simulate import simulate_dataset
from flashscenic.stages import announce_grn_time
from flashscenic.store import ingest_expression

SMALL = dict(n_cells=1200, n_genes=400, n_tfs=8, n_decoy_tfs=4, n_cell_types=4, targets_per_tf=30, n_motifs=300)
BUDGET = 260


def _random_log_counts(seed: int, n_cells=300, n_genes=500):
    """Sparse log counts with many ties: duplicated columns, constant and all-zero genes."""
    rng = np.random.default_rng(seed)
    counts = rng.negative_binomial(rng.uniform(0.3, 3, n_genes), 0.4, size=(n_cells, n_genes)).astype(np.float32)
    counts[rng.random(counts.shape) < 0.5] = 0
    counts[:, 10:15] = counts[:, 20:25]  # tied dispersions
    counts[:, 30] = 0
    counts[:, 31] = 2  # constant
    return sp.csr_matrix(np.log1p(counts))


@pytest.mark.parametrize("seed", range(6))
def test_the_dispersion_rule_is_scanpys_seurat_flavour(seed):
    anndata = pytest.importorskip("anndata")
    scanpy = pytest.importorskip("scanpy")
    x = _random_log_counts(seed)
    n_top = 60 + 17 * seed
    dispersion = GeneDispersion(x.shape[1])
    for start in range(0, x.shape[0], 70):  # in blocks, as a store is read
        dispersion.add(x[start:start + 70])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = scanpy.pp.highly_variable_genes(anndata.AnnData(x.copy()), flavor="seurat", n_top_genes=n_top,
                                                 inplace=False)
    np.testing.assert_allclose(dispersion.normalized_dispersion(), theirs["dispersions_norm"].to_numpy(),
                               rtol=1e-5, atol=1e-5)
    ours = np.sort(dispersion.most_variable(n_top))
    kept = np.flatnonzero(theirs["highly_variable"].to_numpy())
    assert ours.size == n_top and set(ours) <= set(kept)  # scanpy keeps every gene tied at its cut-off
    if kept.size == n_top:
        np.testing.assert_array_equal(ours, kept)
    assert 30 not in ours and 31 not in ours  # constant genes are never chosen


def test_constant_genes_are_never_chosen_whatever_the_rounding():
    """A constant non-zero column's variance rounds to a tiny positive number, not 0; it is still
    constant (and RegDiffusion would get inf for it)."""
    rng = np.random.default_rng(5)
    x = _random_log_counts(3, n_cells=997, n_genes=400).toarray()
    x[:, 100:300] = rng.uniform(0.1, 5, 200)  # 200 constant columns, each its own value
    for block in (x, sp.csr_matrix(x)):
        dispersion = GeneDispersion(x.shape[1])
        dispersion.add(block)
        assert np.isnan(dispersion.normalized_dispersion()[100:300]).all()
        assert not set(dispersion.most_variable(400)) & set(range(100, 300))


def test_ties_go_to_the_earlier_gene_and_dense_equals_sparse():
    x = _random_log_counts(1)
    dense, sparse = GeneDispersion(x.shape[1]), GeneDispersion(x.shape[1])
    dense.add(x.toarray())
    sparse.add(x)
    np.testing.assert_allclose(dense.normalized_dispersion(), sparse.normalized_dispersion(), rtol=1e-12)
    score = sparse.normalized_dispersion()
    order = sparse.most_variable(x.shape[1])
    assert np.all(np.diff(score[order]) <= 0)
    tied = [j for j in range(10, 15) if j in order]
    for j in tied:  # a duplicated column ties with its twin: the earlier one comes first
        assert list(order).index(j) < list(order).index(j + 10)


def test_infer_grn_trains_on_the_budget_only():
    x = _random_log_counts(2, n_cells=200, n_genes=120).toarray()
    genes = [f"g{j}" for j in range(x.shape[1])]
    result = infer_grn(x, genes, genes[:40], n_steps=5, sparsity_threshold=None, max_genes=50, device="cpu",
                       seed=0, verbose=False)
    dispersion = GeneDispersion(x.shape[1])
    dispersion.add(x)
    chosen = np.sort(dispersion.most_variable(50))
    assert result.trained_genes == [genes[j] for j in chosen]
    assert result.tf_names == [genes[j] for j in chosen if j < 40]  # the TFs among the chosen genes
    outside = np.setdiff1d(np.arange(x.shape[1]), chosen)
    assert result.weights.shape == (len(result.tf_names), x.shape[1])
    assert not result.weights[:, outside].any() and result.weights[:, chosen].any()
    for bad in (1, -1, 1.5, True):
        with pytest.raises(InputError, match="max_genes must be an integer >= 2 or None"):
            infer_grn(x, genes, genes[:40], n_steps=5, max_genes=bad, device="cpu", seed=0, verbose=False)
    with pytest.raises(InputError, match="none of the 1 TFs is among the 50 most variable genes"):
        infer_grn(x, genes, [genes[outside[-1]]], n_steps=5, max_genes=50, device="cpu", seed=0, verbose=False)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    data = simulate_dataset(**SMALL, seed=3)
    root = tmp_path_factory.mktemp("budget")
    paths = data.write_resources(root)
    store = ingest_expression(_adata(data), root / "x.zarr", chunk_rows=250, layout="csr", verbose=False)
    params = Params(grn_n_steps=150, grn_max_genes=BUDGET, device="cpu", seed=4, verbose=False,
                    tf_list_path=str(paths["tf_list"]), ranking_db_paths=(str(paths["ranking_db"]),),
                    motif_annotation_path=str(paths["motif_annotation"]))
    results = run_pipeline(store, root / "run", params=params, report=False)
    return {"data": data, "paths": paths, "store": store, "params": params, "results": results, "root": root}


def _adata(data):
    import anndata
    import pandas as pd

    return anndata.AnnData(sp.csr_matrix(data.expression), var=pd.DataFrame(index=list(data.gene_names)),
                           obs=pd.DataFrame(index=[f"c{i}" for i in range(data.expression.shape[0])]))


def test_a_budgeted_run_records_its_genes_and_trains_on_them_only(sim):
    results, data = sim["results"], sim["data"]
    genes = results.parameters["grn_genes"]
    assert len(genes) == BUDGET and genes == [g for g in data.gene_names if g in set(genes)]  # gene order
    assert results.stages["grn"]["n_grn_genes"] == BUDGET
    weights, tf_rows, gene_names = results.read_tf_gene_weights()
    assert set(tf_rows) <= set(genes)
    outside = [j for j, g in enumerate(gene_names) if g not in set(genes)]
    assert not weights[:, outside].any()
    dispersion = GeneDispersion(len(data.gene_names))
    dispersion.add(data.expression)
    assert genes == [data.gene_names[j] for j in np.sort(dispersion.most_variable(BUDGET))]


def test_the_budget_picks_the_same_genes_in_process(sim):
    """run_flashscenic's GRN (infer_grn on the whole matrix) chooses the genes the store run chose."""
    data, params = sim["data"], sim["params"]
    result = infer_grn(data.expression, data.gene_names, data.tf_names, n_steps=2, max_genes=BUDGET, device="cpu",
                       seed=params.seed, verbose=False)
    assert result.trained_genes == sim["results"].parameters["grn_genes"]


def test_the_budget_picks_the_same_genes_on_a_cluster(sim):
    """The coordinator chooses the genes; a GRN task on a worker trains on those only."""
    distributed = pytest.importorskip("distributed")
    from flashscenic.distributed import DaskExecutor
    from flashscenic.stages import grn_genes, grn_task

    store, params = sim["store"], sim["params"].replace(grn_n_steps=3)
    genes = grn_genes(store, params)
    assert genes == sim["results"].parameters["grn_genes"]
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None)
    executor = DaskExecutor(distributed.Client(cluster), cluster, verbose=False)
    try:
        assert not executor.local_cpus
        [(weights, tf_rows)] = executor.map(grn_task, [(str(store.path), sim["data"].tf_names, params, "run", False,
                                                       genes)], description="GRN", verbose=False)
    finally:
        executor.close()
    chosen = np.isin(np.asarray(store.gene_names, dtype=str), genes)
    assert set(tf_rows) <= set(genes) and weights.shape == (len(tf_rows), store.n_genes)
    assert not weights[:, ~chosen].any() and weights[:, chosen].any()


def test_aucell_of_a_budgeted_run_ranks_every_input_gene(sim):
    results, data, params = sim["results"], sim["data"], sim["params"]
    regulons = results.read_regulons()
    assert regulons
    names, adjacency = flashscenic.stages.regulon_matrix(regulons, list(data.gene_names))
    assert adjacency.shape[1] == len(data.gene_names) > BUDGET
    expected = get_aucell(sp.csr_matrix(data.expression), adjacency, k=None, device="cpu", seed=params.seed,
                          verbose=False)
    got = results.read_auc()
    assert results.regulon_names == names
    assert got.tobytes() == expected.tobytes()  # bit for bit: ranks over all 400 genes, not the 260


def test_resume_with_another_budget_is_refused(sim):
    other = sim["params"].replace(grn_max_genes=BUDGET - 10)
    with pytest.raises(ResumeMismatchError, match="grn_max_genes"):
        run_pipeline(sim["store"], sim["root"] / "run", params=other, resume=True, report=False)


def test_the_budget_is_checked_before_any_work():
    with pytest.raises(InputError, match="grn_max_genes must be an integer >= 2 or None"):
        Params(grn_max_genes=1)


# --- the time estimate -------------------------------------------------------------------


def test_the_estimate_grows_with_the_genes_and_not_the_cells():
    cpu = [estimate_grn_seconds(n, 1000, "cpu", threads=2) for n in (2000, 3000, 20_000)]
    assert cpu[0] < cpu[1] < cpu[2]
    assert 5 * 60 < cpu[0] < 30 * 60  # benchmarks/grn_cost.py: 0.58 s a step at 2,000 genes on 2 cores
    assert cpu[2] > 24 * 3600  # a day or more at 20,000 genes
    assert estimate_grn_seconds(20_000, 1000, "cuda") < cpu[2] / 100
    assert estimate_grn_seconds(3000, 1000, "cpu", threads=4) == pytest.approx(cpu[1] / 2)


def test_a_20000_gene_cpu_run_warns_before_training(sim, monkeypatch, caplog, tmp_path):
    import pyarrow as pa
    import pyarrow.feather as feather

    data, paths = sim["data"], sim["paths"]
    rng = np.random.default_rng(0)
    n_genes = 20_000
    genes = list(data.gene_names) + [f"extra{j}" for j in range(n_genes - len(data.gene_names))]
    ranks = np.vstack([rng.permutation(n_genes).astype(np.int16) for _ in range(3)])
    feather.write_feather(pa.table({**{g: ranks[:, j] for j, g in enumerate(genes)}, "motifs": ["a", "b", "c"]}),
                          tmp_path / "wide.feather")
    x = sp.random(50, n_genes, density=0.05, format="csr", dtype=np.float32, random_state=rng)

    class Trained(Exception):
        pass

    def no_training(*args, **kwargs):
        raise Trained

    monkeypatch.setattr(flashscenic.pipeline, "infer_weights", no_training)
    with pytest.warns(UserWarning, match=r"RegDiffusion on 20000 genes .* --grn-max-genes N"), \
            pytest.raises(Trained), caplog.at_level("INFO", logger="flashscenic"):
        run_flashscenic(x, genes, tf_list_path=str(paths["tf_list"]), ranking_db_paths=[str(tmp_path / "wide.feather")],
                        motif_annotation_path=str(paths["motif_annotation"]), device="cpu", seed=0, verbose=False)
    assert "GRN: 20000 genes x 50 cells, 1000 steps on the CPU" in caplog.text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert announce_grn_time(20_000, 50, Params(device="cpu", grn_max_genes=2000), threads=2) < 3600


# --- an input larger than a memory limit ----------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np, scipy.sparse as sp
    from flashscenic.params import Params
    from flashscenic.stages import aucell_block, grn_genes
    from flashscenic.store import ingest_expression, open_expression_store

    path, small, out = sys.argv[1], sys.argv[2], sys.argv[3]
    def status(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(key)) * 1024

    def work(path, out):
        store = ingest_expression(path, out, chunk_rows=2000, verbose=False)
        params = Params(device="cpu", seed=0, verbose=False, grn_max_genes=300, grn_max_cells=20_000)
        genes = grn_genes(store, params)
        columns = [list(store.gene_names).index(g) for g in genes]
        sample = store.read_cells(store.sample_cells(20_000, 0), "csr", genes=columns)
        regulons = np.zeros((20, store.n_genes), np.float32)
        regulons[:, :60] = 1
        for start, stop, block in store.iter_chunks("csr", verbose=False):
            aucell_block(block, regulons, params)
        return sample.shape, store.n_cells

    work(small, out + ".small")  # the libraries' own memory (imports, buffers, threads), before the baseline
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak
    baseline = status("VmRSS")
    (rows, columns), cells = work(path, out)
    print(baseline, status("VmHWM"), rows, columns, cells)
""")


def _write_big_h5ad(path, n_cells: int, n_genes: int, per_cell: int, block: int = 5000) -> int:
    """A CSR h5ad written block by block (the writer never holds the matrix); returns its stored bytes."""
    import h5py
    import pandas as pd

    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        x = f.create_group("X")
        x.attrs["encoding-type"], x.attrs["encoding-version"] = "csr_matrix", "0.1.0"
        x.attrs["shape"] = (n_cells, n_genes)
        data = x.create_dataset("data", (0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 18,))
        indices = x.create_dataset("indices", (0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 18,))
        for start in range(0, n_cells, block):
            rows = min(block, n_cells - start)
            columns = np.sort(rng.random((rows, n_genes)).argpartition(per_cell, axis=1)[:, :per_cell], axis=1)
            values = np.log1p(rng.poisson(2, rows * per_cell) + 1).astype(np.float32)
            at = data.shape[0]
            data.resize((at + values.size,))
            indices.resize((at + values.size,))
            data[at:], indices[at:] = values, columns.ravel().astype(np.int32)
        x.create_dataset("indptr", data=np.arange(0, n_cells * per_cell + 1, per_cell, dtype=np.int64))
    import anndata

    with h5py.File(path, "a") as f:
        anndata.io.write_elem(f, "obs", pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]))
        anndata.io.write_elem(f, "var", pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    return n_cells * per_cell * 8 + (n_cells + 1) * 8


def test_an_input_larger_than_the_memory_limit_is_processed_in_blocks(tmp_path):
    """Ingest, the budget's gene choice, the GRN's sample and AUCell over a 240 MB CSR input
    stay within 128 MiB above the libraries' own memory (peak resident set, not time)."""
    limit = 128 * 2**20
    n_cells, n_genes, per_cell = 60_000, 2000, 500
    size = _write_big_h5ad(tmp_path / "big.h5ad", n_cells, n_genes, per_cell)
    assert size > 1.75 * limit
    _write_big_h5ad(tmp_path / "small.h5ad", 3000, n_genes, per_cell)
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "big.h5ad"), str(tmp_path / "small.h5ad"),
                          str(tmp_path / "x.zarr")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    baseline, peak, rows, columns, cells = map(int, out.stdout.split())
    assert (rows, columns, cells) == (20_000, 300, n_cells)
    assert peak - baseline < limit, f"peak {(peak - baseline) / 2**20:.0f} MiB above the baseline"
