"""The simulator plants what it says it plants, writes real-layout resources, and the
evaluation scores regulons against the truth by hand-checkable rules."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from flashscenic.errors import InputError
from flashscenic.simulate import SimulatedDataset, evaluate_regulons, simulate_dataset

SMALL = dict(n_cells=300, n_genes=200, n_tfs=4, n_decoy_tfs=2, n_cell_types=3, targets_per_tf=20,
             n_database_genes=400, n_motifs=60)


@pytest.fixture(scope="module")
def data() -> SimulatedDataset:
    return simulate_dataset(**SMALL, seed=7)


@pytest.fixture(scope="module")
def resources(data, tmp_path_factory):
    return data.write_resources(tmp_path_factory.mktemp("resources"))


def test_shapes_types_and_names(data):
    assert data.counts.shape == data.expression.shape == (300, 200)
    assert data.counts.dtype == np.int32 and (data.counts >= 0).all()
    assert data.expression.dtype == np.float32
    np.testing.assert_array_equal(data.expression, np.log1p(data.counts).astype(np.float32))
    assert len(set(data.gene_names)) == 200 and list(data.gene_names) == sorted(data.gene_names)
    assert list(data.cell_type_names) == ["type0", "type1", "type2"]
    assert data.cell_types.shape == (300,) and set(data.cell_types) == set(data.cell_type_names)
    assert data.planted_tfs.size == 4 and data.decoy_tfs.size == 2
    tf_list = set(data.tf_names)
    assert set(data.planted_tfs) | set(data.decoy_tfs) < tf_list  # plus TFs absent from the expression
    assert set(data.planted_tfs) | set(data.decoy_tfs) <= set(data.gene_names)
    absent = tf_list - set(data.gene_names)
    assert absent and absent <= set(data.database_gene_names)
    assert data.regulon_weights.shape == (4, 200) and data.regulon_weights.dtype == np.float32
    assert data.active.shape == (4, 3) and data.active.dtype == bool
    assert data.activity.shape == (300, 4) and data.activity.dtype == np.float32
    assert data.database_ranks.shape == (60, 400) and data.database_ranks.dtype == np.int16
    assert data.motif_names.shape == (60,) and len(set(data.motif_names)) == 60
    assert data.database_gene_names.size == 400 and len(set(data.database_gene_names)) == 400
    assert data.regulon_names == [f"{tf}(+)" for tf in data.planted_tfs]


def test_defaults_are_the_demo_size():
    d = simulate_dataset()
    assert d.expression.shape == (5000, 1000)
    assert d.planted_tfs.size == 30 and d.decoy_tfs.size == 20
    assert d.database_ranks.shape == (1000, 6000)  # more genes than rank_threshold=5000
    assert all(len(t) == 30 for t in d.planted.values())


def test_planted_truth_is_well_formed(data):
    w = data.regulon_weights
    assert ((w == 0) | ((w >= 0.5) & (w <= 1.0))).all()
    assert ((w > 0).sum(axis=1) == 20).all()
    assert ((w > 0).sum(axis=0) <= 2).all()  # at most two regulators per gene
    tf_columns = np.isin(data.gene_names, data.tf_names)
    assert not w[:, tf_columns].any()  # TFs are nobody's targets
    assert data.active.any(axis=1).all() and data.active.any(axis=0).all()
    assert set(data.planted) == set(data.planted_tfs)
    # every expressed target and TF is in the database (only background genes may be missing)
    needed = set(data.planted_tfs).union(*[set(t) for t in data.planted.values()])
    assert needed <= set(data.database_gene_names)
    regulons = data.planted_regulons()
    assert [r["name"] for r in regulons] == data.regulon_names
    assert all(r["genes"] == sorted(data.planted[r["tf"]]) for r in regulons)


def test_targets_follow_their_tf_cell_by_cell(data):
    """Within every cell type the TF's expression correlates with its targets' more than
    with other genes': the dependency is per cell, not only through the cell type."""
    big = simulate_dataset(**{**SMALL, "n_cells": 1500}, seed=3)
    column = {g: j for j, g in enumerate(big.gene_names)}
    others = np.flatnonzero((big.regulon_weights == 0).all(axis=0) & ~np.isin(big.gene_names, big.tf_names))
    gaps = []
    for k, tf in enumerate(big.planted_tfs):
        targets = np.flatnonzero(big.regulon_weights[k])
        for cell_type in big.cell_type_names:
            x = big.expression[big.cell_types == cell_type]
            r = np.corrcoef(x[:, [column[tf], *targets, *others]].T)[0, 1:]
            gaps.append(np.nanmean(r[: targets.size]) - np.nanmean(r[targets.size :]))
            assert gaps[-1] > 0.03, (tf, cell_type)
    assert np.mean(gaps) > 0.1  # log1p of sparse counts: real-data-like correlations, not 0.9
    for k in range(big.planted_tfs.size):  # the TF's mean activity is higher in its active types
        inside = np.isin(big.cell_types, big.cell_type_names[big.active[k]])
        assert big.activity[inside, k].mean() > big.activity[~inside, k].mean() + 0.5


