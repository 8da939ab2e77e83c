"""AUCell benchmark: flashscenic vs rustscenic 0.5.1 vs scenic-rs 0.3.0 vs pySCENIC 0.12.1 vs flashscenic 0.2.0, on the CPU.

    .venv/bin/python benchmarks/aucell.py --ref-python .venv-ref/bin/python \
        --rustscenic-python .venv-rustscenic/bin/python \
        --scenic-rs-python .venv-scenic-rs/bin/python [--out BENCHMARKS.md]

Why it is built this way:

* All rows come from ONE run on the same machine and the same data, so the ratios compare
  like with like.
* Every measured row runs in a fresh process (``_aucell_reference.py``), with the same
  timing and memory code for every implementation: the peak resident set is per
  process, so sharing a process would let one row's peak hide another's. The peak is
  reset once the inputs are loaded and the RSS at that point is reported too, so "peak
  over input" is what the kernel itself needed.
* The references need their own venvs (flashscenic 0.2.0 has our package name; rustscenic
  and scenic-rs bring their own pins); data go to them through an ``.npz`` file and
  results come back the same way.
* Only the kernel call is timed (``time.perf_counter`` around it): no imports, no data
  generation, no conversion to a DataFrame or to signatures. rustscenic gets the float32
  matrix as loaded (dense or CSR), which its ``score`` uses without a copy. scenic-rs
  takes only a dense float32 matrix: on the CSR cases the ``toarray()`` a user must make
  is inside its timing (and its peak), and reported apart. Both Rust peers score gene
  lists (unweighted). scenic-rs gets ``auc_max_rank`` = pySCENIC's rank cutoff,
  round(0.05 x genes) - 1, so the same ranks count; it normalises by that cutoff where
  pySCENIC takes one more, so its AUCs are pySCENIC's x (cutoff + 1) / cutoff: the table
  gives its difference as returned and after that factor. Rayon's threads are left at
  their default (all cores, as torch's), ``RAYON_NUM_THREADS`` recorded when set.
* pySCENIC runs once (it is slow), as does 0.2.0; ours and the Rust peers are best of
  ``--repeats``.
* pySCENIC's result is also the correctness check: with the same seed ours must match it
  to float32 rounding (~1e-7), which the table shows. On the CSR cases it runs on the
  first ``CHECK_CELLS`` cells only (all of them would take minutes and gigabytes); every
  row's difference is taken on those cells.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import command_line, machine, optional_python, write_section
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "_aucell_reference.py"
SEED = 0
AUC_THRESHOLD = 0.05

# (cells, genes, regulons, smallest regulon, largest regulon)
FULL = {"dense": (12_000, 2_000, 200, 10, 300), "sparse": (100_000, 2_000, 200, 10, 300),
        "atlas": (30_000, 20_000, 300, 10, 500)}
QUICK = {"dense": (400, 300, 20, 10, 60), "sparse": (1_000, 300, 20, 10, 60), "atlas": (500, 3_000, 20, 10, 60)}
SPARSE_DENSITY = 0.10
# pySCENIC's check on a sparse case: its first cells (all of them would take minutes and gigabytes)
CHECK_CELLS = {"sparse": 10_000, "atlas": 2_000}


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


def make_atlas(n_cells, n_genes, n_regulons, smallest, largest, chunk=2_000):
    """CSR as a droplet atlas holds it: each gene detected at its own rate (log-normal), each
    cell at its own depth, so a cell stores 2-9% of the genes (about 1,200 of 20,000, often
    fewer than the 999 that count); values log1p(count / total * 10,000), float32.
    """
    rng = np.random.default_rng(SEED + 2)
    rate = np.minimum(rng.lognormal(-3.5, 1.2, n_genes), 1.0)
    rate *= 0.06 / rate.mean()
    blocks = []
    for start in range(0, n_cells, chunk):
        rows = min(chunk, n_cells - start)
        depth = rng.uniform(0.35, 1.5, size=(rows, 1))
        mask = rng.random((rows, n_genes), dtype=np.float32) < np.minimum(rate * depth, 1.0)
        counts = np.zeros((rows, n_genes), dtype=np.float32)
        counts[mask] = 1 + rng.negative_binomial(0.8, 0.4, size=int(mask.sum()))
        counts = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
        blocks.append(sp.csr_matrix(counts.astype(np.float32)))
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


def benchmark(sizes: dict, ref_python: str | None, rust_python: str | None, scenic_rs_python: str | None,
              repeats: int, workdir: Path) -> tuple[list, dict, list]:
    """Run every case; return table rows, the versions each venv reported, summary lines."""
    ours = sys.executable
    rows, versions, summary = [], {}, []

    print("dense case: generating", sizes["dense"][:3], flush=True)
    X, W = make_dense(*sizes["dense"])
    largest = int((W != 0).sum(axis=1).max())
    dense_case = f"dense {X.shape[0]:,} x {X.shape[1]:,}, {W.shape[0]} weighted regulons"
    data = workdir / "dense.npz"
    save_case(data, X, W)
    del X

    results = []  # (implementation label, report, whether its time compares)
    reference = None
    if ref_python:
        reference = run_case(ref_python, data, workdir, "pyscenic", num_workers=2)
        results.append(("pySCENIC 0.12.1 aucell, num_workers=2", reference, True))
        old = run_case(ref_python, data, workdir, "flashscenic-0.2.0", k=largest, batch_size=32)
        results.append((f"flashscenic 0.2.0, k={largest}, batch_size=32", old, True))
        versions["reference"] = {**reference["versions"], **old["versions"]}
    rust = {}  # case -> rustscenic seconds
    if rust_python:
        report = run_case(rust_python, data, workdir, "rustscenic", repeats=repeats)
        results.append(("rustscenic 0.5.1 aucell.score (unweighted)", report, True))
        rust["dense"] = report["seconds"]
        versions["rustscenic"] = report["versions"]
    scenic_rs = {}  # case -> scenic-rs seconds
    if scenic_rs_python:
        report = run_case(scenic_rs_python, data, workdir, "scenic-rs", repeats=repeats)
        results.append((scenic_rs_label(report), report, True))
        scenic_rs["dense"] = report["seconds"]
        versions["scenic-rs"] = report["versions"]
    fast = {"dense": {}}  # case -> batch_size -> seconds with ties='pyscenic'
    for ties in ("pyscenic", "average"):
        for batch_size in (32, 256):
            report = run_case(ours, data, workdir, "flashscenic", batch_size=batch_size, ties=ties, repeats=repeats)
            results.append((f"flashscenic, batch_size={batch_size}, ties='{ties}'", report, True))
            versions["ours"] = report["versions"]
            if ties == "pyscenic":
                fast["dense"][batch_size] = report["seconds"]
    rows += table_rows(dense_case, results, reference)
    if ref_python:
        for name, report, goal in (("pySCENIC (2 workers)", reference, 30), ("flashscenic 0.2.0", old, 50)):
            summary.append(f"{name} time / flashscenic time, dense case: {ratios(report['seconds'], fast['dense'])} "
                           f"(goal: >= {goal}x).")

    for case, make in (("sparse", make_sparse), ("atlas", make_atlas)):
        print(f"{case} case: generating", sizes[case][:3], flush=True)
        X, W = make(*sizes[case])
        label = (f"CSR {X.shape[0]:,} x {X.shape[1]:,} ({X.nnz / np.prod(X.shape):.1%} non-zero"
                 f"{', ' + case + '-like' if case == 'atlas' else ''}), {W.shape[0]} weighted regulons")
        data = workdir / f"{case}.npz"
        save_case(data, X, W)
        check = workdir / f"{case}_check.npz"
        check_cells = min(CHECK_CELLS[case], X.shape[0])
        save_case(check, X[:check_cells].toarray(), W)
        del X
        results = []
        reference = None
        if ref_python:
            reference = run_case(ref_python, check, workdir, "pyscenic", num_workers=2)
            results.append((f"pySCENIC 0.12.1 aucell, num_workers=2, first {check_cells:,} cells (the check)",
                            reference, False))
        if rust_python:
            report = run_case(rust_python, data, workdir, "rustscenic", repeats=repeats)
            results.append(("rustscenic 0.5.1 aucell.score (unweighted)", report, True))
            rust[case] = report["seconds"]
        if scenic_rs_python:
            report = run_case(scenic_rs_python, data, workdir, "scenic-rs", repeats=repeats)
            results.append((scenic_rs_label(report), report, True))
            scenic_rs[case] = report["seconds"]
        fast[case] = {}
        for batch_size in (32, 256):
            report = run_case(ours, data, workdir, "flashscenic", batch_size=batch_size, ties="pyscenic",
                              repeats=repeats)
            results.append((f"flashscenic, batch_size={batch_size}, ties='pyscenic'", report, True))
            fast[case][batch_size] = report["seconds"]
        rows += table_rows(label, results, reference)
    for name, peer in (("rustscenic 0.5.1", rust), ("scenic-rs 0.3.0", scenic_rs)):
        for case, seconds in peer.items():
            summary.append(f"{name} time / flashscenic time, {case} case: {ratios(seconds, fast[case])} "
                           "(goal: >= 3x).")
    return rows, versions, summary


def scenic_rs_label(report: dict) -> str:
    """scenic-rs's row: what it was given (a CSR case: densified inside the timing) and its rank cutoff."""
    label = f"scenic-rs 0.3.0 aucell (unweighted, auc_max_rank={report['versions']['auc_max_rank']})"
    if "densify_seconds" in report:
        label += (f", given X.toarray() (dense float32), made inside the timing: "
                  f"{number(report['densify_seconds'])} s of it")
    return label


