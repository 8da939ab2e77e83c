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
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from ._cli_pipeline import add_pipeline_parsers, dashboard_address
from ._cli_store import add_export_parser, add_ingest_parser
from .demo import DEMO_GRN_STEPS
from .errors import FlashscenicError
from .params import DEFAULT_DASHBOARD, DEVICES, Params

__all__ = ["main"]

PROG = "flashscenic"


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
    demo.add_argument("--device", choices=DEVICES, default="auto",
                      help="where kernels run (default: %(default)s: CUDA when available)")
    demo.add_argument("--n-workers", type=int, default=None,
                      help="workers of the embedded Dask cluster; 0 runs in this process (default: one per GPU "
                      "with GPUs and --device auto/cuda, else 2)")
    demo.add_argument("--dashboard-address", default=DEFAULT_DASHBOARD, help="Dask dashboard address (default: %(default)s; "
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
    for name in ("species", "version", "datasource"):  # the same defaults and help as run's flags
        spec = Params.spec(name)
        download.add_argument(f"--{name}", default=spec.default,
                              help=f"{spec.metadata['help'].rstrip('.')} (default: %(default)s)")
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
    from .demo import run_demo

    found = run_demo(args.out, n_cells=args.n_cells, n_genes=args.n_genes, n_tfs=args.n_tfs,
                     grn_n_steps=args.grn_n_steps, seed=args.seed, device=args.device, n_workers=args.n_workers,
                     dashboard_address=dashboard_address(args.dashboard_address), verbose=not args.quiet)
    results = found["results"]
    print(f"Simulated {found['n_cells']:,} cells x {found['n_genes']:,} genes with {len(found['planted_tfs'])} "
          f"planted TFs (seed {args.seed}).")
    print("\nPlanted vs recovered regulons (Jaccard: regulon genes vs planted targets):\n")
    print(_format_recovery(found["table"]))
    print(f"\nRecovered {len(found['recovered_tfs'])}/{len(found['planted_tfs'])} planted TFs "
          f"(recall {found['recall']:.2f}), precision {found['precision']:.2f}, mean target Jaccard "
          f"{found['mean_target_jaccard']:.2f}; {found['n_regulons']} regulons.")
    print("Stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in found["stage_seconds"].items())
          + f"; total {found['seconds']:.1f} s ({found['executor']}).")
    out = Path(args.out)
    print(f"Wrote {out / 'summary.json'}, {out / 'report.html'} and the results store {results.path}.")
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
