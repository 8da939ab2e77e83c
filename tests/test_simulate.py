"""The simulator plants what it says it plants, the same way every time."""

from __future__ import annotations

import numpy as np
import pytest

from flashscenic._errors import InputError
from flashscenic.simulate import SimulatedData, regulon_recovery, simulate_expression

SMALL = dict(n_cells=240, n_genes=400, n_cell_types=3, n_regulons=6, genes_per_regulon=20)


@pytest.fixture(scope="module")
def data() -> SimulatedData:
    return simulate_expression(**SMALL, seed=7)


def test_shapes_types_and_names(data):
    n_cells, n_genes, n_types, n_regulons = 240, 400, 3, 6
    assert data.counts.shape == data.expression.shape == (n_cells, n_genes)
    assert data.counts.dtype == np.int64 and (data.counts >= 0).all()
    assert data.expression.dtype == np.float32
    np.testing.assert_array_equal(data.expression, np.log1p(data.counts).astype(np.float32))
    assert data.gene_names.shape == (n_genes,) and len(set(data.gene_names)) == n_genes
    assert list(data.gene_names[:n_regulons]) == [f"TF{r}" for r in range(n_regulons)]
    assert list(data.cell_type_names) == ["type0", "type1", "type2"]
    assert data.cell_types.shape == (n_cells,)
    counts = [np.sum(data.cell_types == t) for t in data.cell_type_names]
    assert counts == [80, 80, 80]  # as even as possible
    assert list(data.regulon_names) == [f"TF{r}(+)" for r in range(n_regulons)]
    assert data.regulon_weights.shape == (n_regulons, n_genes)
    assert data.regulon_weights.dtype == np.float32
    assert data.active.shape == (n_regulons, n_types) and data.active.dtype == bool


def test_planted_truth_is_well_formed(data):
    w = data.regulon_weights
    assert (w >= 0).all()
    assert ((w > 0).sum(axis=1) == 20).all()
    assert ((w > 0).sum(axis=0) <= 1).all()  # no target is shared
    assert not w[:, :6].any()  # TFs are not targets
    assert (data.active.sum(axis=1) >= 1).all()
    assert data.active.any(axis=0).all()  # 6 regulons over 3 types: every type has one


def test_targets_are_higher_where_their_regulon_is_active(data):
    for r, active_row in enumerate(data.active):
        targets = data.regulon_weights[r] > 0
        per_type = np.array([data.expression[data.cell_types == t][:, targets].mean()
                             for t in data.cell_type_names])
        assert per_type[active_row].min() > per_type[~active_row].max(), data.regulon_names[r]
        tf = data.expression[:, r]
        assert tf[np.isin(data.cell_types, data.cell_type_names[active_row])].mean() > tf.mean()


def test_same_seed_same_data_and_other_seed_other_data(data):
    again = simulate_expression(**SMALL, seed=7)
    for field in ("counts", "expression", "gene_names", "cell_types", "regulon_weights", "active"):
        np.testing.assert_array_equal(getattr(again, field), getattr(data, field), err_msg=field)
    other = simulate_expression(**SMALL, seed=8)
    assert not np.array_equal(other.counts, data.counts)
    assert not np.array_equal(other.regulon_weights, data.regulon_weights)


def test_defaults():
    d = simulate_expression()
    assert d.counts.shape == (2000, 500)
    assert d.regulon_weights.shape == (10, 500) and d.active.shape == (10, 4)


def test_recovery_table_from_aucell(data):
    from flashscenic import get_aucell

    auc = get_aucell(data.expression, data.regulon_weights, k=None, device="cpu", seed=0, verbose=False)
    table = regulon_recovery(auc, data)
    assert list(table.index) == list(data.regulon_names)
    assert list(table.columns) == ["planted", "type0", "type1", "type2", "top", "recovered"]
    assert table["recovered"].all()
    assert (table["top"] == table["planted"]).all()


def test_recovery_flags_a_wrong_type(data):
    auc = np.zeros((240, 6), dtype=np.float32)
    wrong = ~data.active[0]
    auc[np.isin(data.cell_types, data.cell_type_names[wrong]), 0] = 1.0
    table = regulon_recovery(auc, data)
    assert not table["recovered"].iloc[0]
    with pytest.raises(InputError, match="expected \\(240, 6\\)"):
        regulon_recovery(auc[:, :5], data)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param(dict(n_cells=0), "n_cells must be a positive integer, got 0", id="no-cells"),
        pytest.param(dict(n_genes=2.5), "n_genes must be a positive integer", id="float-genes"),
        pytest.param(dict(n_regulons=True), "n_regulons must be a positive integer", id="bool"),
        pytest.param(dict(seed=-1), "seed must be a non-negative integer or None", id="negative-seed"),
        pytest.param(dict(n_cells=3), "fewer than n_cell_types=4", id="fewer-cells-than-types"),
        pytest.param(dict(n_genes=200), "use n_genes >= 310", id="too-few-genes"),
    ],
)
def test_bad_arguments_raise_input_error(kwargs, message):
    with pytest.raises(InputError, match=message):
        simulate_expression(**kwargs)
