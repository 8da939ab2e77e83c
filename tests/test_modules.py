"""Modules equal pySCENIC's modules_from_adjacencies; the matrix kernels keep their contracts."""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from flashscenic.errors import InputError
from flashscenic.modules import (
    Module,
    binarize,
    build_modules,
    filter_by_mapped_fraction,
    filter_by_min_targets,
    get_target_indices,
    positive_weight_percentile,
    select_knee_targets,
    select_mixture_model_targets,
    select_threshold_targets,
    select_top_n_per_target,
    select_topk_targets,
    to_numpy,
)
from pyscenic_oracle import pyscenic_modules

N_RANDOM_CASES = 16
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def as_tuples(modules: list[Module]):
    return [(m.tf, frozenset(m.context), m.gene2weight) for m in modules]


def random_case(case: int):
    """Weights with ties, zeros and negatives; TFs that are genes (with self-weights) and not.

    Returns weights, TF names, gene names, expression (cells x genes; one constant gene)
    and module parameters small enough that every module type and the min_genes cut bite.
    """
    rng = np.random.default_rng(500 + case)
    n_tfs, n_genes = int(rng.integers(2, 12)), int(rng.integers(8, 90))
    genes = [f"g{j:03d}" for j in rng.permutation(n_genes)]  # names not in column order
    n_gene_tfs = min(n_tfs, int(rng.integers(1, n_tfs + 1)))
    tfs = [genes[j] for j in rng.choice(n_genes, n_gene_tfs, replace=False)]
    tfs += [f"tf{i}" for i in range(n_tfs - n_gene_tfs)]  # TFs that are not gene columns
    style = case % 4
    if style == 0:  # signed, heavily tied (RegDiffusion-like after rounding)
        w = np.round(rng.normal(size=(n_tfs, n_genes)), 1)
    elif style == 1:  # integer weights: many exact ties at every cut
        w = rng.integers(-2, 5, size=(n_tfs, n_genes)).astype(np.float64)
    elif style == 2:  # GRNBoost2-like, positive and continuous, float32
        w = rng.exponential(size=(n_tfs, n_genes)).astype(np.float32)
    else:  # sparse, a few huge weights
        w = rng.random((n_tfs, n_genes)) ** 4 * 100
    w[rng.random(w.shape) < rng.uniform(0.1, 0.7)] = 0
    for i, tf in enumerate(tfs):  # self-weights, sometimes large
        if tf in genes and rng.random() < 0.7:
            w[i, genes.index(tf)] = rng.choice([0.0, 1.5, float(w.max())])
    params = dict(
        percentile_thresholds=tuple(rng.choice([0, 10, 29, 50, 75, 90, 100], size=int(rng.integers(0, 3)), replace=False)),
        top_n_targets=tuple(int(n) for n in rng.choice([1, 3, 5, 50], size=int(rng.integers(0, 3)), replace=False)),
        top_n_per_target=tuple(int(n) for n in rng.choice([1, 2, 5, 50], size=int(rng.integers(1, 3)), replace=False)),
        min_genes=int(rng.choice([0, 1, 2, 5, 10, 20])),
    )
    expression = rng.normal(size=(int(rng.integers(5, 40)), n_genes))
    expression[:, 0] = 3.0  # a constant gene: no correlation, never linked when splitting
    return w, tfs, genes, expression, params


def assert_not_vacuous(got, w, tfs, genes, kwargs) -> None:
    """Guard a comparison with pySCENIC against both sides being empty.

    Only ``min_genes`` may empty a random case (it is drawn up to 20 for tables of 8 genes);
    then the same case with ``min_genes=0`` must give modules, and pySCENIC's.
    """
    if got:
        return
    assert kwargs.get("min_genes", 20) > 0, "no modules although min_genes=0: the comparison would be vacuous"
    relaxed = dict(kwargs, min_genes=0)
    again = build_modules(w, tfs, genes, device="cpu", **relaxed)
    assert again, "no modules even with min_genes=0: the comparison would be vacuous"
    assert as_tuples(again) == pyscenic_modules(w, tfs, genes, **relaxed)
    assert all(len(m) < kwargs.get("min_genes", 20) for m in again)  # min_genes removed each of them


def test_random_cases_mostly_give_modules():
    """The random cases are not mostly empty: most comparisons with pySCENIC compare modules."""
    sizes = [len(build_modules(*random_case(c)[:3], device="cpu", **random_case(c)[4])) for c in range(N_RANDOM_CASES)]
    assert sum(n > 0 for n in sizes) >= N_RANDOM_CASES - 2, sizes


