"""Regulon specificity scores equal pySCENIC's regulon_specificity_scores: as pySCENIC's DataFrame
(``rss_table``) and as the documented dict (``regulon_specificity_scores``)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from flashscenic.errors import InputError
from flashscenic.rss import regulon_specificity_scores, rss_by_label, rss_table
from pyscenic_oracle import pyscenic_rss

TOL = 1e-12


def random_case(case: int):
    """AUC-like values (many exact zeros), string cell names, 1 to 7 unequal cell types."""
    rng = np.random.default_rng(900 + case)
    n_cells, n_regulons = int(rng.integers(3, 250)), int(rng.integers(1, 25))
    auc = rng.random((n_cells, n_regulons)) * (rng.random((n_cells, n_regulons)) < rng.uniform(0.05, 1))
    if case % 3 == 0:
        auc = auc.astype(np.float32)
    types = rng.choice(["T", "B", "NK", "mono", "DC", "stem", "x"][: int(rng.integers(1, 8))], n_cells)
    cells = [f"cell{i}" for i in range(n_cells)]
    frame = pd.DataFrame(auc, index=cells, columns=[f"Reg{j}(+)" for j in range(n_regulons)])
    return frame, pd.Series(types, index=cells)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


@pytest.mark.parametrize("block_values", [None, 3 * 25])  # None: one block; else blocks of a few cells
@pytest.mark.parametrize("case", range(12))
def test_equals_pyscenic_on_random_inputs(case, block_values, monkeypatch):
    import flashscenic.rss as rss_module

    if block_values is not None:
        monkeypatch.setattr(rss_module, "_BLOCK_VALUES", block_values)
    frame, labels = random_case(case)
    got = quiet(rss_table, frame, labels)
    assert list(got.index) == sorted(set(labels))  # sorted; pySCENIC keeps order of appearance
    assert list(got.columns) == list(frame.columns)
    # We compute in float64; pySCENIC in the AUC's dtype (float32 rounding ~1e-7 there).
    expected = pyscenic_rss(frame.astype(np.float64), labels).loc[got.index, got.columns]
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(dtype=np.float64), rtol=0, atol=TOL)
    if (frame.dtypes == np.float32).all():
        as_given = pyscenic_rss(frame, labels).loc[got.index, got.columns]
        np.testing.assert_allclose(got.to_numpy(), as_given.to_numpy(dtype=np.float64), rtol=0, atol=1e-6)


def test_specific_regulon_scores_one():
    labels = np.array(["a"] * 5 + ["b"] * 5)
    auc = np.zeros((10, 2))
    auc[:5, 0] = 0.3  # on exactly in type a, uniformly
    auc[:, 1] = 0.2
    got = rss_table(auc, labels)
    assert got.loc["a", 0] == pytest.approx(1.0, abs=1e-12)
    assert got.loc["b", 0] == pytest.approx(1 - np.sqrt(np.log(2)), abs=1e-12)  # disjoint: JS = log 2
    # uniform p against half the cells: JS = log 2 - (3/4) log(4/3) - (1/4) log(4) ... closed form
    p, q = np.full(10, 0.1), np.r_[np.full(5, 0.2), np.zeros(5)]
    m = (p + q) / 2
    js = 0.5 * (np.sum(p * np.log(p / m)) + np.sum(q[:5] * np.log(q[:5] / m[:5])))
    assert got.loc["a", 1] == pytest.approx(1 - np.sqrt(js), abs=1e-12)
    np.testing.assert_allclose(got.to_numpy(), pyscenic_rss(pd.DataFrame(auc), pd.Series(labels)).loc[["a", "b"]].to_numpy(), atol=TOL)


def test_all_zero_regulon_is_nan_with_one_warning_naming_it():
    frame, labels = random_case(1)
    frame.iloc[:, 0] = 0.0
    if frame.shape[1] > 2:
        frame.iloc[:, 2] = 0.0
    with pytest.warns(RuntimeWarning, match=re.escape(str(frame.columns[0]))) as record:
        got = rss_table(frame, labels)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    zero = (frame.to_numpy() == 0).all(axis=0)
    assert got.loc[:, zero].isna().all().all()
    assert not got.loc[:, ~zero].isna().any().any()
    expected = pyscenic_rss(frame, labels).loc[got.index]
    assert expected.loc[:, zero].isna().all().all()


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda f: f.to_numpy(), id="numpy"),
        pytest.param(lambda f: torch.from_numpy(f.to_numpy().copy()), id="torch"),
    ],
)
def test_array_inputs_and_regulon_names(convert):
    frame, labels = random_case(4)
    expected = quiet(rss_table, frame, labels)
    got = quiet(rss_table, convert(frame), labels.to_numpy(), regulon_names=list(frame.columns))
    pd.testing.assert_frame_equal(got, expected)
    unnamed = quiet(rss_table, convert(frame), list(labels))
    assert list(unnamed.columns) == list(range(frame.shape[1]))
    np.testing.assert_array_equal(unnamed.to_numpy(), expected.to_numpy())


def test_labels_are_matched_to_cells_by_index():
    frame, labels = random_case(5)
    shuffled = labels.sample(frac=1.0, random_state=0)
    got = quiet(rss_table, frame, shuffled)
    pd.testing.assert_frame_equal(got, quiet(rss_table, frame, labels))
    positional = pd.Series(labels.to_numpy())  # RangeIndex: by position
    pd.testing.assert_frame_equal(quiet(rss_table, frame, positional), got)
    categorical = pd.Series(pd.Categorical(labels), index=labels.index)
    pd.testing.assert_frame_equal(quiet(rss_table, frame, categorical), got)


def test_the_documented_form_is_a_dict_of_the_table():
    """flashscenic's documented return: {'rss': array, 'cell_types': sorted labels, 'regulon_names'}."""
    frame, labels = random_case(4)
    table = quiet(rss_table, frame, labels)
    got = quiet(regulon_specificity_scores, frame.to_numpy(), labels.to_numpy(), regulon_names=list(frame.columns))
    assert isinstance(got, dict) and set(got) == {"rss", "cell_types", "regulon_names"}
    assert isinstance(got["rss"], np.ndarray) and got["rss"].shape == (len(set(labels)), frame.shape[1])
    np.testing.assert_array_equal(got["rss"], table.to_numpy())
    assert got["cell_types"] == sorted(set(labels)) and got["regulon_names"] == list(frame.columns)
    numbers = np.resize([7, 10, 9], len(frame))
    unnamed = quiet(regulon_specificity_scores, frame.to_numpy(), numbers)
    assert unnamed["regulon_names"] == [str(j) for j in range(frame.shape[1])]  # text, as documented
    assert unnamed["cell_types"] == ["7", "9", "10"]  # sorted as labels, given as text


