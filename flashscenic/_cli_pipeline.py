"""The pipeline commands: ``run``, the pySCENIC-compatible steps ``grn``, ``ctx`` and ``aucell``,
and ``rss`` and ``report`` (wired into ``flashscenic.cli``).

Every flag of a SCENIC parameter is generated from ``flashscenic.Params`` (its name in dash
form, its type, choices, default and the first sentence of its help), so the command line
cannot drift from the Python API; the defaults where it deliberately differs are
``params.CLI_DEFAULTS``, shown in ``--help``. Each command is one call of a public
function: ``run`` -> ``run_pipeline``, ``grn``/``ctx``/``aucell``/``rss`` ->
``flashscenic.steps``, ``report`` -> ``write_report``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

from .params import CLI_DEFAULTS, DEFAULT_DASHBOARD, Params

__all__ = ["add_pipeline_parsers", "params_from_args", "dashboard_address"]


def add_pipeline_parsers(commands, common: argparse.ArgumentParser) -> None:
    """Add ``run``, ``grn``, ``ctx``, ``aucell``, ``rss`` and ``report``."""
    _add_run(commands, common)
    _add_grn(commands, common)
    _add_ctx(commands, common)
    _add_aucell(commands, common)
    _add_rss(commands, common)
    _add_report(commands, common)


# ----------------------------------------------------------------------------- flags from Params


def _first_sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".")


def add_parameter_flags(group, groups: tuple[str, ...]) -> None:
    """Add to ``group`` (a parser or an argument group) the flags of the ``Params`` fields of ``groups``."""
    for spec in dataclasses.fields(Params):
        meta = spec.metadata
        if not meta["cli"] or meta["group"] not in groups:
            continue
        flag = meta["flag"] or "--" + spec.name.replace("_", "-")
        default, why = CLI_DEFAULTS.get(spec.name, (spec.default, None))
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        text = _first_sentence(meta["help"])
        if not (default is None and "default" in text):
            text += f" (default: {shown}" + (f"; the API's is {spec.default!r}: {why}" if why else "") + ")"
        options = dict(dest=spec.name, default=default, help=text.replace("%", "%%"))
        kind = meta["kind"]
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        elif spec.name == "ranking_db_paths":
            group.add_argument(flag, action="append", metavar="FILE", **options)
        elif isinstance(spec.default, tuple):
            group.add_argument(flag, nargs="*", type=_number(kind), metavar="N", **options)
        elif meta["choices"]:
            group.add_argument(flag, choices=meta["choices"], **options)
        elif kind is str:
            group.add_argument(flag, metavar="FILE" if spec.name.endswith("_path") else None, **options)
        else:  # a parameter whose API default is None takes 'none' too
            optional = spec.default is None
            group.add_argument(flag, type=_number(kind, optional), metavar="N|none" if optional else "N", **options)


def _number(kind: type, optional: bool = False):
    """An argparse type that names the expected kind of number in its error; 'none' is None when optional."""
    def convert(text: str):
        if optional and text.lower() == "none":
            return None
        try:
            return kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}{' or none' if optional else ''}, got {text!r}")
    convert.__name__ = kind.__name__
    return convert


def params_from_args(args: argparse.Namespace) -> Params:
    """The ``Params`` of the parsed flags (fields without a flag keep their defaults); validated."""
    values = {n: getattr(args, n) for n in Params.names() if hasattr(args, n)}
    values["verbose"] = not args.quiet
    return Params.from_dict(values)


def _quiet_flag(parser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")


def _input_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading the expression input")
    group.add_argument("--layer", help="AnnData/loom layer to read instead of X")
    group.add_argument("--log1p", action="store_true", help="take log1p of the values (for raw counts)")
    group.add_argument("--transpose", action="store_true", help="the CSV/TSV is genes x cells")


def _input_options(args) -> dict:
    return {"layer": args.layer, "log1p": args.log1p, "transpose": args.transpose}


# ----------------------------------------------------------------------------- run


def _add_run(commands, common) -> None:
    parser = commands.add_parser(
        "run", parents=[common], help="the whole pipeline: GRN, modules, pruning, AUCell, RSS, report",
        description="Run SCENIC on INPUT (h5ad, AnnData zarr, loom, CSV/TSV, or an expression store) into the run "
        "folder DIR: DIR/expression.zarr (unless INPUT is a store), DIR/results.zarr (weights, motifs, regulons, "
        "AUC, RSS, timings, parameters) and DIR/report.html. Pruning and AUCell run as tasks on a Dask cluster "
        "(embedded, or an existing one) or in this process with --n-workers 0; the GRN of a single run trains in "
        "this process when the embedded cluster's workers are this machine's CPUs, else on a worker. A folder that holds a run is "
        "refused unless --resume (continue it with the same settings; anything changed is named) or --overwrite "
        "(replace it; the old run stays until the new one succeeds). DIR is locked while a run writes it.",
    )
    parser.add_argument("input", help="expression input, cells x genes, log-transformed (or use --log1p)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the run folder (created)")
    parser.add_argument("--adjacencies", metavar="FILE", help="skip GRN inference: use these pySCENIC/GRNBoost2 "
                        "adjacencies (TF, target, importance)")
    parser.add_argument("--cell-type-column", metavar="NAME", help="obs column with cell types, kept in the run "
                        "and used for RSS and the report (default: for an expression-store INPUT, its first "
                        "non-numeric label column; a file's labels are kept only when named here)")
    parser.add_argument("--no-report", dest="report", action="store_false", help="do not write report.html")
    life = parser.add_mutually_exclusive_group()
    life.add_argument("--resume", action="store_true", help="continue the run in DIR made with these settings (an "
                      "interrupted one, else the finished one): finished stages and AUC chunks are kept; refused, "
                      "naming what changed, if the input, adjacencies, input flags, resources or parameters differ; "
                      "an empty DIR starts the run")
    life.add_argument("--overwrite", action="store_true", help="replace the run in DIR (kept until the new run "
                      "succeeds)")
    _input_flags(parser)
    add_parameter_flags(parser.add_argument_group("resources (explicit paths, or downloaded for "
                                                  "--species/--version)"), ("resources",))
    _scenic_flags(parser, ("grn", "module", "pruning", "annotation", "aucell"))
    _executor_flags(_execution_flags(parser))
    parser.set_defaults(run=_run)


def _scenic_flags(parser, groups: tuple[str, ...]) -> None:
    add_parameter_flags(parser.add_argument_group("SCENIC parameters (as run_flashscenic's)"), groups)


def _execution_flags(parser):
    group = parser.add_argument_group("execution")
    add_parameter_flags(group, ("execution",))
    _quiet_flag(group)
    return group


def _executor_flags(group) -> None:
    group.add_argument("--n-workers", type=int, metavar="N",
                       help="workers of the embedded Dask cluster; 0 runs in this process (default: with GPUs "
                       "and --device auto/cuda, one per GPU, and never more; else one per core, at most one per "
                       "2 GiB of memory)")
    group.add_argument("--threads-per-worker", type=int, default=1, metavar="T",
                       help="threads per worker (default: %(default)s)")
    group.add_argument("--chunk-cells", type=int, metavar="C", help="cells per AUCell task (default: from worker "
                       "memory)")
    group.add_argument("--scheduler", metavar="ADDRESS", help="use the running Dask scheduler at ADDRESS "
                       "(tcp://host:port or tls://...)")
    group.add_argument("--scheduler-file", metavar="FILE", help="use the running Dask scheduler described by FILE "
                       "(dask scheduler --scheduler-file)")
    group.add_argument("--dashboard-address", default=DEFAULT_DASHBOARD, metavar="ADDRESS",
                       help="dashboard of the embedded cluster (default: %(default)s; 'none' for none)")


def _run(args: argparse.Namespace) -> int:
    from .distributed import start_executor
    from .pipeline import run_pipeline

    start = time.perf_counter()
    params = params_from_args(args)
    executor = functools.partial(start_executor, n_workers=args.n_workers, device=params.device,
                                 threads_per_worker=args.threads_per_worker, scheduler=args.scheduler,
                                 scheduler_file=args.scheduler_file,
                                 dashboard_address=dashboard_address(args.dashboard_address), verbose=not args.quiet)
    results = run_pipeline(args.input, args.out, params=params, adjacencies=args.adjacencies,
                           cell_type_column=args.cell_type_column, executor=executor, chunk_cells=args.chunk_cells,
                           resume=args.resume, overwrite=args.overwrite, report=args.report, **_input_options(args))
    report = results.path.parent / "report.html"
    print(f"{len(results.regulon_names)} regulons scored in {results.n_cells:,} cells in "
          f"{time.perf_counter() - start:.1f} s; results in {results.path}"
          + (f", report in {report}" if report.exists() else "") + ".")
    return 0


def dashboard_address(flag: str) -> str | None:
    """The ``--dashboard-address`` flag's value for ``start_executor``: ``'none'`` means no dashboard."""
    return None if str(flag).lower() == "none" else flag


