"""The prepared GPU check: everything a lent GPU machine must show, in one call (issue 21).

    make gpu-wheels      # here, with the package registry: fills .whl/ (at most 56 MiB)
    make gpu-check       # on the GPU machine (device tool: command "make gpu-check", carry [".whl"])
    make gpu-check-dry   # here and in CI: the same steps on the CPU, small sizes, fake GPUs for the cluster

Steps, in order, each in its own process under its own timeout and within one time budget
(``--budget``), writing as they go into the output folder (``--out``, else
``$GPU_CHECK_OUT``, else ``$OUT``) three files only: ``gpu_check.log``, ``gpu_check.json``
(the rows) and ``gpu_check.md`` (the table), rewritten after every step: the environment; CUDA primitives against numpy;
``pytest -m gpu``; the demo pipeline with the GPU in process and on a one-GPU cluster
against the CPU; then timings, each beside the same case on this machine's CPU cores in the
same run: AUCell on a CSR atlas and on a dense block, pruning with a database of the human
v10 shape and its load, RegDiffusion at 20,000 genes. A failed step never stops the next.
It ends with the table (also printed) and exits 1 if a check failed.

CPU references of the largest cases run on a share of the cells or modules and are scaled
(AUCell and pruning cost the same per cell and per module); the table says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEEL_LIMIT_MIB = 56

# (full size on a GPU, dry size on this CPU)
SIZES = {
    "pipeline": (dict(n_cells=5000, n_genes=1000, n_tfs=30, grn_n_steps=250), dict(n_cells=600, n_genes=200, n_tfs=8,
                                                                            grn_n_steps=30)),
    "aucell_csr": (dict(n_cells=1_000_000, n_genes=20_000, density=0.10, n_regulons=500, cpu_cells=100_000),
                   dict(n_cells=3_000, n_genes=2_000, density=0.10, n_regulons=50, cpu_cells=1_000)),
    "aucell_dense": (dict(n_cells=200_000, n_genes=20_000, n_regulons=500, cpu_cells=20_000),
                     dict(n_cells=1_000, n_genes=2_000, n_regulons=50, cpu_cells=500)),
    "pruning": (dict(n_motifs=5_876, n_genes=27_015, n_modules=10_000, cpu_modules=500),
                dict(n_motifs=300, n_genes=6_000, n_modules=200, cpu_modules=50)),
    "regdiffusion": (dict(n_cells=2_000, n_genes=20_000, n_tfs=1_600, n_steps=200, cpu_steps=2),
                     dict(n_cells=200, n_genes=300, n_tfs=30, n_steps=5, cpu_steps=2)),
}
GOALS = {"aucell_csr": 3.0, "pruning": 20.0}  # seconds on the GPU
TIMEOUTS = {"environment": 60, "primitives": 60, "pytest_gpu": 150, "pipeline": 150, "aucell_csr": 120,
            "aucell_dense": 90, "pruning": 120, "regdiffusion": 120}  # each step's own limit, seconds
BUDGET_S = 400  # all steps; with the offline install the call stays under 7 minutes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="CPU device, small sizes, fake GPUs for the cluster step")
    parser.add_argument("--out", help="output folder (default: $GPU_CHECK_OUT, else $OUT, else gpu_check_out)")
    parser.add_argument("--budget", type=float, default=BUDGET_S,
                        help="seconds for all steps (default: %(default)s); a step gets what is left, at most its own")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # one step, in its own process
    parser.add_argument("--work", help=argparse.SUPPRESS)  # the steps' scratch folder
    parser.add_argument("--only", nargs="*", choices=list(TIMEOUTS), help="run these steps only")
    parser.add_argument("--wheels", metavar="DIR", help="only check the size of the wheels in DIR and exit")
    args = parser.parse_args(argv)
    if args.wheels:
        return check_wheels(Path(args.wheels))
    out = Path(args.out or os.environ.get("GPU_CHECK_OUT") or os.environ.get("OUT") or "gpu_check_out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.step:
        return run_step(args.step, Path(args.work), args.dry)
    # OUT gets three files only (a device call returns few): the log, the rows, the table,
    # each rewritten after every step so that a call cut short keeps what was done.
    work = Path(tempfile.mkdtemp(prefix="flashscenic-gpu-check-"))
    rows, failed = [], []
    started = time.perf_counter()
    log_path = out / "gpu_check.log"
    log_path.write_text("")
    for step in args.only or TIMEOUTS:
        t0 = time.perf_counter()
        left = args.budget - (t0 - started)
        if left < 15:
            rows.append({"step": step, "case": "step", "ok": False, "note": "not run: the time budget is spent"})
            failed.append(rows[-1])
            continue
        command = [sys.executable, __file__, "--step", step, "--out", str(out), "--work", str(work)] + (
            ["--dry"] if args.dry else [])
        with open(log_path, "a") as log:
            log.write(f"\n===== {step} =====\n")
            log.flush()
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
            try:
                code = process.wait(timeout=min(TIMEOUTS[step], left))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the step and what it started (pytest, a cluster)
                process.wait()
                code = "timeout"
        got = json.loads((work / f"{step}.json").read_text()) if (work / f"{step}.json").exists() else []
        if code != 0:
            got.append({"step": step, "case": "step", "ok": False,
                        "note": f"exit {code} after {time.perf_counter() - t0:.0f} s; see gpu_check.log"})
        rows += got
        failed += [r for r in got if r.get("ok") is False]
        print(f"[{time.perf_counter() - started:5.0f} s] {step}: {'FAILED' if code != 0 else 'done'} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(rows, indent=1, default=str))
        (out / "gpu_check.md").write_text(render(rows, args.dry, time.perf_counter() - started))
    shutil.rmtree(work, ignore_errors=True)
    table = render(rows, args.dry, time.perf_counter() - started)
    (out / "gpu_check.md").write_text(table)
    print(table)
    return 1 if failed else 0


def render(rows: list[dict], dry: bool, seconds: float) -> str:
    lines = [f"GPU check ({'dry run, CPU device' if dry else 'GPU'}), {time.strftime('%Y-%m-%d')}, "
             f"{seconds:.0f} s in all", "",
             "| step | case | GPU | CPU | CPU / GPU | ok | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['cpu'] / r['gpu']:.1f}x" if r.get("gpu") and r.get("cpu") else ""
        cell = lambda v: f"{v:.3g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
        ok = {True: "yes", False: "NO", None: ""}[r.get("ok")]
        lines.append(f"| {r['step']} | {r['case']} | {cell(r.get('gpu'))} | {cell(r.get('cpu'))} | {ratio} | {ok} | "
                     f"{r.get('note', '')} |")
    return "\n".join(lines) + "\n"


def check_wheels(folder: Path) -> int:
    wheels = sorted(folder.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels) / 2**20
    listed = [line.split("#")[0].strip() for line in (REPO / "benchmarks/gpu-wheels.txt").read_text().splitlines()]
    listed = [line for line in listed if line]
    print(f"{len(wheels)} wheels for {len(listed)} pinned requirements in {folder}: {total:.1f} MiB "
          f"(limit {WHEEL_LIMIT_MIB} MiB)")
    if len(wheels) != len(listed):
        print("the wheels do not match benchmarks/gpu-wheels.txt: remove the folder and run make gpu-wheels again")
        return 1
    return 0 if total <= WHEEL_LIMIT_MIB else 1


# ----------------------------------------------------------------------------- the steps


def run_step(step: str, out: Path, dry: bool) -> int:
    """One step in this process; ``out`` is the scratch folder, where its rows go as it goes."""
    rows: list[dict] = []

    def record(case: str, **values) -> None:  # written as it goes: a step killed later keeps its rows
        rows.append({"step": step, "case": case, **values})
        (out / f"{step}.json").write_text(json.dumps(rows, indent=1, default=str))
        print(json.dumps(rows[-1], default=str), flush=True)

    try:
        globals()[f"step_{step}"](record, out, dry, SIZES.get(step, ({}, {}))[dry])
    except Exception as error:  # noqa: BLE001  (recorded, the next step runs)
        traceback.print_exc()
        record("error", ok=False, note=f"{type(error).__name__}: {error}"[:300])
        return 1
    return 0


def _device(dry: bool):
    import torch

    if not dry and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device here: run make gpu-check-dry on a CPU machine")
    return torch.device("cpu" if dry else "cuda")


def _timed(function, *args, **options):
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = function(*args, **options)
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter() - start, value


def step_environment(record, out, dry, size):
    import torch

    smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True) if _which("nvidia-smi") else None
    if smi is not None:
        print(smi.stdout)
        driver = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                capture_output=True, text=True).stdout.strip()
    else:
        driver = "no nvidia-smi"
    record("machine", note=f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    record("torch", note=f"torch {torch.__version__}, CUDA {torch.version.cuda}, available {torch.cuda.is_available()}"
           + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
    record("GPU and driver", note=driver, ok=None if dry else bool(smi and smi.returncode == 0))
    import importlib

    for name in ("numpy", "scipy", "pandas", "numba", "dask", "distributed", "zarr", "anndata", "regdiffusion",
                 "flashscenic"):
        try:
            module = importlib.import_module(name)
            record(f"import {name}", ok=True, note=getattr(module, "__version__", ""))
        except Exception as error:  # noqa: BLE001
            record(f"import {name}", ok=False, note=f"{type(error).__name__}: {error}"[:200])
    from flashscenic.distributed import _dask_cuda_imports, plan_cluster

    record("dask-cuda", note="imports" if _dask_cuda_imports() else "absent or broken: one LocalCluster process per GPU")
    plan = plan_cluster("auto")
    record("cluster plan", note=str(plan),
           ok=None if dry else plan.gpu and plan.n_workers == torch.cuda.device_count())


def _which(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None


def step_primitives(record, out, dry, size):
    """The CUDA operations the GPU paths rest on, against numpy, with ties and odd index orders."""
    import numpy as np
    import scipy.sparse as sp
    import torch
    import warnings

    dev = _device(dry)
    rng = np.random.default_rng(0)

    def same(case, got, expected, tolerance=0.0):
        got, expected = np.asarray(got), np.asarray(expected)
        error = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64)))) if got.size else 0.0
        record(case, ok=got.shape == expected.shape and error <= tolerance, note=f"max |diff| {error:.3g}")

    # sparse x sparse, as the pruner's AUCs: module rows (sorted, and unsorted as before) x S.T
    a = sp.random(64, 3000, density=0.05, random_state=1, format="csr")
    b = sp.random(3000, 500, density=0.1, random_state=2, format="csr")
    expected = (a @ b).toarray()
    for label, shuffle in (("sorted", False), ("unsorted", True)):
        indices, data = a.indices.copy(), a.data.copy()
        if shuffle:
            for r in range(a.shape[0]):
                lo, hi = a.indptr[r], a.indptr[r + 1]
                order = rng.permutation(hi - lo) + lo
                indices[lo:hi], data[lo:hi] = indices[order], data[order]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            left = torch.sparse_csr_tensor(torch.from_numpy(a.indptr.astype(np.int64)), torch.from_numpy(
                indices.astype(np.int64)), torch.from_numpy(data), size=a.shape, check_invariants=False).to(dev)
            right = torch.sparse_csr_tensor(torch.from_numpy(b.indptr.astype(np.int64)), torch.from_numpy(
                b.indices.astype(np.int64)), torch.from_numpy(b.data), size=b.shape).to(dev)
            got = (left @ right).to_dense().cpu().numpy()
        if shuffle:  # informative: the pruner now sorts its module rows, this shows whether it had to
            error = float(np.abs(got - expected).max())
            record("sparse CSR x CSR, unsorted column indices (no longer used)", note=f"max |diff| {error:.3g}")
        else:
            same("sparse CSR x CSR, sorted column indices", got, expected, 1e-12)
    distinct = (rng.permutation(64 * 5000).astype(np.int64) << 20) | rng.integers(0, 2**20, 64 * 5000)
    keys = torch.from_numpy(distinct.reshape(64, 5000))
    top = torch.topk(keys.to(dev), 99, dim=1, sorted=True).indices.cpu().numpy()
    same("int64 top-k, sorted", top, np.argsort(-keys.numpy(), axis=1)[:, :99])
    ranks = rng.integers(0, 27015, size=(300, 5876)).astype(np.int16)
    same("int16 sort", torch.sort(torch.from_numpy(ranks).to(dev), dim=1).values.cpu().numpy(), np.sort(ranks, axis=1))
    flat = ranks.astype(np.int64).ravel()
    same("int64 bincount", torch.bincount(torch.from_numpy(flat).to(dev), minlength=27015).cpu().numpy(),
         np.bincount(flat, minlength=27015))
    ties = np.round(rng.random((200, 5000)), 1)  # many equal maxima per row
    same("argmax ties (first maximum)", torch.argmax(torch.from_numpy(ties).to(dev), dim=1).cpu().numpy(),
         np.argmax(ties, axis=1))
    same("stable descending sort with ties",
         torch.sort(torch.from_numpy(ties).to(dev), dim=1, descending=True, stable=True).indices.cpu().numpy(),
         np.argsort(-ties, axis=1, kind="stable"))
    x = sp.random(100, 4000, density=0.1, random_state=3, format="coo", dtype=np.float32)
    rows, cols = np.concatenate([x.row, x.row]), np.concatenate([x.col, x.col])  # duplicates, as non-canonical CSR
    dense = torch.zeros((100, 4000), dtype=torch.float32, device=dev)
    dense.index_put_((torch.from_numpy(rows).to(dev), torch.from_numpy(cols).to(dev)),
                     torch.from_numpy(np.concatenate([x.data, x.data])).to(dev), accumulate=True)
    same("index_put_ with accumulate", dense.cpu().numpy(), 2 * x.toarray())
    counts = torch.from_numpy(rng.integers(0, 9, 1000)).to(dev)
    same("repeat_interleave with output_size", torch.repeat_interleave(
        torch.arange(1000, device=dev), counts, output_size=int(counts.sum())).cpu().numpy(),
        np.repeat(np.arange(1000), counts.cpu().numpy()))
    m1, m2 = rng.random((512, 3000)), rng.random((3000, 200))
    same("float64 matmul", (torch.from_numpy(m1).to(dev) @ torch.from_numpy(m2).to(dev)).cpu().numpy(), m1 @ m2, 1e-10)


def step_pytest_gpu(record, out, dry, size):
    t0 = time.perf_counter()
    # The machine's own pytest plugins are not loaded: they may not match the carried pytest.
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-p",
                           "pytest_timeout", "--durations=5", "tests"], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    print(done.stdout[-20000:], done.stderr[-5000:])
    summary = [line for line in done.stdout.splitlines() if " in " in line and ("passed" in line or "failed" in line
                                                                               or "skipped" in line)]
    summary = summary[-1].strip("= ") if summary else f"exit {done.returncode}"
    ran = dry or ("passed" in summary and "skipped" not in summary)  # on a GPU no gpu test may skip
    record("pytest -m gpu", ok=done.returncode == 0 and ran, gpu=time.perf_counter() - t0, note=summary)


def step_pipeline(record, out, dry, size):
    """The demo world: the GPU in process and on a one-GPU cluster, the CPU in process. Each
    run's AUC equals AUCell on the CPU of the regulons it found (1e-6); the GRN differs between
    devices (RegDiffusion on a GPU is not deterministic), so regulons are compared by recovery."""
    import numpy as np

    from flashscenic.demo import run_demo
    from flashscenic.params import Params
    from flashscenic.simulate import simulate_dataset
    from flashscenic.stages import aucell_block, regulon_matrix

    if dry:
        _fake_one_gpu()  # the coordinator sees one GPU; its worker sees none and runs on the CPU
    device = "cpu" if dry else "cuda"
    data = simulate_dataset(n_cells=size["n_cells"], n_genes=size["n_genes"], n_tfs=size["n_tfs"], seed=0)
    found = {}
    for label, options in (("GPU in process", dict(device=device, n_workers=0)),
                           ("one-GPU cluster", dict(device="auto" if not dry else "cuda", n_workers=None)),
                           ("CPU in process", dict(device="cpu", n_workers=0))):
        seconds, summary = _timed(run_demo, out / f"demo-{label.split()[0].lower()}-{label.split()[-1]}",
                                  dashboard_address=None, verbose=False, seed=0, **size, **options)
        _release_cuda_cache()  # the next run (a worker process) gets the GPU's memory
        results = summary["results"]
        regulons = results.read_regulons()
        names, adjacency = regulon_matrix(regulons, list(data.gene_names))
        rescored = aucell_block(data.expression, adjacency, Params(device="cpu", seed=0))
        error = float(np.abs(results.read_auc() - rescored).max())
        found[label] = {r["name"] for r in regulons}
        on_gpus = "GPU workers" in summary["executor"] if label == "one-GPU cluster" else True
        record(f"demo, {label}", **({"cpu": seconds} if label.startswith("CPU") else {"gpu": seconds}),
               ok=error <= 1e-6 and summary["recall"] >= 0.8 and on_gpus,
               note=f"{summary['executor']}; {len(regulons)} regulons, precision {summary['precision']:.2f}, recall "
                    f"{summary['recall']:.2f}; AUC vs CPU AUCell of its regulons max |diff| {error:.2g}")
    for label in ("GPU in process", "one-GPU cluster"):
        a, b = found[label], found["CPU in process"]
        record(f"regulons, {label} vs CPU", note=f"Jaccard {len(a & b) / max(1, len(a | b)):.2f}")


def _release_cuda_cache() -> None:
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _fake_one_gpu() -> None:
    """Dry run only: this process believes it has one GPU, so the embedded cluster takes the
    GPU layout (one worker with CUDA_VISIBLE_DEVICES=0 and GPU=1); the worker, a fresh
    process, sees no CUDA and runs on the CPU."""
    import torch

    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
    torch.cuda.is_initialized = lambda: False


def _csr_atlas(n_cells, n_genes, density, unique_rows=20_000, seed=0):
    """A CSR matrix of log counts with ties (distinct rows tiled: AUCell costs the same per row)."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    per_row = int(density * n_genes)
    unique_rows = min(unique_rows, n_cells)
    indices = np.concatenate([np.sort(rng.choice(n_genes, per_row, replace=False)) for _ in range(unique_rows)])
    data = np.log1p(rng.negative_binomial(2, 0.3, size=indices.size) + 1).astype(np.float32)
    reps = -(-n_cells // unique_rows)
    indices = np.tile(indices.astype(np.int32), reps)[: n_cells * per_row]
    data = np.tile(data, reps)[: n_cells * per_row]
    indptr = np.arange(n_cells + 1, dtype=np.int64) * per_row
    return sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))


