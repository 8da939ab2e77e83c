"""RegDiffusion's seconds per training step against the gene count: the data of the GRN time estimate.

``flashscenic.grn.estimate_grn_seconds`` predicts a GRN's time from the genes it trains on,
the steps and the device, with a cost model fitted to these measurements (a step costs
``a * genes**2 + b * genes**3`` CPU-seconds, shared by the cores torch uses). Rerun this after
a RegDiffusion upgrade and update the model's constants when the fit moves::

    .venv/bin/python benchmarks/grn_cost.py --genes 500 1000 2000 3000 --steps 8

A step's cost does not depend on the cell count (a step is one batch of 128 cells).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp


def seconds_per_step(n_genes: int, steps: int, n_cells: int = 2000, seed: int = 0) -> float:
    import regdiffusion
    import torch

    rng = np.random.default_rng(seed)
    x = sp.random(n_cells, n_genes, density=0.1, format="csr", dtype=np.float32, random_state=rng)
    x.data = np.log1p(rng.poisson(3, x.nnz) + 1).astype(np.float32)
    torch.manual_seed(seed)
    trainer = regdiffusion.RegDiffusionTrainer(x, n_steps=steps, device="cpu", seed=seed,
                                               memory_efficient=n_genes > 10_000)
    start = time.perf_counter()
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        trainer.train()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, nargs="+", default=[500, 1000, 2000, 3000])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    import torch

    from flashscenic.grn import estimate_grn_seconds

    threads = torch.get_num_threads()
    print(f"torch threads: {threads}")
    print("| genes | s/step measured | s/step model | measured / model |")
    print("|---:|---:|---:|---:|")
    for n in args.genes:
        measured = seconds_per_step(n, args.steps)
        model = estimate_grn_seconds(n, 1, "cpu", threads=threads)
        print(f"| {n:,} | {measured:.3f} | {model:.3f} | {measured / model:.2f} |", flush=True)


if __name__ == "__main__":
    main()
