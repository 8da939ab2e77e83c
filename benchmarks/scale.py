"""Scale benchmark: AUCell on a Dask cluster from 100,000 to 1,000,000 cells; pruning on 2
workers against pruning in process.

    .venv/bin/python benchmarks/scale.py [--quick] [--out BENCHMARKS.md] [--work /tmp/flashscenic-scale]

Why it is built this way:

* The expression store (CSR, 1,000,000 cells x 2,000 genes, 10% non-zero, the Store
  benchmark's values) is generated once as an h5ad, ingested into ``--work`` and kept
  there (the h5ad is deleted); later runs reuse it. The 100,000 and 300,000 cases are the
  first cells of the same store: every case reads the same kind of chunks.
* AUCell runs exactly as in ``run_pipeline``: one ``stages.aucell_chunk_task`` per row chunk,
  each reading its rows from the expression store and writing its AUC rows into a
  results store, the regulon matrix scattered once; the chunk size is what
  ``DaskExecutor.plan_chunk_cells`` derives from the workers' memory limit (2 GiB each
  here). Seconds: from the scatter to the last chunk written (``finish_auc``), after an
  untimed warm-up case (first-task costs on each worker: imports, library loading). The
  100,000-cell case is also scored in this process with ``get_aucell`` on the same rows:
  the two AUC arrays must be bit-identical.
* Peak memory per worker: each worker process's peak resident set (VmHWM), reset
  (``/proc/self/clear_refs``) before each case and read after it; the table gives the
  largest of the workers.
* Pruning: the cisTarget benchmark's synthetic case (5,000 motifs x 20,000 genes, 500
  modules) in two ranking databases, through the pipeline's ``prune_task`` and
  ``merge_pruned``: in process (one task per database, as ``run_pipeline`` does in
  process) and on the same 2-worker cluster (2 TF shards per database). Both are warm: an
  untimed run first (database caches written, databases loaded once per process, as the
  design wants), then the best of ``--repeats``. The tables and regulons must be equal.
* CPU only (no GPU here): torch uses 2 threads in process and 1 per worker.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from _common import machine, write_section

HERE = Path(__file__).resolve().parent
SEED = 0
GENES = 2_000
FULL = {"cells": (100_000, 300_000, 1_000_000), "regulons": 200, "prune": (5_000, 20_000, 500, 20, 500)}
QUICK = {"cells": (5_000, 10_000, 20_000), "regulons": 40, "prune": (300, 6_000, 24, 20, 150)}
WORKERS, WORKER_MEMORY = 2, "2GiB"
N_DATABASES = 2


# --- inputs ------------------------------------------------------------------------------


def ensure_store(work: Path, n_cells: int, n_genes: int) -> Path:
    """The CSR expression store of ``n_cells`` x ``n_genes``: reused when present, else made once."""
    from flashscenic.store import ingest_expression, open_expression_store

    path = work / f"expression-{n_cells}x{n_genes}.zarr"
    try:
        store = open_expression_store(path)
        if store.shape == (n_cells, n_genes) and store.layout == "csr":
            print(f"reusing {path}", flush=True)
            return path
    except Exception:
        pass
    sys.path.insert(0, str(HERE))
    from store import generate_h5ad  # the Store benchmark's generator (same values)

    h5ad = work / "generate.h5ad"
    start = time.perf_counter()
    generate_h5ad(h5ad, n_cells, n_genes)
    ingest_expression(h5ad, path, layout="csr", overwrite=True, verbose=False)
    h5ad.unlink()
    print(f"made {path} in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def make_regulons(n_regulons: int, n_genes: int) -> tuple[list[str], np.ndarray]:
    """Regulons x genes 0/1 (what the pipeline scores): sizes uniform in 10..300 genes."""
    rng = np.random.default_rng(SEED)
    matrix = np.zeros((n_regulons, n_genes))
    for row, size in zip(matrix, rng.integers(10, min(300, n_genes // 2) + 1, size=n_regulons)):
        row[rng.choice(n_genes, size=size, replace=False)] = 1.0
    return [f"R{i}(+)" for i in range(n_regulons)], matrix


def write_pruning_case(work: Path, n_motifs, n_genes, n_modules, smallest, largest):
    """The cisTarget benchmark's case as files: ranking databases, annotation table; and modules."""
    import pyarrow as pa
    import pyarrow.feather as feather

    from cistarget import make_case  # noqa: E402  (benchmarks/ is on sys.path)
    from flashscenic.modules import Module

    case, annotations = make_case(n_motifs, n_genes, n_modules, smallest, largest)
    names = [str(g) for g in case["gene_names"]]
    databases = []
    for d in range(N_DATABASES):
        path = work / f"prune-{n_motifs}x{n_genes}-db{d}.feather"
        databases.append(path)
        if path.exists():
            continue
        # Database d: the genes' columns shifted by d (every row stays a permutation).
        ranks = np.roll(case["ranks"], d, axis=1)
        columns = [pa.array(ranks[:, j]) for j in range(n_genes)] + [pa.array([str(m) for m in case["motif_names"]])]
        feather.write_feather(pa.Table.from_arrays(columns, names=names + ["motifs"]), str(path),
                              compression="uncompressed")
    annotation = work / f"prune-{n_motifs}x{n_genes}.tbl"
    annotations.to_csv(annotation, sep="\t", index=False)
    offsets, genes, weights = case["module_offsets"], case["module_genes"], case["module_weight_values"]
    modules = [Module(names[case["tfs"][k]], ("top50",), tuple(names[g] for g in genes[offsets[k]:offsets[k + 1]]),
                      tuple(float(w) for w in weights[offsets[k]:offsets[k + 1]])) for k in range(n_modules)]
    return databases, annotation, modules


