"""write_simulated_h5ad: simulate_dataset's world written a block of cells at a time into an
h5ad that anndata reads, with the density asked for and the same cells for any size."""

from __future__ import annotations

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

from flashscenic.errors import InputError
from flashscenic.simulate import BLOCK_CELLS, _inverse_cdf_counts, write_simulated_h5ad

WORLD = dict(n_genes=200, n_tfs=4, n_decoy_tfs=2, n_cell_types=3, targets_per_tf=20, n_database_genes=400,
             n_motifs=60)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("h5ad")
    data = write_simulated_h5ad(folder / "sim.h5ad", BLOCK_CELLS + 500, **WORLD, density=0.1, seed=5)
    return data, anndata.read_h5ad(folder / "sim.h5ad"), folder


def test_file_layout_and_world(written):
    data, adata, _ = written
    assert adata.shape == (BLOCK_CELLS + 500, 200)
    assert sp.issparse(adata.X) and adata.X.format == "csr" and adata.X.dtype == np.float32
    assert list(adata.var_names) == list(data.gene_names)
    assert list(adata.obs["cell_type"]) == list(data.cell_types)
    assert adata.obs_names.is_unique and adata.obs_names[0] == "cell00000"
    assert set(data.cell_types) == set(data.cell_type_names)
    assert data.counts is None and data.expression is None and data.activity is None
    # values are log1p of integer counts
    counts = np.expm1(adata.X.data.astype(np.float64))
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)
    assert (adata.X.data > 0).all()
    # the planted world is well formed, with a database that covers the targets
    w = data.regulon_weights
    assert ((w > 0).sum(axis=1) == 20).all() and ((w > 0).sum(axis=0) <= 2).all()
    needed = set(data.planted_tfs).union(*[set(t) for t in data.planted.values()])
    assert needed <= set(data.database_gene_names)


def test_density_is_the_one_asked_for(written):
    _, adata, _ = written
    assert adata.X.nnz / np.prod(adata.shape) == pytest.approx(0.1, abs=0.01)


def test_targets_follow_their_tf(written):
    """Within a cell type, a planted TF correlates with its targets more than with other genes."""
    data, adata, _ = written
    x = adata.X.toarray()
    keep = np.asarray(adata.obs["cell_type"] == data.cell_type_names[0])
    corr = np.nan_to_num(np.corrcoef(x[keep].T))
    column = {g: j for j, g in enumerate(data.gene_names)}
    gaps = []
    for tf, targets in data.planted.items():
        on = np.array([column[g] for g in targets])
        off = np.setdiff1d(np.arange(len(column)), np.append(on, column[tf]))
        gaps.append(corr[column[tf], on].mean() - corr[column[tf], off].mean())
    assert np.mean(gaps) > 0.02


def test_same_cells_for_any_size_dense_or_sparse(written, tmp_path):
    data, adata, _ = written
    small = write_simulated_h5ad(tmp_path / "small.h5ad", 700, **WORLD, density=0.1, seed=5, sparse=False)
    dense = anndata.read_h5ad(tmp_path / "small.h5ad")
    assert isinstance(dense.X, np.ndarray) and dense.X.dtype == np.float32
    np.testing.assert_array_equal(dense.X, adata.X[:700].toarray())
    np.testing.assert_array_equal(small.cell_types, data.cell_types[:700])
    np.testing.assert_array_equal(small.database_ranks, data.database_ranks)
    other = write_simulated_h5ad(tmp_path / "other.h5ad", 700, **WORLD, density=0.1, seed=6, sparse=False)
    assert not np.array_equal(anndata.read_h5ad(tmp_path / "other.h5ad").X, dense.X)
    assert not np.array_equal(other.regulon_weights, small.regulon_weights)


def test_inverse_cdf_counts_are_negative_binomial():
    rng = np.random.default_rng(0)
    means = np.array([0.05, 0.5, 3.0, 30.0])
    counts = _inverse_cdf_counts(rng, np.log(means)[None, :].repeat(100_000, 0))
    assert counts.dtype == np.int32 and (counts >= 0).all()
    np.testing.assert_allclose(counts.mean(axis=0), means, rtol=0.03)
    np.testing.assert_allclose(counts.var(axis=0), means + means**2 / 3.0, rtol=0.08)  # dispersion 3
    np.testing.assert_allclose((counts == 0).mean(axis=0), (3 / (3 + means)) ** 3, atol=0.005)


@pytest.mark.parametrize("density", [0, 1, 1.5, -0.1, True, "0.1"])
def test_bad_density(tmp_path, density):
    with pytest.raises(InputError, match="density must be a fraction"):
        write_simulated_h5ad(tmp_path / "x.h5ad", 100, **WORLD, density=density)
    assert not list(tmp_path.iterdir())


def test_bad_sizes_are_checked_first(tmp_path):
    with pytest.raises(InputError, match="n_cells=2 is fewer than n_cell_types=3"):
        write_simulated_h5ad(tmp_path / "x.h5ad", 2, **WORLD)
    assert not list(tmp_path.iterdir())


def test_a_failure_midway_leaves_the_previous_file(written, tmp_path, monkeypatch):
    import flashscenic.simulate as simulate

    path = tmp_path / "sim.h5ad"
    path.write_bytes(b"previous")

    def fail(self, values):
        raise OSError("disk full")

    monkeypatch.setattr(simulate._H5adWriter, "write", fail)
    with pytest.raises(OSError, match="disk full"):
        write_simulated_h5ad(path, 100, **WORLD)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["sim.h5ad"]
