"""Early checks: gene overlap with the databases, TFs present, annotation columns; each names the cause."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flashscenic import rankdb
from flashscenic.checks import (check_gene_overlap, check_inputs, check_motif_annotation, check_tf_overlap,
                                read_tf_names)
from flashscenic.errors import InputError
from flashscenic.rankdb import RankingDatabase
from pyscenic_fixtures import FIXTURES
from test_rankdb import ranks, write

HUMAN = ["GAPDH", "ACTB", "TP53", "MYC", "SOX2", "PAX6", "FOXA1", "GATA1", "SPI1", "CEBPA", "HNF4A", "KLF4",
         "NANOG", "POU5F1", "RUNX1", "TAL1", "ELF1", "ETV6", "IRF8", "STAT1"]
MOUSE = [g[0] + g[1:].lower() for g in HUMAN]  # Gapdh, Actb, ...
ENSEMBL = [f"ENSG{i:011d}" for i in range(141510, 141530)]
HEADER = "#motif_id\tmotif_name\tgene_name\tmotif_similarity_qvalue\torthologous_identity\tdescription\n"


def database(genes=HUMAN):
    return RankingDatabase.from_array(ranks(n_motifs=3, n_genes=len(genes)), gene_names=genes, name="hg38_test")


def test_good_overlap_passes_and_reports():
    overlap = check_gene_overlap(HUMAN[:15] + ["LINC00001", "AC000001.1"], database())
    assert (overlap.n_matched, overlap.n_expression_genes, overlap.n_database_genes) == (15, 17, 20)
    assert overlap.fraction == pytest.approx(15 / 17) and overlap.unmatched_examples == ("LINC00001", "AC000001.1")


@pytest.mark.parametrize("genes, cause", [
    pytest.param(MOUSE, r"look like mouse or fly symbols \(e\.g\. Gapdh\) and the database like human ones.*"
                        r"species='mouse'", id="mouse-data-human-database"),
    pytest.param(ENSEMBL, r"Ensembl/FlyBase gene IDs .* use gene symbols", id="ensembl-ids"),
    pytest.param([f"ENSMUSG{i:011d}.{i % 3 + 1}" for i in range(20)], r"Ensembl/FlyBase gene IDs", id="versioned-mouse-ids"),
    pytest.param([str(i) for i in range(20)], r"the gene names are numbers", id="positions"),
    pytest.param([f"orf{i}" for i in range(20)], r"check that the databases are for the data's species", id="unrelated"),
])
def test_low_overlap_names_the_likely_cause_and_examples(genes, cause):
    with pytest.raises(ValueError, match=r"only 0 of 20 expression genes \(0\.0%, under 50%\) are in the ranking "
                                         r"database 'hg38_test': .*" + cause) as error:
        check_gene_overlap(genes, database())
    assert f"Unmatched expression genes, e.g. {', '.join(genes[:5])}; database genes, e.g. GAPDH, ACTB" in str(error.value)


def test_human_data_against_a_mouse_database():
    with pytest.raises(ValueError, match=r"look like human symbols \(e\.g\. GAPDH\) and the database like mouse"):
        check_gene_overlap(HUMAN, database(MOUSE))


def test_overlap_threshold_is_a_parameter():
    genes = HUMAN[:8] + [f"X{i}" for i in range(12)]  # 40%
    with pytest.raises(ValueError, match=r"only 8 of 20 .*40\.0%, under 50%"):
        check_gene_overlap(genes, database())
    assert check_gene_overlap(genes, database(), min_fraction=0.3).n_matched == 8


def test_database_file_is_checked_from_its_names_only(tmp_path, monkeypatch):
    path = write(tmp_path / "hg38_file.feather", ranks(n_motifs=3, n_genes=20), names=HUMAN)
    monkeypatch.setattr(rankdb, "_read_columns", lambda *a: pytest.fail("ranks were read for a name check"))
    assert check_gene_overlap(HUMAN, path).n_matched == 20
    with pytest.raises(ValueError, match="ranking database 'hg38_file'"):
        check_gene_overlap(MOUSE, path)


def test_tf_overlap(tmp_path):
    assert check_tf_overlap(["SOX2", "NOT_A_GENE", "MYC"], HUMAN) == ["SOX2", "MYC"]
    tf_file = tmp_path / "tfs.txt"
    tf_file.write_text("# TFs\nSOX2\n\nPAX6\n")
    assert read_tf_names(tf_file) == ["SOX2", "PAX6"] and check_tf_overlap(tf_file, HUMAN) == ["SOX2", "PAX6"]
    with pytest.raises(ValueError, match=r"none of the 3 TFs is among the 20 expression genes: the names match only "
                                         r"when upper-cased: the expression genes look like mouse"):
        check_tf_overlap(["SOX2", "PAX6", "MYC"], MOUSE)
    with pytest.raises(ValueError, match="the TF list is empty"):
        check_tf_overlap([], HUMAN)
    with pytest.raises(FileNotFoundError, match="TF list .* does not exist"):
        check_tf_overlap(tmp_path / "missing.txt", HUMAN)


def test_a_tf_list_that_is_not_utf8_is_one_line_naming_file_and_line(tmp_path, capsys):
    from flashscenic.cli import main

    tf_file = tmp_path / "tfs.txt"
    tf_file.write_bytes("SOX2\nPAX6\nZNF\xe9\n".encode("latin-1"))  # a latin-1 byte on line 3
    with pytest.raises(InputError, match=r"TF list '.*tfs.txt' is not UTF-8 text: line 3 has the byte 0xe9"):
        read_tf_names(tf_file)
    with pytest.raises(InputError, match="line 3"):
        check_tf_overlap(tf_file, HUMAN)
    rng = np.random.default_rng(0)
    expression = pd.DataFrame(np.log1p(rng.poisson(2.0, (40, len(HUMAN)))).astype(np.float32),
                              index=[f"cell{i}" for i in range(40)], columns=HUMAN)
    expression.to_csv(tmp_path / "expression.csv")
    assert main(["grn", str(tmp_path / "expression.csv"), str(tf_file), "-o", str(tmp_path / "adj.tsv"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("flashscenic: error: TF list ") and "line 3" in err[0]
    assert not (tmp_path / "adj.tsv").exists()


def test_real_tf_lists_of_the_wrong_species():
    if not FIXTURES.is_dir():
        pytest.skip(f"pySCENIC fixtures not found at {FIXTURES}")
    mouse_tfs = read_tf_names(FIXTURES / "mm_mgi_tfs.txt")
    human_tfs = read_tf_names(FIXTURES / "hs_hgnc_tfs.txt")
    assert len(check_tf_overlap(human_tfs, human_tfs[:300])) == 300
    with pytest.raises(ValueError, match=r"only 1 of 1839 .*look like human symbols.* like mouse or fly ones"):
        check_gene_overlap(human_tfs, mouse_tfs)  # human data, mouse database (they share only 'T')
    with pytest.raises(ValueError, match=r"look like mouse or fly symbols.*like human ones"):
        check_gene_overlap(mouse_tfs, human_tfs)


def test_annotation_columns_are_checked_by_the_loader(tmp_path):
    bad = tmp_path / "bad.tbl"
    bad.write_text("#motif_id\tgene_name\tdescription\nm1\tSOX2\tx\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) motif_similarity_qvalue, orthologous_identity"):
        check_motif_annotation(bad)
    empty = tmp_path / "strict.tbl"
    empty.write_text(HEADER + "m1\tM1\tSOX2\t0.5\t1.0\tweak\n")
    with pytest.raises(ValueError, match="has no row with q-value <= 0.001"):
        check_motif_annotation(empty)
    good = tmp_path / "good.tbl"
    good.write_text(HEADER + "m1\tM1\tSOX2\t0.0\t1.0\tgene is directly annotated\n")
    assert check_motif_annotation(good).has_annotation("m1", "SOX2")


def test_annotation_not_utf8_or_with_a_word_for_a_number_is_one_line(tmp_path):
    latin = tmp_path / "latin.tbl"
    latin.write_bytes((HEADER + "m1\tM1\tSOX2\t0.0\t1.0\tok\nm2\tM2\tPAX6\t0.0\t1.0\tcaf\xe9\n").encode("latin-1"))
    with pytest.raises(InputError, match=r"motif annotation file '.*latin.tbl' is not UTF-8 text: line 3 .*0xe9"):
        check_motif_annotation(latin)
    words = tmp_path / "words.tbl"
    words.write_text(HEADER + "m1\tM1\tSOX2\t0.0\t1.0\tok\nm2\tM2\tPAX6\tabc\t1.0\tok\n")
    with pytest.raises(InputError, match=r"words.tbl', line 3, column 'motif_similarity_qvalue': 'abc' is not a number"):
        check_motif_annotation(words)


def test_check_inputs_runs_everything(tmp_path):
    good = tmp_path / "good.tbl"
    good.write_text(HEADER + "m1\tM1\tSOX2\t0.0\t1.0\tgene is directly annotated\n")
    report = check_inputs(HUMAN, [database(), database(HUMAN[::-1])], ["SOX2", "XYZ"], good)
    assert [o.n_matched for o in report.gene_overlaps] == [20, 20] and report.tfs_found == ("SOX2",)
    assert report.motif_annotation.has_annotation("m1", "SOX2")
    with pytest.raises(ValueError, match=r"expression gene names has 2 duplicated name\(s\) \('GAPDH' x2, 'ACTB' x2\)"):
        check_inputs(HUMAN + ["GAPDH", "ACTB"], [database()])
    with pytest.raises(ValueError, match="Ensembl"):
        check_inputs(ENSEMBL, [database()], ["SOX2"])
    assert check_inputs(np.array(HUMAN)).gene_overlaps == ()