def test_same_seed_same_data_other_seed_other_data(data):
    again = simulate_dataset(**SMALL, seed=7)
    for name in ("counts", "expression", "gene_names", "cell_types", "tf_names", "planted_tfs", "decoy_tfs",
                 "regulon_weights", "active", "activity", "database_ranks", "motif_names", "database_gene_names"):
        np.testing.assert_array_equal(getattr(again, name), getattr(data, name), err_msg=name)
    pd.testing.assert_frame_equal(again.motif_annotation, data.motif_annotation)
    assert again.planted_motifs == data.planted_motifs
    other = simulate_dataset(**SMALL, seed=8)
    assert not np.array_equal(other.counts, data.counts)
    assert not np.array_equal(other.database_ranks, data.database_ranks)


def test_ranking_database_is_real_feather_v2(data, resources):
    path = resources["ranking_db"]
    assert path.name.endswith(".genes_vs_motifs.rankings.feather")
    assert path.read_bytes()[:6] == b"ARROW1"
    table = ipc.open_file(str(path)).read_all()
    assert table.column_names[-1] == "motifs"
    assert {table.schema.field(i).type for i in range(table.num_columns - 1)} == {pa.int16()}
    ranks = np.column_stack([table.column(i).to_numpy() for i in range(table.num_columns - 1)])
    np.testing.assert_array_equal(np.sort(ranks, axis=1), np.broadcast_to(np.arange(400), ranks.shape))
    np.testing.assert_array_equal(ranks, data.database_ranks)
    assert table.column_names[:-1] == data.database_gene_names.tolist()
    assert table.column("motifs").to_pylist() == data.motif_names.tolist()


def test_resources_load_with_flashscenic_readers(data, resources):
    from flashscenic.cistarget import MotifAnnotation
    from flashscenic.rankdb import read_ranking_database

    db = read_ranking_database(resources["ranking_db"], cache=False)
    np.testing.assert_array_equal(db.rankings, data.database_ranks)
    np.testing.assert_array_equal(db.gene_names, data.database_gene_names)
    np.testing.assert_array_equal(db.motif_names, data.motif_names)

    header = resources["motif_annotation"].read_text().splitlines()[0].split("\t")
    assert header == ["#motif_id", "motif_name", "motif_description", "source_name", "source_version",
                      "gene_name", "motif_similarity_qvalue", "similar_motif_id", "similar_motif_description",
                      "orthologous_identity", "orthologous_gene_name", "orthologous_species", "description"]
    kept = MotifAnnotation.load_from_file(resources["motif_annotation"]).table
    pairs = set(kept.index)
    for tf, motifs in data.planted_motifs.items():
        assert {(tf, m) for m in motifs} <= pairs
    assert all(tf in set(data.tf_names) for tf, _ in pairs)
    # the rows linking planted motifs to decoy TFs all fail the default q-value filter
    raw = data.motif_annotation
    to_decoys = raw[raw["gene_name"].isin(data.decoy_tfs)
                    & raw["#motif_id"].isin([m for ms in data.planted_motifs.values() for m in ms])]
    assert (to_decoys["motif_similarity_qvalue"] > 0.001).all()
    everything = MotifAnnotation.load_from_file(resources["motif_annotation"], motif_similarity_fdr=1.0).table
    assert len(everything) == len(raw) > len(kept)

    assert resources["tf_list"].read_text().split() == data.tf_names.tolist()


