"""Ranking databases: Feather v2 in any layout, legacy v1, and clear errors for bad files."""


import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest

from flashscenic.rankdb import RankingDatabase, read_ranking_database
from pyscenic_fixtures import FIXTURES, needs_fixtures



def ranks(n_motifs=7, n_genes=50, dtype=np.int16, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n_genes) for _ in range(n_motifs)]).astype(dtype)


def write(path, matrix, index="motifs", position="last", compression="lz4", names=None):
    genes = names or [f"G{j}" for j in range(matrix.shape[1])]
    motif_column = pa.array([f"m{i}" for i in range(matrix.shape[0])])
    table = pa.Table.from_arrays([pa.array(matrix[:, j]) for j in range(matrix.shape[1])], names=genes)
    at = {"first": 0, "last": table.num_columns, "middle": table.num_columns // 2}[position]
    feather.write_feather(table.add_column(at, index, motif_column), path, compression=compression)
    return path


@pytest.mark.parametrize("position", ["first", "middle", "last"])
@pytest.mark.parametrize("index", ["motifs", "tracks", "features"])
@pytest.mark.parametrize("dtype", [np.int16, np.int32])
def test_v2_layouts(tmp_path, position, index, dtype, monkeypatch):
    monkeypatch.setattr("flashscenic.rankdb._COLUMNS_PER_READ", 7)  # several column blocks
    matrix = ranks(dtype=dtype)
    database = read_ranking_database(write(tmp_path / "db.genes_vs_motifs.rankings.feather", matrix, index, position))
    assert database.name == "db.genes_vs_motifs.rankings"  # pySCENIC: file name without extension
    np.testing.assert_array_equal(database.rankings, matrix)
    assert database.ranks_by_gene.flags.c_contiguous and database.ranks_by_gene.dtype == dtype
    assert database.gene_names.tolist() == [f"G{j}" for j in range(50)]
    assert database.motif_names.tolist() == [f"m{i}" for i in range(7)]
    index_of, present = database.gene_indices(["G3", "nope", "G49"])
    assert index_of[present].tolist() == [3, 49] and present.tolist() == [True, False, True]


def test_uncompressed_v2(tmp_path):
    matrix = ranks()
    np.testing.assert_array_equal(read_ranking_database(write(tmp_path / "a.feather", matrix, compression="uncompressed")).rankings, matrix)


@needs_fixtures
def test_real_legacy_v1_fixture_loads():
    database = read_ranking_database(FIXTURES / "hg19-tss-centered-10kb-10species.mc9nr.feather")
    assert (database.n_motifs, database.n_genes) == (5, 22284)
    assert database.name == "hg19-tss-centered-10kb-10species.mc9nr"
    assert database.gene_names[0] == "A1BG" and database.motif_names[0] == "predrem__nrMotif1806"
    assert sorted(database.rankings[0]) == list(range(22284))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_ranking_database(tmp_path / "nope.feather")


def test_empty_file(tmp_path):
    (tmp_path / "e.feather").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is empty \(0 bytes\)"):
        read_ranking_database(tmp_path / "e.feather")


def test_truncated_file(tmp_path):
    path = write(tmp_path / "t.feather", ranks())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        read_ranking_database(path)


def test_not_feather(tmp_path):
    (tmp_path / "x.feather").write_text("motifs,G1\nm1,0\n")
    with pytest.raises(ValueError, match="is not a Feather ranking database"):
        read_ranking_database(tmp_path / "x.feather")


def test_float_ranks(tmp_path):
    with pytest.raises(ValueError, match="must share one integer dtype"):
        read_ranking_database(write(tmp_path / "f.feather", ranks().astype(np.float32)))


def test_no_index_column(tmp_path):
    with pytest.raises(ValueError, match="exactly one index column named one of motifs, tracks, features"):
        read_ranking_database(write(tmp_path / "n.feather", ranks(), index="regions"))


def test_ranks_not_a_permutation(tmp_path, monkeypatch):
    monkeypatch.setattr("flashscenic.rankdb._MOTIFS_PER_CHECK", 2)
    matrix = ranks()
    matrix[5, 10] = matrix[5, 11]  # a repeated rank in motif 5
    with pytest.raises(ValueError, match="ranks of motif 5 are not a permutation"):
        read_ranking_database(write(tmp_path / "p.feather", matrix))
    assert read_ranking_database(tmp_path / "p.feather", validate=False).n_motifs == 7


def test_ranks_out_of_range(tmp_path):
    matrix = ranks()
    matrix[0, 0] = 50
    with pytest.raises(ValueError, match=r"ranks must lie in 0..49"):
        read_ranking_database(write(tmp_path / "r.feather", matrix))


def test_duplicate_genes(tmp_path):
    names = [f"G{j}" for j in range(49)] + ["G0"]
    with pytest.raises(ValueError, match=r"duplicate gene names.*G0"):
        read_ranking_database(write(tmp_path / "d.feather", ranks(), names=names))


def test_from_array_checks():
    matrix = ranks()
    database = RankingDatabase.from_array(matrix, name="mem")
    np.testing.assert_array_equal(database.rankings, matrix)
    with pytest.raises(ValueError, match="integer ranks"):
        RankingDatabase.from_array(matrix.astype(float))
    with pytest.raises(ValueError, match="3 motif names and 50 gene names for a 7 x 50"):
        RankingDatabase.from_array(matrix, motif_names=["a", "b", "c"])
