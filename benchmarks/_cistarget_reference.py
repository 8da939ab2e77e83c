"""Run ONE cisTarget implementation on one data file, in a fresh process; print JSON.

Called by ``benchmarks/cistarget.py``, never by hand; the same pattern as
``_aucell_reference.py``. Implementations (``--impl``):

* ``pyscenic`` (reference venv): pySCENIC 0.12.1's pruning path, ``transform.module2df``
  with ``module2features_auc1st_impl`` for every module, on an in-memory ctxcore
  ``RankingDatabase`` (``tests/pyscenic_prune_oracle.py`` shows the set-up); with
  ``--workers 2`` the modules are split in two halves over two forked processes, which
  is what ``prune2df(..., num_workers=2)`` amounts to.
* ``flashscenic`` (project venv): ``CisTargetPruner(device='cpu').motif_table``.
* ``ctxcore-loop`` (reference venv) / ``flashscenic-loop`` (project venv): one module at a
  time, no annotations: ctxcore's ``recovery`` + NES + ``leading_edge`` of the enriched
  motifs (each motif's own curve) vs flashscenic's ``prune_single_module`` called as its
  documentation shows (a motifs x genes int16 tensor); ``flashscenic-loop-database``: the
  same on a ``RankingDatabase``.
* ``flashscenic-batch`` (project venv): the same results from one
  ``CisTargetPruner.prune_batch`` call over all the modules (no annotations).
* ``read-flashscenic`` / ``read-pandas``: read a Feather ranking database with
  ``flashscenic.rankdb.read_ranking_database`` vs ``pyarrow.feather.read_feather``.

Each implementation is a ``load`` (build the database object from the rank matrix) and a
``prune`` (modules -> results). Timing: ``seconds`` is ``prune`` only (reading the
annotation file included, which both sides do once per run); ``load_seconds`` is ``load``.
Every timed call builds its database afresh, so no call reuses another's caches (e.g.
flashscenic's per-database sparse AUC matrix). An untimed warm-up on a few modules comes
first (numba JIT, torch start-up). Memory: as in ``_aucell_reference.py``, the peak
resident set (VmHWM) is reset once the inputs are loaded; ``baseline_mib`` is the RSS at
that point, so the peak includes the database object each call builds.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from _common import children_peak_mib, reset_peak_rss, status_mib
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the pySCENIC oracle

RANK_THRESHOLD, AUC_THRESHOLD, NES_THRESHOLD = 5000, 0.05, 3.0
DB_NAME = "synthetic"
CONTEXT = ("weight>75.0%", "activating")
WARMUP_MODULES = 3


def load_case(path: str, n_modules: int) -> dict:
    """The npz written by cistarget.py; ``modules`` are the module numbers to run (a fixed
    random subset when ``n_modules`` is smaller than the number of modules)."""
    with np.load(path) as data:
        case = {key: data[key] for key in data.files}
    bounds = case["module_offsets"]
    case["module_index"] = [case["module_genes"][a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    case["module_weights"] = [case["module_weight_values"][a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    everything = len(case["module_index"])
    case["modules"] = np.arange(everything) if n_modules >= everything else np.sort(case["subset_order"][:n_modules])
    return case


# ----------------------------------------------------------------------------- pySCENIC


_FORKED: dict = {}  # what the forked pySCENIC workers inherit


def _pyscenic_modules(numbers) -> pd.DataFrame:
    state = _FORKED
    frames = [state["transform"].module2df(state["db"], state["regulons"][k], state["annotations"],
                                           module2features_func=state["features"]) for k in numbers]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames) if frames else pd.DataFrame()


def prepare_pyscenic(args, case):
    import warnings
    from functools import partial

    from pyscenic_prune_oracle import _imports, frame_database

    warnings.simplefilter("ignore")
    api = _imports()
    genes, tfs = case["gene_names"], case["gene_names"][case["tfs"]]
    regulons = [api["Regulon"](name=f"{tfs[k]}_module", gene2weight=dict(zip(genes[index].tolist(), weights.tolist())),
                               transcription_factor=tfs[k], gene2occurrence=[], context=frozenset(CONTEXT))
                for k, (index, weights) in enumerate(zip(case["module_index"], case["module_weights"]))]
    features = partial(api["transform"].module2features_auc1st_impl, rank_threshold=RANK_THRESHOLD,
                       auc_threshold=AUC_THRESHOLD, nes_threshold=NES_THRESHOLD, filter_for_annotation=True)
    _FORKED.update(transform=api["transform"], regulons=regulons, features=features)
    versions = {"pyscenic": version("pyscenic"), "ctxcore": version("ctxcore"), "pandas": pd.__version__}

    def load():
        return frame_database(case["ranks"], case["motif_names"], genes, DB_NAME)

    # Warm up in this process, before any fork, so the workers inherit numba's compiled code.
    _FORKED.update(db=load(), annotations=api["load_motif_annotations"](args.annotations))
    _pyscenic_modules(case["modules"][:WARMUP_MODULES])
    del _FORKED["db"], _FORKED["annotations"]

    def prune(db, numbers):
        _FORKED["db"] = db
        _FORKED["annotations"] = api["load_motif_annotations"](args.annotations)
        if args.workers == 1:
            frame = _pyscenic_modules(numbers)
        else:  # fork: the workers share the database copy-on-write, as pySCENIC's do
            with multiprocessing.get_context("fork").Pool(args.workers) as pool:
                frames = pool.map(_pyscenic_modules, np.array_split(numbers, args.workers))
                pool.close()
                pool.join()
            frames = [f for f in frames if len(f)]
            frame = pd.concat(frames) if frames else pd.DataFrame()
        _FORKED.pop("db")
        return frame.droplevel(0, axis=1).reset_index() if len(frame) else None

    return load, prune, versions


def prepare_flashscenic(args, case):
    import torch
    from flashscenic import CisTargetPruner

    versions = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "flashscenic": version("flashscenic")}
    genes = case["gene_names"].tolist()
    tfs = case["gene_names"][case["tfs"]].tolist()

    def load():
        pruner = CisTargetPruner(RANK_THRESHOLD, AUC_THRESHOLD, NES_THRESHOLD, device="cpu",
                                 pyscenic_compat_leading_edge=bool(args.compat), verbose=False)
        pruner.load_from_tensor(case["ranks"], case["motif_names"], case["gene_names"], name=DB_NAME)
        return pruner

    def prune(pruner, numbers):
        pruner.load_annotations(args.annotations)
        table = pruner.motif_table([case["module_index"][k] for k in numbers], [tfs[k] for k in numbers], genes,
                                   [case["module_weights"][k] for k in numbers], [CONTEXT] * len(numbers))
        return table

    return load, prune, versions


def table_result(table: pd.DataFrame | None) -> dict:
    """The motif rows as arrays: TF, MotifID, AUC, NES, RankAtMax, TargetGenes (JSON)."""
    if table is None or len(table) == 0:
        return {"tf": np.array([], str), "motif": np.array([], str), "auc": np.array([]), "nes": np.array([]),
                "rank_at_max": np.array([], int), "targets": np.array([], str)}
    return {"tf": table["TF"].to_numpy(str), "motif": table["MotifID"].to_numpy(str),
            "auc": table["AUC"].to_numpy(float), "nes": table["NES"].to_numpy(float),
            "rank_at_max": table["RankAtMax"].to_numpy(int),
            "targets": np.array([json.dumps([[str(g), float(w)] for g, w in t]) for t in table["TargetGenes"]])}


# ----------------------------------------------------------------------------- single modules


def prepare_ctxcore_loop(args, case):
    from pyscenic_prune_oracle import _imports

    api = _imports()
    recovery, leading_edge = api["recovery"], api["leading_edge"]
    ranks, n_genes = case["ranks"], case["ranks"].shape[1]
    versions = {"ctxcore": version("ctxcore"), "pandas": pd.__version__}

    def prune(_, numbers):
        out = []
        for k in numbers:
            index, weights = case["module_index"][k], case["module_weights"][k]
            frame = pd.DataFrame(ranks[:, index])
            curves, aucs = recovery(frame, n_genes, np.ones(len(index)), RANK_THRESHOLD, AUC_THRESHOLD)
            nes = (aucs - aucs.mean()) / aucs.std()
            enriched = np.flatnonzero(nes >= NES_THRESHOLD)
            avg2std = curves.mean(axis=0) + 2.0 * curves.std(axis=0)
            values, positions = frame.values, np.arange(len(index))
            edges = [leading_edge(curves[m], avg2std, values[m], positions, weights) for m in enriched]
            out.append((aucs, nes, enriched, [r for _, r in edges], [[g for g, _ in e] for e, _ in edges]))
        return loop_result(out)

    return (lambda: None), prune, versions


def prepare_flashscenic_loop(args, case):
    """``prune_single_module`` once a module. ``flashscenic-loop``: the documented call, a
    motifs x genes int16 tensor and tensor gene indices, a new tensor for every timed
    call (so its gene-major copy is made inside the timing); ``flashscenic-loop-database``:
    a ``RankingDatabase``, whose ranks are gene-major already."""
    import torch
    from flashscenic import prune_single_module
    from flashscenic.rankdb import RankingDatabase

    versions = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "flashscenic": version("flashscenic")}
    as_tensor = args.impl == "flashscenic-loop"
    modules = [torch.from_numpy(index) if as_tensor else index for index in case["module_index"]]

    def load():
        if as_tensor:
            return torch.from_numpy(case["ranks"].copy())
        return RankingDatabase.from_array(case["ranks"], case["motif_names"], case["gene_names"], DB_NAME)

    def prune(rankings, numbers):
        out = []
        for k in numbers:
            r = prune_single_module(rankings, modules[k], RANK_THRESHOLD, AUC_THRESHOLD, NES_THRESHOLD)
            out.append((r["aucs"].numpy(), r["nes"].numpy(), np.flatnonzero(r["enriched_mask"].numpy()),
                        r["rank_at_max"].tolist(), [np.flatnonzero(m) for m in r["leading_edge_masks"].numpy()]))
        return loop_result(out)

    return load, prune, versions


def prepare_flashscenic_batch(args, case):
    import torch
    from flashscenic import CisTargetPruner

    versions = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "flashscenic": version("flashscenic")}

    def load():
        pruner = CisTargetPruner(RANK_THRESHOLD, AUC_THRESHOLD, NES_THRESHOLD, device="cpu", verbose=False)
        pruner.load_from_tensor(case["ranks"], case["motif_names"], case["gene_names"], name=DB_NAME)
        return pruner

    def prune(pruner, numbers):
        results = pruner.prune_batch([case["module_index"][k] for k in numbers])
        return loop_result([(r["aucs"].numpy(), r["nes"].numpy(), np.flatnonzero(r["enriched_mask"].numpy()),
                             r["rank_at_max"].tolist(), [np.flatnonzero(m) for m in r["leading_edge_masks"].numpy()])
                            for r in results])

    return load, prune, versions


def loop_result(out: list) -> dict:
    """Per module AUCs and NES (modules x motifs); per enriched motif its module, motif,
    rank at max and leading edge (sorted positions in the module, JSON)."""
    edges = [(k, m, r, json.dumps(sorted(int(p) for p in e))) for k, (_, _, enriched, at_max, genes) in enumerate(out)
             for m, r, e in zip(enriched, at_max, genes)]
    return {"aucs": np.array([o[0] for o in out]), "nes": np.array([o[1] for o in out]),
            "edge_module": np.array([e[0] for e in edges], int), "edge_motif": np.array([e[1] for e in edges], int),
            "rank_at_max": np.array([e[2] for e in edges], int), "edges": np.array([e[3] for e in edges], str)}


# ----------------------------------------------------------------------------- database reading


def run_read(args) -> None:
    """Read the Feather database once; report time and peak memory over the RSS before."""
    import pyarrow

    versions = {"pyarrow": pyarrow.__version__, "numpy": np.__version__}
    if args.impl == "read-flashscenic":
        from flashscenic.rankdb import read_ranking_database

        versions["flashscenic"] = version("flashscenic")

        def read():
            return read_ranking_database(args.data, cache=False).rankings.shape  # the Feather file itself
    else:
        import pyarrow.feather as feather

        versions["pandas"] = pd.__version__

        def read():
            frame = feather.read_feather(args.data)
            return frame.shape[0], frame.shape[1] - 1  # less the motifs column
    gc.collect()
    reset_peak_rss()
    baseline = status_mib("VmRSS")
    start = time.perf_counter()
    shape = read()
    seconds = time.perf_counter() - start
    print(json.dumps({"impl": args.impl, "seconds": seconds, "baseline_mib": baseline, "peak_mib": status_mib("VmHWM"),
                      "shape": list(shape), "versions": versions}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", required=True, choices=["pyscenic", "flashscenic", "ctxcore-loop", "flashscenic-loop",
                                                          "flashscenic-loop-database", "flashscenic-batch", "read-flashscenic", "read-pandas"])
    parser.add_argument("--data", required=True, help="input .npz (a .feather for the read-* implementations)")
    parser.add_argument("--annotations", help="motif2tf .tbl (pyscenic, flashscenic)")
    parser.add_argument("--out", help="where to save the result .npz")
    parser.add_argument("--modules", type=int, default=10**9, help="run a fixed random subset of this many modules")
    parser.add_argument("--workers", type=int, default=1, help="pySCENIC worker processes")
    parser.add_argument("--compat", type=int, default=0, help="flashscenic: pyscenic_compat_leading_edge")
    parser.add_argument("--repeats", type=int, default=1, help="time this many calls, report the fastest")
    args = parser.parse_args()
    if args.impl.startswith("read-"):
        return run_read(args)

    case = load_case(args.data, args.modules)
    prepare = {"pyscenic": prepare_pyscenic, "flashscenic": prepare_flashscenic, "ctxcore-loop": prepare_ctxcore_loop,
               "flashscenic-loop": prepare_flashscenic_loop, "flashscenic-loop-database": prepare_flashscenic_loop,
               "flashscenic-batch": prepare_flashscenic_batch}[args.impl]
    load, prune, versions = prepare(args, case)
    versions["numpy"] = np.__version__
    if versions.get("flashscenic") == "0.2.0":
        raise SystemExit("flashscenic must run with the project venv, not the reference one")
    prune(load(), case["modules"][:WARMUP_MODULES])  # untimed warm-up
    gc.collect()
    reset_peak_rss()
    baseline = status_mib("VmRSS")

    # Every call builds its database afresh (timed apart), so no call reuses another's caches.
    times, load_times, result = [], [], None
    for _ in range(args.repeats):
        result = None
        start = time.perf_counter()
        database = load()
        loaded = time.perf_counter()
        result = prune(database, case["modules"])
        times.append(time.perf_counter() - loaded)
        load_times.append(loaded - start)
        database = None
    peak = status_mib("VmHWM")
    if not isinstance(result, dict):  # motif rows: to arrays, outside the timing
        result = table_result(result)

    report = {"impl": args.impl, "seconds": min(times), "all_seconds": times,
              "load_seconds": None if args.impl == "ctxcore-loop" else min(load_times),  # ctxcore: no database object
              "n_modules": len(case["modules"]), "baseline_mib": baseline, "peak_mib": peak,
              "children_peak_mib": children_peak_mib(), "versions": versions}
    np.savez(args.out, modules=case["modules"], **result)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
