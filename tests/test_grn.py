"""RegDiffusion wrapper: TF rows, threshold, constant genes, seeding, sparse input, errors."""

import numpy as np
import pytest
import scipy.sparse as sp

from flashscenic.grn import infer_grn, weights_to_adjacencies


def data(n_cells=200, n_genes=40, seed=0):
    rng = np.random.default_rng(seed)
    x = np.log1p(rng.negative_binomial(2, 0.4, size=(n_cells, n_genes))).astype(np.float32)
    x[:, 5] = x[:, 0] + rng.normal(0, 0.1, n_cells)  # gene 0 drives gene 5
    x[:, 7] = 0.0  # a constant gene
    return x, [f"g{j}" for j in range(n_genes)]


def test_weights_are_tf_rows_thresholded_and_seeded(one_torch_thread):
    x, genes = data()
    tfs = ["g3", "g0", "g7", "not_a_gene"]
    result = infer_grn(x, genes, tfs, n_steps=30, sparsity_threshold=0.5, device="cpu", seed=1, verbose=False)
    assert result.tf_names == ["g0", "g3", "g7"]  # gene order, absent TFs dropped
    assert result.weights.shape == (3, 40) and result.weights.dtype == np.float32
    nonzero = result.weights[result.weights != 0]
    assert nonzero.size and nonzero.min() >= 0.5
    assert not result.weights[:, 7].any() and not result.weights[2].any()  # constant gene: no links
    again = infer_grn(x, genes, tfs, n_steps=30, sparsity_threshold=0.5, device="cpu", seed=1, verbose=False)
    np.testing.assert_array_equal(result.weights, again.weights)
    table = result.adjacencies
    assert list(table.columns) == ["TF", "target", "importance"] and len(table) == nonzero.size


def test_sparse_input_and_cell_sampling(one_torch_thread):
    x, genes = data(n_cells=300)
    result = infer_grn(sp.csr_matrix(x), genes, ["g0"], n_steps=10, max_cells=150, device="cpu", seed=2, verbose=False)
    assert result.weights.shape == (1, 40)
    # the same cells sampled and the same network learned from the dense matrix
    dense = infer_grn(x, genes, ["g0"], n_steps=10, max_cells=150, device="cpu", seed=2, verbose=False)
    np.testing.assert_array_equal(result.weights, dense.weights)
    assert result.weights.any()
    # another seed samples other cells: the sample is not all cells whatever the seed
    other = infer_grn(x, genes, ["g0"], n_steps=10, max_cells=150, device="cpu", seed=3, verbose=False)
    assert not np.array_equal(other.weights, dense.weights)


def test_the_planted_link_is_found_from_dense_and_sparse_input(one_torch_thread):
    """Gene 5 is gene 0 plus noise: with enough training, g0 -> g5 is g0's strongest link by far,
    and the CSR input learns the very network of the dense one."""
    x, genes = data()
    options = dict(n_steps=300, sparsity_threshold=None, device="cpu", seed=1, verbose=False)
    dense = infer_grn(x, genes, ["g0", "g3"], **options)
    row = dense.weights[dense.tf_names.index("g0")]
    order = np.argsort(-row, kind="stable")
    assert genes[order[0]] == "g5", [(genes[j], float(row[j])) for j in order[:5]]
    assert row[5] >= 2 * row[order[1]]
    assert row[5] >= 1.5  # kept by the default sparsity_threshold (1.5)
    sparse = infer_grn(sp.csr_matrix(x), genes, ["g0", "g3"], **options)
    np.testing.assert_array_equal(sparse.weights, dense.weights)


def test_adjacency_table_order():
    table = weights_to_adjacencies(np.array([[0, 2.0, 3.0], [1.0, 0, 0]]), ["B", "A"], ["x", "y", "z"])
    assert table.values.tolist() == [["A", "x", 1.0], ["B", "z", 3.0], ["B", "y", 2.0]]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"tf_names": ["nope"]}, "none of the 1 TFs is among the 40 genes"),
     ({"gene_names": ["g"] * 40}, "gene names must be unique"),
     ({"gene_names": ["a"]}, "1 gene names for 40 expression columns"),
     ({"tf_names": ["g7"]}, "no TF varies")],
)
def test_errors(kwargs, message):
    x, genes = data()
    arguments = {"gene_names": genes, "tf_names": ["g0"], **kwargs}
    with pytest.raises(ValueError, match=message):
        infer_grn(x, arguments["gene_names"], arguments["tf_names"], n_steps=5, device="cpu", verbose=False)


@pytest.mark.parametrize("sparse", [False, True])
def test_nan_is_refused_not_taken_for_a_constant_gene(sparse):
    x, genes = data()
    x[:, 9] = np.nan  # a whole NaN column: its variance is NaN, not 0
    x[3, 2] = np.inf
    with pytest.raises(ValueError, match="201 NaN or infinite value\\(s\\)"):
        infer_grn(sp.csr_matrix(x) if sparse else x, genes, ["g0"], n_steps=5, device="cpu", verbose=False)


def test_varying_genes_of_sparse_input_equal_the_dense_rule():
    """Sparse input is checked from its stored values (no column-major copy): implicit and
    explicit zeros, negative values and single cells all give the dense answer."""
    import scipy.sparse as sp

    from flashscenic.grn import _varying_genes

    rng = np.random.default_rng(1)
    for case in range(300):
        n, g = rng.integers(1, 30), rng.integers(1, 12)
        dense = rng.choice([-1.0, 0.0, 0.5, 2.0], size=(n, g), p=[0.1, 0.5, 0.2, 0.2]).astype(np.float32)
        matrix = sp.csr_matrix(dense)
        if case % 3 == 0:  # explicit zeros among the stored values
            matrix.data[rng.random(matrix.data.size) < 0.3] = 0
        dense = matrix.toarray()
        np.testing.assert_array_equal(_varying_genes(matrix), dense.max(axis=0) > dense.min(axis=0))
        np.testing.assert_array_equal(_varying_genes(matrix.tocsc()), _varying_genes(dense))
    # a value stored twice (1 + 1 in cell 0, nothing in cell 1) is 2 against 0: the gene varies
    duplicated = sp.csr_matrix((np.array([1.0, 1.0, 3.0, 3.0]), np.array([0, 0, 1, 1]), np.array([0, 3, 4])),
                               shape=(2, 2))
    assert not duplicated.has_canonical_format
    np.testing.assert_array_equal(_varying_genes(duplicated), [True, False])
