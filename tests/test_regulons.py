"""Motif tables, pySCENIC's reg.csv and regulons equal pySCENIC's load_motifs and df2regulons.

The real fixture is a pySCENIC ``ctx`` output (GSE60361, mouse, ~10.7k rows); random
synthetic tables add what it lacks: repressing modules, NaN q-values and identities,
ties in NES inside large groups, odd gene names and annotations.
"""

from __future__ import annotations

import gzip
import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flashscenic.errors import InputError
from flashscenic.regulons import (
    MOTIF_COLUMNS,
    _row_score,
    read_motifs_csv,
    regulons_from_motifs,
    regulons_to_adjacency,
    validate_motif_table,
    write_motifs_csv,
)
from pyscenic_fixtures import FIXTURES
from pyscenic_oracle import pyscenic_load_motifs, pyscenic_motif_frame, pyscenic_regulons

MOTIFS_CSV = FIXTURES / "GSE60361.motifs.csv.gz"
N_RANDOM_TABLES = 24


@pytest.fixture(scope="module")
def fixture_path() -> Path:
    if not MOTIFS_CSV.exists():
        pytest.skip(f"real pySCENIC fixture {MOTIFS_CSV} is absent (../shared/fixtures/pyscenic beside the repo)")
    return MOTIFS_CSV


@pytest.fixture(scope="module")
def fixture_table(fixture_path) -> pd.DataFrame:
    return read_motifs_csv(fixture_path)


@pytest.fixture(scope="module")
def fixture_frame(fixture_path) -> pd.DataFrame:
    return pyscenic_load_motifs(fixture_path)


# --- helpers -----------------------------------------------------------------------------


def random_table(case: int) -> pd.DataFrame:
    """A random motif table with the features real ones have, and some they rarely have."""
    rng = np.random.default_rng(7000 + case)
    n_rows = int(rng.integers(1, 50)) if case % 4 else int(rng.integers(60, 200))  # big groups: unstable sort
    tfs = [f"Tf{i}" for i in range(int(rng.integers(1, 6)))] + ["Tf-x"]
    genes = [f"G{i}" for i in range(40)] + ["O'Neil", 'Q"uote', "Gené", "a,b"]
    motifs = [f"db__m{i}" for i in range(int(rng.integers(1, 10)))]
    databases = ["mm9-500bp-upstream-7species", "hg38_10kbp_up_10kbp_down_full_tx_v10_clust"]
    labels = ["weight>75.0%", "weight>90.0%", "top50", "top5perTarget", "top10perTarget"]
    nes_values = rng.uniform(3.0, 9.0, size=4)  # few distinct NES: many ties
    qvalues = [0.0, math.nan, 1e-12, 1e-20, 3.6e-05, 0.000646, 0.001, 2e-7]
    identities = [math.nan, 1.0, 0.408708, 0.1183289999999999, 0.95]
    rows = []
    for _ in range(n_rows):
        tf = str(rng.choice(tfs))
        database = str(rng.choice(databases))
        context = {str(rng.choice(labels)), database}
        sign = rng.random()
        if sign < 0.3:
            context.add("repressing")
        elif sign < 0.9:
            context.add("activating")  # else: no sign label, pySCENIC calls it activating
        n_targets = int(rng.integers(0, 12))
        targets = [(tf, 1.0)] + [
            (str(g), float(rng.choice([0.5, 1.25, rng.uniform(0.01, 9.0)])))
            for g in rng.choice(genes, size=n_targets, replace=True)  # repeats within a row too
        ]
        rows.append(
            {
                "TF": tf,
                "MotifID": str(rng.choice(motifs)),
                "AUC": float(rng.uniform(0.001, 0.1)),
                "NES": float(rng.choice(nes_values)) if rng.random() < 0.8 else float(rng.uniform(3, 9)),
                "MotifSimilarityQvalue": float(rng.choice(qvalues)),
                "OrthologousIdentity": float(rng.choice(identities)),
                "Annotation": str(rng.choice(["gene is directly annotated", 'motif similar to "x", q = 1e-5', ""])),
                "Context": frozenset(context),
                "TargetGenes": targets,
                "RankAtMax": int(rng.integers(0, 5000)),
                "Database": database,
            }
        )
    return pd.DataFrame(rows, columns=list(MOTIF_COLUMNS))


