"""AUCell equals pySCENIC's aucell, measured on many random inputs with heavy ties."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from flashscenic import get_aucell
from flashscenic.aucell import rank_cutoff
from flashscenic.errors import InputError
from pyscenic_oracle import pyscenic_aucell

TOL = 1e-6
N_RANDOM_CASES = 50


def random_case(case: int):
    """A random expression matrix, regulon matrix, threshold and seed.

    The styles cover what users feed AUCell: log1p negative-binomial counts (most values
    tie), integer counts, z-scored data (negative values, -0.0 next to 0.0), float32 and
    float64, with whole genes at zero; regulons of 1 to 1000 genes, binary or weighted.
    """
    rng = np.random.default_rng(1000 + case)
    style = case % 5
    n_cells = int(rng.integers(15, 80))
    n_genes = int(rng.integers(40, 1300)) if case % 6 else 1100  # room for 1000-gene regulons
    counts = rng.negative_binomial(n=rng.uniform(0.3, 3), p=rng.uniform(0.2, 0.8), size=(n_cells, n_genes))
    counts[:, rng.random(n_genes) < 0.15] = 0  # all-zero genes
    if style == 0:
        x = np.log1p(counts).astype(np.float32)
    elif style in (1, 4):
        logged = np.log1p(counts).astype(np.float64)
        x = (logged - logged.mean(axis=0)) / np.where(logged.std(axis=0) > 0, logged.std(axis=0), 1.0)
        x = np.round(x, 1)  # keep ties among negative values; rounding yields some -0.0
        x[rng.random(x.shape) < 0.05] = -0.0
        x = x.astype(np.float32 if style == 4 else np.float64)
    elif style == 2:
        x = np.log1p(counts).astype(np.float64)
    else:
        x = counts.astype(np.int64)

    n_regulons = int(rng.integers(1, 20))
    max_size = min(1000, n_genes)
    sizes = rng.integers(1, max_size + 1, size=n_regulons)
    sizes[0] = 1
    if n_regulons > 1:
        sizes[1] = max_size
    w = np.zeros((n_regulons, n_genes), dtype=np.float32)
    for i, size in enumerate(sizes):
        genes = rng.choice(n_genes, size=size, replace=False)
        w[i, genes] = 1.0 if rng.random() < 0.5 else rng.uniform(0.01, 3.0, size).astype(np.float32)
    # auc_threshold anywhere in (0, 0.5], keeping at least one ranked gene (K >= 1)
    threshold = float(rng.uniform(0.6 / n_genes, 0.5))
    seed = int(rng.integers(0, 2**31 - 1))
    return x, w, threshold, seed


@pytest.mark.parametrize("case", range(N_RANDOM_CASES))
def test_equals_pyscenic_on_random_inputs(case):
    x, w, threshold, seed = random_case(case)
    expected = pyscenic_aucell(x, w, threshold, seed)
    batch_size = [1, 7, 32, 1000][case % 4]
    got = get_aucell(x, w, k=None, auc_threshold=threshold, device="cpu", batch_size=batch_size, seed=seed)
    assert got.shape == expected.shape
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)
    assert np.abs(expected).max() > 0 or rank_cutoff(threshold, x.shape[1]) == 0


@pytest.mark.parametrize(
    "threshold",
    [
        pytest.param(0.05, id="default"),
        pytest.param(0.5, id="half"),
        pytest.param(0.0125, id="round-half-even"),  # 0.0125 * 200 = 2.5 -> K = 2
        pytest.param(0.003, id="single-gene"),  # K = 1, c = 0: every AUC is 0
    ],
)
def test_threshold_edges_equal_pyscenic(threshold):
    x, w, _, _ = random_case(3)
    x, w = x[:, :200], w[:, :200]
    w[w.sum(axis=1) == 0, 0] = 1.0
    expected = pyscenic_aucell(x, w, threshold, seed=5)
    got = get_aucell(x, w, k=None, auc_threshold=threshold, device="cpu", seed=5)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_negative_values_rank_like_pyscenic(dtype):
    """Top ranks made of negative values (and -0.0 next to 0.0), where float bit tricks go wrong."""
    x, w = counts_case(seed=14)
    x = -1.0 - x.astype(dtype)  # every value negative, with ties
    x[:, :5] = 0.0
    x[::2, 5:10] = -0.0
    expected = pyscenic_aucell(x, w, 0.3, seed=15)
    np.testing.assert_allclose(get_aucell(x, w, k=None, auc_threshold=0.3, device="cpu", seed=15), expected, rtol=0, atol=TOL)


def counts_case(n_cells=40, n_genes=300, n_regulons=12, seed=0):
    rng = np.random.default_rng(seed)
    x = np.log1p(rng.negative_binomial(1, 0.4, size=(n_cells, n_genes))).astype(np.float32)
    w = np.zeros((n_regulons, n_genes), dtype=np.float32)
    for i in range(n_regulons):
        size = int(rng.integers(5, 120))
        w[i, rng.choice(n_genes, size, replace=False)] = rng.uniform(0.1, 2.0, size)
    return x, w


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda x: x, id="numpy"),
        pytest.param(sp.csr_matrix, id="scipy-csr"),
        pytest.param(sp.csr_array, id="scipy-csr-array"),
        pytest.param(sp.csc_matrix, id="scipy-csc"),
        pytest.param(torch.from_numpy, id="torch"),
        pytest.param(lambda x: torch.from_numpy(x.astype(np.float64)), id="torch-float64"),
    ],
)
def test_input_types_give_pyscenic_result(convert):
    x, w = counts_case()
    expected = pyscenic_aucell(x, w, 0.05, seed=11)
    got = get_aucell(convert(x), w, k=None, device="cpu", seed=11, batch_size=9)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("convert", [
    *[pytest.param(lambda w, d=dtype: w.astype(d), id=np.dtype(dtype).name)
      for dtype in (np.bool_, np.int8, np.uint16, np.float16, np.float32, np.longdouble)],
    *[pytest.param(lambda w, d=dtype: torch.from_numpy(w).to(d), id=str(dtype))
      for dtype in (torch.bfloat16, torch.float16, torch.int32)],
    pytest.param(lambda w: torch.from_numpy(w).to_sparse(), id="torch-sparse"),
])
def test_regulon_matrix_dtypes(convert):
    """Binary regulons in any dtype numpy or torch holds them in score as float64 ones do."""
    x, w = counts_case(seed=1)
    binary = (w != 0).astype(np.float64)
    np.testing.assert_array_equal(
        get_aucell(x, convert(binary), k=None, device="cpu", seed=2),
        get_aucell(x, binary, k=None, device="cpu", seed=2),
    )


def test_float64_beyond_float32_range_ranks_like_pyscenic_without_warnings():
    x, w = counts_case(seed=25)
    x = x.astype(np.float64)
    x[:, :30] *= 1e300  # inf in float32: all merged there, ranked from the float64 values
    x[::2, 30:40] = -1e308
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = get_aucell(x, w, k=None, auc_threshold=0.2, device="cpu", seed=26)
    np.testing.assert_allclose(got, pyscenic_aucell(x, w, 0.2, seed=26), rtol=0, atol=TOL)


def test_long_double_expression_is_refused_in_one_line():
    x, w = counts_case()
    with pytest.raises(InputError, match="exp_array has dtype float128; AUCell ranks float32 or float64"):
        get_aucell(x.astype(np.longdouble), w, device="cpu")


def test_a_sparse_batch_holds_at_most_its_bound_of_keys():
    """Every row gets at least c keys, so rows much shorter than c count as c (memory stays bounded)."""
    from flashscenic.aucell import _SPARSE_VALUES, _Expression

    one_each = sp.csr_matrix((np.ones(5000, np.float32), np.arange(5000) % 2000, np.arange(5001)), shape=(5000, 2000))
    bound = min(8 * 2000, _SPARSE_VALUES)  # batch_size * n_genes values, at most _SPARSE_VALUES
    for c in (5, 99, 999, 3000):
        rows = max(stop - start for start, stop in _Expression(one_each).batches(batch_size=8, c=c))
        assert rows * c <= bound or rows == 8  # never fewer rows than batch_size
        assert (rows + 1) * c > bound  # and as many as fit


@pytest.mark.parametrize("convert_w", [sp.csr_matrix, torch.from_numpy], ids=["scipy", "torch"])
def test_regulon_matrix_types(convert_w):
    x, w = counts_case(seed=1)
    np.testing.assert_array_equal(
        get_aucell(x, convert_w(w), k=None, device="cpu", seed=2),
        get_aucell(x, w, k=None, device="cpu", seed=2),
    )


def test_sparse_input_is_never_densified():
    """Rows with fewer positive values than the cutoff need their zeros ranked: the zeros are
    taken along the permutation, never by densifying the row."""
    x, w = counts_case(n_cells=50)
    x[::3, 10:] = 0.0  # 17 rows with at most 10 positive values, fewer than the 14 ranks that count

    class WatchedCSR(sp.csr_matrix):
        def toarray(self, *args, **kwargs):
            raise AssertionError("a sparse batch was densified")

    got = get_aucell(WatchedCSR(x), w, k=None, device="cpu", seed=3, batch_size=8)
    np.testing.assert_array_equal(got, get_aucell(x, w, k=None, device="cpu", seed=3))
    np.testing.assert_allclose(got, pyscenic_aucell(x, w, 0.05, seed=3), rtol=0, atol=TOL)


@pytest.mark.parametrize("convert", [lambda x: x, sp.csr_matrix], ids=["dense", "csr"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_of_every_kind_in_one_batch_rank_like_pyscenic(convert, dtype):
    """One batch mixing rows whose top ranks hold only positive values, positive values and
    zeros (stored ones too), and negative values below all the zeros (a key for every gene)."""
    x, w = counts_case(n_cells=40, n_genes=120, seed=21)
    x = x.astype(dtype)
    x[10:20, 6:] = 0.0  # few positives: zeros fill the top ranks
    x[20:30] = -1.0 - x[20:30]  # every value negative but the zeros: negatives enter the top ranks
    x[20:30, :3] = 0.0
    x[25:30, 3:6] = -0.0
    if dtype == np.float64:
        x[30:] += 1e-12  # float64 values no float32 holds: ranked by their exact order
    data = convert(x)
    if sp.issparse(data):  # store three of row 10's zeros explicitly
        coo = data.tocoo()
        rows, cols = np.append(coo.row, [10, 10, 10]), np.append(coo.col, [6, 7, 8])
        data = sp.csr_matrix((np.append(coo.data, np.zeros(3, dtype)), (rows, cols)), shape=x.shape)
        assert (data.data == 0).sum() == 3
        np.testing.assert_array_equal(data.toarray(), x)
    for threshold in (0.05, 0.3, 0.9):
        expected = pyscenic_aucell(x, w, threshold, seed=22)
        got = get_aucell(data, w, k=None, auc_threshold=threshold, device="cpu", seed=22, batch_size=40)
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("convert", [lambda x: x, sp.csr_matrix], ids=["dense", "csr"])
def test_float64_values_that_float32_merges_rank_like_pyscenic(convert):
    """float64 values 1e-10 apart (one float32), exact ties among them, and values too small
    for float32 of either sign: ranked by their float64 values, as pySCENIC does."""
    rng = np.random.default_rng(23)
    x, w = counts_case(n_cells=30, n_genes=150, seed=23)
    x = np.round(x.astype(np.float64))  # few distinct values: large groups
    close = rng.random(x.shape) < 0.5
    x[close] += rng.integers(1, 4, close.sum()) * 1e-10  # distinct in float64, tied in float32
    x[:5] = np.where(x[:5] == 0, rng.choice([1e-300, -1e-300, 0.0], size=x[:5].shape), x[:5])
    # Row 5, with nothing merged: a tiny positive value on the zero gene that comes last in the
    # tie order, where a float32 0 would leave it behind every zero.
    x[5] = np.round(x[5])
    order = np.random.RandomState(24).permutation(x.shape[1])
    x[5, order[x[5, order] == 0][-1]] = 1e-300
    assert np.array_equal(x, x.astype(np.float32)) is False
    for threshold in (0.05, 0.3, 0.9):
        expected = pyscenic_aucell(x, w, threshold, seed=24)
        got = get_aucell(convert(x), w, k=None, auc_threshold=threshold, device="cpu", seed=24, batch_size=7)
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


def random_sparse_case(case: int):
    """A CSR matrix as users hold them, and its dense equivalent for pySCENIC.

    Rows with many and with few positive values (few: their zeros enter the top ranks), heavy
    ties, negative values in some cases; in odd cases explicit zeros, duplicate entries (a
    value split in two halves, which scipy sums back exactly) and unsorted indices; float32,
    float64 and integer data.
    """
    rng = np.random.default_rng(2000 + case)
    n_cells, n_genes = int(rng.integers(20, 120)), int(rng.integers(40, 900))
    counts = rng.negative_binomial(n=rng.uniform(0.3, 3), p=rng.uniform(0.2, 0.8), size=(n_cells, n_genes))
    counts[rng.random((n_cells, n_genes)) > rng.uniform(0.03, 0.6)] = 0
    dtype = [np.float32, np.float64, np.int64][case % 3]
    values = counts.astype(dtype) if dtype is np.int64 else np.log1p(counts).astype(dtype)
    if case % 4 == 1 and dtype is not np.int64:
        values[rng.random(values.shape) < 0.02] = -1.0  # negatives rank below the zeros
    if case % 2 == 0:
        return sp.csr_matrix(values), values
    rows, cols = np.nonzero(values)
    data = values[rows, cols]
    zero_rows, zero_cols = np.nonzero(values == 0)
    explicit = rng.random(zero_rows.size) < 0.05
    split = rng.random(rows.size) < 0.1
    first = data.copy()
    first[split] = data[split] // 2 if dtype is np.int64 else data[split] / 2
    rows = np.concatenate([rows, zero_rows[explicit], rows[split]])
    cols = np.concatenate([cols, zero_cols[explicit], cols[split]])
    data = np.concatenate([first, np.zeros(explicit.sum(), dtype), data[split] - first[split]])
    order = rng.permutation(data.size)
    rows, cols, data = rows[order], cols[order], data[order]
    by_row = np.argsort(rows, kind="stable")  # rows in order, entries within a row shuffled
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_cells))])
    csr = sp.csr_matrix((data[by_row], cols[by_row], indptr), shape=values.shape)
    assert not csr.has_canonical_format
    np.testing.assert_array_equal(csr.toarray(), values)
    return csr, values


@pytest.mark.parametrize("case", range(12))
def test_sparse_input_equals_pyscenic(case):
    csr, values = random_sparse_case(case)
    _, w, _, _ = random_case(case)
    w = np.resize(w, (w.shape[0], values.shape[1]))
    w[w.sum(axis=1) == 0, 0] = 1.0
    rng = np.random.default_rng(case)
    threshold, seed = float(rng.uniform(1.5 / values.shape[1], 0.3)), int(rng.integers(0, 2**31 - 1))
    expected = pyscenic_aucell(values, w, threshold, seed)
    batch_size = [1, 5, 32][case % 3]
    got = get_aucell(csr, w, k=None, auc_threshold=threshold, device="cpu", batch_size=batch_size, seed=seed)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)
    assert np.abs(expected).max() > 0


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_batches_and_threads_give_pyscenic_result(threads, monkeypatch):
    """Several threads, each scoring several batches (sparse ones too, cut small): each batch
    lands in its own rows of the result."""
    monkeypatch.setattr("flashscenic.aucell._SPARSE_VALUES", 60)  # a sparse batch: batch_size rows
    monkeypatch.setattr("flashscenic.aucell.torch.get_num_threads", lambda: threads)
    x, w = counts_case(n_cells=61)
    expected = pyscenic_aucell(x, w, 0.05, seed=16)
    for data in (x, sp.csr_matrix(x)):
        got = get_aucell(data, w, k=None, device="cpu", seed=16, batch_size=9)
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


def test_huge_finite_values_are_not_taken_for_infinite():
    """The finite check sums first; a sum that overflows must send it to the exact check, not fail."""
    x, w = counts_case(seed=17)
    x[:, :20] = np.float32(3e38)  # each row's sum overflows float32
    np.testing.assert_allclose(get_aucell(x, w, k=None, device="cpu", seed=18), pyscenic_aucell(x, w, 0.05, seed=18),
                               rtol=0, atol=TOL)


def test_batch_size_never_changes_the_result():
    x, w = counts_case(n_cells=61)
    results = [get_aucell(x, w, device="cpu", seed=4, batch_size=b) for b in (1, 5, 16, 61, 500)]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=0, atol=1e-7)


def cap_reference(w: np.ndarray, k: int) -> np.ndarray:
    """The k largest weights of each row, ties to the lower gene index (written independently)."""
    capped = np.zeros_like(w)
    for i, row in enumerate(w):
        nonzero = np.flatnonzero(row)
        if nonzero.size <= k:
            capped[i] = row
            continue
        ranked = sorted(nonzero, key=lambda j: (-row[j], j))[:k]
        capped[i, ranked] = row[ranked]
    return capped


@pytest.mark.parametrize("k", [1, 10, 50, 119])
def test_k_caps_large_regulons_like_pyscenic_on_capped_signatures(k):
    x, w = counts_case(seed=6)
    w[0, :80] = 1.0  # many tied weights: the cap must keep the lowest gene indices
    w[1] = 0.0
    w[1, [3, 4, 5]] = [0.5, 2.0, 0.5]
    expected = pyscenic_aucell(x, cap_reference(w, k), 0.05, seed=8)
    got = get_aucell(x, w, k=k, device="cpu", seed=8)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


def test_k_never_pads():
    x, w = counts_case(seed=7)
    largest = int((w != 0).sum(axis=1).max())
    uncapped = get_aucell(x, w, k=None, device="cpu", seed=1)
    for k in (largest, largest + 1, 10_000):
        np.testing.assert_array_equal(get_aucell(x, w, k=k, device="cpu", seed=1), uncapped)


def test_empty_regulon_scores_zero():
    x, w = counts_case(seed=9)
    w[2] = 0.0
    got = get_aucell(x, w, k=None, device="cpu", seed=0)
    assert np.all(got[:, 2] == 0)
    keep = np.arange(w.shape[0]) != 2
    np.testing.assert_allclose(got[:, keep], pyscenic_aucell(x, w[keep], 0.05, 0), rtol=0, atol=TOL)


def test_seed_none_draws_a_valid_permutation():
    x, w = counts_case(seed=10)
    got = get_aucell(x, w, device="cpu", seed=None)
    assert got.shape == (x.shape[0], w.shape[0])
    assert np.all((got >= 0) & (got <= 1))


# ---------------------------------------------------------------- ties='average'


def brute_force_average(x: np.ndarray, w: np.ndarray, threshold: float) -> np.ndarray:
    """Mean AUC over every gene permutation (pySCENIC's tie-breaking), straight from the spec."""
    n_genes = x.shape[1]
    c = int(round(threshold * n_genes)) - 1
    total = np.zeros((x.shape[0], w.shape[0]))
    perms = list(itertools.permutations(range(n_genes)))
    for perm in perms:
        perm = np.array(perm)
        order = np.argsort(-x[:, perm], axis=1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(n_genes)[None, :].repeat(x.shape[0], 0), axis=1)
        rank_of_gene = np.empty_like(ranks)
        rank_of_gene[:, perm] = ranks
        score = np.maximum(0, c - rank_of_gene)
        total += score @ w.T / ((c + 1) * w.sum(axis=1))
    return total / len(perms)


def test_average_ties_is_the_exact_expectation():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(12, 7)).astype(np.float32)  # 7 genes, 3 values: ties everywhere
    x[0] = 0.0  # one cell with a single tie group
    w = np.array([[1, 1, 0, 0, 1, 0, 0], [0.5, 0, 2, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 3]], dtype=np.float32)
    for threshold in (0.3, 0.5, 0.8):
        got = get_aucell(x, w, k=None, auc_threshold=threshold, device="cpu", ties="average")
        np.testing.assert_allclose(got, brute_force_average(x, w, threshold), rtol=0, atol=1e-6)