@pytest.mark.parametrize(
    "auc, labels, message",
    [
        pytest.param(np.ones((3, 2)), ["a", "b"], "3 cells", id="length"),
        pytest.param(np.ones((3, 2)), ["a", None, "b"], "missing", id="missing-label"),
        pytest.param(np.ones(3), ["a", "b", "c"], "2-D", id="1-d"),
        pytest.param(-np.ones((3, 2)), ["a", "b", "c"], "negative", id="negative"),
        pytest.param(np.full((3, 2), np.nan), ["a", "b", "c"], "NaN", id="nan"),
        pytest.param(np.ones((0, 2)), [], "at least one cell", id="empty"),
        pytest.param(np.ones((3, 2)), "abc", "one string", id="string"),
    ],
)
@pytest.mark.parametrize("form", [rss_table, regulon_specificity_scores], ids=["table", "dict"])
def test_errors(auc, labels, message, form):
    with pytest.raises(InputError, match=message):
        form(auc, labels)


def test_error_for_labels_of_other_cells():
    frame, labels = random_case(2)
    other = labels.copy()
    other.index = [f"other{i}" for i in range(len(labels))]
    with pytest.raises(InputError, match="does not match"):
        rss_table(frame, other)
    with pytest.raises(InputError, match="regulon_names"):
        rss_table(frame.to_numpy(), labels.to_numpy(), regulon_names=["a"])


def test_rss_by_label_leaves_out_cells_without_a_label_and_compares_labels_as_text():
    frame, labels = random_case(4)
    labels = labels.rename("cell_type").astype(object)
    labels.iloc[::5] = None
    labels.iloc[1::7] = np.nan
    shuffled = labels.sample(frac=1.0, random_state=1)  # aligned by index
    got = quiet(rss_by_label, frame, shuffled)
    kept = labels.notna()
    expected = quiet(rss_table, frame[kept], labels[kept].astype(str))
    pd.testing.assert_frame_equal(got, expected.rename_axis("cell_type"))
    assert got.index.name == "cell_type" and list(got.columns) == list(frame.columns)

    mixed = pd.Series(([1, "1", "b", None] * len(frame))[: len(frame)], index=frame.index, dtype=object, name="k")
    by_text = quiet(rss_by_label, frame, mixed)  # 1 and "1" are one cell type
    kept = mixed.notna()
    assert list(by_text.index) == ["1", "b"] and by_text.index.name == "k"
    pd.testing.assert_frame_equal(by_text, quiet(rss_table, frame[kept], mixed[kept].astype(str))
                                  .rename_axis("k"))
    positional = quiet(rss_by_label, frame, labels.reset_index(drop=True))  # a RangeIndex: by position
    pd.testing.assert_frame_equal(positional, got)