@pytest.mark.parametrize("case", range(N_RANDOM_CASES))
def test_equals_pyscenic_without_correlation_split(case):
    w, tfs, genes, _, params = random_case(case)
    expected = pyscenic_modules(w, tfs, genes, **params)
    got = build_modules(w, tfs, genes, device="cpu", **params)
    assert as_tuples(got) == expected  # same modules, contexts, weights and order
    assert all(not set(m.context) & {"activating", "repressing"} for m in got)
    assert_not_vacuous(got, w, tfs, genes, params)


@pytest.mark.parametrize("keep_only_activating", [True, False], ids=["activating", "both-signs"])
@pytest.mark.parametrize("case", range(0, N_RANDOM_CASES, 2))
def test_equals_pyscenic_with_correlation_split(case, keep_only_activating):
    w, tfs, genes, expression, params = random_case(case)
    in_genes = [i for i, tf in enumerate(tfs) if tf in genes]  # correlation needs TF expression
    w, tfs = w[in_genes], [tfs[i] for i in in_genes]
    kwargs = dict(params, expression=expression, keep_only_activating=keep_only_activating)
    expected = pyscenic_modules(w, tfs, genes, **kwargs)
    got = build_modules(w, tfs, genes, device="cpu", **kwargs)
    assert as_tuples(got) == expected
    signs = {c for m in got for c in m.context} & {"activating", "repressing"}
    assert signs <= ({"activating"} if keep_only_activating else {"activating", "repressing"})
    assert_not_vacuous(got, w, tfs, genes, kwargs)


def test_rho_threshold_changes_the_split_like_pyscenic():
    w, tfs, genes, expression, params = random_case(4)
    in_genes = [i for i, tf in enumerate(tfs) if tf in genes]
    w, tfs = w[in_genes], [tfs[i] for i in in_genes]
    params["min_genes"] = 1
    found = {}
    for rho in (0.001, 0.3):
        kwargs = dict(params, expression=expression, rho_threshold=rho, keep_only_activating=False)
        assert as_tuples(build_modules(w, tfs, genes, device="cpu", **kwargs)) == pyscenic_modules(w, tfs, genes, **kwargs)
        found[rho] = as_tuples(build_modules(w, tfs, genes, device="cpu", **kwargs))
        assert found[rho], "no modules: the comparison would be vacuous"
    assert found[0.001] != found[0.3]  # the threshold does change the split


def test_defaults_equal_pyscenic_on_a_larger_table():
    rng = np.random.default_rng(7)
    genes = [f"G{j}" for j in range(300)]
    tfs = genes[:12]
    w = np.round(rng.exponential(size=(12, 300)), 2)
    w[rng.random(w.shape) < 0.4] = 0
    got = build_modules(w, tfs, genes, device="cpu")
    assert got, "defaults should give modules here"
    assert as_tuples(got) == pyscenic_modules(w, tfs, genes)


@pytest.mark.parametrize("n_targets, kept", [(19, True), (18, False)], ids=["19+TF", "18+TF"])
def test_min_genes_counts_the_tf(n_targets, kept):
    genes = [f"g{j}" for j in range(40)]
    w = np.zeros((1, 40))
    w[0, 1 : n_targets + 1] = np.linspace(1, 2, n_targets)
    params = dict(percentile_thresholds=(), top_n_targets=(50,), top_n_per_target=(), min_genes=20)
    got = build_modules(w, ["g0"], genes, device="cpu", **params)
    assert (len(got) == 1) == kept
    assert as_tuples(got) == pyscenic_modules(w, ["g0"], genes, **params)
    if kept:
        assert len(got[0]) == 20 and got[0].gene2weight["g0"] == 1.0


def test_self_weight_is_replaced_by_one_and_not_counted_twice():
    genes = [f"g{j}" for j in range(6)]
    w = np.array([[5.0, 0.5, 0.4, 0.0, 0.0, 0.0]])  # TF g0's self-weight is its largest
    params = dict(percentile_thresholds=(), top_n_targets=(2,), top_n_per_target=(), min_genes=0)
    (module,) = build_modules(w, ["g0"], genes, device="cpu", **params)
    assert module.gene2weight == {"g0": 1.0, "g1": 0.5}  # top2 = g0 (self) and g1
    assert as_tuples([module]) == pyscenic_modules(w, ["g0"], genes, **params)