def ratios(seconds: float, ours: dict) -> str:
    """``seconds`` over each of our batch sizes' times, e.g. '69x at batch_size=32, ...'."""
    return ", ".join(f"{number(seconds / t)}x at batch_size={b}" for b, t in ours.items())


def table_rows(case: str, results: list, reference: dict | None) -> list:
    """One row per implementation; time ratios are against ours with default settings (first
    ours row); differences are on the cells the reference scored (its first rows)."""
    baseline = next(r for label, r, _ in results if label.startswith("flashscenic,"))["seconds"]
    rows = []
    for label, r, compares in results:
        diff = "—"
        if reference is not None and r is not reference:
            n = reference["auc"].shape[0]
            diff = f"{np.abs(r['auc'][:n] - reference['auc']).max():.1e}"
            if r["impl"] == "scenic-rs":  # its AUC is pySCENIC's x (cutoff + 1) / cutoff
                cutoff = r["versions"]["auc_max_rank"]
                rescaled = np.abs(r["auc"][:n] * cutoff / (cutoff + 1) - reference["auc"]).max()
                diff += f" (x {cutoff}/{cutoff + 1}: {rescaled:.1e})"
        memory = f"{r['peak_mib']:,.0f}"
        if r["children_peak_mib"]:
            memory += f" (largest worker: {r['children_peak_mib']:,.0f})"
        ratio = number(r["seconds"] / baseline) + "x" if compares else "—"
        added = f"{r['peak_mib'] - r['baseline_mib']:,.0f}"
        rows.append([case, label, number(r["seconds"]), ratio, diff, memory, added])
    return rows