def test_rss_by_label_errors():
    frame, labels = random_case(2)
    with pytest.raises(InputError, match="every cell's label in 'cell_type' is missing"):
        rss_by_label(frame, pd.Series(None, index=frame.index, name="cell_type", dtype=object))
    other = labels.copy()
    other.index = [f"other{i}" for i in range(len(labels))]
    with pytest.raises(InputError, match="does not match"):
        rss_by_label(frame, other)
    with pytest.raises(InputError, match="as a DataFrame"):
        rss_by_label(frame.to_numpy(), labels)


@pytest.mark.parametrize("unlabelled", [0, 7])
def test_rss_of_a_results_store_equals_rss_by_label_read_by_blocks(tmp_path, monkeypatch, unlabelled):
    """The run's RSS streams the AUC from the store in blocks: the same bits as in memory."""
    import flashscenic.rss as rss_module
    from flashscenic.rss import rss_of_store
    from flashscenic.store import create_results_store

    monkeypatch.setattr(rss_module, "_BLOCK_VALUES", 5 * 4)  # blocks of 5 cells: many, not aligned to chunks
    rng = np.random.default_rng(unlabelled)
    n_cells, names = 53, ["r1", "r2", "r3", "r4"]
    auc = rng.random((n_cells, len(names))).astype(np.float32)
    auc[rng.random(auc.shape) < 0.2] = 0
    auc[:, 3] = 0  # a regulon that is never active: NaN column and a warning
    cells = [f"c{i}" for i in range(n_cells)]
    results = create_results_store(tmp_path / "r.zarr", cell_names=cells, chunk_rows=8)
    results.init_auc(names)
    for i, (a, b) in enumerate(results.auc_chunk_ranges()):
        results.write_auc_chunk(i, auc[a:b])
    labels = pd.Series(rng.choice(["T", "B", "NK"], n_cells).astype(object), index=cells, name="cell_type")
    labels.iloc[rng.choice(n_cells, unlabelled, replace=False)] = None
    with pytest.warns(RuntimeWarning, match="AUC 0 in every cell"):
        streamed = rss_of_store(results, labels)
    with pytest.warns(RuntimeWarning, match="AUC 0 in every cell"):
        whole = rss_by_label(results.read_auc(as_frame=True), labels)
    pd.testing.assert_frame_equal(streamed, whole, check_exact=True)
    assert streamed.index.name == "cell_type" and list(streamed.columns) == names
    assert streamed["r4"].isna().all() and streamed[["r1", "r2", "r3"]].notna().all().all()


def test_a_bad_value_in_the_store_is_named_by_its_cell_labelled_or_not(tmp_path, monkeypatch):
    import flashscenic.rss as rss_module
    from flashscenic.rss import rss_of_store
    from flashscenic.store import create_results_store

    monkeypatch.setattr(rss_module, "_BLOCK_VALUES", 4 * 2)  # blocks of 4 cells
    auc = np.ones((10, 2), dtype=np.float32)
    auc[7, 1] = np.nan
    cells = [f"c{i}" for i in range(10)]
    results = create_results_store(tmp_path / "r.zarr", cell_names=cells, chunk_rows=3)
    results.init_auc(["a", "b"])
    for i, (a, b) in enumerate(results.auc_chunk_ranges()):
        results.write_auc_chunk(i, auc[a:b])
    labels = pd.Series(["T"] * 10, index=cells, dtype=object, name="cell_type")
    labels.iloc[5] = None  # an unlabelled cell before the bad one: the index stays the store's
    with pytest.raises(ValueError, match=r"AUC of .*r\.zarr has 1 NaN or infinite value\(s\), first at cell 7, "
                                         r"regulon 1"):
        rss_of_store(results, labels)
    labels.iloc[7] = None  # unlabelled, still refused, as rss_by_label refuses it
    with pytest.raises(ValueError, match="first at cell 7"):
        rss_of_store(results, labels)
    with pytest.raises(ValueError, match="first at cell 7"):
        rss_by_label(results.read_auc(as_frame=True), labels)