def test_tf_not_among_genes_is_added_like_pyscenic():
    genes = [f"g{j}" for j in range(5)]
    w = np.array([[0.2, 0.3, 0.0, 0.1, 0.0]])
    params = dict(percentile_thresholds=(), top_n_targets=(5,), top_n_per_target=(1,), min_genes=0)
    got = build_modules(w, ["TFX"], genes, device="cpu", **params)
    assert got[0].genes == ("TFX", "g1", "g0", "g3")
    assert as_tuples(got) == pyscenic_modules(w, ["TFX"], genes, **params)
    without_tf = build_modules(w, ["TFX"], genes, device="cpu", include_tf=False, **params)
    assert without_tf[0].genes == ("g1", "g0", "g3")


def test_no_positive_weight_gives_no_modules():
    genes = [f"g{j}" for j in range(5)]
    w = -np.ones((2, 5))
    assert build_modules(w, ["g0", "g1"], genes, device="cpu", min_genes=0) == []
    assert pyscenic_modules(w, ["g0", "g1"], genes, min_genes=0) == []


def test_percentile_label_and_order_are_pyscenics():
    w, tfs, genes, _, _ = random_case(3)
    params = dict(percentile_thresholds=(29, 75), top_n_targets=(3,), top_n_per_target=(2,), min_genes=0)
    got = build_modules(w, tfs, genes, device="cpu", **params)
    contexts = [m.context[0] for m in got]
    assert "weight>28.999999999999996%" in contexts  # pySCENIC formats q / 100 * 100
    assert "weight>75.0%" in contexts
    firsts = [contexts.index(c) for c in ("weight>28.999999999999996%", "weight>75.0%", "top3", "top2perTarget")]
    assert firsts == sorted(firsts)
    for context in set(contexts):
        names = [m.tf for m in got if m.context[0] == context]
        assert names == sorted(names)


def test_genes_are_sorted_by_weight_then_column():
    genes = [f"g{j}" for j in range(8)]
    w = np.array([[0.0, 0.5, 2.0, 0.5, 0.0, 2.0, 0.1, 0.0]])
    (module,) = build_modules(w, ["g7"], genes, percentile_thresholds=(), top_n_targets=(10,), top_n_per_target=(), min_genes=0, device="cpu")
    assert module.genes == ("g2", "g5", "g7", "g1", "g3", "g6")
    assert module.weights == (2.0, 2.0, 1.0, 0.5, 0.5, 0.1)


@pytest.mark.parametrize(
    "convert",
    [pytest.param(np.asarray, id="numpy"), pytest.param(torch.from_numpy, id="torch"), pytest.param(sp.csr_matrix, id="scipy")],
)
def test_input_types(convert):
    w, tfs, genes, expression, params = random_case(8)
    in_genes = [i for i, tf in enumerate(tfs) if tf in genes]
    w, tfs = w[in_genes], [tfs[i] for i in in_genes]
    expected = build_modules(w, tfs, genes, device="cpu", expression=expression, **params)
    assert expected, "no modules: the comparison would be vacuous"
    assert build_modules(convert(w), tfs, genes, device="cpu", expression=convert(expression), **params) == expected
    frame = pd.DataFrame(expression, columns=genes)
    assert build_modules(w, tfs, genes, device="cpu", expression=frame, **params) == expected


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param(dict(weights=np.ones((2, 4))), "shape", id="shape"),
        pytest.param(dict(tf_names=["g0", "g0", "g1"]), "duplicate", id="duplicate-tf"),
        pytest.param(dict(gene_names=["g0", "g1", "g1", "g3"]), "duplicate", id="duplicate-gene"),
        pytest.param(dict(percentile_thresholds=(75, 150)), "between 0 and 100", id="percentile"),
        pytest.param(dict(percentile_thresholds=("75",)), "numbers", id="percentile-type"),
        pytest.param(dict(top_n_targets=(0,)), "positive integer", id="top-n"),
        pytest.param(dict(top_n_per_target=(2.5,)), "positive integer", id="top-per-target"),
        pytest.param(dict(min_genes=-1), "min_genes", id="min-genes"),
        pytest.param(dict(expression=np.ones((5, 3))), "columns", id="expression-shape"),
        pytest.param(dict(expression=np.ones((1, 4))), "at least 2", id="one-cell"),
        pytest.param(dict(expression=np.ones((5, 4)), rho_threshold=0), "rho_threshold", id="rho"),
        pytest.param(dict(weights=np.full((3, 4), np.nan)), "NaN", id="nan"),
        pytest.param(dict(tf_names="g0"), "sequence", id="names-string"),
    ],
)
def test_errors(kwargs, message):
    args = dict(weights=np.ones((3, 4)), tf_names=["g0", "g1", "g2"], gene_names=["g0", "g1", "g2", "g3"])
    args.update(kwargs)
    with pytest.raises(InputError, match=message):
        build_modules(args.pop("weights"), args.pop("tf_names"), args.pop("gene_names"), device="cpu", **args)