def same_float(a: float, b: float, tol: float = 0.0) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


def assert_regulons_equal_pyscenic(ours: list[dict], theirs: list, rtol: float = 0.0) -> None:
    """Our regulon dicts equal pySCENIC's Regulon objects, field by field, in the same order.

    Scores to 1e-12, other numbers exactly, both relaxed to ``rtol`` (relative) if given.
    """
    assert [r["name"] for r in ours] == [r.name for r in theirs]
    assert ours, "no regulons on either side: the comparison would be vacuous"
    for mine, ref in zip(ours, theirs):
        assert mine["tf"] == ref.transcription_factor
        assert dict(zip(mine["genes"], mine["weights"])) == dict(ref.gene2weight), mine["name"]
        assert mine["n_genes"] == len(ref.gene2weight)
        score_tol = max(1e-12, rtol * abs(ref.score))
        assert same_float(mine["score"], ref.score, score_tol), (mine["name"], mine["score"], ref.score)
        # pySCENIC keeps the top row's motif only as '<motif>.png' in the context, next to the type.
        assert ref.context == frozenset({mine["type"], f"{mine['motif']}.png"}), mine["name"]
        for key, value in (
            ("nes", ref.nes),
            ("motif_similarity_qvalue", ref.similarity_qvalue),
            ("orthologous_identity", ref.orthologous_identity),
        ):
            assert same_float(mine[key], value, rtol * abs(value)), (mine["name"], key, mine[key], value)
        assert mine["annotation"] == ref.annotation, mine["name"]


# --- reading and writing reg.csv ------------------------------------------------------------


def test_read_fixture_equals_pyscenic_load_motifs(fixture_table, fixture_frame):
    table, frame = fixture_table, fixture_frame
    assert list(table.columns) == list(MOTIF_COLUMNS)
    assert len(table) == len(frame) == 10760
    assert table["TF"].tolist() == frame.index.get_level_values("TF").tolist()
    assert table["MotifID"].tolist() == frame.index.get_level_values("MotifID").tolist()
    enrichment = frame["Enrichment"]
    for name in ("AUC", "NES", "MotifSimilarityQvalue", "OrthologousIdentity"):
        # pandas' default C parser (so load_motifs) drops digits beyond the 16th or 17th:
        # most values are off by a few ulp, q-values up to 1e-13 relative (1e-12 here). We parse exactly.
        np.testing.assert_allclose(table[name].to_numpy(), enrichment[name].to_numpy(), rtol=1e-12, atol=0)
        exact = pd.read_csv(gzip.open(MOTIFS_CSV, "rt"), header=None, skiprows=3, float_precision="round_trip")
        column = 2 + ["AUC", "Annotation", "Context", "MotifSimilarityQvalue", "NES", "OrthologousIdentity"].index(name)
        np.testing.assert_array_equal(table[name].to_numpy(), exact[column].to_numpy(), err_msg=name)
    assert table["RankAtMax"].dtype == np.int64
    assert (table["RankAtMax"].to_numpy() == enrichment["RankAtMax"].to_numpy()).all()
    for name in ("Annotation", "Context", "TargetGenes"):
        assert table[name].tolist() == enrichment[name].tolist(), name
    assert set(table["Database"]) == {"mm9-500bp-upstream-7species", "mm9-tss-centered-10kb-7species"}
    assert all(db in ctx for db, ctx in zip(table["Database"], table["Context"]))


def test_written_file_has_pyscenics_layout(fixture_path, fixture_table, tmp_path):
    """Line by line the same bytes as pySCENIC's own file, except the order inside frozenset(...)."""
    out = tmp_path / "reg.csv"
    write_motifs_csv(fixture_table, out)
    original = gzip.open(fixture_path, "rt", encoding="utf-8", newline="").read()
    written = out.read_text(encoding="utf-8")
    assert written.startswith(
        ",,Enrichment,Enrichment,Enrichment,Enrichment,Enrichment,Enrichment,Enrichment,Enrichment\n"
        ",,AUC,Annotation,Context,MotifSimilarityQvalue,NES,OrthologousIdentity,RankAtMax,TargetGenes\n"
        "TF,MotifID,,,,,,,,\n"
    )

    def unordered_contexts(text):
        return re.sub(r'"frozenset\(\{([^}]*)\}\)"', lambda m: ",".join(sorted(m.group(1).split(", "))), text)

    assert unordered_contexts(written).split("\n") == unordered_contexts(original).split("\n")
    assert "frozenset({'activating', 'mm9-500bp-upstream-7species', 'weight>75.0%'})" in written  # sorted


