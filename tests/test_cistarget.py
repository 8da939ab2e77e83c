"""cisTarget pruning equals pySCENIC/ctxcore on many random databases and modules,
on the real legacy database fixture, and on real gene sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from flashscenic import CisTargetPruner, compute_nes, compute_recovery_aucs, prune_single_module
from flashscenic.cistarget import ANNOTATION_COLUMNS, MotifAnnotation, filter_by_annotations
from flashscenic.errors import InputError
from flashscenic.rankdb import RankingDatabase, read_ranking_database
from pyscenic_fixtures import FIXTURES, needs_fixtures
from pyscenic_prune_oracle import ctxcore_module, frame_database, pyscenic_module2df

AUC_TOL, NES_TOL = 1e-6, 1e-4


def random_database(rng, n_motifs: int, n_genes: int, planted: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """motifs x genes int16 rank permutations; for (motif, genes) in ``planted`` those genes
    take the first ranks in random order, so some motifs are enriched in some modules."""
    ranks = np.empty((n_motifs, n_genes), dtype=np.int16)
    for m in range(n_motifs):
        order = rng.permutation(n_genes)
        for motif, genes in planted:
            if motif == m:
                rest = np.setdiff1d(order, genes, assume_unique=True)
                top = rng.permutation(genes)
                cut = int(rng.integers(0, 3 * len(genes)))  # planted genes near, not always at, the top
                order = np.concatenate([rest[:cut], top, rest[cut:]])
        ranks[m, order] = np.arange(n_genes)
    return ranks


def random_setup(seed: int, tmp_path: Path):
    """A database, modules (TF first, weight 1.0) and a motif2tf table with duplicates and NaNs."""
    rng = np.random.default_rng(seed)
    n_motifs, n_genes = int(rng.integers(80, 300)), int(rng.integers(1500, 4000))
    genes = np.array([f"G{j}" for j in range(n_genes)])
    motifs = np.array([f"motif{i}" for i in range(n_motifs)])
    tfs = [f"G{j}" for j in rng.choice(n_genes, size=6, replace=False)]
    modules, weights, contexts = [], [], []
    planted = []
    for number, tf in enumerate(tfs):
        size = int(rng.integers(20, 160))
        members = rng.choice(np.setdiff1d(np.arange(n_genes), [int(tf[1:])]), size=size, replace=False)
        for motif in rng.choice(n_motifs, size=int(rng.integers(1, 6)), replace=False):
            planted.append((int(motif), rng.choice(members, size=max(3, size // 3), replace=False)))
        names = [tf] + genes[members].tolist()
        if number % 3 == 0:  # a few genes the database lacks (under 20%)
            names += [f"absent{number}_{k}" for k in range(int(0.15 * len(names)))]
        w = np.round(rng.uniform(0.1, 5.0, size=len(names)), 1)  # ties in weights
        w[0] = 1.0
        modules.append(names)
        weights.append(w)
        contexts.append(("weight>75.0%", "activating") if number % 2 else ("top50", "activating"))
    ranks = random_database(rng, n_motifs, n_genes, planted)

    rows = []
    for tf in tfs:
        for motif in rng.choice(motifs, size=n_motifs // 2, replace=False):
            for _ in range(int(rng.integers(1, 4))):  # several rows per (TF, motif)
                q = float(rng.choice([0.0, 1e-5, 1e-4, 5e-4, 1e-3, 0.01, np.nan]))
                ident = float(rng.choice([1.0, 0.9, 0.45, 0.0, np.nan]))
                rows.append([motif, f"name_{motif}", tf, q, ident, f"{tf} via {motif} q={q} id={ident}"])
    table = pd.DataFrame(rows, columns=["#motif_id", "motif_name", "gene_name", "motif_similarity_qvalue",
                                        "orthologous_identity", "description"])
    annotation_file = tmp_path / f"motifs{seed}.tbl"
    table.to_csv(annotation_file, sep="\t", index=False)
    rank_threshold = int(rng.integers(300, n_genes // 2))
    auc_threshold = float(rng.uniform(0.01, rank_threshold / n_genes))
    return dict(ranks=ranks, genes=genes, motifs=motifs, tfs=tfs, modules=modules, weights=weights,
                contexts=contexts, annotation_file=annotation_file, rank_threshold=rank_threshold,
                auc_threshold=auc_threshold, nes_threshold=float(rng.choice([2.0, 2.5, 3.0])))


def expected_rows(setup, name: str, compat: bool, weighted: bool) -> pd.DataFrame:
    """pySCENIC's rows for every module (compat) or with leading edges from each motif's own curve."""
    database = frame_database(setup["ranks"], setup["motifs"], setup["genes"], name)
    lookup = {g: j for j, g in enumerate(setup["genes"])}
    frames = []
    for tf, names, w, context in zip(setup["tfs"], setup["modules"], setup["weights"], setup["contexts"]):
        frame = pyscenic_module2df(database, tf, dict(zip(names, w)), context, setup["annotation_file"],
                                   rank_threshold=setup["rank_threshold"], auc_threshold=setup["auc_threshold"],
                                   nes_threshold=setup["nes_threshold"], weighted_recovery=weighted)
        if frame.empty:
            continue
        frame = frame.reset_index()
        if not compat:  # replace the leading edges by those of each motif's own curve
            present = [k for k, g in enumerate(names) if g in lookup]
            index = np.array([lookup[names[k]] for k in present])
            ours = ctxcore_module(setup["ranks"], index, np.asarray(w)[present], weighted=weighted,
                                  rank_threshold=setup["rank_threshold"], auc_threshold=setup["auc_threshold"],
                                  nes_threshold=setup["nes_threshold"])
            by_motif = {setup["motifs"][m]: k for k, m in enumerate(ours["enriched"])}
            frame["RankAtMax"] = [int(ours["rank_at_max"][by_motif[m]]) for m in frame["MotifID"]]
            frame["TargetGenes"] = [
                [(names[present[p]], float(w[present[p]])) for p in ours["leading_edge"][by_motif[m]]]
                for m in frame["MotifID"]
            ]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def assert_same_rows(got: pd.DataFrame, expected: pd.DataFrame):
    assert len(got) == len(expected)
    key = ["TF", "MotifID", "Context"]
    got = got.assign(Context=got["Context"].map(lambda c: tuple(sorted(c)))).sort_values(key).reset_index(drop=True)
    expected = expected.assign(Context=expected["Context"].map(lambda c: tuple(sorted(c)))).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[key], expected[key])
    np.testing.assert_allclose(got["AUC"], expected["AUC"], rtol=0, atol=AUC_TOL)
    np.testing.assert_allclose(got["NES"], expected["NES"], rtol=0, atol=NES_TOL)
    assert got["RankAtMax"].tolist() == expected["RankAtMax"].astype(int).tolist()
    for ours, theirs in zip(got["TargetGenes"], expected["TargetGenes"]):
        assert [g for g, _ in ours] == [g for g, _ in theirs]
        np.testing.assert_allclose([w for _, w in ours], [w for _, w in theirs], rtol=1e-12)
    for column in ("MotifSimilarityQvalue", "OrthologousIdentity"):
        np.testing.assert_array_equal(got[column].to_numpy(float), expected[column].to_numpy(float))
    assert got["Annotation"].tolist() == expected["Annotation"].tolist()


def run_pruner(setup, name, **options) -> pd.DataFrame:
    pruner = CisTargetPruner(rank_threshold=setup["rank_threshold"], auc_threshold=setup["auc_threshold"],
                             nes_threshold=setup["nes_threshold"], device="cpu", **options)
    pruner.load_from_tensor(setup["ranks"], setup["motifs"], setup["genes"], name=name)
    pruner.load_annotations(setup["annotation_file"])
    return pruner.motif_table(setup["modules"], setup["tfs"], setup["genes"].tolist(), setup["weights"],
                              setup["contexts"])


def test_the_oracles_leave_numpy_without_np_object():
    """pySCENIC's transform needs ``np.object`` at import: lent for that import, then removed again."""
    from pyscenic_oracle import _transform_api, has_numpy_object
    from pyscenic_prune_oracle import _imports

    assert not has_numpy_object()
    _imports()
    assert not has_numpy_object()
    _transform_api()
    assert not has_numpy_object()


