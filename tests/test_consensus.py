"""Multi-run consensus equals upstream flashscenic's numbers (numpy's stacked mean/std/CV).

Upstream ``multi_run_flashscenic`` stacks the runs' matrices and takes ``mean(axis=0)``,
``std(axis=0)`` (ddof=0) and ``std / |mean|`` (0 where the mean is 0); ``WeightMoments``
must give the same without holding the runs. The reference here is that stacked
computation in float64.
"""

from __future__ import annotations

import numpy as np
import pytest

from flashscenic.consensus import (
    WeightMoments,
    cv_filter,
    frequency_consensus,
    recurrent_regulons,
    regulon_recurrence,
    run_seeds,
)
from flashscenic.errors import InputError
from flashscenic.regulons import regulons_to_adjacency

RTOL = 1e-6


def _reference(matrices):
    """Upstream's Phase 2 (flashscenic/multi_run.py), in float64."""
    stack = np.stack([np.asarray(m, dtype=np.float64) for m in matrices])
    mean = stack.mean(axis=0)
    std = stack.std(axis=0)
    abs_mean = np.abs(mean)
    cv = np.divide(std, abs_mean, out=np.zeros_like(mean), where=abs_mean > 0)
    return mean, std, cv


def _random_runs(rng, n_runs, shape, dtype):
    """Weights like RegDiffusion's: mostly small, some exact zeros in some runs, some edges
    zero in every run, some edges tied (the same value in every run), some negative, and
    some edges whose runs cancel exactly (a, -a, 0, ...)."""
    scale = rng.choice([1e-3, 1.0, 50.0])
    runs = (rng.standard_normal((n_runs, *shape)) * scale).astype(dtype)
    runs[rng.random((n_runs, *shape)) < 0.3] = 0  # zeros in some runs
    flat = runs.reshape(n_runs, -1)
    cells = rng.permutation(flat.shape[1])
    k = max(1, flat.shape[1] // 10)
    flat[:, cells[:k]] = 0  # zero in every run
    flat[:, cells[k:2 * k]] = flat[0, cells[k:2 * k]]  # tied: the same value in every run
    if n_runs >= 2:  # cancelling runs: a, -a, then zeros: mean exactly 0, std > 0
        flat[0, cells[2 * k:3 * k]] = np.abs(flat[0, cells[2 * k:3 * k]]) + dtype(0.5)
        flat[1, cells[2 * k:3 * k]] = -flat[0, cells[2 * k:3 * k]]
        flat[2:, cells[2 * k:3 * k]] = 0
    return [flat[i].reshape(shape).copy() for i in range(n_runs)], cells[2 * k:3 * k] if n_runs >= 2 else None


def _moments(matrices):
    moments = WeightMoments()
    for m in matrices:
        moments.add(m)
    return moments


@pytest.mark.parametrize("case", range(30))
def test_moments_equal_numpy_stacked_mean_std_cv(case):
    rng = np.random.default_rng(case)
    n_runs = int(rng.integers(1, 25))
    shape = (int(rng.integers(1, 30)), int(rng.integers(1, 40)))
    dtype = [np.float16, np.float32, np.float64][case % 3]
    runs, cancelling = _random_runs(rng, n_runs, shape, dtype)
    moments = _moments(runs)
    mean, std, cv = _reference(runs)

    assert moments.n == n_runs
    got_mean, got_std, got_cv = moments.mean(), moments.std(), moments.cv()
    for got in (got_mean, got_std, got_cv):
        assert got.dtype == np.float32 and got.shape == shape
    # Tight relative tolerance; the tiny absolute one covers only rounding residues of
    # numpy's two-pass formula on tied edges (its std is ~1e-16 * |x| where it is exactly 0).
    atol = 1e-12 * max(1.0, float(np.abs(mean).max()))
    np.testing.assert_allclose(got_mean, mean, rtol=RTOL, atol=0)
    np.testing.assert_allclose(got_std, std, rtol=RTOL, atol=atol)
    np.testing.assert_allclose(got_cv, cv, rtol=RTOL, atol=1e-9)
    # The conventions themselves, not only closeness:
    assert np.all(got_cv[got_mean == 0] == 0)  # CV 0 where the mean is 0
    assert np.all(got_std >= 0) and np.all(got_cv >= 0)  # std / |mean|: negative means too
    if n_runs == 1:
        assert np.all(got_std == 0)  # ddof=0: one run has std 0, not NaN
    else:
        flat_mean, flat_std = got_mean.reshape(-1), got_std.reshape(-1)
        assert np.all(flat_mean[cancelling] == 0) and np.all(flat_std[cancelling] > 0)


def test_std_is_population_std_on_a_hand_made_case():
    # Runs 1, 2, 3, 6: mean 3, population variance (4 + 1 + 0 + 9) / 4 = 3.5 (sample: 14/3).
    moments = _moments([np.array([[v, -v, 0.0]]) for v in (1.0, 2.0, 3.0, 6.0)])
    np.testing.assert_allclose(moments.mean(), [[3.0, -3.0, 0.0]], rtol=0)
    np.testing.assert_allclose(moments.std(), [[np.sqrt(3.5)] * 2 + [0.0]], rtol=RTOL)
    np.testing.assert_allclose(moments.cv(), [[np.sqrt(3.5) / 3] * 2 + [0.0]], rtol=RTOL)


def test_std_is_stable_for_a_large_mean_and_a_small_spread():
    # A naive sum-of-squares variance (E[x^2] - E[x]^2) loses every digit here; Welford's does not.
    rng = np.random.default_rng(5)
    runs = [(1000.0 + rng.standard_normal((8, 8)) * 1e-3).astype(np.float32) for _ in range(20)]
    mean, std, cv = _reference(runs)
    moments = _moments(runs)
    np.testing.assert_allclose(moments.std(), std, rtol=RTOL)
    np.testing.assert_allclose(moments.cv(), cv, rtol=RTOL)


def test_order_changes_only_rounding_and_same_order_same_bits():
    rng = np.random.default_rng(7)
    runs, _ = _random_runs(rng, 12, (40, 60), np.float32)
    first = _moments(runs)
    again = _moments([r.copy() for r in runs])
    shuffled = _moments([runs[i] for i in rng.permutation(len(runs))])
    for method in ("mean", "std", "cv"):
        a, b, c = getattr(first, method)(), getattr(again, method)(), getattr(shuffled, method)()
        assert a.tobytes() == b.tobytes(), method  # same order: the same bits
        np.testing.assert_allclose(c, a, rtol=RTOL, atol=1e-12, err_msg=method)  # other order: rounding only


def _held_arrays(obj):
    """Every ndarray reachable from the object's attributes (through lists, tuples, dicts)."""
    found, stack = [], list(vars(obj).values())
    while stack:
        value = stack.pop()
        if isinstance(value, np.ndarray):
            found.append(value)
        elif isinstance(value, (list, tuple, set)):
            stack.extend(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
    return found


def test_memory_is_two_matrices_whatever_the_number_of_runs():
    shape = (20, 30)
    moments = WeightMoments()
    rng = np.random.default_rng(0)
    held = []
    for _ in range(50):
        moments.add(rng.random(shape, dtype=np.float32))
        arrays = _held_arrays(moments)
        held.append((len(arrays), sum(a.nbytes for a in arrays)))
    # Two float64 matrices (mean and M2), the same after 1 run as after 50.
    assert held[0] == (2, 2 * 8 * 20 * 30)
    assert all(h == held[0] for h in held)
    # The object keeps its own accumulators, not the caller's arrays.
    assert all(a.base is None for a in _held_arrays(moments))


def test_moments_refuse_bad_input():
    moments = WeightMoments()
    with pytest.raises(InputError, match="no weights added"):
        moments.mean()
    moments.add(np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(InputError, match=r"shape \(4, 3\).*\(3, 4\)") as error:
        moments.add(np.zeros((4, 3), dtype=np.float32))
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="NaN or infinite"):
        moments.add(np.full((3, 4), np.nan))
    with pytest.raises(InputError, match="real numeric"):
        moments.add(np.zeros((3, 4), dtype=bool))
    assert moments.n == 1  # refused matrices are not counted
    np.testing.assert_array_equal(moments.mean(), np.zeros((3, 4)))


# --- cv_filter ---------------------------------------------------------------------------


def test_cv_filter_counts_on_a_hand_made_case():
    mean = np.array([[1.0, -2.0, 0.0, 4.0, 5.0]], dtype=np.float32)
    cv = np.array([[0.5, 0.7, 0.9, 0.2, 0.6]], dtype=np.float32)
    # cv >= 0.6 is zeroed (upstream keeps cv < threshold): -2.0 (0.7), 0.0 (0.9), 5.0 (0.6, equal).
    # Counted: the zeroed edges with a non-zero mean: -2.0 and 5.0, not the 0.0.
    filtered, n = cv_filter(mean, cv, 0.6)
    np.testing.assert_array_equal(filtered, [[1.0, 0.0, 0.0, 4.0, 0.0]])
    assert n == 2
    assert filtered.dtype == np.float32
    np.testing.assert_array_equal(mean, [[1.0, -2.0, 0.0, 4.0, 5.0]])  # the input is not modified
    filtered, n = cv_filter(mean, cv, 10.0)
    np.testing.assert_array_equal(filtered, mean)
    assert n == 0


def test_cv_filter_none_is_the_identity():
    mean = np.array([[1.0, -2.0, 3.0]], dtype=np.float32)
    cv = np.array([[9.0, 9.0, 9.0]], dtype=np.float32)
    filtered, n = cv_filter(mean, cv, None)
    assert filtered is mean and n == 0


def test_cv_filter_on_moments_matches_upstream():
    rng = np.random.default_rng(3)
    runs, _ = _random_runs(rng, 5, (30, 30), np.float32)
    moments = _moments(runs)
    mean, cv = moments.mean(), moments.cv()
    threshold = float(np.median(cv[cv > 0]))
    filtered, n = cv_filter(mean, cv, threshold)
    # upstream: np.where(A_cv < t, A_mean, 0); sum((|A_mean| > 0) & (A_cv >= t))
    np.testing.assert_array_equal(filtered, np.where(cv < threshold, mean, 0.0))
    assert n == int(np.sum((np.abs(mean) > 0) & (cv >= threshold)))
    assert 0 < n < mean.size


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, float("nan"), float("inf"), True, "1"])
def test_cv_filter_refuses_bad_thresholds(bad):
    with pytest.raises(InputError, match="cv_threshold"):
        cv_filter(np.ones((2, 2)), np.ones((2, 2)), bad)


