"""AUCell benchmark: flashscenic vs pySCENIC 0.12.1 vs flashscenic 0.2.0, on the CPU.

    .venv/bin/python benchmarks/aucell.py --ref-python .venv-ref/bin/python [--out BENCHMARKS.md]

Why it is built this way:

* All rows come from ONE run on the same machine and the same data, so the ratios compare
  like with like.
* Every measured row runs in a fresh process (``_aucell_reference.py``), with the same
  timing and memory code for every implementation: the peak resident set is per
  process, so sharing a process would let one row's peak hide another's. The peak is
  reset once the inputs are loaded and the RSS at that point is reported too, so "peak
  over input" is what the kernel itself needed.
* The references need their own venv (flashscenic 0.2.0 has our package name); data go
  to them through an ``.npz`` file and results come back the same way.
* Only the kernel call is timed (``time.perf_counter`` around it): no imports, no data
  generation, no conversion to a DataFrame or to signatures.
* pySCENIC runs once (it is slow), as does 0.2.0; ours is best of ``--repeats``.
* pySCENIC's result is also the correctness check: with the same seed ours must match it
  to float32 rounding (~1e-7), which the table shows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import machine, write_section
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "_aucell_reference.py"
SEED = 0
AUC_THRESHOLD = 0.05

# (cells, genes, regulons, smallest regulon, largest regulon)
FULL = {"dense": (20_000, 2_000, 200, 10, 300), "sparse": (100_000, 2_000, 200, 10, 300)}
QUICK = {"dense": (400, 300, 20, 10, 60), "sparse": (1_000, 300, 20, 10, 60)}
SPARSE_DENSITY = 0.10


def make_regulons(rng, n_genes, n_regulons, smallest, largest) -> np.ndarray:
    """Regulons x genes weights: sizes uniform in [smallest, largest], weights in (0.01, 1)."""
    W = np.zeros((n_regulons, n_genes))
    for row, size in zip(W, rng.integers(smallest, largest + 1, size=n_regulons)):
        row[rng.choice(n_genes, size=size, replace=False)] = rng.uniform(0.01, 1.0, size=size)
    return W


def make_counts(rng, shape) -> np.ndarray:
    """log1p of negative-binomial counts, float32; n in 1..2 per gene gives many ties."""
    n = rng.uniform(1.0, 2.0, size=shape[-1])
    return np.log1p(rng.negative_binomial(n, 0.3, size=shape)).astype(np.float32)


def make_dense(n_cells, n_genes, n_regulons, smallest, largest):
    """Dense float32 expression and float64 weights, same for every run (fixed seed)."""
    rng = np.random.default_rng(SEED)
    return make_counts(rng, (n_cells, n_genes)), make_regulons(rng, n_genes, n_regulons, smallest, largest)


def make_sparse(n_cells, n_genes, n_regulons, smallest, largest, chunk=10_000):
    """CSR at SPARSE_DENSITY non-zeros; the non-zeros are log1p(1 + NB counts) so none is 0.

    Built a chunk of rows at a time so the generator never holds a dense 100k x 2k mask.
    """
    rng = np.random.default_rng(SEED + 1)
    blocks = []
    for start in range(0, n_cells, chunk):
        rows = min(chunk, n_cells - start)
        mask = rng.random((rows, n_genes), dtype=np.float32) < SPARSE_DENSITY
        values = np.zeros((rows, n_genes), dtype=np.float32)
        values[mask] = np.log1p(1 + rng.negative_binomial(1.5, 0.3, size=int(mask.sum())))
        blocks.append(sp.csr_matrix(values))
    return sp.vstack(blocks, format="csr"), make_regulons(rng, n_genes, n_regulons, smallest, largest)


def save_case(path: Path, X, W) -> None:
    if sp.issparse(X):
        np.savez(path, X_data=X.data, X_indices=X.indices, X_indptr=X.indptr, X_shape=np.array(X.shape), W=W)
    else:
        np.savez(path, X=X, W=W)


def run_case(python: str, data: Path, workdir: Path, impl: str, **options) -> dict:
    """Run one implementation in a fresh process; return its JSON report plus ``auc``."""
    out = workdir / f"result_{impl}_{'_'.join(f'{k}{v}' for k, v in options.items())}.npz"
    cmd = [python, str(RUNNER), "--impl", impl, "--data", str(data), "--out", str(out)]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    print(f"  {impl}", " ".join(f"{k}={v}" for k, v in options.items()), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{impl} failed with exit code {proc.returncode}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(out) as result:
        report["auc"] = result["auc"]
    out.unlink()
    print(f"    {report['seconds']:.3g} s, peak RSS {report['peak_mib']:,.0f} MiB", flush=True)
    return report


def benchmark(sizes: dict, ref_python: str | None, repeats: int, workdir: Path) -> tuple[list, dict, list]:
    """Run every case; return table rows, the versions each venv reported, summary lines."""
    ours = sys.executable
    rows, versions, summary = [], {}, []

    print("dense case: generating", sizes["dense"][:3], flush=True)
    X, W = make_dense(*sizes["dense"])
    largest = int((W != 0).sum(axis=1).max())
    dense_case = f"dense {X.shape[0]:,} x {X.shape[1]:,}, {W.shape[0]} regulons"
    data = workdir / "dense.npz"
    save_case(data, X, W)
    del X

    results = []  # (implementation label, report)
    reference = None
    if ref_python:
        reference = run_case(ref_python, data, workdir, "pyscenic", num_workers=2)
        results.append(("pySCENIC 0.12.1 aucell, num_workers=2", reference))
        old = run_case(ref_python, data, workdir, "flashscenic-0.2.0", k=largest, batch_size=32)
        results.append((f"flashscenic 0.2.0, k={largest}, batch_size=32", old))
        versions["reference"] = {**reference["versions"], **old["versions"]}
    fast = {}  # batch_size -> seconds with ties='pyscenic', for the goals
    for ties in ("pyscenic", "average"):
        for batch_size in (32, 256):
            report = run_case(ours, data, workdir, "flashscenic", batch_size=batch_size, ties=ties, repeats=repeats)
            results.append((f"flashscenic, batch_size={batch_size}, ties='{ties}'", report))
            versions["ours"] = report["versions"]
            if ties == "pyscenic":
                fast[batch_size] = report["seconds"]
    rows += table_rows(dense_case, results, reference)
    if ref_python:
        for name, report, goal in (("pySCENIC (2 workers)", reference, 30), ("flashscenic 0.2.0", old, 50)):
            ratios = ", ".join(f"{report['seconds'] / t:.0f}x at batch_size={b}" for b, t in fast.items())
            summary.append(f"{name} time / flashscenic time, dense case: {ratios} (goal: >= {goal}x).")

    print("sparse case: generating", sizes["sparse"][:3], flush=True)
    X, W = make_sparse(*sizes["sparse"])
    sparse_case = f"CSR {X.shape[0]:,} x {X.shape[1]:,} ({X.nnz / np.prod(X.shape):.0%} non-zero), {W.shape[0]} regulons"
    data = workdir / "sparse.npz"
    save_case(data, X, W)
    del X
    results = []
    for batch_size in (32, 256):
        report = run_case(ours, data, workdir, "flashscenic", batch_size=batch_size, ties="pyscenic", repeats=repeats)
        results.append((f"flashscenic, batch_size={batch_size}, ties='pyscenic'", report))
    rows += table_rows(sparse_case, results, None)
    return rows, versions, summary


def table_rows(case: str, results: list, reference: dict | None) -> list:
    """One row per implementation; ratios are against ours with default settings (first ours row)."""
    baseline = next(r for label, r in results if label.startswith("flashscenic,"))["seconds"]
    rows = []
    for label, r in results:
        diff = "—"
        if reference is not None and r is not reference:
            diff = f"{np.abs(r['auc'] - reference['auc']).max():.1e}"
        memory = f"{r['peak_mib']:,.0f}"
        if r["children_peak_mib"]:
            memory += f" (largest worker: {r['children_peak_mib']:,.0f})"
        rows.append(
            [case, label, number(r["seconds"]), number(r["seconds"] / baseline) + "x", diff,
             memory, f"{r['peak_mib'] - r['baseline_mib']:,.0f}"]
        )
    return rows


def number(x: float) -> str:
    """3 significant digits, without exponents for the large ratios (1744, not 1.74e+03)."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def markdown(rows: list, versions: dict, summary: list, sizes: dict, info: dict, command: str, repeats: int) -> str:
    header = ["case", "implementation", "seconds", "time / flashscenic default", r"max \|diff\| vs pySCENIC",
              "peak RSS (MiB)", "peak over input (MiB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    ours, ref = versions.get("ours", {}), versions.get("reference")
    refs = (f"pySCENIC {ref['pyscenic']}, ctxcore {ref['ctxcore']}, flashscenic {ref['flashscenic']} "
            f"(its own venv: numpy {ref['numpy']}, pandas {ref['pandas']}, torch {ref['torch']})"
            if ref else "not run (no --ref-python)")
    return "\n".join([
        "## AUCell",
        "",
        f"Measured {datetime.date.today().isoformat()} on {info['cpu']}, {info['cores']} cores, "
        f"{info['ram_gib']:.0f} GiB RAM; Python {info['python']}, torch {ours.get('torch')} "
        f"({ours.get('torch_threads')} threads), numpy {ours.get('numpy')}, flashscenic {ours.get('flashscenic')}. "
        f"References: {refs}.",
        "",
        f"Command: `{command}`",
        "",
        "CPU only, auc_threshold=0.05, seed=0. Expression: log1p of negative-binomial counts (float32); "
        f"regulon sizes uniform in {sizes['dense'][3]}..{sizes['dense'][4]} genes, weights uniform in (0.01, 1). "
        "Seconds: the kernel call "
        "only, after an untimed warm-up call on 64 cells (numba JIT, torch library loading) "
        f" (flashscenic: best of {repeats}; pySCENIC and flashscenic 0.2.0: one run). "
        "Every row runs in a fresh process: peak RSS is that process's peak resident set (VmHWM) "
        "while the kernel runs (reset after the inputs are loaded, so it includes the inputs but not "
        "the transient copies made reading them); peak over input is peak RSS minus the RSS just "
        "before the kernel call. "
        "Time ratios are against flashscenic with default settings (batch_size=32, ties='pyscenic') "
        "on the same case. ties='average' is the expected AUC over random tie order, so it "
        "differs from pySCENIC's seeded tie order by design; flashscenic 0.2.0 breaks ties "
        "with random noise, so it differs too. pySCENIC's forked workers share its "
        "rankings copy-on-write; their peaks are listed but not added.",
        "",
        *lines,
        "",
        *[line + "\n" for line in summary],
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-python", help="python of the reference venv (pyscenic 0.12.1, flashscenic 0.2.0); "
                        "references are skipped when absent")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--repeats", type=int, default=3, help="flashscenic timings: best of this many")
    parser.add_argument("--out", type=Path, help="markdown file whose '## AUCell' section to write or replace")
    args = parser.parse_args()

    ref_python = args.ref_python
    if ref_python and not Path(ref_python).exists():
        print(f"reference python {ref_python} not found: skipping pySCENIC and flashscenic 0.2.0")
        ref_python = None
    elif not ref_python:
        print("no --ref-python: skipping pySCENIC and flashscenic 0.2.0")

    python = os.path.relpath(sys.executable) if not os.path.relpath(sys.executable).startswith("..") else sys.executable
    command = shlex.join([python, *sys.argv])
    (HERE / "_work").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=HERE / "_work") as tmp:
        sizes = QUICK if args.quick else FULL
        rows, versions, summary = benchmark(sizes, ref_python, args.repeats, Path(tmp))

    section = markdown(rows, versions, summary, sizes, machine(), command, args.repeats)
    print("\n" + section)
    if args.out:
        write_section(args.out, section)
        print(f"wrote the AUCell section of {args.out}")


if __name__ == "__main__":
    main()