# ----------------------------------------------------------------------------- the pySCENIC steps


def _add_grn(commands, common) -> None:
    parser = commands.add_parser(
        "grn", parents=[common], help="GRN inference (RegDiffusion) -> pySCENIC adjacencies",
        description="Infer TF -> target weights with RegDiffusion and write them as pySCENIC's adjacencies "
        "(TF, target, importance), the input of `pyscenic ctx` or `flashscenic ctx`.",
    )
    parser.add_argument("expression", help="expression file (any format `flashscenic ingest` reads) or store")
    parser.add_argument("tf_list", help="TF list, one name per line")
    parser.add_argument("-o", "--output", required=True, help="adjacencies file (.tsv; .csv for commas)")
    _input_flags(parser)
    _scenic_flags(parser, ("grn",))
    _execution_flags(parser)
    parser.set_defaults(run=_grn)


def _grn(args: argparse.Namespace) -> int:
    from .steps import run_grn

    table = run_grn(args.expression, args.tf_list, args.output, params=params_from_args(args),
                    **_input_options(args))
    print(f"{len(table):,} links of {table['TF'].nunique()} TFs written to {args.output}.")
    return 0


def _add_ctx(commands, common) -> None:
    parser = commands.add_parser(
        "ctx", parents=[common], help="modules + cisTarget pruning: adjacencies -> pySCENIC reg.csv",
        description="Build modules from adjacencies (pySCENIC's or `flashscenic grn`'s), prune them with the "
        "ranking databases and the motif annotation, and write the enriched motifs as pySCENIC's reg.csv, the "
        "input of `pyscenic aucell` or `flashscenic aucell`.",
    )
    parser.add_argument("adjacencies", help="adjacencies file (TF, target, importance)")
    parser.add_argument("databases", nargs="+", help="Feather ranking databases")
    parser.add_argument("--annotations", required=True, metavar="FILE", help="motif2tf annotation table (.tbl)")
    parser.add_argument("--expression", metavar="FILE", help="expression (any format `ingest` reads): split "
                        "links by correlation and keep activating modules, as pySCENIC's ctx does; without it, "
                        "no split (the pipeline's behaviour)")
    parser.add_argument("-o", "--output", required=True, help="reg.csv to write")
    _input_flags(parser)
    _scenic_flags(parser, ("module", "pruning", "annotation"))
    _execution_flags(parser)
    parser.set_defaults(run=_ctx)