def test_cv_filter_refuses_shape_mismatch():
    with pytest.raises(InputError, match="shape"):
        cv_filter(np.ones((2, 2)), np.ones((2, 3)), 1.0)


# --- recurrence --------------------------------------------------------------------------


def _regulon(name, genes, **extra):
    return {"name": name, "genes": list(genes), "weights": [1.0] * len(genes), **extra}


# Three runs. A(+) in all three; B(+) in two; C(-) in one; A(-) in one.
RUNS = [
    [_regulon("A(+)", ["A", "g1", "g2", "g3"]), _regulon("B(+)", ["B", "g1", "g4"]), _regulon("C(-)", ["g5"])],
    [_regulon("A(+)", ["g1", "g2"]), _regulon("B(+)", ["g4", "g6"]), _regulon("A(-)", ["g7"])],
    [_regulon("A(+)", ["g1", "g3", "g3"])],
]


def test_recurrence_exact_fractions_on_three_runs():
    recurrence, genes = regulon_recurrence(RUNS)
    assert recurrence == {"A(+)": 1.0, "A(-)": 1 / 3, "B(+)": 2 / 3, "C(-)": 1 / 3}
    assert list(recurrence) == sorted(recurrence)
    assert genes == {
        "A(+)": {"A": 1 / 3, "g1": 1.0, "g2": 2 / 3, "g3": 2 / 3},  # g3 twice in run 3 counts once
        "A(-)": {"g7": 1 / 3},
        "B(+)": {"B": 1 / 3, "g1": 1 / 3, "g4": 2 / 3, "g6": 1 / 3},
        "C(-)": {"g5": 1 / 3},
    }
    assert all(list(g) == sorted(g) for g in genes.values())