@pytest.mark.parametrize("suffix", [pytest.param(".csv", id="plain"), pytest.param(".csv.gz", id="gzip")])
def test_fixture_round_trip(fixture_table, tmp_path, suffix):
    out = tmp_path / f"reg{suffix}"
    write_motifs_csv(fixture_table, out)
    if suffix.endswith(".gz"):
        with gzip.open(out, "rb") as handle:
            assert handle.read(3) == b",,E"
    pd.testing.assert_frame_equal(read_motifs_csv(out), fixture_table)


def test_pyscenic_reads_our_file_as_its_own(fixture_frame, fixture_table, tmp_path):
    out = tmp_path / "reg.csv.gz"
    write_motifs_csv(fixture_table, out)
    pd.testing.assert_frame_equal(pyscenic_load_motifs(out), fixture_frame)


@pytest.mark.parametrize("case", range(0, N_RANDOM_TABLES, 3))
def test_random_round_trip_and_pyscenic_read(case, tmp_path):
    table = random_table(case)
    out = tmp_path / "reg.csv"
    write_motifs_csv(table, out)
    pd.testing.assert_frame_equal(read_motifs_csv(out), table)
    frame = pyscenic_load_motifs(out)
    expected = pyscenic_motif_frame(table)
    expected["Enrichment", "Annotation"] = expected["Enrichment", "Annotation"].replace("", np.nan)  # pandas' NA
    pd.testing.assert_frame_equal(frame, expected)


def test_write_is_deterministic(tmp_path):
    table = random_table(1)
    write_motifs_csv(table, tmp_path / "a.csv.gz")
    rebuilt = table.assign(Context=[frozenset(sorted(c, reverse=True)) for c in table["Context"]])
    write_motifs_csv(rebuilt, tmp_path / "b.csv.gz")
    assert (tmp_path / "a.csv.gz").read_bytes() == (tmp_path / "b.csv.gz").read_bytes()


HEADER = (
    ",,Enrichment,Enrichment,Enrichment,Enrichment,Enrichment,Enrichment,Enrichment,Enrichment\n"
    ",,AUC,Annotation,Context,MotifSimilarityQvalue,NES,OrthologousIdentity,RankAtMax,TargetGenes\n"
    "TF,MotifID,,,,,,,,\n"
)
GOOD_ROW = (
    "Sox2,m1,0.01,ann,\"frozenset({'activating', 'top50', 'db1'})\",0.0,3.5,1.0,10,"
    "\"[('Sox2', 1.0), ('G1', 0.5)]\"\n"
)


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param("", "header", id="empty"),
        pytest.param("TF,MotifID,AUC\nSox2,m1,0.1\nx,y,z\n", "not a pySCENIC reg.csv", id="flat-csv"),
        pytest.param(HEADER.replace(",NES,", ",NESS,"), r"lacks the Enrichment column\(s\) \['NES'\]", id="no-nes"),
        pytest.param(HEADER + GOOD_ROW + "Sox2,m2,0.01\n", "line 5: 3 fields", id="short-row"),
        pytest.param(HEADER + GOOD_ROW.replace(",3.5,", ",high,"), "line 4, column NES: 'high'", id="bad-nes"),
        pytest.param(HEADER + GOOD_ROW.replace(",3.5,", ",,"), "line 4, column NES", id="missing-nes"),
        pytest.param(HEADER + GOOD_ROW.replace(",10,", ",ten,"), "line 4, column RankAtMax", id="bad-rank"),
        pytest.param(
            HEADER + GOOD_ROW.replace("[('Sox2', 1.0), ('G1', 0.5)]", "__import__('os').getcwd()"),
            "line 4, column TargetGenes",
            id="code-in-targets",
        ),
        pytest.param(
            HEADER + GOOD_ROW.replace("('G1', 0.5)", "('G1', 'x')"), "line 4, column TargetGenes", id="bad-weight"
        ),
        pytest.param(HEADER + GOOD_ROW.replace("'top50', ", "'top50', 'db2', "), "exactly one database", id="two-dbs"),
        pytest.param(HEADER + GOOD_ROW.replace("'db1'", "'top10'"), "exactly one database", id="no-db"),
        pytest.param(
            HEADER + GOOD_ROW.replace("frozenset({", "frozenset([").replace("})", "])"),
            "line 4, column Context",
            id="bad-context",
        ),
        pytest.param(HEADER + GOOD_ROW.replace("Sox2,m1", ",m1", 1), "line 4, column TF", id="empty-tf"),
    ],
)
def test_malformed_files_name_line_and_column(tmp_path, text, message):
    path = tmp_path / "reg.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        read_motifs_csv(path)


