"""The memory-mapped cache of ranking databases: made once, mapped after, rebuilt when stale or damaged."""

from __future__ import annotations

import json
import os
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from flashscenic import rankdb
from flashscenic.rankdb import read_database_gene_names, read_ranking_database
from test_rankdb import FIXTURES, ranks, write

LEGACY = FIXTURES / "hg19-tss-centered-10kb-10species.mc9nr.feather"


@pytest.fixture(autouse=True)
def cache_everything(monkeypatch, tmp_path):
    """Cache databases of any size here, and keep the fallback cache inside tmp_path."""
    monkeypatch.setattr(rankdb, "_CACHE_MIN_BYTES", 0)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def cache_files(path: Path) -> tuple[Path, Path]:
    return (path.with_name(path.name + ".flashscenic-cache.npy"), path.with_name(path.name + ".flashscenic-cache.json"))


def forbid_source_reads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the Feather file was read although a valid cache exists")

    monkeypatch.setattr(rankdb, "_read_source", refuse)
    monkeypatch.setattr(rankdb, "check_permutations", refuse)


def test_first_read_makes_the_cache_and_later_reads_map_it(tmp_path, monkeypatch):
    matrix = ranks(n_motifs=9, n_genes=60)
    path = write(tmp_path / "db.feather", matrix)
    first = read_ranking_database(path)
    npy, meta = cache_files(path)
    assert npy.is_file() and meta.is_file()
    np.testing.assert_array_equal(np.load(npy), matrix.T)  # exactly ranks_by_gene
    assert json.loads(meta.read_text())["source"]["size"] == path.stat().st_size
    np.testing.assert_array_equal(first.rankings, matrix)

    forbid_source_reads(monkeypatch)
    second = read_ranking_database(path, name="renamed")
    assert isinstance(second.ranks_by_gene, np.memmap) and second.ranks_by_gene.flags.c_contiguous
    assert second.ranks_by_gene.flags.writeable  # copy-on-write: torch.from_numpy takes it without a warning
    np.testing.assert_array_equal(second.rankings, matrix)
    assert second.name == "renamed" and second.gene_names.tolist() == first.gene_names.tolist()
    assert second.motif_names.tolist() == first.motif_names.tolist()
    second.ranks_by_gene[0, 0] = -1  # a private copy of that page: the cache itself is untouched
    assert np.load(npy)[0, 0] == matrix[0, 0]


def test_small_databases_are_read_directly_by_default(tmp_path, monkeypatch):
    monkeypatch.setattr(rankdb, "_CACHE_MIN_BYTES", 16 * 2**20)
    path = write(tmp_path / "small.feather", ranks())
    assert not isinstance(read_ranking_database(path).ranks_by_gene, np.memmap)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.feather"]


