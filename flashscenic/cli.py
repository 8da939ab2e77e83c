"""The ``flashscenic`` command: a thin layer over the Python API.

Each subcommand turns its flags into calls of public functions and formats what they
return; no computation lives here. User mistakes (``FlashscenicError``) print one line
``flashscenic: error: ...`` and exit with status 2; ``--debug`` shows the traceback instead.
Heavy modules (torch) are imported only by the subcommand that needs them, so
``flashscenic --help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from ._cli_pipeline import add_pipeline_parsers
from ._cli_store import add_export_parser, add_ingest_parser
from .errors import FlashscenicError

__all__ = ["main"]

PROG = "flashscenic"
DEMO_GRN_STEPS = 250  # RegDiffusion steps of the demo: recall and precision 1.0 on seeds 0-2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse's own usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    debug = getattr(args, "debug", False)
    _configure_logging(debug, quiet=getattr(args, "quiet", False))
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
            return args.run(args)
    except (FlashscenicError, OSError) as exc:
        # An OSError naming a file (missing, unwritable, a folder where a file was expected)
        # is a user mistake too; other OSErrors are not.
        if isinstance(exc, OSError) and not isinstance(exc, FlashscenicError) and exc.filename is None:
            raise
        if debug:
            traceback.print_exc()
        else:
            message = " ".join(str(exc).splitlines())
            print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


class _LogFilter(logging.Filter):
    """flashscenic's own messages from INFO (stage progress), other libraries' (Dask's) from WARNING."""

    def __init__(self, own_level: int):
        super().__init__()
        self.own_level = own_level

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name == PROG or record.name.startswith(PROG + ".")
        return record.levelno >= (self.own_level if own else logging.WARNING)


class _LogFormatter(logging.Formatter):
    """``flashscenic: message`` for progress, ``flashscenic: warning: message`` for problems."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"{PROG}: {level}{record.getMessage()}"


def _configure_logging(debug: bool, quiet: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"{PROG}: %(name)s: %(levelname)s: %(message)s") if debug
                         else _LogFormatter())
    own_level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler.addFilter(_LogFilter(own_level))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    logging.getLogger(PROG).setLevel(own_level)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, like errors (``--debug`` keeps Python's format)."""
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    # --debug is accepted before or after the subcommand; SUPPRESS keeps the subcommand's
    # default from overwriting a --debug given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error instead of one line")

    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common],
        description="SCENIC with pySCENIC's numbers: seconds on a GPU, minutes on a CPU.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo", parents=[common], help="the whole pipeline on simulated data with planted regulons, self-checked",
        description="Simulate cells in which 30 TFs drive planted regulons (with decoy TFs that drive nothing), "
        "a matching motif ranking database, annotation table and TF list; run the whole pipeline on them (GRN, "
        "modules, pruning, AUCell, RSS) on an embedded Dask cluster; print planted vs recovered regulons and "
        "write OUT/summary.json and OUT/report.html.",
    )
    demo.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    demo.add_argument("--n-cells", type=int, default=5000, help="cells to simulate (default: %(default)s)")
    demo.add_argument("--n-genes", type=int, default=1000, help="genes to simulate (default: %(default)s)")
    demo.add_argument("--n-tfs", type=int, default=30, help="planted TFs (default: %(default)s)")
    demo.add_argument("--grn-n-steps", type=int, default=DEMO_GRN_STEPS,
                      help="RegDiffusion steps (default: %(default)s, enough for this small dataset)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulation and the pipeline (default: %(default)s)")
    demo.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                      help="where kernels run (default: %(default)s: CUDA when available)")
    demo.add_argument("--n-workers", type=int, default=2,
                      help="workers of the embedded Dask cluster; 0 runs in this process (default: %(default)s)")
    demo.add_argument("--dashboard-address", default=":8787", help="Dask dashboard address (default: %(default)s; "
                      "'none' for none)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")
    demo.set_defaults(run=_demo)

    download = commands.add_parser(
        "download", parents=[common], help="download and verify cisTarget resources into the cache",
        description="Download the ranking databases, motif annotation and TF list of one species and "
        "motif collection, verify each against its published SHA-1, and print their paths. Verified "
        "files already in the cache are reused without touching the network; an interrupted download "
        "resumes where it stopped.",
    )
    download.add_argument("--species", default="human", help="human, mouse or drosophila (default: %(default)s)")
    download.add_argument("--version", default="v10", help="motif collection: v10 or v9 (default: %(default)s)")
    download.add_argument("--datasource", default="scenic", help="registered datasource (default: %(default)s)")
    _cache_flag(download)
    download.add_argument("--force", action="store_true", help="download again even when a verified copy is cached")
    download.add_argument("--base-url", help="a mirror's base URL (default: $FLASHSCENIC_RESOURCE_URL, "
                          "else the datasource's)")
    download.add_argument("--offline", action="store_true", default=None,
                          help="never use the network (default: $FLASHSCENIC_OFFLINE)")
    download.add_argument("--quiet", action="store_true", help="no progress bars")
    download.set_defaults(run=_download)

    resources = commands.add_parser(
        "resources", parents=[common], help="list the available resource sets and what is cached",
        description="List the registered resource sets (species, motif collection) with their files, "
        "sizes where known, and the state of each in the cache (verified, unverified, partial, missing). "
        "Never touches the network.",
    )
    resources.add_argument("--species", help="only this species")
    resources.add_argument("--version", help="only this motif collection")
    resources.add_argument("--datasource", help="only this datasource")
    _cache_flag(resources)
    resources.set_defaults(run=_resources)

    add_pipeline_parsers(commands, common)
    add_ingest_parser(commands, common)
    add_export_parser(commands, common)
    return parser


