"""flashscenic.embedding: the exact kNN of the AUC on the device, and the UMAP built from it
(umap-learn comes with the test extra and `make install`)."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch

import flashscenic
from flashscenic.embedding import gpu_knn, knn, run_umap, umap
from flashscenic.errors import InputError, MissingDependencyError


def clustered_auc(n_per_type: int = 40, n_regulons: int = 12, seed: int = 0):
    """AUC of three cell types, each with its own active regulons, and the type of each cell."""
    rng = np.random.default_rng(seed)
    types = np.repeat(np.arange(3), n_per_type)
    auc = rng.uniform(0, 0.05, (types.size, n_regulons))
    for j in range(n_regulons):
        auc[types == j % 3, j] += 0.3
    return auc.astype(np.float32), types


@pytest.mark.parametrize("batch_size", [1, 7, 1024])
@pytest.mark.parametrize("convert", [
    pytest.param(lambda a: a, id="numpy"),
    pytest.param(torch.from_numpy, id="torch"),
    pytest.param(pd.DataFrame, id="frame"),
])
def test_knn_equals_scikit_learn(batch_size, convert):
    from sklearn.neighbors import NearestNeighbors

    auc = np.random.default_rng(1).random((83, 9)).astype(np.float32)
    indices, distances = knn(convert(auc), n_neighbors=6, device="cpu", batch_size=batch_size)
    expected_distances, expected_indices = NearestNeighbors(n_neighbors=6).fit(auc).kneighbors(auc)
    assert indices.dtype == np.int64 and distances.dtype == np.float32 and indices.shape == (83, 6)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, atol=1e-5)


def test_each_cell_is_its_own_first_neighbour_even_among_duplicates():
    auc = np.repeat(np.random.default_rng(2).random((5, 4)), 4, axis=0)  # every cell four times
    indices, distances = knn(auc, n_neighbors=4, device="cpu", batch_size=3)
    assert np.array_equal(indices[:, 0], np.arange(20))
    assert (distances[:, 0] == 0).all()
    assert all(set(row) == set(range(4 * (i // 4), 4 * (i // 4) + 4)) for i, row in enumerate(indices))


def test_knn_returns_at_most_every_cell():
    indices, distances = knn(np.eye(3), n_neighbors=10, device="cpu")
    assert indices.shape == distances.shape == (3, 3)


def test_umap_separates_cell_types_and_is_seeded():
    auc, types = clustered_auc()
    embedding = umap(auc, device="cpu", random_state=3)
    assert embedding.shape == (auc.shape[0], 2) and embedding.dtype == np.float32
    np.testing.assert_array_equal(embedding, umap(auc, device="cpu", random_state=3))
    centres = np.array([embedding[types == t].mean(axis=0) for t in range(3)])
    spread = max(np.linalg.norm(embedding[types == t] - centres[t], axis=1).max() for t in range(3))
    apart = min(np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a + 1, 3))
    assert apart > spread  # each type is its own island
    assert umap(auc[:5], device="cpu", n_components=3).shape == (5, 3)  # n_neighbors capped at the cells


def test_umap_without_umap_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install flashscenic\[umap\]"):
        umap(clustered_auc()[0], device="cpu")
    with pytest.raises(ImportError):  # catchable as the built-in too
        run_umap(clustered_auc()[0], device="cpu")


def test_upstream_names_and_module_access():
    assert gpu_knn is knn and run_umap is umap
    assert flashscenic.embedding.umap is umap  # reachable without importing the module by hand


@pytest.mark.parametrize("call, message", [
    pytest.param(lambda: knn(np.ones(4), device="cpu"), "cells x regulons", id="1-d"),
    pytest.param(lambda: knn(np.full((3, 2), np.nan), device="cpu"), "NaN", id="nan"),
    pytest.param(lambda: knn(np.ones((3, 2)), n_neighbors=0, device="cpu"), "n_neighbors", id="k"),
    pytest.param(lambda: knn(np.ones((3, 2)), batch_size=1.5, device="cpu"), "batch_size", id="batch"),
    pytest.param(lambda: knn(np.array([["a"]]), device="cpu"), "numbers", id="text"),
])
def test_errors(call, message):
    with pytest.raises(InputError, match=message):
        call()


def test_a_umap_of_too_few_cells_is_refused():
    with pytest.raises(InputError, match="needs at least 4 cells, got 3"):
        umap(np.random.default_rng(0).random((3, 2)), device="cpu")