# --- measurements ------------------------------------------------------------------------


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def aucell_case(executor, store_path: Path, n_cells: int, names, adjacency, params, work: Path) -> dict:
    """AUCell of the first ``n_cells`` cells on the cluster, as run_pipeline runs it."""
    from flashscenic.stages import aucell_chunk_task
    from flashscenic.store import create_results_store, open_expression_store

    store = open_expression_store(store_path)
    chunk = executor.plan_chunk_cells(n_cells, store.n_genes, store.chunk_rows)
    results = create_results_store(work / f"auc-{n_cells}.zarr", cell_names=store.cell_names[:n_cells],
                                   chunk_rows=chunk, overwrite=True)
    results.init_auc(names)
    n_chunks = len(results.auc_chunk_ranges())
    executor.client.run(_reset_peak)
    start = time.perf_counter()
    shared = executor.share(adjacency)
    executor.map(aucell_chunk_task, [(str(results.path), str(store_path), i, shared, params) for i in range(n_chunks)],
                 description=f"AUCell {n_cells:,}", verbose=False)
    results.finish_auc()
    seconds = time.perf_counter() - start
    peaks = executor.client.run(_peak_mib)
    del shared
    return {"cells": n_cells, "seconds": seconds, "chunk_cells": chunk, "chunks": n_chunks,
            "worker_peak_mib": max(peaks.values()), "worker_peaks_mib": sorted(peaks.values()),
            "results": str(results.path)}


def in_process_check(store_path: Path, n_cells: int, adjacency, params, results_path: str) -> dict:
    """The same rows scored here with get_aucell: the AUC must be bit-identical."""
    from flashscenic.stages import aucell_block
    from flashscenic.store import open_expression_store, open_results_store

    rows = open_expression_store(store_path).read_rows(0, n_cells, "csr")
    aucell_block(rows[:64], adjacency, params)  # warm-up: first-call costs (library loading)
    start = time.perf_counter()
    here = aucell_block(rows, adjacency, params)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "identical": here.tobytes() == open_results_store(results_path).read_auc().tobytes()}