def _cache_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", help="cache directory (default: $FLASHSCENIC_CACHE, else ./flashscenic_data)")


def _demo(args: argparse.Namespace) -> int:
    import json

    import anndata
    import pandas as pd

    from ._cli_pipeline import dashboard_address
    from .errors import InputError
    from .distributed import start_executor
    from .pipeline import params_from, prepare_resources, run_pipeline
    from .report import write_report
    from .simulate import evaluate_regulons, simulate_dataset
    from .store import ingest_expression

    start = time.perf_counter()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    verbose = not args.quiet
    data = simulate_dataset(n_cells=args.n_cells, n_genes=args.n_genes, n_tfs=args.n_tfs, seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = data.write_resources(out / "resources")
    cells = pd.DataFrame({"cell_type": data.cell_types}, index=[f"cell{i:05d}" for i in range(len(data.cell_types))])
    adata = anndata.AnnData(data.expression, obs=cells, var=pd.DataFrame(index=list(data.gene_names)))
    store = ingest_expression(adata, out / "expression.zarr", obs_columns=["cell_type"], overwrite=True,
                              verbose=False)
    print(f"Simulated {store.n_cells:,} cells x {store.n_genes:,} genes, {len(data.cell_type_names)} cell types, "
          f"{len(data.planted_tfs)} planted TFs and {len(data.decoy_tfs)} decoys; a database of "
          f"{len(data.motif_names):,} motifs x {len(data.database_gene_names):,} genes (seed {args.seed}).")

    resources = prepare_resources(tf_list_path=paths["tf_list"], ranking_db_paths=[paths["ranking_db"]],
                                  motif_annotation_path=paths["motif_annotation"], verbose=verbose)
    params = params_from({"grn_n_steps": args.grn_n_steps, "device": args.device, "seed": args.seed,
                          "verbose": verbose})
    executor = start_executor(n_workers=args.n_workers, dashboard_address=dashboard_address(args.dashboard_address),
                              verbose=verbose)
    executor_name = executor.name
    try:
        results = run_pipeline(store, out, resources=resources, params=params, executor=executor,
                               cell_type_column="cell_type", verbose=verbose)
    finally:
        executor.close()
    regulons = results.read_regulons()
    found = evaluate_regulons(regulons, data, auc=results.read_auc())
    report = write_report(results, out / "report.html", cell_type_column="cell_type")
    seconds = time.perf_counter() - start

    summary = {
        "planted_tfs": found["planted_tfs"], "recovered_tfs": found["recovered_tfs"],
        "false_regulons": found["false_regulons"], "precision": found["precision"], "recall": found["recall"],
        "mean_target_jaccard": found["mean_target_jaccard"], "n_cells": store.n_cells, "n_genes": store.n_genes,
        "n_regulons": len(regulons), "seconds": round(seconds, 2),
        "stage_seconds": {k: round(v, 2) for k, v in results.timings.items()}, "seed": args.seed,
        "grn_n_steps": args.grn_n_steps, "executor": executor_name,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\nPlanted vs recovered regulons (Jaccard: regulon genes vs planted targets):\n")
    print(_format_recovery(found["table"]))
    print(f"\nRecovered {len(found['recovered_tfs'])}/{len(found['planted_tfs'])} planted TFs "
          f"(recall {found['recall']:.2f}), precision {found['precision']:.2f}, mean target Jaccard "
          f"{found['mean_target_jaccard']:.2f}; {len(regulons)} regulons.")
    print("Stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in results.timings.items())
          + f"; total {seconds:.1f} s ({executor_name}).")
    print(f"Wrote {out / 'summary.json'}, {report} and the results store {results.path}.")
    return 0


def _format_recovery(table) -> str:
    """The per-TF table as aligned text ('yes'/'NO' for booleans)."""
    shown = table.copy()
    for column in shown.columns:
        if shown[column].dtype == bool:
            shown[column] = shown[column].map({True: "yes", False: "NO"})
    return shown.to_string(index=False, float_format="{:.2f}".format)


def _download(args: argparse.Namespace) -> int:
    from .data import download_data

    got = download_data(args.species, args.version, args.datasource, cache_dir=args.cache_dir, force=args.force,
                        base_url=args.base_url, offline=args.offline, verbose=not args.quiet)
    print(f"{got.datasource} {got.species} {got.version}: verified, in {got.directory}")
    for path in got.ranking_databases:
        print(f"  ranking database  {path}")
    print(f"  motif annotation  {got.motif_annotation}")
    print(f"  TF list           {got.tf_list}")
    return 0


_KIND_LABELS = {"ranking_database": "ranking database", "motif_annotation": "motif annotation", "tf_list": "TF list"}


def _resources(args: argparse.Namespace) -> int:
    from .data import format_size, cache_status, list_available_resources

    for index, resource_set in enumerate(list_available_resources(args.datasource, args.species, args.version)):
        if index:
            print()
        status = cache_status(resource_set, args.cache_dir)
        print(f"{resource_set.datasource} {resource_set.species} {resource_set.version}"
              f"{f' ({resource_set.description})' if resource_set.description else ''}: "
              f"{sum(s.state == 'verified' for s in status)}/{len(status)} files cached in "
              f"{resource_set.directory(args.cache_dir)}")
        for item in status:
            if item.state == "partial":
                size = f"{format_size(item.size)} of {format_size(item.file.size)}" if item.file.size \
                    else f"{format_size(item.size)} so far"
            else:
                size = format_size(item.size if item.size is not None else item.file.size)
            print(f"  {_KIND_LABELS.get(item.file.kind, item.file.kind):<17} {item.file.name}  [{size}, {item.state}]")
    return 0
