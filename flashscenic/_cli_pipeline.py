"""The pipeline subcommands: ``run``, the pySCENIC-compatible stages ``grn``, ``ctx`` and
``aucell``, and ``rss`` and ``report`` (wired into ``flashscenic.cli``).

Every ``run_flashscenic`` parameter becomes a flag of the same name in dash form
(``--grn-n-steps``), with its default and the first sentence of its documentation taken
from the function itself, so the command line cannot drift from the Python API.
``grn``/``ctx``/``aucell`` read and write pySCENIC's files (adjacencies TSV, reg.csv, AUC
CSV), so any stage can be swapped for pySCENIC's own.
"""

from __future__ import annotations

import argparse
import inspect
import re
import tempfile
import time
from pathlib import Path

__all__ = ["add_pipeline_parsers"]

_DEVICES = ("auto", "cpu", "cuda")


def add_pipeline_parsers(commands, common: argparse.ArgumentParser) -> None:
    """Add ``run``, ``grn``, ``ctx``, ``aucell``, ``rss`` and ``report``."""
    _add_run(commands, common)
    _add_grn(commands, common)
    _add_ctx(commands, common)
    _add_aucell(commands, common)
    _add_rss(commands, common)
    _add_report(commands, common)


# ----------------------------------------------------------------------------- flags


def _parameter_help() -> dict[str, str]:
    """First sentence of each parameter's description in ``run_flashscenic``'s docstring."""
    from .pipeline import run_flashscenic

    doc = inspect.getdoc(run_flashscenic) or ""
    section = doc.split("Parameters\n----------\n", 1)[-1].split("\n\nReturns", 1)[0]
    found: dict[str, str] = {}
    for block in re.split(r"\n(?=\S)", section):
        name, _, text = block.partition("\n")
        sentence = " ".join(text.split())
        found[name.strip()] = sentence.split(". ")[0].rstrip(".")
    return found


def _add_parameter_flags(parser: argparse.ArgumentParser, prefixes: tuple[str, ...]) -> None:
    """Flags for the ``run_flashscenic`` parameters whose names start with ``prefixes``."""
    from .pipeline import pipeline_parameters

    helps = _parameter_help()
    group = parser.add_argument_group("SCENIC parameters (as run_flashscenic's)")
    for name, parameter in pipeline_parameters().items():
        if not name.startswith(prefixes) or name in ("device", "seed"):
            continue
        default = parameter.default
        flag = "--" + name.replace("_", "-")
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        text = f"{helps.get(name, '').replace('``', '')} (default: {shown})".replace("%", "%%")
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif isinstance(default, tuple):
            kind = float if "percentile" in name else type(default[0]) if default else int
            group.add_argument(flag, nargs="*", type=_number(kind), default=default, metavar="N", help=text)
        elif default is None:
            kind = float if "fraction" in name else int
            group.add_argument(flag, type=_number(kind), default=None, metavar="N", help=text)
        elif isinstance(default, str):
            choices = ("union", "best") if name == "pruning_merge_strategy" else None
            group.add_argument(flag, default=default, choices=choices, help=text)
        else:
            group.add_argument(flag, type=_number(type(default)), default=default, metavar="N", help=text)


def _number(kind: type):
    """An argparse type that names the expected kind of number in its error."""
    def convert(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
    convert.__name__ = kind.__name__
    return convert


def _add_execution_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=_DEVICES, default="auto",
                        help="where kernels run (default: %(default)s: CUDA when available)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the GRN's sampling and training and of "
                        "AUCell's tie order (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")


def _params(args: argparse.Namespace, **extra):
    """The pipeline's parameters from the parsed flags (only those this subcommand has)."""
    from .pipeline import params_from, pipeline_parameters

    values = {n: getattr(args, n) for n in pipeline_parameters() if hasattr(args, n)}
    values["verbose"] = not args.quiet
    values.update(extra)
    return params_from(values)


