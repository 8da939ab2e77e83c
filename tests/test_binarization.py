"""AUC binarisation equals pySCENIC's binarize (thresholds and on/off matrix); upstream flashscenic's
binarize_auc_matrix (a mixture's valley, or mean + 2 sd, per regulon) returns uint8 on/off."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from flashscenic.errors import InputError
from flashscenic.binarization import (N_NULL_SAMPLES, _NullDips, binarize_auc, binarize_auc_matrix, derive_threshold,
                                      dip_statistic)
from pyscenic_oracle import numpy_global_random_state, pyscenic_binarize, pyscenic_dip


def auc_column(rng, kind: int, n: int) -> np.ndarray:
    """AUC-like distributions: unimodal, clearly bimodal, all zero, few distinct values,
    zero-inflated, and bimodal with ties from rounding."""
    if kind == 0:
        return rng.normal(0.1, 0.02, n).clip(0)
    if kind == 1:
        return np.where(rng.random(n) < 0.4, rng.normal(0.3, 0.03, n), rng.normal(0.05, 0.02, n)).clip(0)
    if kind == 2:
        return np.zeros(n)
    if kind == 3:
        return rng.choice([0.0, 0.1, 0.2, 0.3], n)
    if kind == 4:
        return (rng.random(n) < 0.5) * rng.random(n) * 0.2
    return np.round(np.where(rng.random(n) < 0.5, rng.normal(0.3, 0.05, n), rng.normal(0.1, 0.05, n)).clip(0), 2)


def random_case(case: int) -> pd.DataFrame:
    rng = np.random.default_rng(300 + case)
    n = int(rng.integers(20, 160))
    kinds = rng.permutation(6)[: int(rng.integers(3, 7))]
    dtype = np.float32 if case % 2 else np.float64
    values = np.column_stack([auc_column(rng, int(k), n) for k in kinds]).astype(dtype)
    return pd.DataFrame(values, index=[f"c{i}" for i in range(n)], columns=[f"R{k}(+)" for k in kinds])


@pytest.mark.parametrize("case", range(5))
def test_equals_pyscenic(case):
    frame = random_case(case)
    seed = 11 + case
    expected_binary, expected_thresholds = pyscenic_binarize(frame, seed)
    binary, thresholds = binarize_auc(frame, seed=seed)
    np.testing.assert_allclose(thresholds.to_numpy(), expected_thresholds.to_numpy(dtype=np.float64), rtol=1e-12, atol=0)
    pd.testing.assert_index_equal(thresholds.index, expected_thresholds.index)
    pd.testing.assert_frame_equal(binary, expected_binary)
    assert binary.to_numpy().any()  # something is on: the comparison is not vacuous


def test_the_oracle_leaves_numpys_global_generator_as_it_found_it():
    """pySCENIC's binarize calls np.random.seed: the oracle restores the generator after it, so
    the tests that run after this one draw what they would draw in any order."""
    np.random.seed(12345)
    before = np.random.get_state()
    pyscenic_binarize(random_case(0), seed=11)
    after = np.random.get_state()
    assert after[0] == before[0] and after[2:] == before[2:]
    np.testing.assert_array_equal(after[1], before[1])


def test_dip_equals_pyscenic_bit_for_bit():
    rng = np.random.default_rng(0)
    for i in range(250):
        n = int(rng.integers(1, 200))
        kind = i % 5
        if kind == 0:
            x = rng.uniform(size=n)
        elif kind == 1:
            x = np.concatenate([rng.normal(0, 1, n), rng.normal(rng.uniform(1, 6), 1, n)])
        elif kind == 2:
            x = np.round(rng.normal(size=n), 1)  # ties
        elif kind == 3:
            x = rng.integers(0, 8, size=n).astype(float)  # few distinct values
        else:
            x = ((rng.random(n) < 0.3) * rng.random(n)).astype(np.float32)
        assert dip_statistic(x) == pyscenic_dip(x), i


# Samples where the largest minorant-majorant gap is attained at several touch points, so the
# dip depends on which one is taken, as in pySCENIC (found by a random search).
TIED_GAPS = [
    [0, 7, 11, 8, 13, 7, 17, 10, 11, 0, 6, 11, 11, 13, 11, 17, 4, 13, 8, 15, 2, 6, 4, 8, 13, 8, 7, 15, 10, 0, 15, 10, 8],
    [5, 1, 5, 3, 1, 0, 1, 3, 7, 1, 2, 7, 2, 6, 0, 4, 1, 4, 5, 7, 6, 6, 5, 1, 6, 4, 0, 4, 4, 2, 1, 6, 4, 3, 3, 4, 2, 7,
     7, 5, 2, 3, 2, 3, 7, 7, 3, 1, 3, 7, 6, 3, 1],
    [2, 4, 2, 1, 2, 3, 7, 3, 4, 6, 0, 0, 0, 1],  # ... and on the minorant: the first of them
]


@pytest.mark.parametrize("sample", range(len(TIED_GAPS)))
def test_dip_tie_rules_equal_pyscenic(sample):
    x = np.asarray(TIED_GAPS[sample], dtype=float)
    assert dip_statistic(x) == pyscenic_dip(x)


def test_dip_of_known_samples():
    assert dip_statistic([1.0, 2.0, 3.0, 4.0]) == 0.0  # at most 4 distinct values
    assert dip_statistic(np.zeros(50)) == 0.0
    bimodal = np.r_[np.zeros(50), np.ones(50), np.linspace(0.4, 0.6, 5)]
    assert dip_statistic(bimodal) > dip_statistic(np.linspace(0, 1, 105))


def test_early_stop_gives_the_full_p_value_decision():
    m = 30
    null = _NullDips(m, seed=4)
    dips = np.array([null._dip(i) for i in range(N_NULL_SAMPLES)])
    for d in np.quantile(dips, [0.5, 0.94, 0.949, 0.95, 0.951, 0.96, 0.999]):
        p = (np.sum(dips > d) + 1) / (N_NULL_SAMPLES + 1)  # pySCENIC's p-value
        assert _NullDips(m, seed=4).at_most_exceeding(d, 49) == (p <= 0.05)


def test_null_dips_are_pyscenics_stream():
    from pyscenic_oracle import pyscenic_dip as dip

    m, seed = 12, 9
    # pySCENIC: np.random.seed(seed); np.random.uniform(...): the same stream as a RandomState(seed),
    # drawn here without touching numpy's global generator
    samples = np.random.RandomState(seed).uniform(size=N_NULL_SAMPLES * m).reshape(N_NULL_SAMPLES, m)
    with numpy_global_random_state():
        np.random.seed(seed)
        np.testing.assert_array_equal(np.random.uniform(size=N_NULL_SAMPLES * m).reshape(N_NULL_SAMPLES, m), samples)
    null = _NullDips(m, seed)
    for i in (0, 1, 500, 999):
        assert null._dip(i) == dip(samples[i])


def test_numpy_and_torch_input_and_names():
    frame = random_case(2)
    binary, thresholds = binarize_auc(frame, seed=3)
    for data in (frame.to_numpy(), torch.from_numpy(frame.to_numpy().copy())):
        b, t = binarize_auc(data, seed=3, regulon_names=list(frame.columns))
        # memory layout moves float sums in the last digits (in pySCENIC too)
        np.testing.assert_allclose(t.to_numpy(), thresholds.to_numpy(), rtol=1e-12, atol=0)
        np.testing.assert_array_equal(b.to_numpy(), binary.to_numpy())
    b, t = binarize_auc(frame.to_numpy(), seed=3)
    assert list(t.index) == list(range(frame.shape[1]))


def test_seed_zero_is_reproducible_and_overrides_apply():
    frame = random_case(3)
    first = binarize_auc(frame, seed=0)
    second = binarize_auc(frame, seed=0)
    pd.testing.assert_series_equal(first[1], second[1])
    name = frame.columns[0]
    binary, thresholds = binarize_auc(frame, seed=0, threshold_overrides={name: -1.0})
    assert thresholds[name] == -1.0 and binary[name].all()
    assert derive_threshold(frame[name].to_numpy(), seed=0) == first[1][name]


def test_workers_give_the_same_result():
    frame = random_case(4).iloc[:40, :3]
    one = binarize_auc(frame, seed=5)
    two = binarize_auc(frame, seed=5, num_workers=2)
    pd.testing.assert_series_equal(one[1], two[1])
    pd.testing.assert_frame_equal(one[0], two[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param(dict(auc_matrix=np.ones(3)), "2-D", id="1-d"),
        pytest.param(dict(auc_matrix=np.ones((0, 2))), "at least one cell", id="empty"),
        pytest.param(dict(auc_matrix=np.full((3, 2), np.nan)), "NaN", id="nan"),
        pytest.param(dict(num_workers=0), "num_workers", id="workers"),
        pytest.param(dict(seed=-1), "seed", id="seed"),
        pytest.param(dict(threshold_overrides={"nope": 0.1}), "unknown", id="override"),
        pytest.param(dict(regulon_names=["a"]), "regulon_names", id="names"),
        pytest.param(dict(regulon_names=["a", "a"]), "duplicate", id="duplicate"),
    ],
)
def test_errors(kwargs, message):
    args = dict(auc_matrix=np.random.default_rng(0).random((10, 2)))
    args.update(kwargs)
    with pytest.raises(InputError, match=message):
        binarize_auc(args.pop("auc_matrix"), **args)


# --------------------------------------------------------------------------- binarize_auc_matrix (upstream's rule)


def test_binarize_auc_matrix_gmm_cuts_at_the_mixtures_density_minimum():
    from sklearn.mixture import GaussianMixture

    frame = random_case(1)  # unimodal, bimodal, all-zero, few-valued ... columns
    binary = binarize_auc_matrix(frame, random_state=7)
    assert binary.dtype == np.uint8 and binary.shape == frame.shape
    for j, name in enumerate(frame.columns):
        values = frame[name].to_numpy(dtype=np.float64)
        if values.max() == values.min():
            assert not binary[:, j].any()  # one value: off everywhere
            continue
        mixture = GaussianMixture(n_components=2, random_state=7).fit(values.reshape(-1, 1))
        low, high = np.sort(mixture.means_.ravel())
        grid = np.linspace(low, high, 100_001)  # the density from scikit-learn itself, on a much finer grid
        valley = grid[np.argmin(mixture.score_samples(grid.reshape(-1, 1)))]
        step = (high - low) / 1000  # binarize_auc_matrix's grid
        sure = np.abs(values - valley) > step  # cells farther than a grid step from the valley
        np.testing.assert_array_equal(binary[sure, j], (values[sure] > valley).astype(np.uint8))


def test_binarize_auc_matrix_zscore_is_mean_plus_two_sd():
    frame = random_case(2)
    values = frame.to_numpy(dtype=np.float64)
    expected = (values > values.mean(axis=0) + 2 * values.std(axis=0)).astype(np.uint8)
    np.testing.assert_array_equal(binarize_auc_matrix(frame, method="zscore"), expected)


def test_binarize_auc_matrix_takes_arrays_tensors_and_frames_and_is_seeded():
    frame = random_case(3)
    expected = binarize_auc_matrix(frame, random_state=1)
    for data in (frame.to_numpy(), torch.from_numpy(frame.to_numpy().copy())):
        np.testing.assert_array_equal(binarize_auc_matrix(data, random_state=1), expected)
    bimodal = np.r_[np.full(30, 0.05), np.full(10, 0.4)] + np.random.default_rng(0).normal(0, 0.01, 40)
    np.testing.assert_array_equal(binarize_auc_matrix(bimodal[:, None])[:, 0], np.r_[np.zeros(30), np.ones(10)])


@pytest.mark.parametrize("call, message", [
    pytest.param(lambda: binarize_auc_matrix(np.ones((4, 2)), method="otsu"), "method='otsu'", id="method"),
    pytest.param(lambda: binarize_auc_matrix(np.ones(4)), "2-D", id="1-d"),
    pytest.param(lambda: binarize_auc_matrix(np.full((3, 2), np.inf)), "NaN or infinite", id="inf"),
])
def test_binarize_auc_matrix_errors(call, message):
    with pytest.raises(InputError, match=message):
        call()