@pytest.mark.parametrize("seed", range(8))
def test_motif_table_equals_pyscenic_with_leading_edges_fixed(seed, tmp_path):
    setup = random_setup(seed, tmp_path)
    expected = expected_rows(setup, "db", compat=False, weighted=False)
    got = run_pruner(setup, "db")
    assert len(expected) > 0, "the planted motifs should be enriched"
    assert_same_rows(got, expected)
    assert set(got["Database"]) == {"db"}


@pytest.mark.parametrize("seed", range(8, 12))
def test_compat_switch_reproduces_pyscenic_bug_635(seed, tmp_path):
    setup = random_setup(seed, tmp_path)
    expected = expected_rows(setup, "db", compat=True, weighted=False)
    assert_same_rows(run_pruner(setup, "db", pyscenic_compat_leading_edge=True), expected)


@pytest.mark.parametrize("seed", range(12, 15))
def test_weighted_recovery_equals_pyscenic(seed, tmp_path):
    setup = random_setup(seed, tmp_path)
    expected = expected_rows(setup, "db", compat=False, weighted=True)
    assert_same_rows(run_pruner(setup, "db", weighted_recovery=True), expected)


@pytest.mark.parametrize("seed", range(15, 25))
def test_single_module_kernels_equal_ctxcore(seed):
    """AUC, NES, enriched set, rank-at-max and leading edge of prune_single_module and
    compute_recovery_aucs, weighted and not, against ctxcore's public functions."""
    ranks, module, weights, rank_threshold, auc_threshold = single_module_case(seed, max_motifs=400)
    nes_threshold = 2.0
    for weighted in (False, True):
        expected = ctxcore_module(ranks, module, weights, rank_threshold=rank_threshold, auc_threshold=auc_threshold,
                                  nes_threshold=nes_threshold, weighted=weighted)
        result = prune_single_module(torch.from_numpy(ranks), module, rank_threshold, auc_threshold, nes_threshold,
                                     weights if weighted else None)
        np.testing.assert_allclose(result["aucs"].numpy(), expected["aucs"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(expected["aucs_direct"], expected["aucs"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(result["nes"].numpy(), expected["nes"], rtol=0, atol=1e-9)
        assert np.flatnonzero(result["enriched_mask"].numpy()).tolist() == expected["enriched"].tolist()
        assert result["rank_at_max"].tolist() == expected["rank_at_max"].tolist()
        for mask, genes in zip(result["leading_edge_masks"], expected["leading_edge"]):
            assert sorted(np.flatnonzero(mask.numpy()).tolist()) == sorted(genes.tolist())
        curves, aucs = compute_recovery_aucs(ranks, module, rank_threshold, auc_threshold,
                                             weights if weighted else None)
        np.testing.assert_allclose(aucs.numpy(), expected["aucs"], rtol=0, atol=1e-12)
        assert curves.shape == (ranks.shape[0], rank_threshold)


def test_batch_of_modules_in_one_product_equals_one_by_one(tmp_path):
    setup = random_setup(3, tmp_path)
    one_by_one = run_pruner(setup, "db", module_batch_size=1)
    pd.testing.assert_frame_equal(run_pruner(setup, "db", module_batch_size=1000), one_by_one)


def _pruner_on(setup, name, device, batched=None, **options):
    pruner = CisTargetPruner(rank_threshold=setup["rank_threshold"], auc_threshold=setup["auc_threshold"],
                             nes_threshold=setup["nes_threshold"], device=device, verbose=False, **options)
    pruner.load_from_tensor(setup["ranks"], setup["motifs"], setup["genes"], name=name)
    pruner.load_annotations(setup["annotation_file"])
    for kernel in pruner.kernels:
        kernel._batched = batched
    return pruner


def _table(pruner, setup):
    return pruner.motif_table(setup["modules"], setup["tfs"], setup["genes"].tolist(), setup["weights"],
                              setup["contexts"])


@pytest.mark.parametrize("seed", range(25, 31))
def test_the_gpu_leading_edges_on_cpu_tensors_equal_the_numpy_path(seed, tmp_path, monkeypatch):
    """The batched leading edges (padded modules, scatter-adds, one copy back a group), run on CPU
    tensors in groups small enough to split the batch: unweighted bit for bit, weighted to 1e-12."""
    import flashscenic.cistarget as cistarget

    setup = random_setup(seed, tmp_path)
    monkeypatch.setattr(cistarget, "_batch_elements", lambda device: 3 * 160 * setup["ranks"].shape[0])
    for options in ({}, {"pyscenic_compat_leading_edge": True}):
        expected = _table(_pruner_on(setup, "db", "cpu", **options), setup)
        assert len(expected)
        got = _table(_pruner_on(setup, "db", "cpu", batched=True, **options), setup)
        pd.testing.assert_frame_equal(got, expected)
    weighted = _table(_pruner_on(setup, "db", "cpu", batched=True, weighted_recovery=True), setup)
    assert_same_rows(weighted, _table(_pruner_on(setup, "db", "cpu", weighted_recovery=True), setup))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("seed", range(25, 29))
def test_the_pruner_on_cuda_equals_the_cpu(seed, tmp_path):
    """Motif table and leading edges: unweighted exactly (integer sums), weighted within float
    rounding (the CPU equals pySCENIC in the CPU tests; the oracle does not travel)."""
    setup = random_setup(seed, tmp_path)
    for options in ({}, {"pyscenic_compat_leading_edge": True}):
        cuda = _pruner_on(setup, "db", "cuda", **options)
        assert cuda.kernels[0].ranks_by_gene.device.type == "cuda" and cuda.kernels[0].batched
        pd.testing.assert_frame_equal(_table(cuda, setup), _table(_pruner_on(setup, "db", "cpu", **options), setup))
    got = _table(_pruner_on(setup, "db", "cuda", weighted_recovery=True), setup)
    assert_same_rows(got, _table(_pruner_on(setup, "db", "cpu", weighted_recovery=True), setup))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prune_computes_where_the_database_lives(tmp_path):
    setup = random_setup(3, tmp_path)
    cuda, cpu = _pruner_on(setup, "db", "cuda"), _pruner_on(setup, "db", "cpu")
    cuda.motif_annotations = cpu.motif_annotations = None
    module = cuda.genes_to_indices(setup["modules"][0])
    got, expected = cuda.prune(module), cpu.prune(module.cpu())
    assert got["nes"].device.type == "cuda"
    assert_same_result(got, expected, exact=True)


def test_two_databases_union(tmp_path):
    setup = random_setup(4, tmp_path)
    other = dict(setup, ranks=random_database(np.random.default_rng(99), *setup["ranks"].shape, []))
    expected = pd.concat([expected_rows(setup, "dbA", False, False), expected_rows(other, "dbB", False, False)],
                         ignore_index=True)
    pruner = CisTargetPruner(rank_threshold=setup["rank_threshold"], auc_threshold=setup["auc_threshold"],
                             nes_threshold=setup["nes_threshold"], device="cpu")
    pruner._set_databases([RankingDatabase.from_array(setup["ranks"], setup["motifs"], setup["genes"], "dbA"),
                           RankingDatabase.from_array(other["ranks"], setup["motifs"], setup["genes"], "dbB")])
    pruner.load_annotations(setup["annotation_file"])
    got = pruner.motif_table(setup["modules"], setup["tfs"], setup["genes"].tolist(), setup["weights"], setup["contexts"])
    assert_same_rows(got, expected)


def test_80_percent_rule_at_its_boundary(tmp_path):
    """A module with exactly 20% of its genes absent from the database is skipped; one gene
    fewer absent and it is pruned (pySCENIC: skip when the missing fraction >= 0.20)."""
    setup = random_setup(0, tmp_path)
    baseline = run_pruner(setup, "db")
    with_rows = [k for k, tf in enumerate(setup["tfs"]) if k % 3 and tf in set(baseline["TF"])]
    assert len(with_rows) >= 2, "the setup needs two fully present modules with enriched motifs"
    for k, skipped in zip(with_rows[:2], (True, False)):
        n = len(setup["modules"][k]) // 4 * 4
        setup["modules"][k], setup["weights"][k] = setup["modules"][k][:n], setup["weights"][k][:n]
        absent = n // 4 - (0 if skipped else 1)  # n/4 absent of 5n/4: exactly 20% missing
        assert (absent / (n + absent) >= 0.2) == skipped
        setup["modules"][k] = setup["modules"][k] + [f"missing{k}_{j}" for j in range(absent)]
        setup["weights"][k] = np.concatenate([setup["weights"][k], np.ones(absent)])
    got = run_pruner(setup, "db")
    assert setup["tfs"][with_rows[0]] not in set(got["TF"])
    assert setup["tfs"][with_rows[1]] in set(got["TF"])
    assert_same_rows(got, expected_rows(setup, "db", compat=False, weighted=False))


# ---------------------------------------------------------------- real fixtures


@needs_fixtures
def test_legacy_v1_fixture_auc_and_nes_from_the_spec():
    database = read_ranking_database(FIXTURES / "hg19-tss-centered-10kb-10species.mc9nr.feather")
    assert (database.n_motifs, database.n_genes) == (5, 22284)
    first = (FIXTURES / "c6.all.v6.1.symbols.gmt").read_text().splitlines()[0].split("\t")[2:]
    index, present = database.gene_indices(first)
    assert present.all() and len(first) == 29
    curves, aucs = compute_recovery_aucs(database.rankings, index[present], 5000, 0.05)
    np.testing.assert_allclose(aucs.numpy(), [0.00625271, 0.01411503, 0.01426980, 0.02457748, 0.05686250], atol=1e-8)
    np.testing.assert_allclose(compute_nes(aucs).numpy(), [-0.9529, -0.5112, -0.5025, 0.0765, 1.8901], atol=1e-4)


@needs_fixtures
def test_real_gene_sets_on_the_real_database_equal_ctxcore():
    """All 189 C6 gene sets as modules: AUC/NES/leading edges against ctxcore."""
    database = read_ranking_database(FIXTURES / "hg19-tss-centered-10kb-10species.mc9nr.feather")
    gene_sets = [line.split("\t") for line in (FIXTURES / "c6.all.v6.1.symbols.gmt").read_text().splitlines()]
    assert len(gene_sets) == 189
    compared = edges_compared = 0
    for fields in gene_sets:
        index, present = database.gene_indices(fields[2:])
        if (len(index) - present.sum()) / len(index) >= 0.2:
            continue
        index = index[present]
        expected = ctxcore_module(database.rankings, index, np.ones(len(index)), rank_threshold=5000,
                                  auc_threshold=0.05, nes_threshold=1.5, weighted=False)
        result = prune_single_module(torch.from_numpy(database.rankings), index, 5000, 0.05, 1.5)
        np.testing.assert_allclose(result["aucs"].numpy(), expected["aucs"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(result["nes"].numpy(), expected["nes"], rtol=0, atol=1e-9)
        assert result["rank_at_max"].tolist() == expected["rank_at_max"].tolist()
        # the enriched motifs and, for each, its leading edge (module positions), as ctxcore's
        assert np.flatnonzero(result["enriched_mask"].numpy()).tolist() == expected["enriched"].tolist()
        assert len(result["leading_edge_masks"]) == len(expected["leading_edge"])
        for mask, genes in zip(result["leading_edge_masks"], expected["leading_edge"]):
            assert sorted(np.flatnonzero(mask.numpy()).tolist()) == sorted(genes.tolist())
        edges_compared += len(expected["leading_edge"])
        compared += 1
    assert compared > 150
    assert edges_compared > 0, "no gene set had an enriched motif: the leading edges were not compared"


# ---------------------------------------------------------------- annotations and errors


def test_annotation_choice_lowest_q_then_highest_identity(tmp_path):
    rows = [["m1", "TF1", 0.001, 0.5, "a"], ["m1", "TF1", 0.0001, 0.3, "b"], ["m1", "TF1", 0.0001, 0.9, "c"],
            ["m1", "TF1", 0.0001, 0.9, "d"], ["m2", "TF1", np.nan, 1.0, "nan q"], ["m3", "TF1", 0.0, np.nan, "nan id"],
            ["m1", "TF2", 0.01, 1.0, "above fdr"]]
    frame = pd.DataFrame(rows, columns=["#motif_id", "gene_name", "motif_similarity_qvalue", "orthologous_identity",
                                        "description"])
    path = tmp_path / "a.tbl"
    frame.assign(motif_name="x").to_csv(path, sep="\t", index=False)
    annotations = MotifAnnotation.load_from_file(path)
    assert annotations.get_annotation("m1", "TF1")["Annotation"] == "d"  # ties: the later line, as pySCENIC
    assert not annotations.has_annotation("m2", "TF1") and not annotations.has_annotation("m3", "TF1")
    assert not annotations.has_annotation("m1", "TF2") and annotations.has_annotation("m1")


def test_annotation_of_a_motif_for_any_tf_is_its_best(tmp_path):
    rows = [["m1", "TF1", 0.001, 0.9, "q 1e-3"], ["m1", "TF2", 0.0001, 0.3, "low identity"],
            ["m1", "TF3", 0.0001, 0.8, "best"], ["m2", "TFB", 0.0, 1.0, "tie, second by name"],
            ["m2", "TFA", 0.0, 1.0, "tie, first by name"]]
    path = tmp_path / "a.tbl"
    pd.DataFrame(rows, columns=list(ANNOTATION_COLUMNS)).to_csv(path, sep="\t", index=False)
    annotations = MotifAnnotation.load_from_file(path)
    assert annotations.get_annotation("m1") == {"MotifSimilarityQvalue": 0.0001, "OrthologousIdentity": 0.8,
                                                "Annotation": "best"}
    assert annotations.get_annotation("m2", tf_name=None)["Annotation"] == "tie, first by name"
    assert annotations.get_annotation("m1", "TF1")["Annotation"] == "q 1e-3"
    assert annotations.get_annotation("m3") is None and annotations.get_annotation("m1", "TF9") is None


def test_annotation_column_names_replace_the_header(tmp_path):
    names = ("#motif_id", "motif_name", "gene_name", "motif_similarity_qvalue", "orthologous_identity", "description")
    standard, renamed = tmp_path / "standard.tbl", tmp_path / "renamed.tbl"
    standard.write_text(ANNOTATION_HEADER + ANNOTATION_ROW + "m2\tM2\tPAX6\t0.0001\t0.5\tinferred\n")
    renamed.write_text("motif\tname\tTF\tq\tidentity\ttext\n" + standard.read_text().split("\n", 1)[1])
    expected = MotifAnnotation.load_from_file(standard).table
    pd.testing.assert_frame_equal(MotifAnnotation.load_from_file(renamed, column_names=names).table, expected)
    pd.testing.assert_frame_equal(MotifAnnotation.load_from_file(standard, 0.001, 0.0, names).table, expected)
    with pytest.raises(InputError, match=r"column_names lacks the column\(s\) description"):
        MotifAnnotation.load_from_file(renamed, column_names=names[:-1] + ("text",))
    with pytest.raises(InputError, match=r"column_names must be 6 distinct names, one per column of motif annotation"):
        MotifAnnotation.load_from_file(renamed, column_names=names[:-1])
    with pytest.raises(InputError, match="sequence of column names"):
        MotifAnnotation.load_from_file(renamed, column_names="#motif_id")
    renamed.write_text(renamed.read_text() + "m3\tM3\tSOX2\tlow\t1.0\tx\n")  # the file's checks still hold
    with pytest.raises(InputError, match=r"renamed.tbl', line 4, column 'motif_similarity_qvalue': 'low' is not a"):
        MotifAnnotation.load_from_file(renamed, column_names=names)


def test_annotation_file_missing_columns(tmp_path):
    path = tmp_path / "bad.tbl"
    pd.DataFrame({"#motif_id": ["m"], "gene_name": ["TF"]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) motif_similarity_qvalue, orthologous_identity, description"):
        MotifAnnotation.load_from_file(path)


ANNOTATION_HEADER = "#motif_id\tmotif_name\tgene_name\tmotif_similarity_qvalue\torthologous_identity\tdescription\n"
ANNOTATION_ROW = "m1\tM1\tSOX2\t0.0\t1.0\tgene is directly annotated\n"


def test_annotation_file_not_utf8_is_one_line_naming_file_and_line(tmp_path):
    path = tmp_path / "latin.tbl"
    path.write_bytes((ANNOTATION_HEADER + ANNOTATION_ROW + "m2\tM2\tSOX2\t0.0\t1.0\tcaf\xe9\n").encode("latin-1"))
    with pytest.raises(InputError, match=r"motif annotation file '.*latin.tbl' is not UTF-8 text: line 3 .*0xe9") as caught:
        MotifAnnotation.load_from_file(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("column, row", [
    ("motif_similarity_qvalue", "m2\tM2\tSOX2\tabc\t1.0\tx\n"),
    ("orthologous_identity", "m2\tM2\tSOX2\t0.0\tabc\tx\n"),
])
def test_annotation_text_in_a_number_column_names_file_line_and_column(tmp_path, column, row):
    path = tmp_path / "words.tbl"
    path.write_text(ANNOTATION_HEADER + ANNOTATION_ROW + row)
    with pytest.raises(InputError, match=rf"motif annotation file '.*words.tbl', line 3, column '{column}': 'abc' is "
                                         "not a number"):
        MotifAnnotation.load_from_file(path)
    empty = tmp_path / "empty_q.tbl"  # an empty field is a missing value, as in pandas: filtered out
    empty.write_text(ANNOTATION_HEADER + ANNOTATION_ROW + row.replace("abc", ""))
    assert MotifAnnotation.load_from_file(empty).table.index.tolist() == [("SOX2", "m1")]


@pytest.mark.parametrize("content, expected", [
    pytest.param((ANNOTATION_HEADER + ANNOTATION_ROW + "m2\tM2\tT\t0.0\t1.0\tcaf\xe9\n").encode("latin-1"),
                 "is not UTF-8 text: line 3", id="latin-1"),
    pytest.param((ANNOTATION_HEADER + ANNOTATION_ROW + "m2\tM2\tT\tabc\t1.0\tx\n").encode(),
                 "line 3, column 'motif_similarity_qvalue'", id="word-in-qvalue"),
])
def test_ctx_command_refuses_a_bad_annotation_file_in_one_line(tmp_path, capsys, content, expected):
    from flashscenic.cli import main
    from flashscenic.simulate import simulate_dataset

    data = simulate_dataset(n_cells=60, n_genes=200, n_tfs=2, n_decoy_tfs=1, n_cell_types=2, targets_per_tf=40,
                            n_database_genes=300, n_motifs=20, seed=0)
    resources = data.write_resources(tmp_path)
    resources["motif_annotation"].write_bytes(content)
    rows = [(tf, gene, weight) for tf, targets in data.planted.items() for gene, weight in targets.items()]
    pd.DataFrame(rows, columns=["TF", "target", "importance"]).to_csv(tmp_path / "adj.tsv", sep="\t", index=False)
    argv = ["ctx", str(tmp_path / "adj.tsv"), str(resources["ranking_db"]), "--annotations",
            str(resources["motif_annotation"]), "-o", str(tmp_path / "reg.csv"), "--device", "cpu", "--quiet",
            "--pruning-rank-threshold", "150"]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("flashscenic: error: ") and expected in err[0]
    assert resources["motif_annotation"].name in err[0]
    assert not (tmp_path / "reg.csv").exists()


def test_filter_by_annotations_keeps_only_the_modules_tf(tmp_path):
    setup = random_setup(1, tmp_path)
    annotations = MotifAnnotation.load_from_file(setup["annotation_file"])
    result = prune_single_module(torch.from_numpy(setup["ranks"]), np.arange(50), 1000, 0.05, 1.0)
    tf = setup["tfs"][0]
    filtered = filter_by_annotations(result, setup["motifs"], annotations, tf_name=tf)
    kept = setup["motifs"][np.flatnonzero(filtered["enriched_mask"].numpy())]
    assert all(annotations.has_annotation(m, tf) for m in kept)
    assert len(filtered["rank_at_max"]) == len(kept)
    # what it drops: exactly the enriched motifs not annotated to the TF, and it drops some
    enriched = np.flatnonzero(result["enriched_mask"].numpy())
    annotated = np.array([annotations.has_annotation(setup["motifs"][i], tf) for i in enriched], dtype=bool)
    dropped = sorted(set(setup["motifs"][enriched]) - set(kept))
    assert len(kept) > 0 and len(dropped) > 0, "the case should keep some enriched motifs and drop others"
    assert kept.tolist() == setup["motifs"][enriched[annotated]].tolist()
    assert dropped == sorted(setup["motifs"][enriched[~annotated]].tolist())
    assert not any(annotations.has_annotation(m, tf) for m in dropped)
    assert not filtered["enriched_mask"][torch.from_numpy(enriched[~annotated])].any()
    for key in ("rccs", "leading_edge_masks", "rank_at_max"):  # the kept motifs' rows, in order
        assert torch.equal(filtered[key], result[key][torch.from_numpy(annotated)])
    np.testing.assert_array_equal(filtered["nes"].numpy(), result["nes"].numpy())  # scores are not filtered
    # tf_name=None: a motif annotated to any TF is kept
    any_tf = filter_by_annotations(result, setup["motifs"], annotations)
    any_kept = setup["motifs"][np.flatnonzero(any_tf["enriched_mask"].numpy())]
    assert any_kept.tolist() == [setup["motifs"][i] for i in enriched if annotations.has_annotation(setup["motifs"][i])]
    assert set(kept) <= set(any_kept)
    assert filter_by_annotations(result, setup["motifs"], motif_annotations=None, tf_name=tf) is result
    assert filter_by_annotations(result, setup["motifs"], annotations, filter_for_annotation=False) is result


@pytest.mark.parametrize(
    "rank_threshold, auc_threshold, message",
    [(3000, 0.05, r"rank_threshold must be an integer in 1..1999"),
     (50, 0.05, r"covers 100 of 2000 ranked genes.*rank_threshold=50"),
     (500, 0.0001, r"covers 0 of 2000")],
)
def test_threshold_errors(rank_threshold, auc_threshold, message):
    ranks = np.argsort(np.random.default_rng(0).random((5, 2000)), axis=1).astype(np.int16)
    with pytest.raises(ValueError, match=message):
        prune_single_module(torch.from_numpy(ranks), np.arange(10), rank_threshold, auc_threshold)


# ---------------------------------------------------------------- modules to regulons


@pytest.mark.parametrize("seed", [20, 21, 22])
def test_prune_modules_regulons_equal_pyscenic_df2regulons(seed, tmp_path):
    """The whole path: pySCENIC's module2df rows -> df2regulons, against prune_modules
    (compat leading edges, so both sides start from the same rows)."""
    from pyscenic_oracle import pyscenic_motif_frame, pyscenic_regulons

    setup = random_setup(seed, tmp_path)
    expected = expected_rows(setup, "db", compat=True, weighted=False)
    assert len(expected) > 0
    theirs = {r.name: r for r in pyscenic_regulons(pyscenic_motif_frame(expected.assign(Database="db")))}
    pruner = CisTargetPruner(rank_threshold=setup["rank_threshold"], auc_threshold=setup["auc_threshold"],
                             nes_threshold=setup["nes_threshold"], device="cpu", pyscenic_compat_leading_edge=True)
    pruner.load_from_tensor(setup["ranks"], setup["motifs"], setup["genes"], name="db")
    pruner.load_annotations(setup["annotation_file"])
    ours = pruner.prune_modules(setup["modules"], setup["tfs"], setup["genes"].tolist(), setup["weights"],
                                contexts=setup["contexts"])
    assert sorted(r["name"] for r in ours) == sorted(theirs)
    for regulon in ours:
        reference = theirs[regulon["name"]]
        assert dict(zip(regulon["genes"], regulon["weights"])) == pytest.approx(dict(reference.gene2weight), rel=1e-12)
        assert regulon["score"] == pytest.approx(reference.score, rel=1e-12)
        assert regulon["n_genes"] == len(reference.gene2weight)
        assert regulon["database"] == "db" and regulon["tf"] == reference.transcription_factor


@pytest.mark.parametrize("seed", range(5))
def test_unweighted_increments_numpy_and_torch_routes_agree(seed):
    """The CPU route (numpy) and the device route (torch, used on CUDA) give the same counts."""
    from flashscenic.cistarget import _unweighted_increments

    rng = np.random.default_rng(seed)
    n_genes = int(rng.integers(50, 3000))
    size = int(rng.integers(1, 50))
    ranks = np.sort(np.stack([rng.choice(n_genes, size=size, replace=False)
                              for _ in range(int(rng.integers(1, 200)))]), axis=1).astype(np.int16)
    tensor = torch.from_numpy(ranks)
    rank_threshold = int(rng.integers(1, n_genes))
    via_numpy = _unweighted_increments(tensor, rank_threshold, use_numpy=True)
    via_torch = _unweighted_increments(tensor, rank_threshold, use_numpy=False)
    for a, b in zip(via_numpy, via_torch):
        assert a.dtype == b.dtype == torch.int64 and a.shape == b.shape == (rank_threshold,)
        assert torch.equal(a, b)
    assert int(via_numpy[0].sum()) == int((ranks < rank_threshold).sum())


@pytest.mark.parametrize("options, message", [
    (dict(module_batch_size=0), "module_batch_size must be a positive integer, got 0"),
    (dict(merge_strategy="intersection"), "merge_strategy='intersection' is not one of 'union', 'best'"),
])
def test_pruner_options_are_checked_when_built(options, message):
    with pytest.raises(InputError, match=message):
        CisTargetPruner(device="cpu", **options)


def test_column_names_select_pyscenics_columns_by_name(tmp_path):
    """pySCENIC's load_motif_annotations(column_names=...) reads these columns of a 13-column v10 table."""
    from flashscenic.cistarget import ANNOTATION_COLUMNS

    header = ["#motif_id", "motif_name", "motif_description", "source_name", "source_version", "gene_name",
              "motif_similarity_qvalue", "similar_motif_id", "similar_motif_description", "orthologous_identity",
              "orthologous_gene_name", "orthologous_species", "description"]
    rows = [["m1", "n", "d", "s", "v", "SOX2", "0.0", "None", "None", "1.0", "None", "None", "directly annotated"],
            ["m1", "n", "d", "s", "v", "KLF4", "0.0005", "m9", "x", "0.8", "Klf4", "mouse", "by similarity"]]
    path = tmp_path / "v10.tbl"
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")
    annotations = MotifAnnotation.load_from_file(path, column_names=tuple(ANNOTATION_COLUMNS))
    assert annotations.get_annotation("m1", "SOX2") == {"MotifSimilarityQvalue": 0.0, "OrthologousIdentity": 1.0,
                                                        "Annotation": "directly annotated"}
    assert annotations.get_annotation("m1", "KLF4")["Annotation"] == "by similarity"
    assert annotations.table.equals(MotifAnnotation.load_from_file(path).table)


# ---------------------------------------------------------------- the CPU and GPU routes


def single_module_case(seed: int, max_motifs: int = 300):
    """A random database with a planted module, and thresholds that leave some motifs enriched."""
    rng = np.random.default_rng(seed)
    n_motifs, n_genes = int(rng.integers(50, max_motifs)), int(rng.integers(800, 3000))
    module = rng.choice(n_genes, size=int(rng.integers(1, 300)), replace=False)
    ranks = random_database(rng, n_motifs, n_genes, [(int(m), module[: max(1, len(module) // 2)])
                                                      for m in rng.choice(n_motifs, 4, replace=False)])
    weights = np.round(rng.uniform(0.1, 3.0, size=len(module)), 1)
    rank_threshold = int(rng.integers(100, n_genes - 1))
    auc_threshold = float(rng.uniform(0.5 / n_genes + 1e-9, rank_threshold / n_genes))
    return ranks, module, weights, rank_threshold, auc_threshold


def assert_same_result(got: dict, expected: dict, exact: bool):
    assert got.keys() == expected.keys()
    for key in expected:
        a, b = got[key].cpu(), expected[key].cpu()
        assert a.dtype == b.dtype and a.shape == b.shape, key
        if exact or key not in ("aucs", "nes", "rccs"):
            assert torch.equal(a, b) or (a.dtype.is_floating_point and np.array_equal(a, b, equal_nan=True)), key
        else:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(30, 36))
def test_cpu_route_equals_the_torch_route(seed):
    """The numpy CPU route of prune_single_module gives the torch (GPU) route's numbers,
    run here on CPU tensors: bit for bit unweighted; weighted AUCs sum in another order."""
    from flashscenic.cistarget import _prune_torch, rank_cutoff

    ranks, module, weights, rank_threshold, auc_threshold = single_module_case(seed)
    c = rank_cutoff(auc_threshold, ranks.shape[1], rank_threshold)
    for w in (None, weights):
        expected = _prune_torch(torch.from_numpy(ranks), torch.from_numpy(module),
                                None if w is None else torch.from_numpy(w), c, rank_threshold, 2.0)
        assert int(expected["enriched_mask"].sum()) > 0, "the planted motifs should be enriched"
        got = prune_single_module(torch.from_numpy(ranks), module, rank_threshold, auc_threshold, 2.0, w)
        assert_same_result(got, expected, exact=w is None)


@pytest.mark.parametrize("seed", range(36, 40))
def test_every_rankings_layout_and_type_gives_the_same_result(seed):
    """Motif-major and gene-major arrays, tensors, a RankingDatabase; indices as a list or tensor."""
    ranks, module, weights, rank_threshold, auc_threshold = single_module_case(seed)
    gene_major = np.ascontiguousarray(ranks.T).T
    inputs = [ranks, gene_major, torch.from_numpy(ranks), torch.from_numpy(gene_major),
              RankingDatabase.from_array(ranks), ranks.astype(np.int32), ranks.astype(np.int64)]
    for w in (None, weights):
        expected = prune_single_module(ranks, module, rank_threshold, auc_threshold, 2.0, w)
        for rankings in inputs:
            for index in (module, module.tolist(), torch.from_numpy(module)):
                got = prune_single_module(rankings, index, rank_threshold, auc_threshold, 2.0, w)
                assert_same_result(got, expected, exact=True)


@pytest.mark.parametrize("seed", range(40, 44))
def test_a_tensor_called_again_is_read_from_a_gene_major_copy_that_follows_its_changes(seed):
    """The second call on the same motif-major tensor makes a gene-major copy and later calls
    read it; every result equals a call on a numpy array (never cached), also after an
    in-place torch change, after the memory is refilled through numpy, and the copy goes
    with its tensor. A new tensor object every call never makes one."""
    import gc

    from flashscenic.cistarget import _gene_major_copy

    ranks, module, weights, rank_threshold, auc_threshold = single_module_case(seed)
    rng = np.random.default_rng(seed)

    def expected(matrix, w):
        return prune_single_module(np.array(matrix), module, rank_threshold, auc_threshold, 2.0, w)

    def copied() -> bool:
        entry = _gene_major_copy._entry
        return entry is not None and entry[2] is not None

    for _ in range(3):
        prune_single_module(torch.from_numpy(ranks), module, rank_threshold, auc_threshold, 2.0)
    assert not copied(), "a new tensor every call must not pay for a copy"
    with torch.inference_mode():  # no version counter to follow: never copied
        frozen = torch.tensor(ranks)
    assert frozen.is_inference()
    for w in (None, weights, None):
        got = prune_single_module(frozen, module, rank_threshold, auc_threshold, 2.0, w)
        assert_same_result(got, expected(ranks, w), exact=True)
    assert not copied()

    tensor = torch.from_numpy(ranks.copy())
    for call, w in enumerate((None, weights, None, weights)):
        got = prune_single_module(tensor, module, rank_threshold, auc_threshold, 2.0, w)
        assert_same_result(got, expected(ranks, w), exact=True)
        assert copied() == (call > 0)
    assert _gene_major_copy._entry[0]() is tensor

    tensor[int(rng.integers(len(tensor)))] = torch.from_numpy(rng.permutation(ranks.shape[1]).astype(ranks.dtype))
    for w in (None, weights):  # a torch in-place change bumps the version: read afresh, then copied again
        got = prune_single_module(tensor, module, rank_threshold, auc_threshold, 2.0, w)
        assert_same_result(got, expected(tensor.numpy(), w), exact=True)
    assert copied()

    swapped = torch.from_numpy(random_database(rng, *ranks.shape, []))
    tensor.data = swapped  # the same object and version over other memory
    for w in (None, weights, None):
        got = prune_single_module(tensor, module, rank_threshold, auc_threshold, 2.0, w)
        assert_same_result(got, expected(swapped.numpy(), w), exact=True)

    other = random_database(rng, *ranks.shape, [])
    tensor.numpy()[:] = other  # torch does not see this: the sampled entries do
    for w in (None, weights, None):
        got = prune_single_module(tensor, module, rank_threshold, auc_threshold, 2.0, w)
        assert_same_result(got, expected(other, w), exact=True)

    del tensor
    gc.collect()
    assert _gene_major_copy._entry is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("seed", range(30, 33))
def test_gpu_route_equals_the_cpu_route(seed):
    ranks, module, weights, rank_threshold, auc_threshold = single_module_case(seed)
    for w in (None, weights):
        expected = prune_single_module(ranks, module, rank_threshold, auc_threshold, 2.0, w)
        got = prune_single_module(torch.from_numpy(ranks).cuda(), module, rank_threshold, auc_threshold, 2.0, w)
        assert got["nes"].device.type == "cuda"
        assert_same_result(got, expected, exact=w is None)
        curves, aucs = compute_recovery_aucs(torch.from_numpy(ranks).cuda(), module, rank_threshold, auc_threshold, w)
        expected_curves, expected_aucs = compute_recovery_aucs(ranks, module, rank_threshold, auc_threshold, w)
        assert curves.device.type == "cuda"
        np.testing.assert_allclose(curves.cpu().numpy(), expected_curves.numpy(), rtol=0, atol=0 if w is None else 1e-9)
        np.testing.assert_allclose(aucs.cpu().numpy(), expected_aucs.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_increments_equal_two_bincounts(seed):
    """The compiled one-pass counts equal numpy's bincounts of the counted ranks, unweighted
    and weighted by 2k + 1 (k: the row), for int16, int32 and int64 blocks."""
    import flashscenic.cistarget as cistarget

    rng = np.random.default_rng(seed)
    n_genes, size = int(rng.integers(100, 4000)), int(rng.integers(1, 80))
    block = np.sort(np.stack([rng.choice(n_genes, size=size, replace=False)
                              for _ in range(int(rng.integers(1, 300)))], axis=1), axis=0)
    rank_threshold = int(rng.integers(1, n_genes))
    counted = block < rank_threshold
    odd = np.broadcast_to(2 * np.arange(size)[:, None] + 1, block.shape)
    expected = (np.bincount(block[counted], minlength=rank_threshold),
                np.bincount(block[counted], weights=odd[counted], minlength=rank_threshold).astype(np.int64))
    for dtype in (np.int16, np.int32, np.int64):
        got = cistarget._increments_np(block.astype(dtype), rank_threshold)
        for a, b in zip(got, expected):
            assert a.dtype == np.int64 and a.shape == (rank_threshold,)
            np.testing.assert_array_equal(a, b)
    gains = counted.sum(axis=0)  # gains per motif
    assert got[0].sum() == gains.sum() and got[1].sum() == (gains**2).sum()  # rcc**2 at the last rank


def test_pruner_prune_and_prune_batch_equal_prune_single_module(tmp_path):
    setup = random_setup(5, tmp_path)
    pruner = CisTargetPruner(rank_threshold=setup["rank_threshold"], auc_threshold=setup["auc_threshold"],
                             nes_threshold=setup["nes_threshold"], device="cpu")
    pruner.load_from_tensor(setup["ranks"], setup["motifs"], setup["genes"], name="db")
    modules = [pruner.genes_to_indices(genes).numpy() for genes in setup["modules"]]
    batch = pruner.prune_batch(modules)
    for module, result in zip(modules, batch):
        expected = prune_single_module(setup["ranks"], module, setup["rank_threshold"], setup["auc_threshold"],
                                       setup["nes_threshold"])
        assert_same_result(result, expected, exact=True)
        assert_same_result(pruner.prune(module), expected, exact=True)
    assert sum(int(r["enriched_mask"].sum()) for r in batch) > 0
    # with annotations: only motifs annotated to some TF (prune_batch names none) keep their rows
    pruner.load_annotations(setup["annotation_file"])
    for module, result in zip(modules, pruner.prune_batch(modules)):
        expected = filter_by_annotations(prune_single_module(
            setup["ranks"], module, setup["rank_threshold"], setup["auc_threshold"], setup["nes_threshold"]),
            setup["motifs"], pruner.motif_annotations)
        assert_same_result(result, expected, exact=True)


@pytest.mark.parametrize("rankings, index, message", [
    (np.zeros((3, 10), dtype=np.float32), [1, 2], "rankings must be an integer motifs x genes matrix"),
    (np.zeros((3, 10), dtype=bool), [1, 2], "rankings must be an integer motifs x genes matrix"),
    (torch.zeros(3, 10, dtype=torch.bool), [1, 2], "rankings must be an integer motifs x genes matrix"),
    (np.zeros(10, dtype=np.int16), [1, 2], "rankings must be an integer motifs x genes matrix"),
    (np.zeros((3, 10), dtype=np.int16), [], "the module has no genes"),
    (np.zeros((3, 10), dtype=np.int16), [1.0, 2.0], "module gene indices must be integers, got dtype float64"),
    (np.zeros((3, 10), dtype=np.int16), [True, False], "module gene indices must be integers, got dtype bool"),
    (np.zeros((3, 10), dtype=np.int16), [3, 10], r"module gene indices must lie in 0..9"),
    (np.zeros((3, 10), dtype=np.int16), [-1, 3], r"module gene indices must lie in 0..9"),
])
def test_single_module_inputs_are_checked(rankings, index, message):
    with pytest.raises(InputError, match=message):
        prune_single_module(rankings, index, 5, 0.3)