def number(x: float) -> str:
    """3 significant digits, without exponents for the large ratios (1744, not 1.74e+03)."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def markdown(rows: list, versions: dict, summary: list, sizes: dict, info: dict, command: str, repeats: int) -> str:
    header = ["case", "implementation", "seconds", "time / flashscenic default", r"max \|diff\| vs pySCENIC",
              "peak RSS (MiB)", "peak over input (MiB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    ours, ref, rust = versions.get("ours", {}), versions.get("reference"), versions.get("rustscenic")
    scenic_rs = versions.get("scenic-rs")
    refs = (f"pySCENIC {ref['pyscenic']}, ctxcore {ref['ctxcore']}, flashscenic {ref['flashscenic']} "
            f"(its own venv: numpy {ref['numpy']}, pandas {ref['pandas']}, torch {ref['torch']})"
            if ref else "pySCENIC and flashscenic 0.2.0 not run (no --ref-python)")
    refs += (f"; rustscenic {rust['rustscenic']} (its own venv: numpy {rust['numpy']})" if rust
             else "; rustscenic not run (no --rustscenic-python)")
    refs += (f"; scenic-rs {scenic_rs['scenic-rs']} (its own venv: numpy {scenic_rs['numpy']}; "
             f"RAYON_NUM_THREADS {scenic_rs['rayon_threads']})" if scenic_rs
             else "; scenic-rs not run (no --scenic-rs-python)")
    return "\n".join([
        "## AUCell",
        "",
        f"Measured {datetime.date.today().isoformat()} on {info['cpu']}, {info['cores']} cores, "
        f"{info['ram_gib']:.0f} GiB RAM (1-minute load average {info['load']:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end; the machine is shared); "
        f"Python {info['python']}, torch {ours.get('torch')} "
        f"({ours.get('torch_threads')} threads), numpy {ours.get('numpy')}, flashscenic {ours.get('flashscenic')}. "
        f"References: {refs}.",
        "",
        f"Command: `{command}`",
        "",
        "CPU only, auc_threshold=0.05, seed=0. Expression: log1p of negative-binomial counts (float32); "
        "the atlas-like case: log1p of counts per 10,000, genes detected at log-normal rates, cells at "
        "varying depth (`make_atlas`); "
        f"regulon sizes uniform in {sizes['dense'][3]}..{sizes['dense'][4]} genes "
        f"({sizes['atlas'][3]}..{sizes['atlas'][4]} in the atlas-like case), weights uniform in (0.01, 1). "
        "Seconds: the kernel call "
        "only, after an untimed warm-up call on 64 cells (numba JIT, torch library loading) "
        f" (flashscenic, rustscenic and scenic-rs: best of {repeats}; pySCENIC and flashscenic 0.2.0: one run). "
        "Every row runs in a fresh process: peak RSS is that process's peak resident set (VmHWM) "
        "while the kernel runs (reset after the inputs are loaded, so it includes the inputs but not "
        "the transient copies made reading them); peak over input is peak RSS minus the RSS just "
        "before the kernel call. "
        "Time ratios are against flashscenic with default settings (batch_size=32, ties='pyscenic') "
        "on the same case. ties='average' is the expected AUC over random tie order, so it "
        "differs from pySCENIC's seeded tie order by design; flashscenic 0.2.0 breaks ties "
        "with random noise, so it differs too; rustscenic ignores regulon weights and breaks ties "
        "by gene index, so it differs as well, and so does scenic-rs (gene lists, ties by gene index). scenic-rs "
        "gets auc_max_rank = round(0.05 x genes) - 1, pySCENIC's rank cutoff (its default, ceil(0.05 x genes), "
        "counts one rank more); it divides by that cutoff where pySCENIC divides by the cutoff + 1, so its "
        "difference is given as returned and, in brackets, after multiplying by cutoff / (cutoff + 1). It takes "
        "only a dense float32 matrix: on the CSR cases it is given `X.toarray()`, made inside its timing and "
        "its peak (a user holding a CSR must make it; the row says how long it took). On the CSR cases pySCENIC scores the first "
        f"{CHECK_CELLS['sparse']:,} (atlas-like: {CHECK_CELLS['atlas']:,}) cells, densified, as the check, "
        "and every difference is taken on those cells; its time is not comparable. pySCENIC's forked workers share its "
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
    parser.add_argument("--rustscenic-python", help="python of a venv with rustscenic 0.5.1; skipped when absent")
    parser.add_argument("--scenic-rs-python", help="python of a venv with scenic-rs 0.3.0; skipped when absent")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--repeats", type=int, default=3, help="flashscenic, rustscenic and scenic-rs timings: "
                        "best of this many")
    parser.add_argument("--out", type=Path, help="markdown file whose '## AUCell' section to write or replace")
    args = parser.parse_args()

    ref_python = optional_python(args.ref_python, "--ref-python", "pySCENIC and flashscenic 0.2.0")
    rust_python = optional_python(args.rustscenic_python, "--rustscenic-python", "rustscenic")
    scenic_rs_python = optional_python(args.scenic_rs_python, "--scenic-rs-python", "scenic-rs")

    command = command_line()
    (HERE / "_work").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=HERE / "_work") as tmp:
        sizes = QUICK if args.quick else FULL
        info = machine()
        rows, versions, summary = benchmark(sizes, ref_python, rust_python, scenic_rs_python, args.repeats, Path(tmp))

    section = markdown(rows, versions, summary, sizes, info, command, args.repeats)
    print("\n" + section)
    if args.out:
        write_section(args.out, section)
        print(f"wrote the AUCell section of {args.out}")


if __name__ == "__main__":
    main()