def _regulons(n_regulons, n_genes):
    """The AUCell benchmark's regulons (benchmarks/aucell.py): 10 to 500 genes, weighted."""
    import numpy as np

    from aucell import make_regulons

    return make_regulons(np.random.default_rng(1), n_genes, n_regulons, 10, 500)


def _aucell_rows(record, name, x, w, size, dry):
    import numpy as np
    import torch

    from flashscenic import get_aucell

    dev = _device(dry)
    options = dict(k=None, auc_threshold=0.05, seed=0, verbose=False)
    with _gpu_code_on_the_cpu(dry):
        get_aucell(x[:256], w, device=dev, **options)  # warm: CUDA context, cuBLAS, numba's cache
        gpu_s, got = _timed(get_aucell, x, w, device=dev, **options)
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0.0
    cpu_cells = size["cpu_cells"]
    cpu_s, expected = _timed(get_aucell, x[:cpu_cells], w, device="cpu", **options)
    scale = x.shape[0] / cpu_cells
    error = float(np.abs(got[:cpu_cells] - expected).max())
    goal = GOALS.get(name)
    record(f"AUCell {x.shape[0]:,} x {x.shape[1]:,} {name.split('_')[1]} x {w.shape[0]} regulons", gpu=gpu_s,
           cpu=cpu_s * scale, ok=error <= 1e-6 and (goal is None or dry or gpu_s <= goal),
           note=f"CPU ({torch.get_num_threads()} threads) timed on {cpu_cells:,} cells x {scale:.0f}; max |diff| "
                f"{error:.2g}; GPU peak {peak:.1f} GiB" + (f"; goal <= {goal} s" if goal else ""))