def test_planted_motifs_rank_their_targets_early(data):
    column = {g: j for j, g in enumerate(data.database_gene_names)}
    row = {m: i for i, m in enumerate(data.motif_names)}
    n = data.database_gene_names.size
    planted_motifs, target_ranks = set(), []
    for tf, motifs in data.planted_motifs.items():
        targets = [column[g] for g in data.planted[tf]]
        for motif in motifs:
            planted_motifs.add(motif)
            target_ranks.append(data.database_ranks[row[motif], targets])
            # most targets are hits, ranked early; the rest (not hits) rank anywhere
            assert np.median(target_ranks[-1]) < 0.3 * n, (tf, motif)
    assert np.mean(target_ranks) < 0.35 * n
    # other motifs rank the same targets anywhere: mean rank near the middle
    others = [row[m] for m in data.motif_names if m not in planted_motifs]
    all_targets = [column[g] for targets in data.planted.values() for g in targets]
    assert abs(data.database_ranks[np.ix_(others, all_targets)].mean() / n - 0.5) < 0.05


# --------------------------------------------------------------------------- evaluation


def _regulon(tf, genes, sign="+"):
    return {"name": f"{tf}({sign})", "tf": tf, "type": "activating" if sign == "+" else "repressing",
            "genes": sorted(genes)}


def test_evaluate_perfect_regulons(data):
    result = evaluate_regulons(data.planted_regulons(), data)
    assert result["precision"] == result["recall"] == result["mean_target_jaccard"] == 1.0
    assert result["recovered_tfs"] == sorted(data.planted_tfs) and result["false_regulons"] == []
    table = result["table"]
    assert table["tf"].tolist() == data.planted_tfs.tolist()
    assert table["correct"].all() and (table["jaccard"] == 1.0).all() and (table["role"] == "planted").all()
    # the TF itself in a regulon's genes changes nothing
    with_tf = [dict(r, genes=sorted(r["genes"] + [r["tf"]])) for r in data.planted_regulons()]
    assert evaluate_regulons(with_tf, data)["mean_target_jaccard"] == 1.0


def test_evaluate_no_regulons(data):
    result = evaluate_regulons([], data)
    assert math.isnan(result["precision"]) and math.isnan(result["mean_target_jaccard"])
    assert result["recall"] == 0.0 and result["recovered_tfs"] == []
    assert len(result["table"]) == 4 and not result["table"]["correct"].any()