def test_cache_false_writes_nothing(tmp_path):
    path = write(tmp_path / "db.feather", ranks())
    read_ranking_database(path, cache=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.feather"]


def test_cache_in_a_given_directory(tmp_path, monkeypatch):
    path = write(tmp_path / "db.feather", ranks())
    read_ranking_database(path, cache=tmp_path / "elsewhere")
    assert sorted(p.name for p in (tmp_path / "elsewhere").glob("*.flashscenic-cache.*[ny]")) == [
        "db.feather.flashscenic-cache.json", "db.feather.flashscenic-cache.npy"]
    forbid_source_reads(monkeypatch)
    assert isinstance(read_ranking_database(path, cache=tmp_path / "elsewhere").ranks_by_gene, np.memmap)


def test_changed_source_rebuilds_the_cache(tmp_path):
    path = write(tmp_path / "db.feather", ranks(seed=0), compression="uncompressed")
    read_ranking_database(path)
    new = ranks(seed=1)
    write(tmp_path / "db.feather", new, compression="uncompressed")  # same size, other ranks
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stale cache is routine: no warning
        again = read_ranking_database(path)
    np.testing.assert_array_equal(again.rankings, new)
    np.testing.assert_array_equal(np.load(cache_files(path)[0]), new.T)


def test_touched_or_copied_source_keeps_its_cache(tmp_path, monkeypatch):
    path = write(tmp_path / "db.feather", ranks())
    read_ranking_database(path)
    os.utime(path, ns=(10**18, 10**18))  # same bytes, new mtime: the SHA-1 decides
    forbid_source_reads(monkeypatch)
    assert isinstance(read_ranking_database(path).ranks_by_gene, np.memmap)
    assert json.loads(cache_files(path)[1].read_text())["source"]["mtime_ns"] == 10**18


def replace_in_place_keeping_size_and_mtime(path: Path, matrix) -> None:
    """What ``cp``/``rsync --inplace`` then ``touch -r`` do: other bytes, same size, inode and mtime."""
    before = path.stat()
    other = write(path.with_name("other.feather"), matrix, compression="uncompressed").read_bytes()
    assert len(other) == before.st_size
    with open(path, "r+b") as f:
        f.write(other)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def test_same_size_replacement_with_restored_mtime_rebuilds_the_cache(tmp_path):
    path = write(tmp_path / "db.feather", ranks(seed=0), compression="uncompressed")
    read_ranking_database(path)
    new = ranks(seed=1)
    replace_in_place_keeping_size_and_mtime(path, new)
    again = read_ranking_database(path)
    np.testing.assert_array_equal(again.rankings, new)
    np.testing.assert_array_equal(np.load(cache_files(path)[0]), new.T)


def test_the_content_fingerprint_catches_a_replacement_the_stat_misses(tmp_path):
    """Where ctime does not move either (some network file systems), the sampled content still does."""
    path = write(tmp_path / "db.feather", ranks(seed=0), compression="uncompressed")
    read_ranking_database(path)
    new = ranks(seed=1)
    replace_in_place_keeping_size_and_mtime(path, new)
    meta_path = cache_files(path)[1]
    meta = json.loads(meta_path.read_text())
    meta["source"].update(ctime_ns=path.stat().st_ctime_ns)  # the stat now matches in every field
    meta_path.write_text(json.dumps(meta))
    np.testing.assert_array_equal(read_ranking_database(path).rankings, new)
    np.testing.assert_array_equal(read_database_gene_names(path), [f"G{j}" for j in range(50)])


@pytest.mark.parametrize("damage", [
    pytest.param(lambda npy, meta: npy.write_bytes(npy.read_bytes()[:-10]), id="truncated-npy"),
    pytest.param(lambda npy, meta: npy.write_bytes(b"not an npy file at all"), id="garbage-npy"),
    pytest.param(lambda npy, meta: np.save(npy, np.zeros((3, 3), np.int16)), id="wrong-shape-npy"),
    pytest.param(lambda npy, meta: npy.unlink(), id="missing-npy"),
    pytest.param(lambda npy, meta: meta.write_text("{not json"), id="garbage-json"),
])
def test_damaged_cache_is_rebuilt_with_a_warning(tmp_path, damage):
    matrix = ranks()
    path = write(tmp_path / "db.feather", matrix)
    read_ranking_database(path)
    damage(*cache_files(path))
    with pytest.warns(UserWarning, match=r"the database cache .* is damaged .*; rebuilding it"):
        again = read_ranking_database(path)
    np.testing.assert_array_equal(again.rankings, matrix)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(read_ranking_database(path).ranks_by_gene, np.memmap)  # repaired


def test_unwritable_directory_uses_the_fallback_cache(tmp_path, monkeypatch):
    source_dir = tmp_path / "readonly"
    source_dir.mkdir()
    path = write(source_dir / "db.feather", ranks())
    real = rankdb._writable
    monkeypatch.setattr(rankdb, "_writable", lambda d: d != source_dir and real(d))  # chmod means nothing to root
    read_ranking_database(path)
    assert sorted(p.name for p in source_dir.iterdir()) == ["db.feather"]
    made = sorted(p.name for p in (tmp_path / "xdg" / "flashscenic" / "rankdb").glob("*-db.feather.flashscenic-cache.*[ny]"))
    assert len(made) == 2
    forbid_source_reads(monkeypatch)
    assert isinstance(read_ranking_database(path).ranks_by_gene, np.memmap)


def test_nowhere_to_write_warns_and_reads_the_file(tmp_path, monkeypatch):
    path = write(tmp_path / "db.feather", ranks())
    monkeypatch.setattr(rankdb, "_writable", lambda d: False)
    with pytest.warns(UserWarning, match="no writable directory for the cache"):
        np.testing.assert_array_equal(read_ranking_database(path).rankings, ranks())


def test_validation_happens_once(tmp_path, monkeypatch):
    path = write(tmp_path / "db.feather", ranks())
    read_ranking_database(path, validate=False)
    assert json.loads(cache_files(path)[1].read_text())["validated"] is False
    read_ranking_database(path)  # validates the mapped ranks once, and records it
    assert json.loads(cache_files(path)[1].read_text())["validated"] is True
    forbid_source_reads(monkeypatch)
    read_ranking_database(path)


def test_unvalidated_cache_of_a_bad_database_still_fails_validation(tmp_path):
    matrix = ranks()
    matrix[5, 10] = matrix[5, 11]
    path = write(tmp_path / "bad.feather", matrix)
    read_ranking_database(path, validate=False)
    with pytest.raises(ValueError, match="ranks of motif 5 are not a permutation"):
        read_ranking_database(path)


def test_bad_database_makes_no_cache(tmp_path):
    matrix = ranks()
    matrix[0, 0] = 50
    path = write(tmp_path / "bad.feather", matrix)
    with pytest.raises(ValueError, match="ranks must lie in 0..49"):
        read_ranking_database(path)
    assert not any(p.exists() for p in cache_files(path))


def test_concurrent_first_reads_convert_once(tmp_path, monkeypatch):
    path = write(tmp_path / "db.feather", ranks(n_motifs=40, n_genes=500))
    real, calls = rankdb._read_source, []
    monkeypatch.setattr(rankdb, "_read_source", lambda *a: calls.append(1) or real(*a))
    results = [None, None]

    def load(i):
        results[i] = read_ranking_database(path)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    np.testing.assert_array_equal(results[0].rankings, results[1].rankings)


@pytest.mark.skipif(not LEGACY.is_file(), reason=f"pySCENIC fixtures not found at {FIXTURES}")
def test_real_legacy_v1_database_through_the_cache(tmp_path, monkeypatch):
    path = Path(shutil.copy(LEGACY, tmp_path / LEGACY.name))  # never write beside the shared fixture
    direct = read_ranking_database(path, cache=False)
    read_ranking_database(path)
    forbid_source_reads(monkeypatch)
    cached = read_ranking_database(path)
    assert isinstance(cached.ranks_by_gene, np.memmap) and (cached.n_motifs, cached.n_genes) == (5, 22284)
    assert cached.name == "hg19-tss-centered-10kb-10species.mc9nr"
    np.testing.assert_array_equal(cached.ranks_by_gene, direct.ranks_by_gene)
    assert cached.gene_names.tolist() == direct.gene_names.tolist()
    assert cached.motif_names.tolist() == direct.motif_names.tolist()
    # SCENIC_SPEC.md section 10: AUCs of the GMT's first gene set, from the mapped ranks
    genes = (FIXTURES / "c6.all.v6.1.symbols.gmt").read_text().splitlines()[0].split("\t")[2:]
    index, present = cached.gene_indices(genes)
    assert present.all() and len(genes) == 29
    c = round(0.05 * cached.n_genes) - 1
    module = cached.rankings[:, index].astype(np.int64)
    auc = np.where(module < c, c - module, 0).sum(axis=1) / ((c + 1) * len(genes))
    np.testing.assert_allclose(auc, [0.00625271, 0.01411503, 0.01426980, 0.02457748, 0.05686250], atol=1e-8)


def test_gene_names_without_reading_the_ranks(tmp_path, monkeypatch):
    path = write(tmp_path / "db.feather", ranks(), position="first")
    monkeypatch.setattr(rankdb, "_read_columns", lambda *a: pytest.fail("ranks were read"))
    assert read_database_gene_names(path).tolist() == [f"G{j}" for j in range(50)]
    monkeypatch.undo()
    monkeypatch.setattr(rankdb, "_CACHE_MIN_BYTES", 0)
    read_ranking_database(path)
    monkeypatch.setattr(rankdb.ipc, "open_file", lambda *a, **k: pytest.fail("the file was opened"))
    assert read_database_gene_names(path).tolist() == [f"G{j}" for j in range(50)]  # from the cache's names
    if LEGACY.is_file():
        names = read_database_gene_names(LEGACY)
        assert names.size == 22284 and names[0] == "A1BG"


def test_pruner_loads_through_the_cache_without_a_copy(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from flashscenic.cistarget import CisTargetPruner

    path = write(tmp_path / "db.feather", ranks(n_motifs=20, n_genes=300))
    CisTargetPruner(rank_threshold=100, device="cpu").load_database([path])
    forbid_source_reads(monkeypatch)
    pruner = CisTargetPruner(rank_threshold=100, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "non-writable NumPy array"
        pruner.load_database([path])
    kernel = pruner.kernels[0]
    assert isinstance(kernel.database.ranks_by_gene, np.memmap)
    assert kernel.ranks_by_gene.data_ptr() == kernel.database.ranks_by_gene.ctypes.data  # the mapping itself
    assert torch.equal(kernel.ranks_by_gene, torch.from_numpy(ranks(n_motifs=20, n_genes=300).T.copy()))


@pytest.mark.parametrize("failing", ["npy", "json"])
def test_a_cache_write_failing_midway_leaves_the_previous_cache_and_no_partial_file(tmp_path, monkeypatch, failing):
    path = write(tmp_path / "db.feather", ranks(seed=0))
    read_ranking_database(path)
    npy, meta = cache_files(path)
    before = npy.read_bytes(), meta.read_bytes()
    new = ranks(seed=1)
    write(path, new)  # a changed source: the cache is rebuilt
    with monkeypatch.context() as patch:
        if failing == "npy":
            def save(file, array, *args, **kwargs):
                file.write(b"\x93NUMPY half a header")
                raise OSError(28, "No space left on device")
            patch.setattr(np, "save", save)
        else:
            real = Path.write_text

            def write_text(self, text, *args, **kwargs):
                real(self, text[: len(text) // 2], *args, **kwargs)
                raise OSError(28, "No space left on device")
            patch.setattr(Path, "write_text", write_text)
        with pytest.warns(UserWarning, match="could not write the database cache"):
            np.testing.assert_array_equal(read_ranking_database(path).rankings, new)
    if failing == "npy":
        assert (npy.read_bytes(), meta.read_bytes()) == before
    else:
        assert meta.read_bytes() == before[1]
        np.testing.assert_array_equal(np.load(npy), new.T)  # the new ranks, whole; the stale record: rebuilt later
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name or p.name.endswith(".tmp")] == []
    np.testing.assert_array_equal(read_ranking_database(path).rankings, new)  # the next read repairs the cache
    np.testing.assert_array_equal(np.load(npy), new.T)
    assert json.loads(meta.read_text())["source"]["sha1"] == rankdb._sha1_of(path)