def _resource_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("resources (explicit paths, or downloaded for --species/--version)")
    group.add_argument("--species", default="human", help="human, mouse or drosophila (default: %(default)s)")
    group.add_argument("--version", default="v10", help="motif collection v10 or v9 (default: %(default)s)")
    group.add_argument("--datasource", default="scenic", help="registered datasource (default: %(default)s)")
    group.add_argument("--cache-dir", help="resource cache (default: $FLASHSCENIC_CACHE, else ./flashscenic_data)")
    group.add_argument("--tf-list", metavar="FILE", help="TF list, one name per line")
    group.add_argument("--ranking-db", metavar="FILE", action="append", help="Feather ranking database (repeat "
                       "for several)")
    group.add_argument("--motif-annotation", metavar="FILE", help="motif2tf annotation table (.tbl)")


def _resources(args: argparse.Namespace):
    from .pipeline import prepare_resources

    return prepare_resources(args.species, datasource=args.datasource, version=args.version,
                             cache_dir=args.cache_dir, tf_list_path=args.tf_list, ranking_db_paths=args.ranking_db,
                             motif_annotation_path=args.motif_annotation, verbose=not args.quiet)


def _input_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading the expression input")
    group.add_argument("--layer", help="AnnData/loom layer to read instead of X")
    group.add_argument("--log1p", action="store_true", help="take log1p of the values (for raw counts)")
    group.add_argument("--transpose", action="store_true", help="the CSV/TSV is genes x cells")


def _read_expression(path: str, args: argparse.Namespace):
    """(cells x genes matrix, gene names, cell names) of any input the store reads.

    The input goes through ``ingest_expression`` (one reader for every format), into a
    temporary store when it is not a store already.
    """
    from .store import ingest_expression, open_expression_store

    if _is_expression_store(path):
        store = open_expression_store(path)
        return store.read_rows(0, store.n_cells, store.layout), list(store.gene_names), list(store.cell_names)
    import logging

    quiet = logging.getLogger("flashscenic.store")  # the temporary store is no news to the user
    level = quiet.level
    with tempfile.TemporaryDirectory(prefix="flashscenic-") as tmp:
        quiet.setLevel(logging.WARNING)
        try:
            store = ingest_expression(path, Path(tmp) / "expression.zarr", layer=args.layer, log1p=args.log1p,
                                      transpose=args.transpose, verbose=False)
        finally:
            quiet.setLevel(level)
        matrix = store.read_rows(0, store.n_cells, store.layout)
        return matrix, list(store.gene_names), list(store.cell_names)


def _is_expression_store(path) -> bool:
    from .store import EXPRESSION_FORMAT

    meta = Path(path) / "zarr.json"
    return meta.is_file() and EXPRESSION_FORMAT in meta.read_text()


# ----------------------------------------------------------------------------- run