@contextlib.contextmanager
def _gpu_code_on_the_cpu(dry: bool):
    """Dry run: the "GPU" column runs AUCell's GPU code (``_score_with_torch``) on CPU tensors."""
    import torch

    import flashscenic.aucell as aucell

    real = aucell._score_on_cpu
    if dry:
        aucell._score_on_cpu = lambda expr, tie_order, c, weights, batch_size, out, verbose: aucell._score_with_torch(
            expr, tie_order, c, weights, batch_size, torch.device("cpu"), out, verbose)
    try:
        yield
    finally:
        aucell._score_on_cpu = real


def step_aucell_csr(record, out, dry, size):
    t0 = time.perf_counter()
    x = _csr_atlas(size["n_cells"], size["n_genes"], size["density"])
    record("CSR atlas built", note=f"{x.nnz:,} values in {time.perf_counter() - t0:.0f} s")
    _aucell_rows(record, "aucell_csr", x, _regulons(size["n_regulons"], size["n_genes"]), size, dry)


def step_aucell_dense(record, out, dry, size):
    import numpy as np

    from aucell import make_counts  # the AUCell benchmark's dense log counts (many ties)

    block = make_counts(np.random.default_rng(0), (2_000, size["n_genes"]))
    x = np.tile(block, (-(-size["n_cells"] // block.shape[0]), 1))[: size["n_cells"]]
    _aucell_rows(record, "aucell_dense", x, _regulons(size["n_regulons"], size["n_genes"]), size, dry)


def step_pruning(record, out, dry, size):
    """A database of the human v10 shape (int16) with planted motifs, modules of 20-500 genes,
    unweighted: the GPU's motif table must equal the CPU's on the modules the CPU ran."""
    import numpy as np
    import pandas as pd
    import torch

    from flashscenic import CisTargetPruner

    dev = _device(dry)
    rng = np.random.default_rng(0)
    n_motifs, n_genes, n_modules = size["n_motifs"], size["n_genes"], size["n_modules"]
    genes = np.array([f"G{j}" for j in range(n_genes)])
    modules = [rng.choice(n_genes, int(rng.integers(20, 500)), replace=False) for _ in range(n_modules)]
    ranks = np.empty((n_motifs, n_genes), dtype=np.int16 if n_genes < 2**15 else np.int32)
    for m in range(n_motifs):
        order = rng.permutation(n_genes)
        if m < n_modules:  # a third of module m's genes near the top of motif m
            front = modules[m][: len(modules[m]) // 3]
            order = np.concatenate([front, order[~np.isin(order, front)]])
        ranks[m, order] = np.arange(n_genes)
    names = [genes[m].tolist() for m in modules]
    tfs = [f"module{i}" for i in range(n_modules)]
    tables, seconds, peak = {}, {}, 0.0
    for label, device, count in (("GPU", dev, n_modules), ("CPU", "cpu", size["cpu_modules"])):
        pruner = CisTargetPruner(device=device, verbose=False)
        seconds[f"{label} load"], _ = _timed(pruner.load_from_tensor, ranks, [f"motif{i}" for i in range(n_motifs)],
                                             genes.tolist(), name="v10-shape")
        if label == "GPU":
            for kernel in pruner.kernels:  # the GPU's batched leading edges (on CPU tensors in a dry run)
                kernel._batched = True
            pruner.motif_table(names[:8], tfs[:8], [])  # warm
        seconds[label], tables[label] = _timed(pruner.motif_table, names[:count], tfs[:count], [])
        if label == "GPU" and dev.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**30
        del pruner
    gpu = tables["GPU"][tables["GPU"]["TF"].isin(tfs[: size["cpu_modules"]])].reset_index(drop=True)
    try:
        pd.testing.assert_frame_equal(gpu, tables["CPU"].reset_index(drop=True))
        equal = True
    except AssertionError as error:
        equal, _ = False, print(error)
    scale = n_modules / size["cpu_modules"]
    record(f"pruning {n_motifs:,} x {n_genes:,} x {n_modules:,} modules", gpu=seconds["GPU"],
           cpu=seconds["CPU"] * scale, ok=equal and (dry or seconds["GPU"] <= GOALS["pruning"]),
           note=f"CPU timed on {size['cpu_modules']} modules x {scale:.0f}; {len(tables['GPU']):,} motif rows; "
                f"motif table on those modules {'identical' if equal else 'DIFFERS'}; GPU peak {peak:.1f} GiB; "
                f"goal <= {GOALS['pruning']} s")
    record("database load (validate + upload)", gpu=seconds["GPU load"], cpu=seconds["CPU load"])


def step_regdiffusion(record, out, dry, size):
    import numpy as np
    import torch

    from flashscenic.grn import infer_grn

    dev = _device(dry)
    rng = np.random.default_rng(0)
    x = np.log1p(rng.negative_binomial(1, 0.5, size=(size["n_cells"], size["n_genes"]))).astype(np.float32)
    genes = [f"G{j}" for j in range(size["n_genes"])]
    tfs = genes[: size["n_tfs"]]
    options = dict(sparsity_threshold=1.5, memory_efficient=True, seed=0, verbose=False)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    gpu_s, result = _timed(infer_grn, x, genes, tfs, n_steps=size["n_steps"], device=dev, **options)
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0.0
    cpu_s, _ = _timed(infer_grn, x, genes, tfs, n_steps=size["cpu_steps"], device="cpu", **options)
    weights = np.asarray(result.weights)
    record(f"RegDiffusion {size['n_genes']:,} genes, memory-efficient, s a step", gpu=gpu_s / size["n_steps"],
           cpu=cpu_s / size["cpu_steps"], ok=bool(np.isfinite(weights).all() and (weights > 0).any()), note=f"{size['n_cells']:,} cells; GPU {size['n_steps']} steps in "
           f"{gpu_s:.1f} s (setup included), peak {peak:.1f} GiB; CPU {size['cpu_steps']} steps")


if __name__ == "__main__":
    sys.exit(main())