def pruning_case(executor, databases, annotation, modules, params, repeats: int) -> dict:
    """Pruning in process (one task per database) and on the cluster (2 shards per database)."""
    from flashscenic.executors import InProcessExecutor
    from flashscenic.stages import merge_pruned, prune_task, tf_shards

    def run(on, n_shards, task_params):
        shards = tf_shards(modules, n_shards)
        tasks = [(str(db), shard, str(annotation), task_params) for db in databases for shard in shards]
        start = time.perf_counter()
        tables = on.map(prune_task, tasks, description="pruning", verbose=False)
        table, regulons = merge_pruned(tables, modules, params)
        return time.perf_counter() - start, table, regulons, len(tasks)

    quiet = params.replace(verbose=False)
    timings = {}
    outputs = {}
    for label, on, shards in (("in process", InProcessExecutor(), 1), ("dask", executor, executor.slots)):
        run(on, shards, quiet)  # warm: caches written, databases loaded once per process
        best = None
        for _ in range(repeats):
            seconds, table, regulons, n_tasks = run(on, shards, quiet)
            best = seconds if best is None else min(best, seconds)
        timings[label] = {"seconds": best, "tasks": n_tasks}
        outputs[label] = (table, regulons)
    import pandas as pd

    pd.testing.assert_frame_equal(outputs["in process"][0], outputs["dask"][0])
    same = outputs["in process"][1] == outputs["dask"][1]
    return {"in_process": timings["in process"], "dask": timings["dask"], "rows": len(outputs["dask"][0]),
            "regulons": len(outputs["dask"][1]), "same": bool(same),
            "ratio": timings["dask"]["seconds"] / timings["in process"]["seconds"]}


# --- report ------------------------------------------------------------------------------