def test_reads_minimal_file_and_slow_path_names(tmp_path):
    path = tmp_path / "reg.csv"
    path.write_text(HEADER + GOOD_ROW.replace("('G1', 0.5)", "(\"\"O'Neil\"\", 5e-1), ('G\\\\2', 2)"), encoding="utf-8")
    table = read_motifs_csv(path)
    assert table.loc[0, "TargetGenes"] == [("Sox2", 1.0), ("O'Neil", 0.5), ("G\\2", 2.0)]
    assert table.loc[0, "Database"] == "db1"
    assert table.loc[0, "MotifSimilarityQvalue"] == 0.0


def test_reads_weights_written_by_pyscenic_under_numpy_2(tmp_path):
    """pySCENIC run with numpy 2 writes its weights as numpy prints scalars; nothing else
    that looks like a call is accepted (the malformed cases above)."""
    path = tmp_path / "reg.csv"
    path.write_text(HEADER + GOOD_ROW.replace("[('Sox2', 1.0), ('G1', 0.5)]",
                                              "[('Sox2', np.float64(1.0)), ('G1', np.float64(5e-01))]"),
                    encoding="utf-8")
    assert read_motifs_csv(path).loc[0, "TargetGenes"] == [("Sox2", 1.0), ("G1", 0.5)]
    path.write_text(HEADER + GOOD_ROW.replace("('G1', 0.5)", "('G1', np.float64(__import__('os')))"), encoding="utf-8")
    with pytest.raises(InputError, match="line 4, column TargetGenes"):
        read_motifs_csv(path)


def test_not_gzip(tmp_path):
    path = tmp_path / "reg.csv.gz"
    path.write_text(HEADER + GOOD_ROW)
    with pytest.raises(InputError, match="not a readable reg.csv"):
        read_motifs_csv(path)


@pytest.mark.parametrize("name", ["reg.csv", "reg.csv.gz"])
def test_not_utf8_names_the_file_and_line(tmp_path, name):
    content = (HEADER + GOOD_ROW + GOOD_ROW.replace("ann,", "caf\xe9,")).encode("latin-1")  # line 5
    path = tmp_path / name
    path.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    with pytest.raises(InputError, match=rf"reg.csv {re.escape(repr(str(path)))} is not UTF-8 text: line 5 .*0xe9"):
        read_motifs_csv(path)


