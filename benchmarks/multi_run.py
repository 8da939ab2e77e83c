"""Multi-run consensus on the simulated planted world: one GRN run vs 3 and 5.

    .venv/bin/python benchmarks/multi_run.py --out BENCHMARKS.md

For each shape and each number of runs, ``multi_run_flashscenic`` (``n_runs=1`` is one
RegDiffusion run through the same code) runs in a fresh process on the same simulated data
(planted TF -> target regulons, decoy TFs, a matching motif database); reported: planted TFs
recovered (recall), regulons of planted TFs among all (precision), mean Jaccard of regulon
targets vs planted targets, wall time, and the process's peak resident memory (RegDiffusion's
training dominates it at these shapes). ``--memory`` measures the consensus alone at atlas
network size, against stacking the runs. Ratios are against the single run of the same
shape (or the stacked consensus), measured in the same script.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, write_section  # noqa: E402

SHAPES = [(2000, 500, 12), (5000, 1000, 30)]  # cells, genes, planted TFs
RUNS = (1, 3, 5)
STEPS = 250  # the demo's RegDiffusion steps
SEED = 0

CHILD = """
import json, resource, sys, tempfile, time
from flashscenic import multi_run_flashscenic, evaluate_regulons, simulate_dataset
n_cells, n_genes, n_tfs, n_runs, steps, seed = map(int, sys.argv[1:7])
data = simulate_dataset(n_cells=n_cells, n_genes=n_genes, n_tfs=n_tfs, seed=seed)
paths = data.write_resources(tempfile.mkdtemp())
start = time.perf_counter()
result = multi_run_flashscenic(data.expression, data.gene_names, n_runs=n_runs, grn_n_steps=steps, seed=seed,
                               device="cpu", verbose=False, tf_list_path=paths["tf_list"],
                               ranking_db_paths=[paths["ranking_db"]], motif_annotation_path=paths["motif_annotation"])
seconds = time.perf_counter() - start
found = evaluate_regulons(result["regulons"], data, auc=result["auc_scores"])
print(json.dumps({"seconds": seconds, "recall": found["recall"], "precision": found["precision"],
                  "jaccard": found["mean_target_jaccard"], "regulons": len(result["regulons"]),
                  "always": sum(v == 1.0 for v in result["regulon_recurrence"].values()),
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


MEMORY_CHILD = """
import resource, sys
import numpy as np
from flashscenic.consensus import WeightMoments
n_tfs, n_genes, n_runs, stacked = map(int, sys.argv[1:5])
rng = np.random.default_rng(0)
def run(i):  # one run's raw TF x gene weights, made where a GRN task would return them
    return np.random.default_rng(i).gamma(0.5, 1.0, size=(n_tfs, n_genes)).astype(np.float32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if stacked:  # upstream: stack the runs, then mean and std over them
    runs = np.stack([run(i) for i in range(n_runs)])
    mean, std = runs.mean(axis=0), runs.std(axis=0)
else:
    moments = WeightMoments()
    for i in range(n_runs):
        moments.add(run(i))
    mean, cv = moments.mean(), moments.cv()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""
MEMORY_SHAPE = (1500, 20000)  # an atlas network: 1,500 TFs x 20,000 genes, 114 MiB per run in float32


def memory(out: Path) -> None:
    """Peak memory of the consensus itself vs the number of runs, against stacking the runs."""
    rows = []
    for n_runs in (1, 3, 5, 10):
        peaks = [float(subprocess.run([sys.executable, "-c", MEMORY_CHILD, *map(str, MEMORY_SHAPE), str(n_runs),
                                       str(stacked)], capture_output=True, text=True, check=True).stdout)
                 for stacked in (0, 1)]
        rows.append((n_runs, *peaks))
        print(n_runs, peaks, flush=True)
    info = machine()
    lines = ["## Multi-run consensus: memory", "",
             f"{datetime.date.today()}, {info['cpu']}, {info['cores']} cores. Command: `.venv/bin/python "
             "benchmarks/multi_run.py --memory --out BENCHMARKS.md`. Peak memory added by the consensus of "
             f"{MEMORY_SHAPE[0]:,} TFs x {MEMORY_SHAPE[1]:,} genes runs (float32, {MEMORY_SHAPE[0] * MEMORY_SHAPE[1] * 4 / 2**20:.0f} "
             "MiB each, random weights), each row in a fresh process: `WeightMoments` (a running sum and M2 in "
             "float64) against stacking the runs and taking mean and std (upstream's way).", "",
             "| runs | WeightMoments peak MiB | stacked peak MiB | stacked / WeightMoments |", "|---|---|---|---|"]
    for n_runs, ours, stacked in rows:
        lines.append(f"| {n_runs} | {ours:.0f} | {stacked:.0f} | {stacked / ours:.2f} |")
    write_section(out, "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--memory", action="store_true", help="only the consensus memory table")
    args = parser.parse_args()
    if args.memory:
        return memory(args.out)
    rows = []
    for n_cells, n_genes, n_tfs in SHAPES:
        single = None
        for n_runs in RUNS:
            out = subprocess.run([sys.executable, "-c", CHILD, str(n_cells), str(n_genes), str(n_tfs), str(n_runs),
                                  str(STEPS), str(SEED)], capture_output=True, text=True, check=True).stdout
            found = json.loads(out.strip().splitlines()[-1])
            single = single or found
            rows.append((n_cells, n_genes, n_tfs, n_runs, found, single))
            print(n_cells, n_genes, n_runs, found, flush=True)
    info = machine()
    lines = [
        "## Multi-run consensus",
        "",
        f"{datetime.date.today()}, {info['cpu']}, {info['cores']} cores, {info['ram_gib']:.0f} GiB, Python "
        f"{info['python']}, CPU only, load {info['load']:.1f} at the end. Command: "
        "`.venv/bin/python benchmarks/multi_run.py --out BENCHMARKS.md`. `multi_run_flashscenic` on the simulated "
        f"planted world (seed {SEED}, RegDiffusion {STEPS} steps per run, mean consensus, no CV filter), each row "
        "in a fresh process. Recall: planted TFs recovered; precision: regulons of planted TFs among all; "
        "Jaccard: mean target overlap with the planted targets; always: regulons found in every run; peak: the "
        "whole process (RegDiffusion's training dominates; see the next section for the consensus alone). The "
        "1-run row is `multi_run_flashscenic(n_runs=1)`: one RegDiffusion run (a seed spawned from the seed) plus "
        "its own pruning pass for the recurrence, the same code path as the consensus rows.",
        "",
        "| cells x genes (planted TFs) | runs | recall | precision | target Jaccard | regulons (always) | seconds "
        "| x 1 run | peak MiB | x 1 run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n_cells, n_genes, n_tfs, n_runs, found, single in rows:
        lines.append(f"| {n_cells:,} x {n_genes:,} ({n_tfs}) | {n_runs} | {found['recall']:.2f} | "
                     f"{found['precision']:.2f} | {found['jaccard']:.3f} | {found['regulons']} ({found['always']}) | "
                     f"{found['seconds']:.1f} | {found['seconds'] / single['seconds']:.2f} | "
                     f"{found['peak_mib']:.0f} | {found['peak_mib'] / single['peak_mib']:.2f} |")
    write_section(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