def test_recurrence_fractions_in_unit_interval_on_random_runs():
    rng = np.random.default_rng(11)
    names = [f"T{i}({s})" for i in range(8) for s in "+-"]
    pool = [f"g{i}" for i in range(40)]
    runs = []
    for _ in range(7):
        chosen = rng.choice(names, size=int(rng.integers(0, len(names))), replace=False)
        run = [_regulon(str(n), rng.choice(pool, size=int(rng.integers(0, 20))).tolist()) for n in chosen]
        runs.append([*run, _regulon("always(+)", ["x"])])
    recurrence, genes = regulon_recurrence(runs)
    assert recurrence["always(+)"] == 1.0
    assert genes["always(+)"] == {"x": 1.0}
    for name, fraction in recurrence.items():
        assert 0 < fraction <= 1
        expected = sum(any(r["name"] == name for r in run) for run in runs) / len(runs)
        assert fraction == expected
        for fraction_gene in genes[name].values():
            assert 0 < fraction_gene <= fraction  # a gene recurs no more than its regulon


def test_recurrent_regulons_half():
    regulons = recurrent_regulons(RUNS, 0.5)
    # A(+) (1.0) and B(+) (2/3) reach 0.5; A(-), C(-) (1/3) do not.
    assert [r["name"] for r in regulons] == ["A(+)", "B(+)"]
    a, b = regulons
    assert a["genes"] == ["A", "g1", "g2", "g3"]  # A is the TF: kept although in 1/3 of the runs
    assert b["genes"] == ["B", "g4"]  # g1, g6 at 1/3 are dropped; the TF B kept
    assert (a["recurrence"], b["recurrence"]) == (1.0, 2 / 3)
    for r in regulons:
        assert r["tf"] == r["name"][:-3] and r["type"] == "activating"
        assert r["weights"] == [1.0] * len(r["genes"]) and r["n_genes"] == len(r["genes"])
        assert r["motifs"] == []
    # usable as regulons elsewhere
    matrix = regulons_to_adjacency(regulons, ["A", "B", "g1", "g2", "g3", "g4", "g5"])
    assert matrix.sum(axis=1).tolist() == [4.0, 2.0]


