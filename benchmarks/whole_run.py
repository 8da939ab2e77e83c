"""Whole-run benchmark: ``flashscenic run`` as a user runs it, timed per stage, with the peak
memory of every process.

    .venv/bin/python benchmarks/whole_run.py --overhead [--pairs 3] [--quick] [--out FILE] [--engine DIR]
    .venv/bin/python benchmarks/whole_run.py --atlas [--quick] [--cells 100000,300000] [--out FILE] [--engine DIR]
    .venv/bin/python benchmarks/whole_run.py --atlas20k [--quick] [--cells 100000,300000] [--out FILE]

Two modes (issue 13):

* ``--overhead`` (part 1): the default embedded Dask cluster against ``--n-workers 0`` (in
  this process) on the same input: 100,000 cells x 800 genes with 150 GRN steps and 300,000
  x 800 with 200 steps, dense h5ad. The two runs must give the same bits (AUC, regulons,
  motifs, TF x gene weights); the table gives the ratio embedded / in process. Each size
  runs ``--pairs`` pairs (default 3), interleaved: in process first in odd pairs, embedded
  first in even ones (issue 24: the median and the largest ratio).
* ``--atlas`` (part 4): the default cluster on 100,000, 300,000 and 1,000,000 cells x 2,000
  genes, CSR h5ad with 10% non-zero, 200 GRN steps, the command line's default GRN cell
  sample; stage times, the peak memory of each process, and the log-log slope of the whole
  run and of each stage against cells.

* ``--atlas20k`` (issue 22): the atlas shape of real data, 100,000, 300,000 and 1,000,000
  cells x 20,000 genes, CSR h5ad with about 1,500 stored values a cell (7.5%), 100 planted
  TFs among 1,600 in the TF list (1,490 decoys), two ranking databases of the human v10
  shape (5,876 motifs x 27,015 genes, int16, planted motifs: the world's database and a copy
  of it under a second name, as the 500 bp and 10 kb databases are two files of one motif
  collection); ``flashscenic run`` on the default cluster with ``--grn-max-genes 3000`` and
  the default 1,000 GRN steps. Also the h5ad and store sizes and the ingest rate.

How it is measured:

* Inputs: ``flashscenic.simulate.write_simulated_h5ad`` (the planted-regulon world, drawn a
  block of cells at a time) with its ranking database, motif annotation and TF list, so the
  planted regulons can be checked (recall, precision, target Jaccard, cell-type accuracy of
  the AUC). They are written under ``--work`` (atomically) and reused by later runs. Every
  size shares one world (genes, regulators, database): the 100,000 cells are the first of
  the 1,000,000.
* Each run is one ``flashscenic run INPUT --out DIR --overwrite --seed 0 --grn-n-steps N
  --tf-list ... --ranking-db ... --motif-annotation ... --cell-type-column cell_type``
  (``--n-workers 0`` for in process), the venv's ``flashscenic`` script in a subprocess;
  ``--engine DIR`` runs the flashscenic of DIR instead (``PYTHONPATH=DIR``, e.g. a ``git
  archive`` export of HEAD for a "before"): the inputs and the checks stay this tree's.
* Stage seconds: grn, modules, pruning, auc and rss are the results store's ``timings``
  (``pipeline._mark``); the others come from the time each CLI log line arrived: startup
  (imports, input and resource checks: to the "TFs are among" line), cluster (to the
  "Dask dashboard"/"LocalCluster" line; none in process), ingest (to the "ingested" line),
  after AUCell (from "auc done" to the "report ... written" line: RSS, publishing the run
  folder and the report; report = that less rss), shutdown (to the process's exit: closing
  the cluster). Wall is the subprocess's whole life.
* Memory: every process of the run's tree is polled every 0.2 s (``/proc/PID/status``:
  VmHWM, the kernel's peak resident set of that process, and VmRSS). Roles: the
  coordinator (the ``flashscenic run`` process; with a LocalCluster the scheduler and the
  nannies live in it), each worker process (spawned by its nanny; a restarted worker shows
  as a new one), and helpers (multiprocessing's resource tracker). The coordinator's VmRSS
  is also kept per stage window, to show which stage makes its peak.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from _common import machine, write_section

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SEED = 0
POLL_S = 0.2
WORLD = dict(n_tfs=30, n_decoy_tfs=20, n_cell_types=6, targets_per_tf=30, n_database_genes=6000, n_motifs=1000)
OVERHEAD = {"full": [(100_000, 150), (300_000, 200)], "quick": [(3_000, 20)], "genes": 800}
ATLAS = {"full": (100_000, 300_000, 1_000_000), "quick": (3_000, 6_000), "genes": 2_000, "density": 0.1,
         "steps": {"full": 200, "quick": 20}}
ATLAS20K = {"full": (100_000, 300_000, 1_000_000), "quick": (3_000, 6_000), "genes": 20_000, "density": 0.075,
            "steps": {"full": 1000, "quick": 10}, "max_genes": {"full": 3000, "quick": 1000},
            "world": dict(n_tfs=100, n_decoy_tfs=1490, n_cell_types=6, targets_per_tf=30, n_database_genes=27_015,
                          n_motifs=5_876)}
STORE_STAGES = ("grn", "modules", "pruning", "auc", "rss")
COLUMNS = ("startup", "cluster", "ingest", "grn", "modules", "pruning", "auc", "rss", "report", "shutdown")
GIB = 2**30


# --- inputs ------------------------------------------------------------------------------


def ensure_input(work: Path, n_cells: int, n_genes: int, *, sparse: bool, density: float | None,
                 world_settings: dict | None = None, copies: int = 1) -> dict:
    """The simulated h5ad and its resources: reused when made before with these settings.

    ``copies``: ranking databases (the world's, then copies of it under other names)."""
    from flashscenic.simulate import write_simulated_h5ad

    world_settings = world_settings or WORLD
    kind = "csr" if sparse else "dense"
    tag = f"{n_cells}x{n_genes}-{kind}" + (f"-d{density:g}" if density else "")
    if world_settings is not WORLD:
        tag += f"-{world_settings['n_tfs'] + world_settings['n_decoy_tfs']}tfs"
    h5ad, world = work / f"sim-{tag}.h5ad", work / f"sim-{tag}.world.pkl"
    resources = work / f"sim-{n_genes}genes-{world_settings['n_motifs']}motifs-resources"
    settings = {"n_cells": n_cells, "n_genes": n_genes, "sparse": sparse, "density": density, "seed": SEED,
                **world_settings, "copies": copies}
    if h5ad.exists() and world.exists() and resources.is_dir():
        with open(world, "rb") as f:
            made = pickle.load(f)
        if made["settings"] == settings:
            print(f"reusing {h5ad}", flush=True)
            return {"h5ad": h5ad, "dataset": made["dataset"], "resources": made["resources"], "made_s": None}
    start = time.perf_counter()
    dataset = write_simulated_h5ad(h5ad, n_cells, n_genes, **world_settings, density=density, sparse=sparse,
                                   seed=SEED)
    paths = {k: str(v) for k, v in dataset.write_resources(resources).items()}
    paths["ranking_dbs"] = [paths["ranking_db"]]
    for copy in range(1, copies):
        import shutil

        second = Path(paths["ranking_db"]).with_name(f"simulated-copy{copy}.genes_vs_motifs.rankings.feather")
        shutil.copyfile(paths["ranking_db"], second)
        paths["ranking_dbs"].append(str(second))
    tmp = world.with_name(world.name + ".partial")
    with open(tmp, "wb") as f:  # last: its presence says the h5ad and the resources are whole
        pickle.dump({"settings": settings, "dataset": dataset, "resources": paths}, f)
    os.replace(tmp, world)
    seconds = time.perf_counter() - start
    print(f"made {h5ad} ({h5ad.stat().st_size / GIB:.2f} GiB) in {seconds:.0f} s", flush=True)
    return {"h5ad": h5ad, "dataset": dataset, "resources": paths, "made_s": seconds}


# --- one run -----------------------------------------------------------------------------


class TreeMemory:
    """Polls the peak (VmHWM) and current (VmRSS) memory of a process and its descendants."""

    def __init__(self, root: int):
        self.root, self.stop = root, threading.Event()
        self.procs: dict[int, dict] = {}  # pid -> {role, hwm, rss}
        self.series: list[tuple[float, float, float]] = []  # (t, coordinator VmRSS, tree VmRSS) MiB
        self.start = time.perf_counter()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(POLL_S)

    def _tree(self) -> list[int]:
        parents: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                parents.setdefault(ppid, []).append(int(entry))
        found, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(parents.get(pid, []))
        return found

    def sample(self) -> None:
        coordinator = total = 0.0
        for pid in self._tree():
            try:
                with open(f"/proc/{pid}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if line.startswith(("VmHWM", "VmRSS")))
                if self.procs.get(pid, {}).get("role") not in FINAL_ROLES:  # read until exec shows what it is
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        role = self._role(pid, f.read())
                    if role in FINAL_ROLES or pid not in self.procs:  # a fork's copy of its parent's peak is not its own
                        self.procs[pid] = {"role": role, "hwm": 0.0, "rss": 0.0}
            except (OSError, ValueError):
                continue
            if "VmHWM" not in fields:  # a zombie
                continue
            hwm, rss = (int(fields[k].split()[0]) / 1024 for k in ("VmHWM", "VmRSS"))
            proc = self.procs[pid]
            proc["hwm"], proc["rss"] = max(proc["hwm"], hwm), max(proc["rss"], rss)
            total += rss
            if pid == self.root:
                coordinator = rss
        self.series.append((time.perf_counter() - self.start, coordinator, total))

    def _role(self, pid: int, cmdline: bytes) -> str:
        if pid == self.root:
            return "coordinator"
        text = cmdline.replace(b"\0", b" ").decode(errors="replace")
        if "resource_tracker" in text:
            return "resource tracker"
        if "forkserver" in text:
            return "forkserver"
        if "spawn_main" in text or "--multiprocessing-fork" in text:
            return "worker"
        return Path(text.split(" ", 1)[0]).name or "other"

    def finish(self) -> dict:
        self.stop.set()
        self.thread.join()
        roles: dict[str, list[float]] = {}
        for pid in sorted(self.procs):
            roles.setdefault(self.procs[pid]["role"], []).append(round(self.procs[pid]["hwm"], 1))
        return roles


FINAL_ROLES = ("coordinator", "worker", "resource tracker", "forkserver")
MARKERS = [  # (event, pattern of a CLI log line); the first line that matches marks the event
    ("checked", re.compile(r"TFs are among")),
    ("cluster", re.compile(r"Dask dashboard:|Dask: LocalCluster|Dask: ")),
    ("ingested", re.compile(r"ingested \d")),
    ("grn_start", re.compile(r"^flashscenic: grn \.\.\.")),
    ("auc_done", re.compile(r"^flashscenic: auc done")),
    ("report", re.compile(r"report of .* written")),
    ("final", re.compile(r"regulons scored in")),
]


TRACE = r"""
import sys, threading, tracemalloc
tracemalloc.start(30)
best, stop = [0, None], threading.Event()
def watch():
    while not stop.wait(0.5):
        current = tracemalloc.get_traced_memory()[0]
        if current > best[0] * 1.05 + 2**24:
            best[:] = current, tracemalloc.take_snapshot()
threading.Thread(target=watch, daemon=True).start()
from flashscenic.cli import main
try:
    code = main(sys.argv[1:])
finally:
    stop.set()
    print(f"tracemalloc: peak {tracemalloc.get_traced_memory()[1] / 2**20:.0f} MiB traced; the largest allocations "
          f"when {best[0] / 2**20:.0f} MiB were held:", file=sys.stderr)
    for stat in best[1].statistics("traceback")[:10] if best[1] else []:
        print(f"tracemalloc: {stat.size / 2**20:.0f} MiB in {stat.count} blocks, allocated at:", file=sys.stderr)
        for line in stat.traceback.format(limit=-14):
            print("tracemalloc:   " + line, file=sys.stderr)
sys.exit(code)
"""


def run_cli(args: list[str], log: Path, engine: Path | None, trace: bool = False) -> dict:
    """Run ``flashscenic run ARGS``; return wall seconds, event times (from its log lines), memory.

    ``trace``: the coordinator under tracemalloc, which prints (into the log) where the memory
    it held at its traced peak was allocated; numpy's and Python's allocations only (not
    torch's or compressors'), and slower."""
    env = dict(os.environ)
    if engine is not None:
        env["PYTHONPATH"] = str(engine) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    command = ([sys.executable, "-c", TRACE] if trace else [str(Path(sys.executable).parent / "flashscenic")]) \
        + ["run", *args]
    events: dict[str, float] = {}
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    memory = TreeMemory(proc.pid)
    with open(log, "w") as out:
        out.write(shlex.join(command) + "\n")
        buffer = b""
        while chunk := proc.stdout.read1(65536):
            buffer += chunk
            *lines, buffer = re.split(rb"[\r\n]", buffer)
            now = time.perf_counter() - start
            for raw in lines:
                line = raw.decode(errors="replace")
                if not line.strip():
                    continue
                out.write(f"{now:8.2f} {line}\n")
                for event, pattern in MARKERS:
                    if event not in events and pattern.search(line):
                        events[event] = now
    code = proc.wait()
    wall = time.perf_counter() - start
    memory.sample()
    peaks = memory.finish()
    if code != 0:
        raise SystemExit(f"flashscenic run failed (exit {code}); its log: {log}")
    return {"wall": wall, "events": events, "peaks": peaks, "series": memory.series, "command": command}


SUMMARISE = r"""
import pickle, sys
import numpy as np
from flashscenic.store import open_results_store
r = open_results_store(sys.argv[1])
weights, tf_rows, genes = r.read_tf_gene_weights()
out = {"timings": r.timings, "stages": r.stages, "auc": np.asarray(r.read_auc()), "regulons": r.read_regulons(),
       "motifs": r.read_motifs(), "weights": np.asarray(weights), "tf_rows": list(tf_rows), "chunk_rows": r.chunk_rows,
       "engine": __import__("flashscenic").__file__}
with open(sys.argv[2], "wb") as f:
    pickle.dump(out, f)
"""


def read_results(run: Path, engine: Path | None) -> dict:
    """What the run stored, read by the engine that wrote it (its own store code)."""
    env = dict(os.environ)
    if engine is not None:
        env["PYTHONPATH"] = str(engine)
    dump = run.with_name(run.name + ".summary.pkl")
    subprocess.run([sys.executable, "-c", SUMMARISE, str(run / "results.zarr"), str(dump)], check=True, env=env)
    with open(dump, "rb") as f:
        found = pickle.load(f)
    dump.unlink()
    return found


def stage_seconds(result: dict, stored: dict) -> dict:
    """Seconds per column of ``COLUMNS`` (None where a marker line is missing)."""
    e, t = result["events"], stored["timings"]
    out = {k: t.get(k) for k in STORE_STAGES}
    out["startup"] = e.get("checked")
    out["cluster"] = e["cluster"] - e["checked"] if "cluster" in e and "checked" in e else None
    before_ingest = _ingest_start(e)
    out["ingest"] = e["ingested"] - before_ingest if "ingested" in e and before_ingest is not None else None
    after = e["report"] - e["auc_done"] if "report" in e and "auc_done" in e else None
    out["report"] = after - (t.get("rss") or 0.0) if after is not None else None
    for stage in ("ingest", "report"):  # recorded by the run itself (engines after issue 13)
        if stage in t:
            out[stage] = t[stage]
    out["shutdown"] = result["wall"] - e["final"] if "final" in e else None
    return out


def _ingest_start(e: dict):
    """The ingest starts after the checks, and after the cluster's start when that blocks the run
    (before issue 13); an embedded cluster that starts in the background comes up during it."""
    if "cluster" in e and "ingested" in e and e["cluster"] < e["ingested"]:
        return e["cluster"]
    return e.get("checked")


def stage_memory(result: dict) -> dict:
    """Peak VmRSS of the coordinator (and of the whole tree) in each stage window, MiB."""
    e = result["events"]
    bounds = [("startup", 0.0, e.get("checked")), ("cluster", e.get("checked"), e.get("cluster")),
              ("ingest", _ingest_start(e), e.get("ingested")),
              ("to grn", e.get("ingested"), e.get("grn_start")),
              ("grn..auc", e.get("grn_start"), e.get("auc_done")),
              ("rss+report", e.get("auc_done"), e.get("report")), ("shutdown", e.get("report"), result["wall"])]
    out = {}
    for name, low, high in bounds:
        if low is None or high is None:
            continue
        inside = [(c, s) for t, c, s in result["series"] if low <= t <= high]
        if inside:
            out[name] = (round(max(c for c, _ in inside)), round(max(s for _, s in inside)))
    return out


def same_results(a: dict, b: dict) -> dict:
    """Which stored results are equal bit for bit."""
    def regulons(found):
        return json.dumps(found["regulons"], sort_keys=True, default=str)

    return {"auc": a["auc"].dtype == b["auc"].dtype and np.array_equal(a["auc"], b["auc"]),
            "regulons": regulons(a) == regulons(b),
            "motifs": a["motifs"].equals(b["motifs"]),
            "weights": a["tf_rows"] == b["tf_rows"] and np.array_equal(a["weights"], b["weights"])}


def recovery(stored: dict, dataset) -> dict:
    from flashscenic.simulate import evaluate_regulons

    found = evaluate_regulons(stored["regulons"], dataset, auc=stored["auc"])
    return {k: found[k] for k in ("recall", "precision", "mean_target_jaccard", "type_accuracy")} | {
        "n_regulons": len(stored["regulons"])}


def one_run(case: str, data: dict, steps: int, work: Path, engine: Path | None, in_process: bool,
            trace: bool = False, extra: list[str] = ()) -> dict:
    res = data["resources"]
    run = work / "runs" / case
    run.parent.mkdir(parents=True, exist_ok=True)
    databases = [a for db in res.get("ranking_dbs", [res["ranking_db"]]) for a in ("--ranking-db", db)]
    args = [str(data["h5ad"]), "--out", str(run), "--overwrite", "--seed", str(SEED), "--grn-n-steps", str(steps),
            "--tf-list", res["tf_list"], *databases, "--motif-annotation",
            res["motif_annotation"], "--cell-type-column", "cell_type", *extra] + (["--n-workers", "0"] if in_process
                                                                                    else [])
    print(f"{case}: flashscenic run {shlex.join(args)}", flush=True)
    result = run_cli(args, run.with_name(case + ".log"), engine, trace)
    stored = read_results(run, engine)
    result.update(stages=stage_seconds(result, stored), stage_memory=stage_memory(result),
                  recovery=recovery(stored, data["dataset"]), chunk_rows=stored["chunk_rows"],
                  grn_info=stored["stages"].get("grn"), engine_file=stored["engine"])
    p = result["peaks"]
    if trace:
        print("".join(line for line in run.with_name(case + ".log").open() if "tracemalloc:" in line), flush=True)
    print(f"{case}: {result['wall']:.1f} s; stages {_fmt_stages(result['stages'])}; peaks MiB {p}; "
          f"recovery {result['recovery']}", flush=True)
    return result, stored


def _fmt_stages(stages: dict) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in stages.items() if v is not None)


# --- the two modes -----------------------------------------------------------------------


def overhead(args, work: Path) -> dict:
    """``--pairs`` interleaved pairs per size: in process then embedded, then the other way
    round, so a slow minute of a shared machine falls on both sides."""
    cases = OVERHEAD["quick" if args.quick else "full"]
    out = []
    for n_cells, steps in cases:
        data = ensure_input(work, n_cells, OVERHEAD["genes"], sparse=False, density=None)
        tag = f"overhead-{n_cells}"
        pairs = []
        for k in range(args.pairs):
            runs, outputs = {}, {}
            for in_process in (True, False) if k % 2 == 0 else (False, True):
                key = "inprocess" if in_process else "embedded"
                runs[key], outputs[key] = one_run(f"{tag}-{key}", data, steps, work, args.engine, in_process,
                                                  args.trace_coordinator)
            same = same_results(outputs["inprocess"], outputs["embedded"])
            print(f"{tag} pair {k + 1}: embedded / in process = {runs['embedded']['wall'] / runs['inprocess']['wall']:.2f}; "
                  f"identical {same}", flush=True)
            pairs.append({**runs, "identical": same, "first": "inprocess" if k % 2 == 0 else "embedded"})
        out.append({"cells": n_cells, "genes": OVERHEAD["genes"], "steps": steps, "pairs": pairs,
                    "input_made_s": data["made_s"], "h5ad_gib": data["h5ad"].stat().st_size / GIB})
    return {"cases": out}


def atlas(args, work: Path) -> dict:
    sizes = args.cells or ATLAS["quick" if args.quick else "full"]
    steps = ATLAS["steps"]["quick" if args.quick else "full"]
    out = []
    for n_cells in sizes:
        data = ensure_input(work, n_cells, ATLAS["genes"], sparse=True, density=ATLAS["density"])
        result, _ = one_run(f"atlas-{n_cells}", data, steps, work, args.engine, in_process=False,
                            trace=args.trace_coordinator)
        out.append({"cells": n_cells, "genes": ATLAS["genes"], "steps": steps, "run": result,
                    "input_made_s": data["made_s"], "h5ad_gib": data["h5ad"].stat().st_size / GIB})
    return {"cases": out}


def atlas20k(args, work: Path) -> dict:
    mode = "quick" if args.quick else "full"
    sizes, steps, budget = args.cells or ATLAS20K[mode], ATLAS20K["steps"][mode], ATLAS20K["max_genes"][mode]
    out = []
    for n_cells in sizes:
        data = ensure_input(work, n_cells, ATLAS20K["genes"], sparse=True, density=ATLAS20K["density"],
                            world_settings=ATLAS20K["world"], copies=2)
        case = f"atlas20k-{n_cells}"
        result, _ = one_run(case, data, steps, work, args.engine, in_process=False, trace=args.trace_coordinator,
                            extra=["--grn-max-genes", str(budget)])
        run = work / "runs" / case
        sizes_gib = {"h5ad": data["h5ad"].stat().st_size / GIB, "store": _folder_gib(run / "expression.zarr"),
                     "results": _folder_gib(run / "results.zarr")}
        ingest = result["stages"].get("ingest")
        out.append({"cells": n_cells, "genes": ATLAS20K["genes"], "steps": steps, "max_genes": budget, "run": result,
                    "input_made_s": data["made_s"], "h5ad_gib": sizes_gib["h5ad"], "sizes_gib": sizes_gib,
                    "ingest_cells_per_s": n_cells / ingest if ingest else None,
                    "grn_estimate": _logged_estimate(run.with_name(case + ".log"))})
    return {"cases": out}


def _folder_gib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / GIB if path.exists() else 0.0


def _logged_estimate(log: Path) -> str | None:
    found = re.search(r"GRN: .*\(estimate\)", log.read_text(errors="replace")) if log.exists() else None
    return found.group(0) if found else None


# --- the report --------------------------------------------------------------------------


def _s(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def _peaks(peaks: dict) -> tuple[str, str, str]:
    """(coordinator, workers, others) peak MiB."""
    workers = peaks.get("worker", [])
    others = "; ".join(f"{r} {max(v):,.0f}" for r, v in peaks.items() if r not in ("coordinator", "worker"))
    return (f"{max(peaks.get('coordinator', [0])):,.0f}", ", ".join(f"{v:,.0f}" for v in workers) or "–",
            others or "–")


def header(title: str, args, started: dict, ended: dict, command: str, date: str) -> list[str]:
    m = started["machine"]
    engine = f"`{args.engine}` (PYTHONPATH)" if args.engine else "this tree"
    return [f"## {title}", "",
            f"`{command}` ({date}; flashscenic: {engine}, {started['describe']})", "",
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']:.0f} GiB RAM, Python {m['python']}, no GPU "
            f"(device auto = CPU). Load average (1, 5, 15 min) at start {started['load']}, at end {ended['load']}.", ""]


def overhead_section(found: dict, args, started, ended, command, date) -> str:
    lines = header("Whole run: the embedded cluster against in process (issues 13 and 24)", args, started, ended,
                   command, date)
    lines += ["Simulated planted-regulon world (`write_simulated_h5ad`, seed 0: 30 planted TFs, 20 decoys, 6 cell "
              "types; a matching database of 1,000 motifs x 6,000 genes), dense h5ad; `flashscenic run INPUT --out "
              "DIR --overwrite --seed 0 --grn-n-steps N --tf-list .. --ranking-db .. --motif-annotation .. "
              "--cell-type-column cell_type`, with the default embedded cluster and with `--n-workers 0`. Seconds "
              "per stage: see the script's docstring (grn..rss from the results store, the rest from log-line times); "
              "peak = VmHWM of each process, MiB.", "",
              "| cells x genes, GRN steps | pair | executor | wall s | startup | cluster | ingest | GRN | modules | "
              "pruning | AUCell | RSS | report | shutdown | coordinator peak | worker peaks |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in found["cases"]:
        for k, pair in enumerate(case["pairs"]):
            for key in (pair["first"], "embedded" if pair["first"] == "inprocess" else "inprocess"):
                r = pair[key]
                name = "`--n-workers 0`" if key == "inprocess" else "default cluster"
                coord, workers, _ = _peaks(r["peaks"])
                lines.append(f"| {case['cells']:,} x {case['genes']:,}, {case['steps']} | {k + 1} | {name} | "
                             f"{r['wall']:.1f} | " + " | ".join(_s(r["stages"][c]) for c in COLUMNS)
                             + f" | {coord} | {workers} |")
    lines += ["", "| case | embedded / in process (wall), pair by pair | median | largest | GRN, median | "
              "identical (AUC, regulons, motifs, weights) | recall, precision, target Jaccard, type accuracy |",
              "|---|---|---|---|---|---|---|"]
    verdicts = []
    for case in found["cases"]:
        walls = [p["embedded"]["wall"] / p["inprocess"]["wall"] for p in case["pairs"]]
        grns = [p["embedded"]["stages"]["grn"] / p["inprocess"]["stages"]["grn"] for p in case["pairs"]
                if p["embedded"]["stages"]["grn"] and p["inprocess"]["stages"]["grn"]]
        same = all(all(p["identical"].values()) for p in case["pairs"])
        rec = case["pairs"][0]["embedded"]["recovery"]
        median = float(np.median(walls))
        lines.append(f"| {case['cells']:,} x {case['genes']:,} | {', '.join(f'{w:.2f}x' for w in walls)} | "
                     f"**{median:.2f}x** | {max(walls):.2f}x | "
                     f"{f'{np.median(grns):.2f}x' if grns else '–'} | {'yes' if same else 'NO'} | "
                     f"{rec['recall']:.2f}, {rec['precision']:.2f}, {rec['mean_target_jaccard']:.2f}, "
                     f"{rec['type_accuracy']:.2f} |")
        verdicts.append(f"{case['cells']:,} cells: median {median:.2f}x, largest {max(walls):.2f}x "
                        f"({'met' if median <= 1.15 and max(walls) <= 1.25 and same else 'NOT met'})")
    lines += ["", "Goal (issue 24): the median of the interleaved pairs at most 1.15x and no pair above 1.25x, at "
              "both sizes, with the same result. Here: " + "; ".join(verdicts) + "."]
    return "\n".join(lines) + "\n"


def slope(xs, ys) -> float | None:
    pairs = [(x, y) for x, y in zip(xs, ys) if y]
    if len(pairs) < 2:
        return None
    x, y = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return float(np.polyfit(x, y, 1)[0])


def atlas_section(found: dict, args, started, ended, command, date) -> str:
    lines = header("Whole run at atlas scale (issue 13, part 4)", args, started, ended, command, date)
    cases = found["cases"]
    lines += [f"Simulated planted-regulon world (as in part 1), {cases[0]['genes']:,} genes, CSR h5ad with "
              f"{ATLAS['density']:.0%} non-zero; `flashscenic run` on the default embedded cluster, "
              f"{cases[0]['steps']} GRN steps, the command line's default GRN cell sample (`--grn-max-cells`). "
              "Seconds per stage as in part 1.", "",
              "| cells | h5ad GiB | wall s | " + " | ".join(COLUMNS) + " | AUC chunk cells |",
              "|---|---|---|" + "---|" * len(COLUMNS) + "---|"]
    for case in cases:
        r = case["run"]
        lines.append(f"| {case['cells']:,} | {case['h5ad_gib']:.2f} | {r['wall']:.1f} | "
                     + " | ".join(_s(r["stages"][c]) for c in COLUMNS) + f" | {r['chunk_rows']:,} |")
    cells = [c["cells"] for c in cases]
    if len(cases) > 1:
        slopes = [slope(cells, [c["run"]["wall"] for c in cases])] + [
            slope(cells, [c["run"]["stages"][k] for c in cases]) for k in COLUMNS]
        lines.append("| log-log slope | | " + " | ".join("–" if s is None else f"{s:.2f}" for s in slopes) + " | |")
    lines += ["", "Peak memory (VmHWM, MiB) per process; the coordinator's VmRSS peak per stage window (MiB; the "
              "whole tree's in brackets):", "",
              "| cells | coordinator | workers | others | coordinator by stage |", "|---|---|---|---|---|"]
    for case in cases:
        r = case["run"]
        coord, workers, others = _peaks(r["peaks"])
        by_stage = ", ".join(f"{k} {c:,} ({s:,})" for k, (c, s) in r["stage_memory"].items())
        lines.append(f"| {case['cells']:,} | {coord} | {workers} | {others} | {by_stage} |")
    if len(cases) > 1:
        lines.append(f"| log-log slope | {slope(cells, [max(c['run']['peaks']['coordinator']) for c in cases]):.2f} "
                     f"| {slope(cells, [max(c['run']['peaks'].get('worker', [0])) for c in cases]) or 0:.2f} | | |")
    lines += ["", "| cells | regulons | recall | precision | target Jaccard | type accuracy | GRN stage info |",
              "|---|---|---|---|---|---|---|"]
    for case in cases:
        rec, info = case["run"]["recovery"], case["run"]["grn_info"] or {}
        info = {k: v for k, v in info.items() if k not in ("complete", "at", "seeds")}
        lines.append(f"| {case['cells']:,} | {rec['n_regulons']} | {rec['recall']:.2f} | {rec['precision']:.2f} | "
                     f"{rec['mean_target_jaccard']:.2f} | {rec['type_accuracy']:.2f} | {info} |")
    biggest = cases[-1]
    peak = max(max(v) for v in biggest["run"]["peaks"].values()) / 1024
    lines += ["", f"Goals (issue 13): the 1,000,000-cell run under 300 s, every process <= 2 GiB. Here: "
              f"{biggest['cells']:,} cells in {biggest['run']['wall']:.0f} s, largest process peak {peak:.2f} GiB."]
    return "\n".join(lines) + "\n"


def atlas20k_section(found: dict, args, started, ended, command, date) -> str:
    lines = header("Whole run at the atlas shape: 20,000 genes, a gene budget for the GRN (issue 22)", args, started,
                   ended, command, date)
    cases = found["cases"]
    w = ATLAS20K["world"]
    lines += [f"Simulated planted-regulon world: {cases[0]['genes']:,} genes, CSR h5ad with {ATLAS20K['density']:.1%} "
              f"non-zero (about {ATLAS20K['density'] * cases[0]['genes']:,.0f} stored values a cell), {w['n_tfs']} "
              f"planted TFs and {w['n_decoy_tfs']:,} decoys in the TF list, two ranking databases of {w['n_motifs']:,} "
              f"motifs x {w['n_database_genes']:,} genes (int16; the second a copy of the first under another name). "
              f"`flashscenic run` on the default embedded cluster, `--grn-max-genes {cases[0]['max_genes']}`, "
              f"{cases[0]['steps']} GRN steps. Seconds per stage as in issue 13's sections.", "",
              "| cells | wall s | " + " | ".join(COLUMNS) + " | h5ad GiB | store GiB | results GiB | ingest cells/s |",
              "|---|---|" + "---|" * len(COLUMNS) + "---|---|---|---|"]
    for case in cases:
        r, z = case["run"], case["sizes_gib"]
        rate = f"{case['ingest_cells_per_s']:,.0f}" if case["ingest_cells_per_s"] else "–"
        lines.append(f"| {case['cells']:,} | {r['wall']:.1f} | " + " | ".join(_s(r["stages"][c]) for c in COLUMNS)
                     + f" | {z['h5ad']:.2f} | {z['store']:.2f} | {z['results']:.3f} | {rate} |")
    cells = [c["cells"] for c in cases]
    if len(cases) > 1:
        slopes = [slope(cells, [c["run"]["wall"] for c in cases])] + [
            slope(cells, [c["run"]["stages"][k] for c in cases]) for k in COLUMNS]
        lines.append("| log-log slope | " + " | ".join("–" if s is None else f"{s:.2f}" for s in slopes)
                     + " | | | | |")
    lines += ["", "| cells | coordinator peak MiB | worker peaks MiB | others | regulons | recall | precision | "
              "GRN estimate (logged before training) |", "|---|---|---|---|---|---|---|---|"]
    for case in cases:
        r = case["run"]
        coord, workers, others = _peaks(r["peaks"])
        rec = r["recovery"]
        lines.append(f"| {case['cells']:,} | {coord} | {workers} | {others} | {rec['n_regulons']} | "
                     f"{rec['recall']:.2f} | {rec['precision']:.2f} | {case['grn_estimate'] or '–'} |")
    biggest = cases[-1]
    peak = max(max(v) for v in biggest["run"]["peaks"].values()) / 1024
    rec = biggest["run"]["recovery"]
    met = lambda ok: "met" if ok else "NOT met"
    lines += ["", f"Goals (issue 22, at 1,000,000 cells): under 30 minutes end to end; every process under 3 GiB; "
              f"planted recall >= 0.8 and precision >= 0.9. Here, at {biggest['cells']:,} cells: "
              f"{biggest['run']['wall'] / 60:.1f} min ({met(biggest['run']['wall'] < 1800)}), largest process "
              f"{peak:.2f} GiB ({met(peak < 3)}), recall {rec['recall']:.2f} and precision {rec['precision']:.2f} "
              f"({met(rec['recall'] >= 0.8 and rec['precision'] >= 0.9)})."]
    return "\n".join(lines) + "\n"


def _describe(engine: Path | None) -> str:
    where = engine if engine is not None and (engine / ".git").exists() else ROOT
    if engine is not None and where == ROOT:
        return "an export, commit unknown"
    try:
        return subprocess.run(["git", "-C", str(where), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown"


def _loads() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--overhead", action="store_true", help="part 1: embedded cluster vs --n-workers 0")
    mode.add_argument("--atlas", action="store_true", help="part 4: 100k/300k/1M cells x 2,000 genes, CSR")
    mode.add_argument("--atlas20k", action="store_true", help="issue 22: 100k/300k/1M cells x 20,000 genes, CSR, "
                      "--grn-max-genes 3000, two v10-shape databases")
    parser.add_argument("--quick", action="store_true", help="small sizes, a few GRN steps (under a minute)")
    parser.add_argument("--pairs", type=int, default=3, help="--overhead: interleaved pairs of runs per size "
                        "(default: %(default)s)")
    parser.add_argument("--cells", type=lambda s: [int(x) for x in s.split(",")],
                        help="atlas sizes, comma-separated (default: 100000,300000,1000000)")
    parser.add_argument("--engine", type=Path, help="run the flashscenic of this folder (PYTHONPATH), e.g. an "
                        "export of HEAD for a 'before'; inputs and checks stay this tree's")
    parser.add_argument("--work", type=Path, default=HERE / "_work", help="inputs and run folders (default: "
                        "%(default)s)")
    parser.add_argument("--trace-coordinator", action="store_true", help="run the coordinator under tracemalloc "
                        "and print where its peak was allocated (slower: no --out)")
    parser.add_argument("--out", type=Path, help="markdown file whose section this run writes (and FILE.MODE.json "
                        "with the raw numbers)")
    args = parser.parse_args(argv)
    if args.cells and not (args.atlas or args.atlas20k):
        parser.error("--cells is for --atlas and --atlas20k")
    if args.trace_coordinator and args.out:
        parser.error("--trace-coordinator slows the runs; its timings are not for --out")
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if args.cells and any(c < 1 for c in args.cells):
        parser.error("--cells must be positive integers")
    if args.engine is not None:
        args.engine = args.engine.resolve()
        if not (args.engine / "flashscenic" / "__init__.py").exists():
            parser.error(f"--engine {args.engine} holds no flashscenic package")
    args.work.mkdir(parents=True, exist_ok=True)
    command = "flock /tmp/bench.lock .venv/bin/python benchmarks/whole_run.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    date = datetime.date.today().isoformat()
    started = {"machine": machine(), "load": _loads(), "describe": _describe(args.engine)}
    mode = "overhead" if args.overhead else "atlas" if args.atlas else "atlas20k"
    run, write = {"overhead": (overhead, overhead_section), "atlas": (atlas, atlas_section),
                  "atlas20k": (atlas20k, atlas20k_section)}[mode]
    found = run(args, args.work)
    ended = {"load": _loads()}
    section = write(found, args, started, ended, command, date)
    print("\n" + section)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_section(args.out, section)
        raw = args.out.with_name(args.out.name + f".{mode}.json")
        for case in found["cases"]:
            for r in (case.get("run"), *(p[k] for p in case.get("pairs", []) for k in ("inprocess", "embedded"))):
                if r:
                    r.pop("series", None)
        tmp = raw.with_name(raw.name + ".partial")
        tmp.write_text(json.dumps({"started": started, "ended": ended, "command": command, **found}, indent=1,
                                  default=str) + "\n")
        os.replace(tmp, raw)
        print(f"wrote {args.out} and {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
