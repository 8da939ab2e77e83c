"""Ranking-database load benchmark: Feather read vs the memory-mapped cache (vs ctxcore).

    .venv/bin/python benchmarks/database_load.py [--out BENCHMARKS.md]

Why it is built this way:

* The database is synthetic but has the real v10 shape and type (5,876 motifs x 27,015
  genes, int16, every motif's ranks a permutation; ``motifs`` column last; Feather v2 with
  pyarrow's default lz4 compression), so sizes and times are those of a real download.
* Every measured row runs in a fresh process (this script with ``--child``), so the
  resident set it reports is what that load put in memory and nothing else; imports happen
  before the clock starts. The peak (VmHWM) is reset after the imports.
* "first load" is ``read_ranking_database`` with no cache present: read, validate, hash
  the source, write the cache and map it. "cached load" is the same call once the cache
  exists. "RSS added" is the resident set after the call minus before it: for the cached
  load it stays near zero because nothing of the ranks is read until used; the next row
  reads every rank once to show what that costs and that the pages then count.
* ctxcore 0.2.0's ``FeatherRankingDatabase.load_full`` (what pySCENIC does with a database)
  is timed too when ctxcore is importable.
* The page cache is warm (the file was just written): a cold read from disk adds the disk's
  time to the Feather rows and to the first read of the cached ranks.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import command_line, machine, reset_peak_rss, status_mib, write_section

HERE = Path(__file__).resolve().parent
FULL = (5_876, 27_015)
QUICK = (300, 2_000)
SEED = 0
NAME = "synthetic_v10.genes_vs_motifs.rankings.feather"  # ctxcore insists on this suffix


# ----------------------------------------------------------------------------- the child (one measurement)


def child(args) -> None:
    """Warm up on a tiny database (so lazily loaded library code is not counted), then measure."""
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / NAME
        make_database(tiny, 3, 10)
        if args.child == "ctxcore":
            from ctxcore.rnkdb import FeatherRankingDatabase

            load = lambda path: FeatherRankingDatabase(str(path), name="db").load_full()  # noqa: E731
        else:
            from flashscenic import rankdb

            rankdb._CACHE_MIN_BYTES = 0  # --quick databases are small: cache them all the same
            cache = args.child != "nocache"
            load = lambda path: rankdb.read_ranking_database(path, cache=cache)  # noqa: E731
        load(tiny)
        load(tiny)  # the second call takes the cached path where there is one
    before = status_mib("VmRSS")
    db = args.db
    reset_peak_rss()
    start = time.perf_counter()
    loaded = load(db)
    seconds = time.perf_counter() - start
    report = {"seconds": seconds, "rss_added_mib": status_mib("VmRSS") - before,
              "peak_added_mib": status_mib("VmHWM") - before}
    if args.child == "cached":
        report["memmap"] = isinstance(loaded.ranks_by_gene, np.memmap)
        start = time.perf_counter()
        total = int(loaded.ranks_by_gene.sum(dtype=np.int64))  # touches every page of the ranks
        report["read_seconds"] = time.perf_counter() - start
        report["rss_after_read_mib"] = status_mib("VmRSS") - before
        n_genes, n_motifs = loaded.ranks_by_gene.shape
        assert total == n_motifs * n_genes * (n_genes - 1) // 2, "the cached ranks are not permutations"
    print(json.dumps(report))


# ----------------------------------------------------------------------------- the parent


def make_database(path: Path, n_motifs: int, n_genes: int) -> None:
    """Write a Feather v2 database whose every motif ranks the genes in a random permutation."""
    import pyarrow as pa
    import pyarrow.feather as feather

    rng = np.random.default_rng(SEED)
    ranks_by_gene = np.empty((n_genes, n_motifs), dtype=np.int16)
    column = np.arange(n_genes, dtype=np.int16)[:, None]
    for start in range(0, n_motifs, 256):
        stop = min(start + 256, n_motifs)
        ranks_by_gene[:, start:stop] = rng.permuted(np.repeat(column, stop - start, axis=1), axis=0)
    arrays = [pa.array(ranks_by_gene[g]) for g in range(n_genes)]
    arrays.append(pa.array([f"motif_{i:05d}" for i in range(n_motifs)]))
    table = pa.Table.from_arrays(arrays, names=[f"gene_{g:05d}" for g in range(n_genes)] + ["motifs"])
    feather.write_feather(table, str(path))  # pyarrow's default: lz4


def measure(mode: str, db: Path, repeats: int) -> dict:
    """Best of ``repeats`` fresh processes (by time); the first-load mode deletes the cache before each."""
    best = None
    for _ in range(repeats):
        if mode == "first":
            for cached in db.parent.glob(db.name + ".flashscenic-cache.*"):
                cached.unlink()
        proc = subprocess.run([sys.executable, __file__, "--child", mode, "--db", str(db)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"{mode} failed with exit code {proc.returncode}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {mode}: {report['seconds']:.3g} s, RSS added {report['rss_added_mib']:,.0f} MiB", flush=True)
        if best is None or report["seconds"] < best["seconds"]:
            best = report
    return best


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("flashscenic", "numpy", "pyarrow", "ctxcore"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def markdown(rows: list, summary: list, shape: tuple, sizes: dict, info: dict, found: dict, command: str,
             repeats: int) -> str:
    header = ["load", "seconds", "RSS added (MiB)", "peak RSS added (MiB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    n_motifs, n_genes = shape
    return "\n".join([
        "## Database load",
        "",
        f"Measured {datetime.date.today().isoformat()} on {info['cpu']}, {info['cores']} cores, "
        f"{info['ram_gib']:.0f} GiB RAM; Python {info['python']}, numpy {found.get('numpy')}, "
        f"pyarrow {found.get('pyarrow')}, flashscenic {found.get('flashscenic')}"
        + (f", ctxcore {found['ctxcore']}" if "ctxcore" in found else "") + ".",
        "",
        f"Command: `{command}`",
        "",
        ("A synthetic ranking database of real v10 shape" if shape == FULL else
         "A small synthetic ranking database (--quick: a smoke test, not a measurement)")
        + f": {n_motifs:,} motifs x {n_genes:,} genes, int16 "
        f"(ranks {sizes['ranks_mib']:,.0f} MiB), Feather v2 with lz4 ({sizes['feather_mib']:,.0f} MiB on disk); "
        f"the cache is {sizes['cache_mib']:,.0f} MiB (.npy) plus {sizes['meta_kib']:,.0f} KiB of names (.json). "
        "Every row runs in a fresh process with the libraries already imported; "
        f"flashscenic rows: best of {repeats}, ctxcore: one run. RSS added: resident set after the "
        "call minus before it; peak RSS added: the peak (VmHWM, reset before the call) minus the same "
        "baseline. Page cache warm (the files were just written). \"then reading every rank\" sums "
        "the mapped ranks once, in the same process as the cached load.",
        "",
        *lines,
        "",
        *[line + "\n" for line in summary],
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny database: a smoke test, not a measurement")
    parser.add_argument("--repeats", type=int, default=3, help="flashscenic rows: best of this many processes")
    parser.add_argument("--no-ctxcore", action="store_true", help="skip the ctxcore row")
    parser.add_argument("--out", type=Path, help="markdown file whose '## Database load' section to write or replace")
    parser.add_argument("--child", choices=["nocache", "first", "cached", "ctxcore"], help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    command = command_line()
    shape = QUICK if args.quick else FULL
    found = versions()
    use_ctxcore = "ctxcore" in found and not args.no_ctxcore
    (HERE / "_work").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=HERE / "_work") as tmp:
        db = Path(tmp) / NAME
        print(f"writing a {shape[0]:,} x {shape[1]:,} int16 database", flush=True)
        make_database(db, *shape)
        results = {"nocache": measure("nocache", db, args.repeats), "first": measure("first", db, args.repeats),
                   "cached": measure("cached", db, args.repeats)}
        if use_ctxcore:
            results["ctxcore"] = measure("ctxcore", db, 1)
        npy = db.with_name(db.name + ".flashscenic-cache.npy")
        sizes = {"ranks_mib": shape[0] * shape[1] * 2 / 2**20, "feather_mib": db.stat().st_size / 2**20,
                 "cache_mib": npy.stat().st_size / 2**20,
                 "meta_kib": db.with_name(db.name + ".flashscenic-cache.json").stat().st_size / 1024}

    def row(label, r, seconds="seconds", rss="rss_added_mib", peak="peak_added_mib"):
        return [label, f"{r[seconds]:.3g}", f"{r[rss]:,.0f}", f"{r[peak]:,.0f}" if peak else "—"]

    cached = results["cached"]
    rows = []
    if use_ctxcore:
        rows.append(row(f"ctxcore {found['ctxcore']} FeatherRankingDatabase.load_full (pySCENIC)", results["ctxcore"]))
    rows += [
        row("flashscenic read_ranking_database(cache=False): read + validate", results["nocache"]),
        row("flashscenic first load: read + validate + write the cache", results["first"]),
        row("flashscenic cached load: map the cache", cached),
        row("then reading every rank once (sum)", cached, "read_seconds", "rss_after_read_mib", None),
    ]
    assert cached["memmap"], "the cached load did not map the cache"
    summary = [
        f"Cached load: {cached['seconds']:.3g} s (goal: <= 1 s), "
        f"{results['nocache']['seconds'] / cached['seconds']:.0f}x faster than reading the Feather file; "
        f"resident memory added by it: {cached['rss_added_mib']:,.0f} MiB, the names only "
        "(goal: nothing of the ranks until they are read).",
    ]
    section = markdown(rows, summary, shape, sizes, machine(), found, command, args.repeats)
    print("\n" + section)
    if args.out:
        write_section(args.out, section)
        print(f"wrote the Database load section of {args.out}")


if __name__ == "__main__":
    main()