def test_error_for_tf_without_expression_when_splitting():
    with pytest.raises(InputError, match="not among gene_names"):
        build_modules(np.ones((1, 3)), ["TFX"], ["a", "b", "c"], expression=np.random.rand(4, 3), device="cpu")
    frame = pd.DataFrame(np.random.rand(4, 3), columns=["b", "a", "c"])
    with pytest.raises(InputError, match="same order"):
        build_modules(np.ones((1, 3)), ["a"], ["a", "b", "c"], expression=frame, device="cpu")


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("case", range(12))
def test_percentile_equals_pandas_quantile(case):
    rng = np.random.default_rng(case)
    w = rng.normal(size=(int(rng.integers(1, 30)), int(rng.integers(1, 60))))
    if case % 2:
        w = np.round(w, int(rng.integers(0, 3)))  # ties
    values = pd.Series(w[w > 0])
    for q in [0, 10, 29, 33.3, 50, 75, 90, 99.9, 100] + list(rng.uniform(0, 100, 40)):
        expected = values.quantile(q / 100)  # what pySCENIC calls
        got = positive_weight_percentile(w, q)
        if values.empty:
            assert got is None
        else:
            assert got == expected, (q, got, expected)  # bit for bit


def test_threshold_is_strict_and_global():
    w = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 4.0, 0.0, -5.0]])
    # positive weights 1,2,3,4,4,4: the 50th percentile is 3.5; 75th is 4.0 (kept: none > 4)
    out = to_numpy(select_threshold_targets(w, percentile=50, include_tf=False, device="cpu"))
    np.testing.assert_array_equal(out, [[0, 0, 0, 4.0], [4.0, 4.0, 0, 0]])
    assert not to_numpy(select_threshold_targets(w, percentile=75, include_tf=False, device="cpu")).any()
    out = to_numpy(select_threshold_targets(w, threshold=3.0, include_tf=False, device="cpu"))
    np.testing.assert_array_equal(out, [[0, 0, 0, 4.0], [4.0, 4.0, 0, 0]])
    out = to_numpy(select_threshold_targets(w, threshold=-10.0, include_tf=False, device="cpu"))
    assert (out >= 0).all() and (out > 0).sum() == 6  # negatives never selected


def test_percentile_of_float32_is_computed_in_float64():
    w = np.array([[0.1, 0.2, 0.3, 0.7]], dtype=np.float32)
    cut = positive_weight_percentile(w, 75)
    assert cut == pd.Series(w.ravel().astype(np.float64)).quantile(0.75)
    out = to_numpy(select_threshold_targets(w, threshold=cut, include_tf=False, device="cpu"))
    assert out.dtype == np.float32 and (out > 0).sum() == 1


def test_topk_ties_go_to_the_lower_gene_and_never_zero_or_negative():
    w = np.array([[1.0, 2.0, 1.0, 1.0, 1.0, 0.0], [0.0, -1.0, 3.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]])
    out = to_numpy(select_topk_targets(w, k=3, include_tf=False, device="cpu"))
    np.testing.assert_array_equal(out > 0, [[1, 1, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]])
    assert (out >= 0).all()


def test_top_n_per_target_ties_go_to_the_lower_tf():
    w = np.array([[1.0, 0.0, 2.0], [1.0, -1.0, 2.0], [1.0, 0.5, 3.0]])
    out = to_numpy(select_top_n_per_target(w, n=2, include_tf=False, device="cpu"))
    np.testing.assert_array_equal(out > 0, [[1, 0, 1], [1, 0, 0], [0, 1, 1]])


def per_tf(select):
    """A data-driven selector fitted per TF, returning only the selected weights."""

    @functools.wraps(select)
    def run(*args, **kwargs):
        return select(*args, per_tf=True, **kwargs)[0]

    return run


@pytest.mark.parametrize("select", [select_topk_targets, select_top_n_per_target, select_threshold_targets,
                                    per_tf(select_mixture_model_targets), per_tf(select_knee_targets)])