def test_average_ties_matches_the_mean_of_seeded_pyscenic_runs():
    x, w = counts_case(n_cells=10, n_genes=120, n_regulons=5, seed=12)
    runs = np.stack([pyscenic_aucell(x, w, 0.1, seed=s) for s in range(300)])
    mean, sem = runs.mean(axis=0), runs.std(axis=0) / np.sqrt(len(runs))
    got = get_aucell(x, w, k=None, auc_threshold=0.1, device="cpu", ties="average")
    assert np.all(np.abs(got - mean) <= 5 * sem + TOL)
    assert sem.max() > 0  # ties really did move the seeded results


def test_average_ties_without_ties_equals_pyscenic():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 200))  # continuous: no ties, so the seed cannot matter
    _, w = counts_case(n_genes=200, seed=3)
    got = get_aucell(x, w, k=None, device="cpu", ties="average")
    np.testing.assert_allclose(got, pyscenic_aucell(x, w, 0.05, seed=0), rtol=0, atol=TOL)


def test_average_ties_is_seed_free_and_batch_free():
    x, w = counts_case(seed=13)
    a = get_aucell(x, w, device="cpu", ties="average", seed=1, batch_size=3)
    b = get_aucell(sp.csr_matrix(x), w, device="cpu", ties="average", seed=2, batch_size=40)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("block_values", [2**22, 7, 1000], ids=["one-block", "tiny-blocks", "row-blocks"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("convert", [lambda x: x, sp.csr_matrix, torch.from_numpy], ids=["numpy", "csr", "torch"])
def test_non_finite_expression_names_its_location(bad, convert, block_values, monkeypatch):
    monkeypatch.setattr("flashscenic.aucell._CHECK_VALUES", block_values)  # the scan goes block by block
    x, w = counts_case()
    x[17, 123] = bad
    with pytest.raises(ValueError, match=r"1 NaN or infinite value.*cell 17, gene 123"):
        get_aucell(convert(x), w, device="cpu")


def test_non_finite_weight_names_its_location():
    x, w = counts_case()
    w[3, 7] = np.nan
    with pytest.raises(ValueError, match=r"adj_array contains 1 NaN.*regulon 3, gene 7"):
        get_aucell(x, w, device="cpu")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"auc_threshold": 0.0}, r"auc_threshold must be in \(0, 1\)", id="threshold-0"),
        pytest.param({"auc_threshold": 1.0}, r"auc_threshold must be in \(0, 1\)", id="threshold-1"),
        pytest.param({"auc_threshold": -0.2}, r"auc_threshold must be in \(0, 1\)", id="threshold-negative"),
        pytest.param({"auc_threshold": 0.001}, r"selects 0 of 300 genes", id="threshold-selects-none"),
        pytest.param({"auc_threshold": 0.999}, r"selects 300 of 300 genes", id="threshold-selects-all"),
        pytest.param({"batch_size": 0}, r"batch_size must be a positive integer", id="batch-size"),
        pytest.param({"k": 0}, r"k must be a positive integer or None", id="k"),
        pytest.param({"ties": "random"}, r"ties='random' is not one of", id="ties"),
        pytest.param({"device": "tpu"}, r"device='tpu'", id="device"),
    ],
)
def test_bad_arguments(kwargs, message):
    x, w = counts_case()
    with pytest.raises(ValueError, match=message):
        get_aucell(x, w, **{"device": "cpu", **kwargs})