def test_recurrent_regulons_all_runs():
    regulons = recurrent_regulons(RUNS, 1.0)
    assert [r["name"] for r in regulons] == ["A(+)"]
    assert regulons[0]["genes"] == ["A", "g1"]  # g1 in every run, plus the TF
    assert regulons[0]["recurrence"] == 1.0


def test_recurrent_regulons_sorted_as_regulons_from_motifs():
    runs = [[_regulon("Z(-)", ["a"]), _regulon("Z(+)", ["b"]), _regulon("A(-)", ["c"]), _regulon("M(+)", ["d"])]]
    assert [r["name"] for r in recurrent_regulons(runs, 1.0)] == ["A(-)", "M(+)", "Z(+)", "Z(-)"]
    assert [r["type"] for r in recurrent_regulons(runs, 1.0)] == ["repressing", "activating", "activating", "repressing"]


# Four runs: the threshold edges of upstream's frequency consensus (kept when freq >= t).
FOUR = [
    [_regulon("T(+)", ["T", "a", "b", "c", "d", "e", "f"]), _regulon("U(+)", ["U", "a", "b", "c", "d"])],
    [_regulon("T(+)", ["a", "b", "c", "d", "e"]), _regulon("U(+)", ["a", "b", "c", "d"])],
    [_regulon("T(+)", ["a", "b", "c", "d"])],
    [_regulon("T(+)", ["a", "b", "c", "f"])],
]