def _add_run(commands, common) -> None:
    parser = commands.add_parser(
        "run", parents=[common], help="the whole pipeline: GRN, modules, pruning, AUCell, RSS, report",
        description="Run SCENIC on INPUT (h5ad, AnnData zarr, loom, CSV/TSV, or an expression store) and write "
        "DIR/expression.zarr (unless INPUT is a store), DIR/results.zarr (a results store: weights, motifs, "
        "regulons, AUC, RSS, timings) and DIR/report.html. Pruning and AUCell run as tasks on a Dask cluster "
        "(embedded, or an existing one) or in this process with --n-workers 0.",
    )
    parser.add_argument("input", help="expression input, cells x genes, log-transformed (or use --log1p)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--adjacencies", metavar="FILE", help="skip GRN inference: use these pySCENIC/GRNBoost2 "
                        "adjacencies (TF, target, importance)")
    parser.add_argument("--cell-type-column", metavar="NAME", help="obs column with cell types (kept in the "
                        "store; used for RSS and the report)")
    parser.add_argument("--grn-max-cells", type=int, default=100_000, metavar="N",
                        help="train the GRN on at most N cells sampled with --seed (default: %(default)s)")
    parser.add_argument("--no-report", dest="report", action="store_false", help="do not write report.html")
    _input_flags(parser)
    _resource_flags(parser)
    _add_parameter_flags(parser, ("grn_", "module_", "pruning_", "annotation_", "aucell_"))
    execution = parser.add_argument_group("execution")
    _add_execution_flags(execution)
    execution.add_argument("--n-workers", type=int, metavar="N",
                           help="workers of the embedded Dask cluster; 0 runs in this process (default: one "
                           "per GPU with dask-cuda, else one per core, at most one per 2 GiB of memory)")
    execution.add_argument("--threads-per-worker", type=int, default=1, metavar="T",
                           help="threads per worker (default: %(default)s)")
    execution.add_argument("--chunk-cells", type=int, metavar="C", help="cells per AUCell task (default: from "
                           "worker memory)")
    execution.add_argument("--scheduler", metavar="ADDRESS", help="use the running Dask scheduler at ADDRESS "
                           "(tcp://host:port or tls://...)")
    execution.add_argument("--scheduler-file", metavar="FILE", help="use the running Dask scheduler described "
                           "by FILE (dask scheduler --scheduler-file)")
    execution.add_argument("--dashboard-address", default=":8787", metavar="ADDRESS",
                           help="dashboard of the embedded cluster (default: %(default)s; 'none' for none)")
    execution.add_argument("--resume", action="store_true", help="continue an interrupted run in DIR: "
                           "completed stages and AUC chunks are kept")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .pipeline import run_pipeline
    from .store import ingest_expression, open_expression_store

    if args.n_workers is not None and args.n_workers < 0:
        raise InputError(f"--n-workers must be >= 0, got {args.n_workers}")
    if args.chunk_cells is not None and args.chunk_cells < 1:
        raise InputError(f"--chunk-cells must be >= 1, got {args.chunk_cells}")
    if not Path(args.input).exists():
        from .errors import MissingFileError

        raise MissingFileError(f"input {args.input!r} does not exist")
    if not args.adjacencies:
        from .pipeline import _require_regdiffusion

        _require_regdiffusion()  # before any download or ingest
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    resources = _resources(args)
    if _is_expression_store(args.input):
        store = open_expression_store(args.input)
    elif args.resume and _is_expression_store(out / "expression.zarr"):
        store = open_expression_store(out / "expression.zarr")
    else:
        columns = [args.cell_type_column] if args.cell_type_column else []
        store = ingest_expression(args.input, out / "expression.zarr", layer=args.layer, log1p=args.log1p,
                                  transpose=args.transpose, obs_columns=columns, overwrite=True,
                                  verbose=not args.quiet)
    params = _params(args, device=args.device, seed=args.seed, grn_max_cells=args.grn_max_cells)
    adjacencies = None
    if args.adjacencies:
        from .export import read_adjacencies

        adjacencies = read_adjacencies(args.adjacencies)
    executor = _executor(args)
    try:
        results = run_pipeline(store, out, resources=resources, params=params, executor=executor,
                               adjacencies=adjacencies, cell_type_column=args.cell_type_column,
                               chunk_cells=args.chunk_cells, resume=args.resume, verbose=not args.quiet)
    finally:
        executor.close()
    report = None
    if args.report:
        from .report import write_report

        report = write_report(results, out / "report.html", cell_type_column=args.cell_type_column)
    regulons = results.read_regulons()
    print(f"{len(regulons)} regulons scored in {results.n_cells:,} cells in {time.perf_counter() - start:.1f} s; "
          f"results in {results.path}" + (f", report in {report}" if report else "") + ".")
    return 0


def _executor(args: argparse.Namespace):
    """In process for --n-workers 0, else a Dask cluster (embedded or the one given)."""
    from .distributed import start_executor

    return start_executor(n_workers=args.n_workers, threads_per_worker=args.threads_per_worker,
                          scheduler=args.scheduler, scheduler_file=args.scheduler_file,
                          dashboard_address=dashboard_address(args.dashboard_address), verbose=not args.quiet)


def dashboard_address(flag: str) -> str | None:
    """The ``--dashboard-address`` flag's value for ``start_executor``: ``'none'`` means no dashboard."""
    return None if str(flag).lower() == "none" else flag


# ----------------------------------------------------------------------------- stages


def _add_grn(commands, common) -> None:
    parser = commands.add_parser(
        "grn", parents=[common], help="GRN inference (RegDiffusion) -> pySCENIC adjacencies",
        description="Infer TF -> target weights with RegDiffusion and write them as pySCENIC's adjacencies "
        "(TF, target, importance), the input of `pyscenic ctx` or `flashscenic ctx`.",
    )
    parser.add_argument("expression", help="expression file (any format `flashscenic ingest` reads) or store")
    parser.add_argument("tf_list", help="TF list, one name per line")
    parser.add_argument("-o", "--output", required=True, help="adjacencies file (.tsv; .csv for commas)")
    parser.add_argument("--grn-max-cells", type=int, metavar="N", help="train on at most N cells sampled with "
                        "--seed (default: all)")
    _input_flags(parser)
    _add_parameter_flags(parser, ("grn_",))
    _add_execution_flags(parser)
    parser.set_defaults(run=_grn)