def test_tf_is_added_only_to_rows_with_targets(select):
    w = np.array([[0.0, 0.3, 0.9, 0.2, 0.1, 0.05], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.4, 0.0, 0.0, 0.0, 0.0, 0.0]])
    out = to_numpy(select(w, include_tf=True, tf_indices=np.array([0, 1, -1]), device="cpu"))
    assert out[0, 0] == 1.0  # TF 0 is column 0
    assert not out[1].any()  # no targets: no module, no TF
    assert out[2, 0] == 0.4  # TF 2 is not a gene column: nothing added
    with pytest.raises(InputError, match="one per row"):
        select(w, include_tf=True, tf_indices=[0, 1], device="cpu")
    with pytest.raises(InputError, match="gene columns"):
        select(w, include_tf=True, tf_indices=[0, 1, 6], device="cpu")


def test_kernel_input_errors():
    with pytest.raises(InputError, match="2-D"):
        select_topk_targets(np.ones(4), device="cpu")
    with pytest.raises(InputError, match="NaN"):
        select_topk_targets(np.array([[1.0, np.inf]]), device="cpu")
    with pytest.raises(InputError, match="positive integer"):
        select_topk_targets(np.ones((2, 2)), k=0, device="cpu")
    with pytest.raises(InputError, match="between 0 and 100"):
        select_threshold_targets(np.ones((2, 2)), percentile=101, device="cpu")
    with pytest.raises(InputError, match="between 0 and 1"):
        filter_by_min_targets(np.ones((2, 2)), min_fraction=80, device="cpu")
    with pytest.raises(InputError, match="device"):
        select_topk_targets(np.ones((2, 2)), device="tpu:0")


def test_filter_by_min_targets():
    w = np.zeros((3, 10))
    w[0, :5] = 1
    w[1, :2] = 1
    w[2, :8] = -1
    kept, mask = filter_by_min_targets(w, min_targets=2, device="cpu")
    assert mask.tolist() == [True, True, False] and kept.shape == (2, 10)
    _, mask = filter_by_min_targets(w, min_targets=0, min_fraction=0.45, device="cpu")
    assert mask.tolist() == [True, False, False]  # 5/10 >= 0.45; 2/10 is not
    _, mask = filter_by_min_targets(w, min_targets=0, min_fraction=0.5, device="cpu")
    assert mask.tolist() == [True, False, False]
    _, mask = filter_by_min_targets(w, min_targets=0, min_fraction=0.51, device="cpu")
    assert mask.tolist() == [False, False, False]  # 0.2.0 floored 5.1 to 5 and kept row 0


def test_filter_by_mapped_fraction_is_pyscenics_80_percent_rule():
    reference = np.array([0, 1, 2, 3, 9])
    w = np.zeros((3, 10))
    w[0, [0, 1, 2, 3, 5]] = 1  # 4 of 5 mapped: 20% missing, which pySCENIC skips
    w[1, [0, 1, 2, 3, 9, 5]] = 1  # 5 of 6 mapped: kept
    kept, mask = filter_by_mapped_fraction(w, reference, device="cpu")
    assert mask.tolist() == [False, True, False]  # row 2 has no targets
    assert kept.shape == (1, 10)
    _, mask = filter_by_mapped_fraction(w, reference, min_fraction=0.79, device="cpu")
    assert mask.tolist() == [True, True, False]
    _, mask = filter_by_mapped_fraction(w, None, device="cpu")
    assert mask.all()
    with pytest.raises(InputError, match="reference_indices"):
        filter_by_mapped_fraction(w, [0, 10], device="cpu")


def test_get_target_indices_binarize_to_numpy():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(6, 9))
    w[2] = 0
    indices, offsets = get_target_indices(w, device="cpu")
    for i in range(6):
        np.testing.assert_array_equal(to_numpy(indices[offsets[i] : offsets[i + 1]]), np.flatnonzero(w[i] > 0))
    assert offsets[0] == 0 and offsets[-1] == (w > 0).sum()
    b = binarize(w, device="cpu")
    assert b.dtype == torch.float32
    np.testing.assert_array_equal(to_numpy(b), (w > 0).astype(np.float32))
    assert isinstance(to_numpy(np.ones(2)), np.ndarray)


def test_dtype_is_kept():
    w = np.random.default_rng(0).random((3, 5))
    assert select_topk_targets(w, k=2, device="cpu").dtype == torch.float64
    assert select_topk_targets(w.astype(np.float32), k=2, device="cpu").dtype == torch.float32
    assert select_topk_targets(w > 0.5, k=2, device="cpu").dtype == torch.float32


def two_groups(rng, n_low=60, n_high=12):
    low = rng.uniform(0.01, 0.2, n_low)
    high = rng.uniform(0.8, 1.0, n_high)
    return np.concatenate([low, high, np.zeros(10), -rng.random(5)])