def test_frequency_consensus_threshold_edges():
    kept, scores = frequency_consensus(FOUR, 0.5, min_genes_filter=0)
    # T: a, b, c in 4/4, d in 3/4, e and f in 2/4 = 0.5 (kept: at the threshold); U: a..d in 2/4
    assert [(r["name"], r["genes"]) for r in kept] == [("T(+)", ["T", "a", "b", "c", "d", "e", "f"]),
                                                      ("U(+)", ["U", "a", "b", "c", "d"])]
    assert scores == {"T": pytest.approx((1 + 1 + 1 + 0.75 + 0.5 + 0.5) / 6), "U": 0.5}  # the TF not counted
    kept, _ = frequency_consensus(FOUR, 0.51, min_genes_filter=0)  # just above 2/4: e, f and U go
    assert [(r["name"], r["genes"]) for r in kept] == [("T(+)", ["T", "a", "b", "c", "d"])]
    kept, scores = frequency_consensus(FOUR, 1.0, min_genes_filter=0)
    assert [(r["name"], r["genes"]) for r in kept] == [("T(+)", ["T", "a", "b", "c"])] and scores == {"T": 1.0}


def test_frequency_consensus_min_genes_filter_counts_targets_not_the_tf():
    names = lambda kept: [r["name"] for r in kept]  # noqa: E731
    assert names(frequency_consensus(FOUR, 0.5, min_genes_filter=4)[0]) == ["T(+)", "U(+)"]  # U: 4 targets + U
    assert names(frequency_consensus(FOUR, 0.5, min_genes_filter=5)[0]) == ["T(+)"]  # upstream's default
    assert names(frequency_consensus(FOUR, 0.5)[0]) == ["T(+)"]
    assert names(frequency_consensus(FOUR, 0.5, min_genes_filter=6)[0]) == ["T(+)"]
    assert frequency_consensus(FOUR, 0.5, min_genes_filter=7) == ([], {})  # an empty result, not an error
    for bad in (-1, 1.5, True, "5"):
        with pytest.raises(InputError, match="min_genes_filter must be an integer >= 0"):
            frequency_consensus(FOUR, 0.5, min_genes_filter=bad)


def test_frequency_consensus_is_recurrent_regulons_less_the_small_ones():
    rng = np.random.default_rng(3)
    pool = [f"g{i}" for i in range(30)]
    runs = [[_regulon(f"T{t}(+)", [f"T{t}", *rng.choice(pool, int(rng.integers(1, 15)), replace=False)])
             for t in range(6) if rng.random() < 0.8] for _ in range(5)]
    for threshold in (0.2, 0.4, 0.6, 1.0):
        for minimum in (0, 3, 8):
            kept, scores = frequency_consensus(runs, threshold, minimum)
            expected = [r for r in recurrent_regulons(runs, threshold) if len(r["genes"]) - (r["tf"] in r["genes"])
                        >= minimum]
            assert kept == expected and set(scores) == {r["tf"] for r in kept}
            _, genes = regulon_recurrence(runs)
            for r in kept:
                targets = [genes[r["name"]][g] for g in r["genes"] if g != r["tf"]]
                assert scores[r["tf"]] == (pytest.approx(np.mean(targets)) if targets else 0.0)
                assert all(f >= threshold for f in targets)