def _grn(args: argparse.Namespace) -> int:
    from .checks import check_tf_overlap, read_tf_names
    from .export import write_adjacencies
    from .grn import weights_to_adjacencies
    from .pipeline import infer_weights

    matrix, genes, _ = _read_expression(args.expression, args)
    tfs = check_tf_overlap(read_tf_names(args.tf_list), genes)
    params = _params(args, device=args.device, seed=args.seed, grn_max_cells=args.grn_max_cells)
    weights, tf_rows = infer_weights(matrix, genes, tfs, params)
    table = weights_to_adjacencies(weights, tf_rows, genes)
    write_adjacencies(table, args.output)
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
    _add_parameter_flags(parser, ("module_", "pruning_", "annotation_"))
    _add_execution_flags(parser)
    parser.set_defaults(run=_ctx)


def _ctx(args: argparse.Namespace) -> int:
    from .export import read_adjacencies
    from .pipeline import Resources, infer_weights, make_modules, merge_pruned, prune_task
    from .regulons import write_motifs_csv

    adjacencies = read_adjacencies(args.adjacencies)
    params = _params(args, device=args.device, seed=args.seed)
    expression = None
    if args.expression:
        expression, genes, _ = _read_expression(args.expression, args)
    else:
        genes = sorted(set(adjacencies["TF"]) | set(adjacencies["target"]))
    tfs = list(dict.fromkeys(adjacencies["TF"].astype(str)))
    weights, tf_rows = infer_weights(None, genes, tfs, params, adjacencies=adjacencies)
    modules = make_modules(weights, tf_rows, genes, params, expression=expression)
    resources = Resources(Path(args.adjacencies), tuple(Path(d) for d in args.databases), Path(args.annotations))
    tables = [prune_task(str(db), modules, args.annotations, params) for db in args.databases]
    table, regulons = merge_pruned(tables, modules, params, resources)
    write_motifs_csv(table, args.output)
    print(f"{len(table):,} enriched motifs, {len(regulons)} regulons, written to {args.output}.")
    return 0


def _add_aucell(commands, common) -> None:
    parser = commands.add_parser(
        "aucell", parents=[common], help="regulon activity per cell -> pySCENIC AUC CSV",
        description="Score every regulon in every cell with AUCell (pySCENIC's numbers for the same seed) and "
        "write pySCENIC's AUC CSV (cells x regulons).",
    )
    parser.add_argument("expression", help="expression file (any format `ingest` reads) or store")
    parser.add_argument("regulons", help="regulons: pySCENIC reg.csv (motifs), .gmt or .json")
    parser.add_argument("-o", "--output", required=True, help="AUC CSV to write (.tsv for tabs)")
    parser.add_argument("--weighted", action="store_true", help="use the regulons' gene weights, as pySCENIC's "
                        "Python aucell does (default: unweighted, as its command line)")
    _input_flags(parser)
    _add_parameter_flags(parser, ("aucell_",))
    _add_execution_flags(parser)
    parser.set_defaults(run=_aucell)


def _read_regulons(path: str) -> list[dict]:
    from .errors import InputError
    from .export import read_regulons_gmt, read_regulons_json
    from .regulons import read_motifs_csv, regulons_from_motifs

    suffixes = [s.lower() for s in Path(path).suffixes]
    if ".gmt" in suffixes:
        return read_regulons_gmt(path)
    if ".json" in suffixes:
        return read_regulons_json(path)
    if ".csv" in suffixes or ".tsv" in suffixes:
        return regulons_from_motifs(read_motifs_csv(path))
    raise InputError(f"{path}: regulons must be a reg.csv (.csv), a .gmt or a .json file")


