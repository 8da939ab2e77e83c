"""Run ONE ctx implementation (adjacencies -> regulons) on files, in a fresh process; print JSON.

Called by ``benchmarks/cistarget.py --ctx``, never by hand. The caller times the whole
process (start-up, imports, reading the inputs, writing the output); this script times the
call alone (``call_seconds``) and prints one JSON line. Implementations (``--impl``):

* ``flashscenic`` (project venv): ``flashscenic.steps.run_ctx`` on the adjacencies and the
  expression read before the timing (``read_adjacencies``, ``read_expression``); the call
  reads the database (through flashscenic's rank cache when there is one) and the
  annotation, builds the modules, prunes, and writes reg.csv. ``--compat 1`` runs it with
  ``CisTargetPruner(pyscenic_compat_leading_edge=True)`` (pySCENIC bug #635), which the
  ``flashscenic ctx`` command offers no option for.
* ``scenic-rs`` (scenic-rs venv): the adjacencies (pandas ``read_csv``) and the expression
  (pandas ``read_csv``, to float32: scenic-rs takes a dense cells x genes matrix) are read
  before the timing; the call is ``RankingDb(path, name)`` (``load_seconds``, the Feather
  read) plus ``scenic_rs.ctx(...)`` with its defaults, which are pySCENIC's ctx defaults.
  The regulons are written to ``--out`` as JSON (name -> genes, weights, NES).
* ``pyscenic`` (reference venv): pySCENIC 0.12.1's own command line, ``pyscenic ctx``,
  through ``pyscenic.cli.pyscenic.main`` with ``np.object`` lent for the import (its
  ``transform`` module names it; numpy 2 removed it); the call is ``main(argv)``, so it
  reads every input itself.
* ``pyscenic-regulons`` (reference venv, untimed): pySCENIC's ``df2regulons`` of a reg.csv
  (``load_motifs``), what ``pyscenic aucell`` makes of it: regulon name -> genes, JSON.

Memory: ``peak_mib`` is this process's peak resident set (VmHWM) over the whole run;
``children_peak_mib`` the largest finished child (pySCENIC's workers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

from _common import children_peak_mib, status_mib

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the pySCENIC oracle's np.object loan

def database_name(path: str) -> str:
    """The database's name as pySCENIC and flashscenic derive it: the file name less its last suffix."""
    return os.path.splitext(os.path.basename(path))[0]


def run_flashscenic(args) -> dict:
    import torch

    from flashscenic import cistarget
    from flashscenic.export import read_adjacencies
    from flashscenic.io import read_expression
    from flashscenic.params import Params
    from flashscenic.steps import run_ctx

    if args.compat:  # the pruner's audit flag, which Params and the command line do not carry
        class CompatPruner(cistarget.CisTargetPruner):
            def __init__(self, *a, **k):
                super().__init__(*a, pyscenic_compat_leading_edge=True, **k)

        cistarget.CisTargetPruner = CompatPruner
    table = read_adjacencies(args.adjacencies)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "looks like raw counts": pySCENIC's ctx takes them as they are
        expression = read_expression(args.expression)
    params = Params(module_percentile_thresholds=(75.0, 90.0), device="cpu", verbose=False)  # pySCENIC's ctx defaults
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_ctx(table, [args.database], args.annotations, args.out, params=params, expression=expression)
    return {"call_seconds": time.perf_counter() - start, "load_seconds": None,
            "versions": {"flashscenic": version("flashscenic"), "torch": torch.__version__,
                         "torch_threads": torch.get_num_threads()}}


def run_scenic_rs(args) -> dict:
    import numpy as np
    import pandas as pd
    import scenic_rs

    adjacencies = pd.read_csv(args.adjacencies, sep="\t")
    frame = pd.read_csv(args.expression, index_col=0)
    expression, genes = frame.to_numpy(np.float32), [str(g) for g in frame.columns]
    del frame
    start = time.perf_counter()
    database = scenic_rs.RankingDb(args.database, database_name(args.database))
    loaded = time.perf_counter()
    regulons = scenic_rs.ctx(adjacencies, expression, genes, [database], args.annotations)
    seconds = time.perf_counter() - start
    Path(args.out).write_text(json.dumps({r.name: {"genes": list(r.genes), "weights": list(r.weights), "nes": r.nes}
                                          for r in regulons}))
    return {"call_seconds": seconds, "load_seconds": loaded - start,
            "versions": {"scenic-rs": version("scenic-rs"), "numpy": np.__version__, "pandas": pd.__version__,
                         "rayon_threads": os.environ.get("RAYON_NUM_THREADS", "unset (all cores)")}}


def pyscenic_imports():
    """pySCENIC's CLI and regulon builder, with ``np.object`` lent for the import."""
    from pyscenic_oracle import numpy_object_for_import

    with warnings.catch_warnings(), numpy_object_for_import():
        warnings.simplefilter("ignore")
        from pyscenic.cli import pyscenic as cli
        from pyscenic.transform import df2regulons
        from pyscenic.utils import load_motifs
    return cli, df2regulons, load_motifs


def run_pyscenic(args) -> dict:
    import pandas as pd

    cli, _, _ = pyscenic_imports()
    argv = ["ctx", args.adjacencies, args.database, "--annotations_fname", args.annotations,
            "--expression_mtx_fname", args.expression, "--output", args.out,
            "--mode", "custom_multiprocessing", "--num_workers", str(args.workers)]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli.main(argv)
    return {"call_seconds": time.perf_counter() - start, "load_seconds": None,
            "versions": {"pyscenic": version("pyscenic"), "ctxcore": version("ctxcore"), "pandas": pd.__version__}}


def run_pyscenic_regulons(args) -> dict:
    _, df2regulons, load_motifs = pyscenic_imports()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        regulons = df2regulons(load_motifs(args.reg))
    Path(args.out).write_text(json.dumps({r.name: sorted(r.genes) for r in regulons}))
    return {"call_seconds": None, "load_seconds": None, "versions": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", required=True, choices=["flashscenic", "scenic-rs", "pyscenic", "pyscenic-regulons"])
    parser.add_argument("--adjacencies", help="pySCENIC adjacencies TSV (TF, target, importance)")
    parser.add_argument("--expression", help="expression CSV, cells x genes")
    parser.add_argument("--database", help="Feather ranking database")
    parser.add_argument("--annotations", help="motif2tf .tbl")
    parser.add_argument("--reg", help="reg.csv to read (pyscenic-regulons)")
    parser.add_argument("--out", required=True, help="where to write the result")
    parser.add_argument("--compat", type=int, default=0, help="flashscenic: pyscenic_compat_leading_edge")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="pySCENIC worker processes")
    args = parser.parse_args()

    run = {"flashscenic": run_flashscenic, "scenic-rs": run_scenic_rs, "pyscenic": run_pyscenic,
           "pyscenic-regulons": run_pyscenic_regulons}[args.impl]
    report = run(args)
    report.update(impl=args.impl, peak_mib=status_mib("VmHWM"), children_peak_mib=children_peak_mib())
    print(json.dumps(report))


if __name__ == "__main__":
    main()