@pytest.mark.parametrize("name", ["reg.csv", "reg.csv.gz"])
def test_a_write_failing_midway_leaves_the_previous_file(tmp_path, monkeypatch, name):
    path = tmp_path / name
    write_motifs_csv(random_table(1), path)
    before = path.read_bytes()

    def to_csv(self, handle, *args, **kwargs):
        handle.write(",,Enrich")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    with pytest.raises(OSError, match="No space left"):
        write_motifs_csv(random_table(2), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no partial file beside it


@pytest.mark.parametrize(
    "change, message",
    [
        pytest.param(lambda t: t.drop(columns="Database"), r"lacks column\(s\) \['Database'\]", id="no-database"),
        pytest.param(lambda t: t.assign(NES=np.nan), "row 0, column NES", id="nan-nes"),
        pytest.param(
            lambda t: t.assign(OrthologousIdentity=np.inf), "row 0, column OrthologousIdentity", id="inf-identity"
        ),
        pytest.param(lambda t: t.assign(RankAtMax=1.5), "RankAtMax must hold integers", id="float-rank"),
        pytest.param(lambda t: t.assign(Database="other"), "not an element of its Context", id="db-not-in-context"),
        pytest.param(lambda t: t.assign(Context="activating"), "row 0, column Context", id="string-context"),
        pytest.param(lambda t: t.assign(TargetGenes=[[("G", math.nan)]] * len(t)), "row 0, column Target", id="nan-weight"),
        pytest.param(lambda t: t.assign(TargetGenes=[{"G": 1.0}] * len(t)), "row 0, column Target", id="dict-targets"),
        pytest.param(lambda t: t.assign(TF=None), "row 0, column TF", id="no-tf"),
    ],
)
def test_validator(change, message):
    table = random_table(2)
    validate_motif_table(table)
    with pytest.raises(InputError, match=message):
        validate_motif_table(change(table))
    with pytest.raises(InputError, match=message):
        regulons_from_motifs(change(table))


# --- regulons ----------------------------------------------------------------------------


def test_fixture_regulons_equal_pyscenic(fixture_table, fixture_frame):
    """Exactly pySCENIC's regulons from the same numbers; to 1e-12 from load_motifs' inexact parse."""
    ours = regulons_from_motifs(fixture_table)
    assert_regulons_equal_pyscenic(ours, pyscenic_regulons(pyscenic_motif_frame(fixture_table)))
    assert_regulons_equal_pyscenic(ours, pyscenic_regulons(fixture_frame), rtol=1e-12)
    assert len(ours) == 425
    assert all(r["type"] == "activating" and r["name"].endswith("(+)") for r in ours)
    assert all(r["genes"] == sorted(r["genes"]) for r in ours)
    best_nes = fixture_table.groupby("TF")["NES"].max()
    assert all(r["nes"] == best_nes[r["tf"]] and r["motif"] in r["motifs"] for r in ours)
    # motifs: by best NES, ties by name, so the top row's motif leads unless its NES is tied
    assert sum(r["motifs"][0] != r["motif"] for r in ours) <= 6


def test_fixture_ties_rule(fixture_table):
    """The fixture has 6 TFs whose top NES is shared by 2 rows; 'first' takes the first of them."""
    pyscenic_pick = {r["name"]: r for r in regulons_from_motifs(fixture_table, ties="pyscenic")}
    first_pick = {r["name"]: r for r in regulons_from_motifs(fixture_table, ties="first")}
    n_tied = 0
    for tf, group in fixture_table.groupby("TF", sort=False):
        top = group[group["NES"] == group["NES"].max()]
        mine = first_pick[f"{tf}(+)"]
        assert (mine["motif"], mine["database"]) == (top["MotifID"].iloc[0], top["Database"].iloc[0])
        assert pyscenic_pick[f"{tf}(+)"]["motif"] in set(top["MotifID"])
        n_tied += len(top) > 1
    assert n_tied == 6


@pytest.mark.parametrize("case", range(N_RANDOM_TABLES))
def test_random_regulons_equal_pyscenic(case):
    table = random_table(case)
    ours = regulons_from_motifs(table)
    assert_regulons_equal_pyscenic(ours, pyscenic_regulons(pyscenic_motif_frame(table)))
    for regulon in ours:
        repressing = table["Context"].map(lambda c: "repressing" in c)
        rows = table[(table["TF"] == regulon["tf"]) & (repressing == (regulon["type"] == "repressing"))]
        assert regulon["context"] == sorted(set().union(*rows["Context"]))
        assert set(regulon["motifs"]) == set(rows["MotifID"]) and regulon["motif"] in regulon["motifs"]
        assert regulon["database"] in regulon["context"]


def test_random_tables_cover_the_hard_cases():
    """The synthetic cases must hold repressing regulons, q = 0, NaN q and identity, and tied top NES."""
    names, tied_tops = set(), 0
    tables = [random_table(case) for case in range(N_RANDOM_TABLES)]
    for table in tables:
        names |= {r["name"][-3:] for r in regulons_from_motifs(table)}
        kind = table["Context"].map(lambda c: "repressing" in c)
        for _, group in table.groupby([table["TF"], kind]):
            tied_tops += (group["NES"] == group["NES"].max()).sum() > 1
    everything = pd.concat(tables)
    assert names == {"(+)", "(-)"}
    assert tied_tops >= 10
    assert (everything["MotifSimilarityQvalue"] == 0).any() and everything["MotifSimilarityQvalue"].isna().any()
    assert everything["OrthologousIdentity"].isna().any()


def test_row_score_follows_pyscenic():
    assert _row_score(4.0, 0.0, 0.5) == 2.0  # q = 0: math domain error, factor 1
    assert _row_score(4.0, math.nan, math.nan) == 4.0
    assert _row_score(4.0, 1e-12, 1.0) == 4.0  # -log10(q) capped at 10
    assert _row_score(4.0, 1e-5, 1.0) == 4.0 * (-math.log(1e-5, 10)) / 10
    assert _row_score(4.0, 1e-5, 0.5) == pytest.approx(1.0)


def test_empty_table_and_bad_ties():
    assert regulons_from_motifs(random_table(0).iloc[:0]) == []
    with pytest.raises(InputError, match="ties="):
        regulons_from_motifs(random_table(0), ties="last")


def test_regulon_without_genes_is_left_out(caplog):
    table = random_table(3)
    table["TargetGenes"] = [[] if tf == table["TF"].iloc[0] else t for tf, t in zip(table["TF"], table["TargetGenes"])]
    with caplog.at_level(logging.WARNING, logger="flashscenic.regulons"):
        regulons = regulons_from_motifs(table)
    assert table["TF"].iloc[0] not in {r["tf"] for r in regulons}
    assert "no target genes" in caplog.text


# --- adjacency ---------------------------------------------------------------------------

REGULONS = [
    {"name": "A(+)", "genes": ["A", "g1", "g3"], "weights": [1.0, 0.5, 2.0]},
    {"name": "B(-)", "genes": ["B", "g2", "zz"], "weights": [1.0, 0.25, 3.0]},
]


def test_adjacency_binary_and_weighted(caplog):
    genes = ["g1", "g2", "g3", "A", "B"]
    with caplog.at_level(logging.WARNING, logger="flashscenic.regulons"):
        binary = regulons_to_adjacency(REGULONS, genes)
        weighted = regulons_to_adjacency(REGULONS, genes, weighted=True)
    assert binary.dtype == weighted.dtype == np.float32
    np.testing.assert_array_equal(binary, [[1, 0, 1, 1, 0], [0, 1, 0, 0, 1]])
    np.testing.assert_array_equal(weighted, [[0.5, 0, 2.0, 1.0, 0], [0, 0.25, 0, 0, 1.0]])
    assert "1 of 6 regulon gene(s) are not in gene_names" in caplog.text and "B(-)" in caplog.text


def test_adjacency_quiet_when_nothing_is_dropped(caplog):
    with caplog.at_level(logging.WARNING, logger="flashscenic.regulons"):
        regulons_to_adjacency(REGULONS, ["A", "B", "g1", "g2", "g3", "zz"])
    assert caplog.text == ""


def test_adjacency_errors():
    with pytest.raises(InputError, match=r"gene_names has 1 duplicated name\(s\) \('A' x2\)"):
        regulons_to_adjacency(REGULONS, ["A", "B", "A"])
    with pytest.raises(InputError, match="finite and positive"):
        regulons_to_adjacency([{"name": "C(+)", "genes": ["C"], "weights": [0.0]}], ["C"], weighted=True)
    with pytest.raises(InputError, match="2 genes but 1 weights"):
        regulons_to_adjacency([{"name": "C(+)", "genes": ["C", "D"], "weights": [1.0]}], ["C"])


def test_fixture_regulons_to_adjacency(fixture_table):
    regulons = regulons_from_motifs(fixture_table)
    genes = sorted(set().union(*(r["genes"] for r in regulons)))
    matrix = regulons_to_adjacency(regulons, genes, weighted=True)
    assert matrix.shape == (len(regulons), len(genes))
    assert ((matrix > 0).sum(axis=1) == [r["n_genes"] for r in regulons]).all()
    column = {g: j for j, g in enumerate(genes)}
    r = regulons[17]
    np.testing.assert_array_equal(matrix[17, [column[g] for g in r["genes"]]], np.float32(r["weights"]))