def test_shape_mismatch():
    x, w = counts_case()
    with pytest.raises(ValueError, match=r"adj_array has 299 gene columns but exp_array has 300"):
        get_aucell(x, w[:, :299], device="cpu")


def test_empty_regulon_matrix():
    x, w = counts_case()
    with pytest.raises(ValueError, match=r"no regulons"):
        get_aucell(x, w[:0], device="cpu")


def test_negative_weights():
    x, w = counts_case()
    w[4, 9] = -0.5
    with pytest.raises(ValueError, match=r"negative weight.*regulon 4, gene 9"):
        get_aucell(x, w, device="cpu")


def test_expression_must_be_a_matrix():
    _, w = counts_case()
    with pytest.raises(ValueError, match=r"must be 2-D"):
        get_aucell(np.zeros(300), w, device="cpu")
    with pytest.raises(ValueError, match=r"expected real numbers"):
        get_aucell(np.full((3, 300), "a"), w, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on machines without CUDA")
def test_cuda_without_cuda_warns_once_and_runs_on_cpu(monkeypatch):
    import flashscenic._device as device

    monkeypatch.setattr(device, "_warned_no_cuda", False)
    x, w = counts_case()
    with pytest.warns(UserWarning, match="CUDA is not available"):
        got = get_aucell(x, w, device="cuda", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_aucell(x, w, device="cuda", seed=0)
    np.testing.assert_array_equal(got, get_aucell(x, w, device="cpu", seed=0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("ties", ["pyscenic", "average"])
@pytest.mark.parametrize("case", range(8))
def test_cuda_equals_pyscenic(case, ties):
    """CUDA == CPU to 1e-6, and pySCENIC's AUC (carried as numbers: the oracle does not travel
    to the GPU machine)."""
    x, w, threshold, seed = random_case(case)
    got = get_aucell(x, w, k=None, auc_threshold=threshold, device="cuda", seed=seed, ties=ties, batch_size=64)
    cpu = get_aucell(x, w, k=None, auc_threshold=threshold, device="cpu", seed=seed, ties=ties)
    np.testing.assert_allclose(got, cpu, rtol=0, atol=TOL)
    if ties == "pyscenic":
        np.testing.assert_allclose(got, pyscenic_reference(case), rtol=0, atol=TOL)


# pySCENIC's AUC of random_case(0..9), for the gpu tests on a machine without the oracle;
# test_the_carried_pyscenic_numbers_are_pyscenics keeps them true.
PYSCENIC_REFERENCES = Path(__file__).parent / "data" / "pyscenic_aucell_random_cases.npz"
N_REFERENCE_CASES = 10


def _inputs_digest(case: int) -> str:
    import hashlib

    from scipy.stats import rankdata

    # AUCell sees each cell's order of genes and its ties, not the values' last bits (numpy's
    # log1p differs in them between CPUs' SIMD paths): the digest is of that order
    x, w, threshold, seed = random_case(case)
    order = rankdata(np.asarray(x, dtype=np.float64), method="dense", axis=1).astype(np.int64)
    return hashlib.sha256(order.tobytes() + np.signbit(x).tobytes() + w.tobytes()
                          + repr((threshold, seed)).encode()).hexdigest()


def pyscenic_reference(case: int) -> np.ndarray:
    """pySCENIC's AUC of ``random_case(case)``; refused where numpy draws other inputs."""
    with np.load(PYSCENIC_REFERENCES) as references:
        assert str(references[f"inputs{case}"]) == _inputs_digest(case), \
            f"numpy {np.__version__} draws other inputs for random_case({case}) than the carried numbers were made of"
        return references[f"case{case}"]


def write_pyscenic_references() -> None:
    """``python tests/test_aucell.py``: compute the carried numbers again with pySCENIC."""
    PYSCENIC_REFERENCES.parent.mkdir(exist_ok=True)
    cases = range(N_REFERENCE_CASES)
    np.savez_compressed(PYSCENIC_REFERENCES, **{f"case{c}": pyscenic_aucell(*random_case(c)) for c in cases},
                        **{f"inputs{c}": np.array(_inputs_digest(c)) for c in cases})


def test_the_carried_pyscenic_numbers_are_pyscenics():
    for case in range(N_REFERENCE_CASES):
        np.testing.assert_array_equal(pyscenic_reference(case), pyscenic_aucell(*random_case(case)))


def _non_canonical(x) -> sp.csr_matrix:
    """``x`` as CSR rows in shuffled column order, each value split at random in two duplicate
    entries (exactly: the parts are multiples of 1/4 of a value, or integers)."""
    m = sp.csr_matrix(x)
    rng = np.random.default_rng(m.nnz)
    quarters = rng.integers(0, 5, m.nnz)
    half = (m.data * (quarters / 4)).astype(m.data.dtype) if m.data.dtype.kind == "f" else (m.data * quarters) // 4
    indices, data = [], []
    for row in range(m.shape[0]):
        lo, hi = m.indptr[row], m.indptr[row + 1]
        both = np.concatenate([np.arange(lo, hi), np.arange(lo, hi)])
        first = np.concatenate([np.ones(hi - lo, bool), np.zeros(hi - lo, bool)])
        order = rng.permutation(both.size)
        indices.append(m.indices[both[order]])
        data.append(np.where(first[order], half[both[order]], m.data[both[order]] - half[both[order]]))
    out = sp.csr_matrix((np.concatenate(data), np.concatenate(indices), 2 * m.indptr), shape=m.shape)
    assert not out.has_canonical_format and out.nnz == 2 * m.nnz
    return out


_INPUTS = {"dense": lambda x: x, "csr": sp.csr_matrix, "csr-unsorted-duplicates": _non_canonical,
           "torch": torch.from_numpy}


@pytest.fixture
def torch_path_on_the_cpu(monkeypatch):
    """get_aucell's GPU code (``_score_with_torch``: uploads, densifying CSR on the device, the
    stable sort, the dense rank product, result chunks) run on CPU tensors, small chunks."""
    import flashscenic.aucell as aucell

    monkeypatch.setattr(aucell, "_RESULT_BYTES", 64)
    monkeypatch.setattr(aucell, "_score_on_cpu", lambda expr, tie_order, c, weights, batch_size, out, verbose:
                        aucell._score_with_torch(expr, tie_order, c, weights, batch_size, torch.device("cpu"), out,
                                                 verbose))


@pytest.mark.parametrize("form", list(_INPUTS))
@pytest.mark.parametrize("case", range(10))
def test_the_gpu_code_on_cpu_tensors_equals_pyscenic(case, form, torch_path_on_the_cpu):
    x, w, threshold, seed = random_case(case)  # float32, float64 and int64 input, ties, -0.0
    got = get_aucell(_INPUTS[form](x), w, k=None, auc_threshold=threshold, device="cpu", seed=seed, batch_size=7,
                     verbose=False)
    np.testing.assert_allclose(got, pyscenic_aucell(x, w, threshold, seed), rtol=0, atol=TOL)


def test_gpu_batches_are_sized_from_free_memory(monkeypatch):
    import flashscenic.aucell as aucell

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * 2**30, 80 * 2**30))
    cuda = torch.device("cuda", 0)
    assert aucell.torch_batch_rows(cuda, 20_000, 32) == aucell._CUDA_ROWS_MAX  # 80 GB: thousands of cells
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * 2**30, 16 * 2**30))
    assert aucell.torch_batch_rows(cuda, 20_000, 32) == 2 * 2**30 // 2 // (64 * 20_000)  # 838
    assert aucell.torch_batch_rows(cuda, 20_000, 1000) == 1000  # batch_size is a floor
    assert aucell.torch_batch_rows(torch.device("cpu"), 20_000, 32) == 32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("form", list(_INPUTS) + ["torch-on-cuda"])