def _aucell(args: argparse.Namespace) -> int:
    import numpy as np

    from .errors import InputError
    from .export import write_auc_csv
    from .pipeline import aucell_block
    from .regulons import regulons_to_adjacency

    matrix, genes, cells = _read_expression(args.expression, args)
    regulons = _read_regulons(args.regulons)
    if not regulons:
        raise InputError(f"{args.regulons} holds no regulon")
    adjacency = regulons_to_adjacency(regulons, genes, weighted=args.weighted)
    # pySCENIC scores a regulon 0 in every cell when under 80% of its genes are expression columns.
    present = np.count_nonzero(adjacency, axis=1) / np.array([max(len(r["genes"]), 1) for r in regulons])
    auc = aucell_block(matrix, adjacency, _params(args, device=args.device, seed=args.seed))
    auc[:, present < 0.8] = 0.0
    write_auc_csv(auc, args.output, cells, [r["name"] for r in regulons])
    print(f"AUC of {len(regulons)} regulons in {len(cells):,} cells written to {args.output}.")
    return 0


# ----------------------------------------------------------------------------- rss, report


def _add_rss(commands, common) -> None:
    parser = commands.add_parser(
        "rss", parents=[common], help="regulon specificity scores per cell type",
        description="Regulon specificity scores (Suo et al. 2018) of every regulon in every cell type, from a "
        "results store (its cell labels) or an AUC CSV with a cell-type file.",
    )
    parser.add_argument("auc", help="a results store, or an AUC CSV (cells x regulons)")
    parser.add_argument("--cell-types", metavar="FILE", help="CSV/TSV: cell names in the first column, labels in "
                        "--cell-type-column (default: the second column)")
    parser.add_argument("--cell-type-column", metavar="NAME", help="label column (default: the first one)")
    parser.add_argument("-o", "--output", required=True, help="RSS CSV to write (cell types x regulons)")
    parser.set_defaults(run=_rss)


def _rss(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .export import read_auc_csv
    from .rss import regulon_specificity_scores

    if (Path(args.auc) / "zarr.json").is_file():
        from .store import open_results_store

        results = open_results_store(args.auc)
        auc = results.read_auc(as_frame=True)
        labels = results.read_cells().set_index("cell")
    else:
        auc = read_auc_csv(args.auc)
        labels = None
    if args.cell_types:
        import pandas as pd

        sep = "\t" if Path(args.cell_types).suffix.lower() in (".tsv", ".txt") else ","
        # names stay text ("NA" is a name); an empty field is a missing label
        labels = pd.read_csv(args.cell_types, sep=sep, index_col=0, dtype=str, keep_default_na=False, na_values=[""])
    if labels is None or labels.shape[1] == 0:
        raise InputError("no cell labels: give --cell-types FILE (or a results store whose cells carry labels)")
    column = args.cell_type_column or labels.columns[0]
    if column not in labels.columns:
        raise InputError(f"no column {column!r} in the cell labels; there are {list(labels.columns)}")
    if not labels.index.is_unique:
        raise InputError(f"the cell labels name some cells twice, e.g. {list(labels.index[labels.index.duplicated()][:3])}")
    missing = auc.index.difference(labels.index)
    if len(missing):
        raise InputError(f"{len(missing)} cells of the AUC have no label, e.g. {list(missing[:3])}")
    values = labels.loc[auc.index, column]
    labelled = values.notna().to_numpy()  # as `run`: unlabelled cells are left out
    rss = regulon_specificity_scores(auc.iloc[labelled], values[labelled].astype(str).to_numpy())
    rss.rename_axis(column).to_csv(args.output, sep="\t" if args.output.endswith(".tsv") else ",")
    print(f"RSS of {rss.shape[1]} regulons in {rss.shape[0]} cell types written to {args.output}.")
    return 0


def _add_report(commands, common) -> None:
    parser = commands.add_parser(
        "report", parents=[common], help="an HTML report of a results store",
        description="Write a self-contained HTML report of a run: RSS heatmap of cell types x top regulons, mean "
        "AUC per cell type, regulon size and NES distributions, stage timings.",
    )
    parser.add_argument("results", help="the results store of a run (DIR/results.zarr)")
    parser.add_argument("-o", "--output", help="HTML file (default: report.html beside RESULTS)")
    parser.add_argument("--cell-type-column", metavar="NAME", help="cell label column (default: the first)")
    parser.add_argument("--top-n", type=int, default=5, help="top regulons per cell type (default: %(default)s)")
    parser.set_defaults(run=_report)


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    path = write_report(args.results, args.output, cell_type_column=args.cell_type_column, top_n=args.top_n)
    print(f"Report written to {path}.")
    return 0