def markdown(report: dict, info: dict, command: str) -> str:
    import flashscenic
    import torch
    import distributed

    cases = report["aucell"]
    cells = np.array([c["cells"] for c in cases], float)
    seconds = np.array([c["seconds"] for c in cases])
    slope = float(np.polyfit(np.log(cells), np.log(seconds), 1)[0])
    check = report["check"]
    prune = report["pruning"]
    lines = [
        "## Scale (Dask)",
        "",
        f"Measured {report['date']} on {info['cpu']}, {info['cores']} cores, {info['ram_gib']:.0f} GiB RAM "
        f"(1-minute load average {report['load_start']:.2f} at the start, {report['load_end']:.2f} at the end; "
        f"the machine is shared); Python {info['python']}, torch {torch.__version__}, distributed "
        f"{distributed.__version__}, flashscenic {flashscenic.__version__}.",
        "",
        f"Command: `{command}`",
        "",
        f"Cluster: `start_executor(n_workers={WORKERS}, threads_per_worker=1, memory_limit='{WORKER_MEMORY}')`, "
        "a `distributed.LocalCluster` of process workers on 127.0.0.1, one thread and one torch thread each. "
        "No GPU was lent to this run, so the LocalCUDACluster rows and the dashboard's GPU panels are not measured.",
        "",
        f"AUCell: a CSR expression store of {report['store_cells']:,} cells x {GENES:,} genes, 10% non-zero "
        f"(log1p of negative-binomial counts), {report['store_chunk_rows']:,} cells per store chunk; "
        f"{report['regulons']} regulons of 10-300 genes (0/1, as the pipeline scores them), auc_threshold=0.05, "
        "seed=0. Each case scores the first N cells of that store with the pipeline's own chunk tasks (each reads "
        "its rows from the store and writes its AUC rows into a results store; the regulon matrix is scattered "
        "once); chunk sizes are what the executor derives from the workers' 2 GiB memory limit and their number. "
        "Seconds: from the scatter to the last chunk written, after an untimed warm-up case of 4,096 cells "
        "(first-task costs on each worker). Peak per worker: the largest worker's peak resident "
        "set (VmHWM, reset before each case).",
        "",
    ]
    if max(report["load_start"], report["load_end"]) > info["cores"]:
        lines += [
            "Other jobs kept this shared machine's load above its core count during the run, so every time here "
            "(and the slope, where the load changed between cases) is inflated by contention; torch's spinning "
            "threads suffer most (the in-process rows, 2 torch threads). Compare the AUCell section's in-process "
            "figures, measured on a quieter machine.",
            "",
        ]
    lines += [
        "| cells | chunks x cells | seconds | cells / s | peak RSS per worker (MiB) |",
        "|---|---|---|---|---|",
    ]
    for c in cases:
        lines.append(f"| {c['cells']:,} | {c['chunks']} x {c['chunk_cells']:,} | {c['seconds']:.2f} | "
                     f"{c['cells'] / c['seconds']:,.0f} | {c['worker_peak_mib']:,.0f} "
                     f"(workers: {', '.join(f'{p:,.0f}' for p in c['worker_peaks_mib'])}) |")
    worst = max(c["worker_peak_mib"] for c in cases)
    lines += [
        "",
        f"Time vs cells, log-log slope: {slope:.2f} (goal: about 1, linear). Peak per worker: {worst:,.0f} MiB "
        f"(goal: <= 2,048 MiB). The {cases[0]['cells']:,}-cell AUC equals `get_aucell` in this process on the same "
        f"rows bit for bit: {'yes' if check['identical'] else 'NO'} (in process, 2 torch threads: "
        f"{check['seconds']:.2f} s).",
        "",
        f"Pruning: the cisTarget benchmark's synthetic case ({prune['shape']}) in {N_DATABASES} ranking databases "
        f"(the second one's gene columns shifted, so each is its own cache file), through the pipeline's "
        "`prune_task` and `merge_pruned`; in process one task per database (as `run_pipeline` does there), on the "
        f"cluster {WORKERS} TF shards per database; both warm (databases loaded once per process), best of "
        f"{report['repeats']}.",
        "",
        "| pruning | tasks | seconds |",
        "|---|---|---|",
        f"| in process (2 torch threads) | {prune['in_process']['tasks']} | {prune['in_process']['seconds']:.2f} |",
        f"| Dask, {WORKERS} workers | {prune['dask']['tasks']} | {prune['dask']['seconds']:.2f} |",
        "",
        f"Dask time / in-process time: {prune['ratio']:.2f}, overhead {100 * (prune['ratio'] - 1):+.0f}% "
        f"(goal: <= +20%); {prune['rows']} enriched motif rows and {prune['regulons']} regulons, identical: "
        f"{'yes' if prune['same'] else 'NO'}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test of this script)")
    parser.add_argument("--out", type=Path, help="write the section into this markdown file (BENCHMARKS.md)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/flashscenic-scale"),
                        help="where the expression store (kept for later runs) and scratch files go")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    command = "python benchmarks/scale.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    command = ".venv/bin/" + command
    args.work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))

    from flashscenic.distributed import start_executor
    from flashscenic.params import Params

    info = machine()
    report = {"date": datetime.date.today().isoformat(), "load_start": os.getloadavg()[0], "repeats": args.repeats,
              "regulons": sizes["regulons"]}
    store_path = ensure_store(args.work, max(sizes["cells"]), GENES)
    from flashscenic.store import open_expression_store

    report["store_cells"] = max(sizes["cells"])
    report["store_chunk_rows"] = open_expression_store(store_path).chunk_rows
    names, adjacency = make_regulons(sizes["regulons"], GENES)
    params = Params(device="cpu", seed=SEED, verbose=False)
    databases, annotation, modules = write_pruning_case(args.work, *sizes["prune"])
    report["pruning_shape"] = sizes["prune"]

    executor = start_executor(n_workers=WORKERS, threads_per_worker=1, memory_limit=WORKER_MEMORY,
                              dashboard_address=None, local_directory=args.work / "dask", verbose=False)
    try:
        print(executor.name, flush=True)
        report["aucell"] = []
        warm = aucell_case(executor, store_path, 2 * WORKERS * 1024, names, adjacency, params, args.work)  # untimed
        shutil.rmtree(warm["results"], ignore_errors=True)
        for n in sizes["cells"]:
            case = aucell_case(executor, store_path, n, names, adjacency, params, args.work)
            print(json.dumps({k: v for k, v in case.items() if k != "results"}), flush=True)
            report["aucell"].append(case)
        report["check"] = in_process_check(store_path, sizes["cells"][0], adjacency, params,
                                           report["aucell"][0]["results"])
        print("check", report["check"], flush=True)
        prune = pruning_case(executor, databases, annotation, modules, params, args.repeats)
        m, g, k, lo, hi = sizes["prune"]
        prune["shape"] = f"{m:,} motifs x {g:,} genes, {k} modules of {lo}-{hi} genes"
        print("pruning", prune, flush=True)
        report["pruning"] = prune
    finally:
        executor.close()
    for case in report["aucell"]:
        shutil.rmtree(case["results"], ignore_errors=True)
    report["load_end"] = os.getloadavg()[0]
    section = markdown(report, info, command)
    print(section)
    if args.out:
        write_section(args.out, section)


if __name__ == "__main__":
    main()