def test_evaluate_partly_wrong_regulons(data):
    a, b, c, _ = data.planted_tfs.tolist()
    decoy = data.decoy_tfs[0]
    targets_a = sorted(data.planted[a])  # 20 targets
    background = sorted(set(data.gene_names) - set(data.tf_names) - {g for t in data.planted.values() for g in t})
    regulons = [
        _regulon(a, targets_a[:10] + background[:5] + [a]),  # 10 shared of 20 planted + 5 wrong: J = 10/25
        _regulon(b, data.planted[b]),  # perfect: J = 1
        _regulon(c, data.planted[c], sign="-"),  # planted TF, wrong sign: a false discovery
        _regulon(decoy, targets_a),  # decoy TF: a false discovery
        _regulon("NOT_A_TF", background[:3]),
    ]
    result = evaluate_regulons(regulons, data)
    assert result["recovered_tfs"] == sorted([a, b])
    assert result["precision"] == pytest.approx(2 / 5)
    assert result["recall"] == pytest.approx(2 / 4)
    assert result["mean_target_jaccard"] == pytest.approx((10 / 25 + 1.0) / 2)
    assert result["false_regulons"] == [f"{c}(-)", f"{decoy}(+)", "NOT_A_TF(+)"]
    table = result["table"].set_index("regulon")
    assert table.loc[f"{a}(+)", ["n_planted", "n_found", "n_shared"]].tolist() == [20, 15, 10]
    assert table.loc[f"{c}(-)", "role"] == "planted" and not table.loc[f"{c}(-)", "correct"]
    assert table.loc[f"{decoy}(+)", "role"] == "decoy" and table.loc[f"{decoy}(+)", "n_shared"] == 0
    assert table.loc["NOT_A_TF(+)", "role"] == "other"
    assert len(result["table"]) == 4 + 3  # every planted TF, then each false regulon


def test_evaluate_with_aucell_scores(data):
    from flashscenic import get_aucell

    big = simulate_dataset(**{**SMALL, "n_cells": 1200}, seed=7)
    auc = get_aucell(big.expression, big.regulon_weights, k=None, device="cpu", seed=0, verbose=False)
    result = evaluate_regulons(big.planted_regulons(), big, auc=auc)
    assert result["type_accuracy"] == 1.0
    assert result["table"]["type_match"].all()
    shuffled = evaluate_regulons(big.planted_regulons(), big, auc=np.zeros_like(auc))  # ties: first type wins
    assert shuffled["table"]["top_type"].eq("type0").all()
    with pytest.raises(InputError, match=r"expected \(1200, 4\)"):
        evaluate_regulons(big.planted_regulons(), big, auc=auc[:, :3])


def test_evaluate_rejects_malformed_regulons(data):
    with pytest.raises(InputError, match="regulon 0 must be a dict with 'tf' and 'genes'"):
        evaluate_regulons([["TF1", "G1"]], data)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param(dict(n_cells=0), "n_cells must be a positive integer, got 0", id="no-cells"),
        pytest.param(dict(n_genes=2.5), "n_genes must be a positive integer", id="float-genes"),
        pytest.param(dict(n_tfs=True), "n_tfs must be a positive integer", id="bool"),
        pytest.param(dict(n_decoy_tfs=-1), "n_decoy_tfs must be an integer >= 0", id="negative-decoys"),
        pytest.param(dict(seed=-1), "seed must be a non-negative integer or None", id="negative-seed"),
        pytest.param(dict(n_cells=3), "fewer than n_cell_types=6", id="fewer-cells-than-types"),
        pytest.param(dict(n_genes=300), "use n_genes >= 515", id="too-few-genes"),
        pytest.param(dict(n_database_genes=900), "n_database_genes=900 is below n_genes=1000", id="small-db"),
        pytest.param(dict(n_motifs=10), "n_motifs=10 is fewer than the up to 136 motifs", id="too-few-motifs"),
    ],
)
def test_bad_arguments_raise_input_error(kwargs, message):
    with pytest.raises(InputError, match=message):
        simulate_dataset(**kwargs)


def test_a_resource_write_failing_midway_leaves_the_previous_file(data, tmp_path, monkeypatch):
    from pathlib import Path

    paths = data.write_resources(tmp_path)
    before = {name: path.read_bytes() for name, path in paths.items()}
    real = Path.write_text

    def write_text(self, text, *args, **kwargs):  # the TF list is written last, after the database and annotation
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(OSError, match="No space left"):
        simulate_dataset(**SMALL, seed=8).write_resources(tmp_path)
    assert paths["tf_list"].read_bytes() == before["tf_list"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())  # no partial file
