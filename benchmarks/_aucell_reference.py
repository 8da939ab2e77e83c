"""Run ONE AUCell implementation on one data file, in a fresh process; print JSON.

Called by ``benchmarks/aucell.py``, never by hand. Every measured row of the benchmark
goes through this script, each in its own process, so that all implementations are
timed and memory-measured the same way:

* ``--impl pyscenic`` and ``--impl flashscenic-0.2.0`` run with the reference venv's
  python (pyscenic 0.12.1, ctxcore 0.2.0, flashscenic 0.2.0: the old package has our
  name, so it cannot share a venv with this repo);
* ``--impl flashscenic`` runs with the project venv's python (this repo, installed
  editable);
* ``--impl rustscenic`` runs with the rustscenic venv's python (rustscenic 0.5.1, its own
  venv so its pins stay out of ours). It gets what its public ``rustscenic.aucell.score``
  accepts: a ``(matrix, gene_names)`` tuple with the float32 matrix as loaded (dense numpy
  or scipy CSR; it converts neither) and regulons as gene-name lists (it ignores weights).
  Building the names and the regulon dict is untimed; mapping names to columns is inside
  ``score`` and timed, as a user pays it.
* ``--impl scenic-rs`` runs with the scenic-rs venv's python (scenic-rs 0.3.0, its own venv
  too). Its ``scenic_rs.aucell(expr, gene_names, regulons, auc_max_rank)`` takes a dense
  float32 cells x genes matrix and regulons as gene-name lists (unweighted, as rustscenic).
  A CSR input is densified with ``toarray()`` INSIDE the timed call, since scenic-rs cannot
  take it otherwise and a user holding a CSR pays it; ``densify_seconds`` reports that
  part. Its AUC is sum over the regulon's genes ranked r < R of (R - r), over R x genes;
  pySCENIC's is the same sum with R = round(auc_threshold x genes) - 1, over (R + 1) x
  genes. So ``auc_max_rank`` is passed as that R (its default, ceil(0.05 x genes), counts
  one more rank): the same ranks count with the same terms, and with the same ranking its
  AUCs are pySCENIC's unweighted ones times (R + 1) / R. ``RAYON_NUM_THREADS`` is left as
  found (unset: all cores) and reported.

Which ``flashscenic`` was imported is checked against the expected version, so a mix-up
of the two venvs fails loudly instead of benchmarking the wrong code.

Input: an ``.npz`` with ``W`` (regulons x genes weights) and either ``X`` (dense cells x
genes) or ``X_data``/``X_indices``/``X_indptr``/``X_shape`` (CSR). Output: the result
array (float64, cells x regulons, regulons in the order of ``W``'s rows) in ``--out``,
and one JSON line on stdout with the best time and memory figures.

Memory: ``baseline_mib`` is the resident set right after the libraries are imported and
the inputs are built (what the process holds before the kernel runs); ``peak_mib`` is the
peak resident set (VmHWM) from then to the end: the peak is reset after the inputs are
loaded, so transient copies made while reading them do not count. Each implementation first runs once, untimed, on a few cells. ``peak - baseline`` is what the kernel itself added on top.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from importlib.metadata import version

import numpy as np

from _common import children_peak_mib, reset_peak_rss, status_mib


WARMUP_CELLS = 64
DENSIFY: list = []  # scenic-rs on a CSR: seconds of each call's toarray (inside the timing)


def load_expression(data):
    """The expression matrix from the npz: dense array or scipy CSR."""
    if "X" in data:
        return data["X"]
    import scipy.sparse as sp

    shape = tuple(int(n) for n in data["X_shape"])
    return sp.csr_matrix((data["X_data"], data["X_indices"], data["X_indptr"]), shape=shape)


def prepare(args, X, W):
    """Build the implementation's inputs (untimed) and return (call, versions).

    ``call(n_cells=None)`` runs the kernel once, on the first ``n_cells`` cells (all by
    default), and returns a float64 cells x regulons array.
    """
    versions = {"numpy": np.__version__}
    if args.impl == "scenic-rs":
        import scenic_rs

        versions.update({"scenic-rs": version("scenic-rs"),
                         "rayon_threads": os.environ.get("RAYON_NUM_THREADS", "unset (all cores)")})
        genes = [f"g{j:05d}" for j in range(W.shape[1])]
        names = [f"r{i:03d}" for i in range(W.shape[0])]
        regulons = {name: [genes[j] for j in np.flatnonzero(row)] for name, row in zip(names, W)}
        auc_max_rank = int(round(args.auc_threshold * W.shape[1])) - 1  # pySCENIC's rank cutoff
        versions["auc_max_rank"] = auc_max_rank
        sparse = not isinstance(X, np.ndarray)

        def call(n_cells=None):
            rows = X if n_cells is None else X[:n_cells]
            if sparse:  # scenic-rs takes a dense matrix only
                start = time.perf_counter()
                rows = rows.toarray()
                DENSIFY.append(time.perf_counter() - start)
            auc = scenic_rs.aucell(rows, genes, regulons, auc_max_rank=auc_max_rank)
            return auc[names].to_numpy(dtype=np.float64)

        return call, versions

    if args.impl == "rustscenic":
        import rustscenic.aucell

        versions.update(rustscenic=version("rustscenic"))
        genes = [f"g{j:05d}" for j in range(W.shape[1])]
        names = [f"r{i:03d}" for i in range(W.shape[0])]
        regulons = {name: [genes[j] for j in np.flatnonzero(row)] for name, row in zip(names, W)}

        def call(n_cells=None):
            auc = rustscenic.aucell.score((X if n_cells is None else X[:n_cells], genes), regulons,
                                          top_frac=args.auc_threshold)
            return auc[names].to_numpy(dtype=np.float64)

        return call, versions

    if args.impl == "pyscenic":
        import pandas as pd
        from ctxcore.genesig import GeneSignature
        from pyscenic.aucell import aucell

        versions.update(pyscenic=version("pyscenic"), ctxcore=version("ctxcore"), pandas=pd.__version__)
        # Zero-padded names: pySCENIC may order its output columns by name; ours are in
        # row order, so selecting columns by these names lines the two up.
        genes = [f"g{j:05d}" for j in range(W.shape[1])]
        names = [f"r{i:03d}" for i in range(W.shape[0])]
        df = pd.DataFrame(X, columns=genes)
        signatures = [
            GeneSignature(name=name, gene2weight={genes[j]: float(row[j]) for j in np.flatnonzero(row)})
            for name, row in zip(names, W)
        ]

        def call(n_cells=None):
            auc = aucell(df if n_cells is None else df.iloc[:n_cells], signatures, auc_threshold=args.auc_threshold, seed=args.seed, num_workers=args.num_workers)
            return auc[names].to_numpy(dtype=np.float64)

        return call, versions

    import torch
    from flashscenic import get_aucell

    versions.update(torch=torch.__version__, flashscenic=version("flashscenic"), torch_threads=torch.get_num_threads())
    if args.impl == "flashscenic-0.2.0":
        if versions["flashscenic"] != "0.2.0":
            raise SystemExit(f"expected flashscenic 0.2.0 in this venv, found {versions['flashscenic']}")
        # 0.2.0 has only the 7 positional arguments; it pads/truncates every regulon to k.
        return (lambda n_cells=None: get_aucell(X if n_cells is None else X[:n_cells], W, args.k, args.auc_threshold, "cpu", args.batch_size, args.seed)), versions

    if versions["flashscenic"] == "0.2.0":
        raise SystemExit("--impl flashscenic must run with the project venv, not the reference one")
    k = None if args.k <= 0 else args.k

    def call(n_cells=None):
        return get_aucell(
            X if n_cells is None else X[:n_cells], W, k=k, auc_threshold=args.auc_threshold, device="cpu", batch_size=args.batch_size,
            seed=args.seed, ties=args.ties, verbose=False,
        )

    return call, versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", required=True, choices=["flashscenic", "flashscenic-0.2.0", "pyscenic", "rustscenic",
                                                          "scenic-rs"])
    parser.add_argument("--data", required=True, help="input .npz")
    parser.add_argument("--out", required=True, help="where to save the result .npz")
    parser.add_argument("--repeats", type=int, default=1, help="time this many calls, report the fastest")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--k", type=int, default=0, help="regulon size cap; 0 = none (ours only)")
    parser.add_argument("--ties", default="pyscenic", choices=["pyscenic", "average"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--auc-threshold", type=float, default=0.05)
    parser.add_argument("--num-workers", type=int, default=2, help="pySCENIC worker processes")
    args = parser.parse_args()

    with np.load(args.data) as data:
        X, W = load_expression(data), data["W"]
    call, versions = prepare(args, X, W)
    # Untimed warm-up on a few cells: numba's JIT (pySCENIC) and torch's first-use
    # library loading are start-up costs, neither kernel time nor kernel memory.
    call(WARMUP_CELLS)  # call() with no argument passes X itself: X[:None] would copy a CSR
    gc.collect()
    reset_peak_rss()
    baseline = status_mib("VmRSS")

    times = []
    result = None
    DENSIFY.clear()
    for _ in range(args.repeats):
        result = None  # free the previous repeat's output before the next call allocates its own
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)

    report = {
        "impl": args.impl,
        "seconds": min(times),
        "all_seconds": times,
        "baseline_mib": baseline,
        "peak_mib": status_mib("VmHWM"),
        # pySCENIC's forked workers; 0 for the others.
        "children_peak_mib": children_peak_mib(),
        "versions": versions,
    }
    if DENSIFY:
        report["densify_seconds"] = DENSIFY[int(np.argmin(times))]
    np.savez(args.out, auc=np.asarray(result, dtype=np.float64))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