@pytest.mark.parametrize("case", range(10))
def test_cuda_equals_the_cpu_for_every_input_form(case, form):
    """CSR (canonical or not), float32, float64 and integer input, host or device tensors: equal
    to the CPU and to pySCENIC (carried numbers)."""
    x, w, threshold, seed = random_case(case)
    given = torch.from_numpy(x).cuda() if form == "torch-on-cuda" else _INPUTS[form](x)
    got = get_aucell(given, w, k=None, auc_threshold=threshold, device="cuda", seed=seed, verbose=False)
    np.testing.assert_allclose(got, get_aucell(x, w, k=None, auc_threshold=threshold, device="cpu", seed=seed,
                                               verbose=False), rtol=0, atol=TOL)
    np.testing.assert_allclose(got, pyscenic_reference(case), rtol=0, atol=TOL)


# --- a decoupler network as the regulons ------------------------------------------------


def _network_case(seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    genes = [f"g{j}" for j in range(400)]
    expression = np.round(rng.gamma(1.0, 1.0, size=(60, len(genes))), 1).astype(np.float32)  # ties
    rows = []
    for source, n in (("A", 30), ("B", 80), ("C", 12)):
        rows += [(source, t) for t in rng.choice(genes, n, replace=False)]
    rows += [("D", f"absent{i}") for i in range(5)] + [("D", g) for g in genes[:10]]  # 10 of 15 present: < 80%
    return expression, genes, pd.DataFrame(rows, columns=["source", "target"])


@pytest.mark.parametrize("sparse", [False, True])
def test_a_network_scores_like_its_regulons_matrix_and_under_80_percent_is_zero(sparse):
    expression, genes, network = _network_case()
    x = sp.csr_matrix(expression) if sparse else expression
    got = get_aucell(x, network, k=None, gene_names=genes, device="cpu", seed=3, verbose=False)
    index = {g: j for j, g in enumerate(genes)}
    matrix = np.zeros((4, len(genes)))
    for row, source in enumerate("ABCD"):
        for target in network.loc[network["source"] == source, "target"]:
            if target in index:
                matrix[row, index[target]] = 1.0
    expected = get_aucell(x, matrix, k=None, device="cpu", seed=3, verbose=False)
    assert got.shape == (60, 4)
    np.testing.assert_array_equal(got[:, :3], expected[:, :3])
    assert (expected[:, 3] > 0).any() and (got[:, 3] == 0).all()  # D: 10 of its 15 targets among the genes


def test_a_network_with_a_k_that_would_cut_a_source_is_refused():
    import pandas as pd

    expression, genes, network = _network_case()
    with pytest.raises(ValueError, match=r"k=50 would keep 50 of the 80 targets of 'B'.*pass k=None"):
        get_aucell(expression, network, gene_names=genes, device="cpu", seed=3, verbose=False)
    small = network[network["source"] != "B"]  # every source at most 50 targets: k changes nothing
    np.testing.assert_array_equal(
        get_aucell(pd.DataFrame(expression, columns=genes), small, device="cpu", seed=3, verbose=False),
        get_aucell(expression, small, k=None, gene_names=genes, device="cpu", seed=3, verbose=False))


def test_a_weights_dataframe_is_a_matrix_and_gene_names_are_for_networks():
    import pandas as pd

    expression, genes, _ = _network_case()
    rng = np.random.default_rng(1)
    weights = (rng.random((5, len(genes))) < 0.1) * rng.random((5, len(genes)))
    frame = pd.DataFrame(weights, columns=genes, index=[f"r{i}" for i in range(5)])
    np.testing.assert_array_equal(get_aucell(expression, frame, k=None, device="cpu", seed=2, verbose=False),
                                  get_aucell(expression, weights, k=None, device="cpu", seed=2, verbose=False))
    with pytest.raises(ValueError, match="gene_names is for a network"):
        get_aucell(expression, weights, gene_names=genes, device="cpu", verbose=False)


if __name__ == "__main__":
    write_pyscenic_references()
