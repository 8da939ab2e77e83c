"""Damaged ranking databases: a seeded corpus of byte flips and truncations of small databases.

Each damaged copy must give either the original ranks or one line naming the file (an
InputError, never an Arrow traceback), whatever the damage hits: the schema, a name, the
ranks, a compressed buffer or the footer.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest

from flashscenic.errors import FlashscenicError
from flashscenic.rankdb import RankingDatabase, read_database_gene_names, read_ranking_database
from test_rankdb import ranks, write

FLIPS = 160  # per database
TRUNCATIONS = 30


def damaged_copies(original: bytes, rng):
    """(label, bytes): 1 to 4 random bytes replaced, or the file cut at a random length."""
    for i in range(FLIPS):
        damaged = bytearray(original)
        for position in rng.choice(len(original), size=int(rng.integers(1, 5)), replace=False):
            damaged[position] = (damaged[position] + int(rng.integers(1, 256))) % 256
        yield f"flip{i}", bytes(damaged)
    for i, length in enumerate(rng.choice(len(original) - 1, size=TRUNCATIONS, replace=False)):
        yield f"cut{i}", original[: int(length) + 1]


def check(read, path, matrix) -> str:
    """'same' (the original ranks), or 'refused' (one line naming the file); anything else fails."""
    try:
        database = read(path)
    except FlashscenicError as error:
        message = str(error)
        assert "\n" not in message and path.name in message, message
        return "refused"
    if isinstance(database, RankingDatabase):
        assert database.rankings.shape == matrix.shape and np.array_equal(database.rankings, matrix), \
            f"{path.name}: wrong ranks accepted"
        assert all(database.motif_names) and len(set(database.motif_names.tolist())) == matrix.shape[0]
    return "same"


@pytest.mark.parametrize("compression", ["uncompressed", "lz4"])
def test_damaged_databases_give_the_original_ranks_or_one_line(tmp_path, compression):
    matrix = ranks(n_motifs=6, n_genes=24, seed=3)
    original = write(tmp_path / "original.feather", matrix, compression=compression).read_bytes()
    rng = np.random.default_rng(15 if compression == "lz4" else 14)
    outcomes = {"same": 0, "refused": 0}
    for label, content in damaged_copies(original, rng):
        path = tmp_path / f"{label}.feather"
        path.write_bytes(content)
        outcomes[check(lambda p: read_ranking_database(p, cache=False), path, matrix)] += 1
        check(read_database_gene_names, path, matrix)
        path.unlink()
    assert outcomes["refused"] > FLIPS // 2, outcomes  # most damage is noticed, not silently survived


def test_damaged_motif_names_are_refused(tmp_path):
    matrix = ranks(n_motifs=3, n_genes=10)
    for names, problem in ((["m0", "m0", "m2"], "duplicate motif names"), (["m0", "", "m2"], "empty motif name")):
        table = pa.Table.from_arrays([pa.array(matrix[:, j]) for j in range(10)] + [pa.array(names)],
                                     names=[f"G{j}" for j in range(10)] + ["motifs"])
        path = tmp_path / "names.feather"
        feather.write_feather(table, path)
        with pytest.raises(FlashscenicError, match=rf"names\.feather.*{problem}"):
            read_ranking_database(path, cache=False)
