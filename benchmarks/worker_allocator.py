"""RegDiffusion in a Dask worker: Dask's default worker environment vs flashscenic's.

    .venv/bin/python benchmarks/worker_allocator.py --out BENCHMARKS.md

Dask starts worker processes with ``MALLOC_TRIM_THRESHOLD_=65536``; any explicit glibc
malloc threshold turns off the adaptive mmap threshold, so torch's large buffers are
mapped and unmapped at every step. ``flashscenic.distributed.worker_environment`` adds a
32 MiB ``MALLOC_MMAP_THRESHOLD_``. This times the same GRN training (the demo's data, 40
steps, 2 torch threads) in this process and in a one-worker LocalCluster started with each
environment, best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import dask
from distributed import Client, LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_section  # noqa: E402

STEPS = 40


def train(threads: int = 2) -> float:
    """Seconds of RegDiffusion training on the demo's simulated data (data made untimed)."""
    import torch

    from flashscenic.grn import infer_grn
    from flashscenic.simulate import simulate_dataset

    data = simulate_dataset(seed=0)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    infer_grn(data.expression, data.gene_names, data.tf_names, n_steps=STEPS, seed=0, device="cpu", verbose=False)
    return time.perf_counter() - start


def in_worker(environ: dict, repeats: int) -> float:
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        with LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster, \
                Client(cluster) as client:
            return min(client.submit(train, pure=False).result() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the section into this markdown file (BENCHMARKS.md)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from flashscenic.distributed import worker_environment

    before = machine()
    dask_default = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    ours = worker_environment()
    seconds = {
        "in process": min(train() for _ in range(args.repeats)),
        "worker, Dask's environment": in_worker(dask_default, args.repeats),
        "worker, worker_environment()": in_worker(ours, args.repeats),
    }
    after = machine()
    base = seconds["in process"]
    rows = "\n".join(f"| {name} | {value:.2f} | {value / base:.2f}x |" for name, value in seconds.items())
    section = f"""## Worker allocator (Dask)

Measured {datetime.date.today()} on {before['cpu']}, {before['cores']} cores, {before['ram_gib']:.0f} GiB RAM (1-minute load average {before['load']:.2f} at the start, {after['load']:.2f} at the end); Python {before['python']}.

Command: `.venv/bin/python benchmarks/worker_allocator.py --out BENCHMARKS.md`

RegDiffusion training, {STEPS} steps on the demo's data (5,000 cells x 1,000 genes), 2 torch threads, best of {args.repeats}; workers: a one-worker `LocalCluster` (process) started with Dask's `distributed.nanny.pre-spawn-environ` ({', '.join(f'{k}={v}' for k, v in dask_default.items())}) or with `worker_environment()` (adds `MALLOC_MMAP_THRESHOLD_={ours.get('MALLOC_MMAP_THRESHOLD_')}`).

| where | seconds | / in process |
|---|---|---|
{rows}

Dask's environment / flashscenic's: {seconds["worker, Dask's environment"] / seconds["worker, worker_environment()"]:.2f}x.
"""
    print(section)
    if args.out:
        write_section(args.out, section)


if __name__ == "__main__":
    main()