def _ctx(args: argparse.Namespace) -> int:
    from .steps import run_ctx

    table, regulons = run_ctx(args.adjacencies, args.databases, args.annotations, args.output,
                              params=params_from_args(args), expression=args.expression, **_input_options(args))
    print(f"{len(table):,} enriched motifs, {len(regulons)} regulons, written to {args.output}.")
    return 0


def _add_aucell(commands, common) -> None:
    parser = commands.add_parser(
        "aucell", parents=[common], help="regulon activity per cell -> pySCENIC AUC CSV",
        description="Score every regulon in every cell with AUCell (pySCENIC's numbers for the same seed, its 80% "
        "rule included) and write pySCENIC's AUC CSV (cells x regulons).",
    )
    parser.add_argument("expression", help="expression file (any format `ingest` reads) or store")
    parser.add_argument("regulons", help="regulons: pySCENIC reg.csv (motifs), .gmt or .json")
    parser.add_argument("-o", "--output", required=True, help="AUC CSV to write (.tsv for tabs)")
    parser.add_argument("--weighted", action="store_true", help="use the regulons' gene weights, as pySCENIC's "
                        "Python aucell does (default: unweighted, as its command line)")
    _input_flags(parser)
    _scenic_flags(parser, ("aucell",))
    _execution_flags(parser)
    parser.set_defaults(run=_aucell)


