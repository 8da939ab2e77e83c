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

from . import __version__
from ._cli_store import add_export_parser, add_ingest_parser
from ._errors import FlashscenicError

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
    logging.basicConfig(format=f"{PROG}: %(levelname)s: %(message)s",
                        level=logging.DEBUG if debug else logging.WARNING)
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
            return args.run(args)
    except FlashscenicError as exc:
        if debug:
            traceback.print_exc()
        else:
            message = " ".join(str(exc).splitlines())
            print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


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
        "demo", parents=[common], help="score planted regulons in simulated data with AUCell",
        description="Simulate cells in which 10 known regulons are active in known cell types, "
        "score the regulons with AUCell and check that each scores highest in its planted type.",
    )
    demo.add_argument("--n-cells", type=int, default=5000, help="cells to simulate (default: %(default)s)")
    demo.add_argument("--n-genes", type=int, default=1000,
                      help="genes to simulate, at least 310 (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulation and of AUCell's tie order "
                      "(default: %(default)s)")
    demo.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                      help="where AUCell runs (default: %(default)s: cuda when available)")
    demo.add_argument("--ties", choices=["pyscenic", "average"], default="pyscenic",
                      help="AUCell tie handling (default: %(default)s)")
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

    add_ingest_parser(commands, common)
    add_export_parser(commands, common)
    return parser


def _cache_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", help="cache directory (default: $FLASHSCENIC_CACHE, else ./flashscenic_data)")


def _demo(args: argparse.Namespace) -> int:
    from .simulate import regulon_recovery, simulate_expression

    start = time.perf_counter()
    data = simulate_expression(n_cells=args.n_cells, n_genes=args.n_genes, seed=args.seed)
    simulated = time.perf_counter() - start

    from ._device import resolve_device
    from .aucell import get_aucell

    device = resolve_device(args.device)
    start = time.perf_counter()
    auc = get_aucell(data.expression, data.regulon_weights, k=None, device=device,
                     seed=args.seed, ties=args.ties, verbose=False)
    scored = time.perf_counter() - start

    table = regulon_recovery(auc, data)
    n_cells, n_genes = data.expression.shape
    print(f"Simulated {n_cells} cells x {n_genes} genes, {len(data.cell_type_names)} cell types, "
          f"{len(table)} planted regulons (seed {args.seed}).")
    print(f"Mean AUC per cell type (ties={args.ties}); recovered: the highest mean is in the planted type.\n")
    print(_format_recovery(table))
    print(f"\n{int(table['recovered'].sum())}/{len(table)} planted regulons recovered "
          f"(simulation {simulated:.2f} s, AUCell {scored:.2f} s on {device.type}).")
    return 0


def _format_recovery(table) -> str:
    """The recovery table as aligned text, 'yes'/'NO' for recovered."""
    shown = table.copy()
    shown["recovered"] = shown["recovered"].map({True: "yes", False: "NO"})
    return shown.reset_index().to_string(index=False, float_format="{:.4f}".format)


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