def test_mixture_model_keeps_the_high_group():
    rng = np.random.default_rng(1)
    rows = [rng.permutation(two_groups(rng)) for _ in range(5)]
    w = np.array(rows)
    out = to_numpy(per_tf(select_mixture_model_targets)(w, include_tf=False, device="cpu"))
    np.testing.assert_array_equal(out > 0, w >= 0.8)
    # deterministic, and a row's result does not depend on the other rows
    again = to_numpy(per_tf(select_mixture_model_targets)(w[[3, 1]], include_tf=False, device="cpu"))
    np.testing.assert_array_equal(again, out[[3, 1]])


def test_mixture_model_cut_ignores_the_low_tail_a_broad_high_component_claims():
    rng = np.random.default_rng(0)
    # narrow bulk near 0.5, broad strong group in [1, 4], three tiny weights far below the bulk
    row = np.r_[rng.uniform(0.45, 0.55, 100), rng.uniform(1, 4, 30), [0.01, 0.02, 0.015]]
    out = to_numpy(per_tf(select_mixture_model_targets)(row[None], include_tf=False, device="cpu"))
    np.testing.assert_array_equal(out[0] > 0, row >= 1)


def test_mixture_model_small_or_flat_rows_keep_everything():
    w = np.array([[0.5, 0.1, 0.0, -1.0], [0.3, 0.3, 0.3, 0.3], [0.0, 0.0, 0.0, 0.0]])
    out = to_numpy(per_tf(select_mixture_model_targets)(w, include_tf=False, device="cpu"))
    np.testing.assert_array_equal(out, np.where(w > 0, w, 0))


def test_knee_cut():
    # a steep fall over 4 weights, then a flat tail: the knee is the 4th weight
    curve = np.array([10.0, 7.0, 4.0, 1.0, 0.9, 0.85, 0.8, 0.78, 0.76, 0.75, 0.74, 0.73])
    w = np.vstack([curve[::-1], np.linspace(1, 0.1, 12), np.concatenate([[0.5, 0.2], np.zeros(10)])])
    out = to_numpy(per_tf(select_knee_targets)(w, include_tf=False, device="cpu"))
    np.testing.assert_array_equal(out[0] > 0, curve[::-1] >= 1.0)
    assert (out[1] > 0).all()  # a straight line has no knee: all kept
    assert (out[2] > 0).sum() == 2  # fewer than 3 weights: all kept


def test_knee_keeps_ties_at_the_cut():
    w = np.array([[10.0, 1.0, 1.0, 0.2, 0.1, 0.1, 0.1, 0.05]])
    out = to_numpy(per_tf(select_knee_targets)(w, include_tf=False, device="cpu"))
    kept = out[0] > 0
    cut = w[0][kept].min()
    np.testing.assert_array_equal(kept, w[0] >= cut)



def cluster(mean, sd, n):
    """n weights whose sample distribution is N(mean, sd): evenly spaced normal quantiles."""
    from scipy.stats import norm

    return mean + sd * norm.ppf((np.arange(n) + 0.5) / n)


def crossing(noise, signal):
    """Where pi_n N(x; noise moments) = pi_s N(x; signal moments), between the two means."""
    pi_n, pi_s = len(noise) / (len(noise) + len(signal)), len(signal) / (len(noise) + len(signal))
    (m_n, s_n), (m_s, s_s) = (noise.mean(), noise.std()), (signal.mean(), signal.std())
    # log pi_s - log s_s - (x - m_s)^2 / 2 s_s^2 = log pi_n - log s_n - (x - m_n)^2 / 2 s_n^2
    a = 1 / (2 * s_n**2) - 1 / (2 * s_s**2)
    b = m_s / s_s**2 - m_n / s_n**2
    c = math.log(pi_s / s_s) - math.log(pi_n / s_n) - m_s**2 / (2 * s_s**2) + m_n**2 / (2 * s_n**2)
    roots = np.roots([a, b, c]) if abs(a) > 1e-12 else np.array([-c / b])
    (root,) = [r.real for r in roots if m_n < r.real < m_s]
    return root