def test_recurrent_regulons_drop_a_regulon_left_without_genes(caplog):
    runs = [[_regulon("A(+)", ["g1"])], [_regulon("A(+)", ["g2"])]]
    assert recurrent_regulons(runs, 0.5)[0]["genes"] == ["g1", "g2"]
    assert recurrent_regulons(runs, 1.0) == []
    assert "A(+)" in caplog.text


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, float("nan"), True])
def test_recurrent_regulons_refuse_bad_fraction(bad):
    with pytest.raises(InputError, match="min_fraction"):
        recurrent_regulons(RUNS, bad)


def test_recurrence_refuses_malformed_runs():
    with pytest.raises(InputError, match="at least one run"):
        regulon_recurrence([])
    with pytest.raises(InputError, match="twice"):
        regulon_recurrence([[_regulon("A(+)", ["g"]), _regulon("A(+)", ["h"])]])
    with pytest.raises(InputError, match="'name' and 'genes'"):
        regulon_recurrence([[{"name": "A(+)"}]])
    with pytest.raises(InputError, match="no 'tf'"):
        regulon_recurrence([[_regulon("A", ["g"])]])
    assert regulon_recurrence([[_regulon("A", ["g"], tf="A")]])[0] == {"A": 1.0}


# --- seeds -------------------------------------------------------------------------------


def test_run_seeds_same_seed_same_seeds_as_upstream():
    seeds = run_seeds(42, 5)
    assert seeds == run_seeds(42, 5)
    # upstream: [int(c.generate_state(1)[0]) for c in np.random.SeedSequence(seed).spawn(n_runs)]
    assert seeds == [int(c.generate_state(1)[0]) for c in np.random.SeedSequence(42).spawn(5)]
    assert len(set(seeds)) == 5 and all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)
    assert run_seeds(42, 3) == seeds[:3]  # spawn is prefix-stable
    assert run_seeds(43, 5) != seeds


def test_run_seeds_unseeded_draws_entropy():
    assert len(run_seeds(None, 4)) == 4
    assert run_seeds(None, 4) != run_seeds(None, 4)


def test_run_seeds_given_seeds_are_returned():
    assert run_seeds(None, 3, seeds=[7, 0, 2**32 - 1]) == [7, 0, 2**32 - 1]
    assert run_seeds(42, 2, seeds=np.array([5, 6])) == [5, 6]  # explicit seeds take priority


def test_run_seeds_refuses_bad_input():
    with pytest.raises(InputError, match=r"seeds length \(2\) must equal n_runs \(3\)"):
        run_seeds(None, 3, seeds=[1, 2])
    for bad in ([-1], [2**32], [1.5], [True]):
        with pytest.raises(InputError, match=r"seeds\[0\]"):
            run_seeds(None, 1, seeds=bad)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(InputError, match="n_runs"):
            run_seeds(1, bad)
    with pytest.raises(InputError, match="seed"):
        run_seeds(-1, 2)
    with pytest.raises(ValueError):  # InputError is a ValueError, as upstream raises
        run_seeds(None, 3, seeds=[1])


def test_moments_in_small_blocks_equal_one_block(monkeypatch):
    """add() and cv() work a block of edges at a time: the block size cannot change a bit."""
    import flashscenic.consensus as consensus

    rng = np.random.default_rng(3)
    runs = [rng.gamma(0.5, 1.0, size=(13, 29)).astype(np.float32) for _ in range(4)]
    runs[1][0, :5] = 0.0
    whole = consensus.WeightMoments()
    for run in runs:
        whole.add(run)
    block = consensus._blocks
    monkeypatch.setattr(consensus, "_blocks", lambda size: block(size, step=7))
    small = consensus.WeightMoments()
    for run in runs:
        small.add(run)
    assert len(consensus._blocks(13 * 29)) > 50
    for name in ("mean", "std", "cv"):
        assert getattr(small, name)().tobytes() == getattr(whole, name)().tobytes(), name
    stacked = np.stack(runs).astype(np.float64)
    np.testing.assert_allclose(small.std(), stacked.std(axis=0), rtol=1e-6, atol=1e-12)