def _aucell(args: argparse.Namespace) -> int:
    from .steps import run_aucell

    auc = run_aucell(args.expression, args.regulons, args.output, params=params_from_args(args),
                     weighted=args.weighted, **_input_options(args))
    print(f"AUC of {auc.shape[1]} regulons in {auc.shape[0]:,} cells written to {args.output}.")
    return 0


# ----------------------------------------------------------------------------- rss, report


def _add_rss(commands, common) -> None:
    parser = commands.add_parser(
        "rss", parents=[common], help="regulon specificity scores per cell type",
        description="Regulon specificity scores (Suo et al. 2018) of every regulon in every cell type: a results "
        "store's stored RSS (the one its run computed, with its label column), or computed from an AUC CSV (or a "
        "store) and a cell-type file. Cells without a label are left out.",
    )
    parser.add_argument("auc", help="a results store, or an AUC CSV (cells x regulons)")
    parser.add_argument("--cell-types", metavar="FILE", help="CSV/TSV: cell names in the first column, labels in "
                        "--cell-type-column (default: the second column)")
    parser.add_argument("--cell-type-column", metavar="NAME", help="label column (default: the run's, else the "
                        "first one)")
    parser.add_argument("-o", "--output", required=True, help="RSS CSV to write (cell types x regulons)")
    parser.set_defaults(run=_rss)


def _rss(args: argparse.Namespace) -> int:
    from .steps import run_rss

    rss = run_rss(args.auc, args.output, cell_types=args.cell_types, cell_type_column=args.cell_type_column)
    print(f"RSS of {rss.shape[1]} regulons in {rss.shape[0]} cell types written to {args.output}.")
    return 0


def _add_report(commands, common) -> None:
    parser = commands.add_parser(
        "report", parents=[common], help="an HTML report of a results store",
        description="Write a self-contained HTML report of a run: the cells embedded by regulon activity (PCA "
        "of a seeded subsample, coloured by cell type), mean AUC per cell type and the RSS as heatmaps clustered "
        "by regulon and cell type, each regulon's binarised on-fraction per cell type, regulon sizes, NES, the "
        "recurrence over GRN runs after a multi-run, and stage timings.",
    )
    parser.add_argument("results", help="the results store of a run (DIR/results.zarr)")
    parser.add_argument("-o", "--output", help="HTML file (default: report.html beside RESULTS)")
    parser.add_argument("--cell-type-column", metavar="NAME", help="cell label column (default: the one the run's "
                        "RSS used, else the first)")
    parser.add_argument("--top-n", type=int, default=5, help="top regulons per cell type (default: %(default)s)")
    parser.set_defaults(run=_report)


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    path = write_report(args.results, args.output, cell_type_column=args.cell_type_column, top_n=args.top_n)
    print(f"Report written to {path}.")
    return 0