def test_mixture_methods_on_two_separated_clusters():
    noise, signal = cluster(1.0, 0.1, 800), cluster(3.0, 0.1, 200)
    w = np.r_[noise, signal, np.zeros(20), -np.ones(5)][None]
    expected = {
        "intersection": crossing(noise, signal),
        "posterior": signal.min(),  # the lowest weight the signal claims
        "noise_quantile": noise.mean() + 2 * noise.std(),
    }
    for method, threshold in expected.items():
        out, info = select_mixture_model_targets(w, method=method, include_tf=False, device="cpu")
        assert info["threshold"] == pytest.approx(threshold, rel=1e-9), method
        np.testing.assert_array_equal(to_numpy(out)[0] > 0, w[0] >= info["threshold"])
        assert info["means"] == pytest.approx([1.0, 3.0], rel=1e-9)
        assert info["stds"] == pytest.approx([noise.std(), signal.std()], rel=1e-9)
        assert info["weights"] == pytest.approx([0.8, 0.2], rel=1e-9)
        assert info["converged"] is True and info["method"] == method
    assert 2.0 < expected["intersection"] < 2.1  # equal spreads: the smaller signal moves the cut above 2
    assert (to_numpy(select_mixture_model_targets(w, include_tf=False, device="cpu")[0]) > 0).sum() == 200


def test_mixture_global_fit_and_per_tf_fits():
    noise, signal = cluster(1.0, 0.1, 600), cluster(2.5, 0.1, 200)
    other_noise, other_signal = cluster(10.0, 0.3, 500), cluster(14.0, 0.2, 300)
    # one fit over all TFs: the two rows hold halves of one sample
    pooled = np.r_[noise, signal]
    w = np.vstack([pooled[0::2], pooled[1::2]])
    out, info = select_mixture_model_targets(w, include_tf=False, device="cpu")
    assert info["threshold"] == pytest.approx(crossing(noise, signal), rel=1e-9)
    np.testing.assert_array_equal(to_numpy(out) > 0, w >= info["threshold"])
    # per TF: each row its own fit, as if it were alone
    w = np.vstack([np.r_[noise, signal], np.r_[other_noise, other_signal]])
    out, info = select_mixture_model_targets(w, include_tf=False, device="cpu", per_tf=True)
    assert info["threshold"] == pytest.approx([crossing(noise, signal), crossing(other_noise, other_signal)], rel=1e-9)
    np.testing.assert_allclose(info["means"], [[1.0, 2.5], [10.0, 14.0]], rtol=1e-9)
    assert info["converged"] == [True, True] and info["method"] == "intersection"
    np.testing.assert_array_equal(to_numpy(out) > 0, w >= np.array(info["threshold"])[:, None])
    alone = select_mixture_model_targets(w[1:], include_tf=False, device="cpu")[1]
    assert alone["threshold"] == info["threshold"][1] and alone["means"] == info["means"][1]
    # one fit over both rows mixes their scales: the cut lands between the rows, not within each
    pooled_fit = select_mixture_model_targets(w, include_tf=False, device="cpu")[1]
    assert 3.0 < pooled_fit["threshold"] < 9.0


def test_mixture_three_components_signal_is_the_highest():
    low, middle, high = cluster(1.0, 0.1, 300), cluster(3.0, 0.1, 300), cluster(5.0, 0.1, 300)
    w = np.r_[low, middle, high][None]
    out, info = select_mixture_model_targets(w, n_components=3, method="posterior", include_tf=False, device="cpu")
    assert info["means"] == pytest.approx([1.0, 3.0, 5.0], rel=1e-9)
    np.testing.assert_array_equal(to_numpy(out)[0] > 0, w[0] >= 4)  # the highest component only
    info = select_mixture_model_targets(w, n_components=3, include_tf=False, device="cpu")[1]
    assert info["threshold"] == pytest.approx(crossing(low, high), rel=1e-9)  # noise and signal components
    info = select_mixture_model_targets(w, n_components=3, method="noise_quantile", include_tf=False, device="cpu")[1]
    assert info["threshold"] == pytest.approx(low.mean() + 2 * low.std(), rel=1e-9)


def test_mixture_without_weights_to_split_keeps_them_all():
    w = np.array([[0.5, 0.1, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    out, info = select_mixture_model_targets(w, include_tf=False, device="cpu", per_tf=True)
    np.testing.assert_array_equal(to_numpy(out), np.where(w > 0, w, 0))
    assert info["threshold"] == [0.1, 0.0] and info["means"] == [[], []] and info["converged"] == [False, False]
    out, info = select_mixture_model_targets(np.zeros((2, 3)), include_tf=False, device="cpu")
    assert not to_numpy(out).any() and info["threshold"] == 0.0 and info["means"] == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_components=1), "2 or more"),
    (dict(n_components=2.5), "positive integer"),
    (dict(method="mean"), "'intersection', 'posterior', 'noise_quantile'"),
    (dict(per_tf="yes"), "True or False"),
    (dict(tol=0), "tol"),
])
def test_mixture_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        select_mixture_model_targets(np.ones((2, 5)), device="cpu", **kwargs)


def three_segments():
    """101 weights falling steeply, then moderately, then slowly (corners at positions 10 and 40).

    On Kneedle's scaled axes the segments have slopes -5, -4/3 and -1/6, so the knee (where
    the slope falls to -sensitivity) is at 40 for sensitivity in (1/6, 4/3), at 10 in (4/3, 5).
    """
    x = np.linspace(0, 1, 101)
    y = np.interp(x, [0, 0.1, 0.4, 1], [1, 0.5, 0.1, 0])
    return 1 + 9 * y


@pytest.mark.parametrize("sensitivity, knee", [(0.1, 100), (1.0, 40), (2.0, 10), (6.0, 0)])
def test_knee_sensitivity_moves_the_knee_earlier(sensitivity, knee):
    curve = three_segments()
    w = np.random.default_rng(0).permutation(np.r_[curve, np.zeros(9)])[None]
    out, info = select_knee_targets(w, sensitivity=sensitivity, include_tf=False, device="cpu")
    assert info == {"threshold": pytest.approx(curve[knee], rel=1e-12), "knee_index": knee, "per_tf": False}
    np.testing.assert_array_equal(to_numpy(out)[0] > 0, w[0] >= curve[knee])


def test_knee_global_over_all_tfs_and_per_tf():
    steep = np.linspace(100, 10, 10)  # the global curve: 10 steep weights, then 190 nearly flat ones
    flat = np.linspace(10, 9, 191)[1:]
    w = np.vstack([np.r_[steep, flat[0::2]], np.r_[np.zeros(10), flat[1::2]]])
    out, info = select_knee_targets(w, include_tf=False, device="cpu")
    assert info == {"threshold": 10.0, "knee_index": 9, "per_tf": False}
    np.testing.assert_array_equal(to_numpy(out) > 0, w >= 10.0)  # the second TF keeps nothing
    out, info = select_knee_targets(w, per_tf=True, include_tf=False, device="cpu")
    assert info == {"threshold": [10.0, flat[-1]], "knee_index": [9, 94], "per_tf": True}
    np.testing.assert_array_equal(to_numpy(out) > 0, [w[0] >= 10.0, w[1] > 0])  # a straight line: no knee
    out, info = select_knee_targets(np.zeros((2, 3)), per_tf=True, device="cpu")
    assert not to_numpy(out).any() and info["knee_index"] == [-1, -1] and info["threshold"] == [0.0, 0.0]


@pytest.mark.parametrize("kwargs", [dict(sensitivity=0), dict(sensitivity=-1.0), dict(sensitivity=math.nan),
                                    dict(sensitivity="1"), dict(per_tf=1)])
def test_knee_errors(kwargs):
    with pytest.raises(InputError):
        select_knee_targets(np.ones((2, 5)), device="cpu", **kwargs)

@pytest.mark.gpu
@cuda
def test_cuda_equals_cpu():
    w, tfs, genes, expression, params = random_case(6)
    in_genes = [i for i, tf in enumerate(tfs) if tf in genes]
    w, tfs = w[in_genes], [tfs[i] for i in in_genes]
    kwargs = dict(params, expression=expression, keep_only_activating=False)
    assert build_modules(w, tfs, genes, device="cuda", **kwargs) == build_modules(w, tfs, genes, device="cpu", **kwargs)
    assert build_modules(w, tfs, genes, device="cpu", **kwargs), "no modules: the comparison would be vacuous"
    for select in (select_topk_targets, select_top_n_per_target, per_tf(select_mixture_model_targets),
                   per_tf(select_knee_targets)):
        np.testing.assert_array_equal(to_numpy(select(w, device="cuda")), to_numpy(select(w, device="cpu")))
    for select in (select_mixture_model_targets, select_knee_targets):  # one fit over the whole table
        (on_gpu, gpu_info), (on_cpu, cpu_info) = select(w, device="cuda"), select(w, device="cpu")
        np.testing.assert_array_equal(to_numpy(on_gpu), to_numpy(on_cpu))
        assert gpu_info["threshold"] == pytest.approx(cpu_info["threshold"], rel=1e-9)
    for q in (10, 50, 75, 90):
        assert positive_weight_percentile(torch.from_numpy(w).cuda(), q) == positive_weight_percentile(w, q)
