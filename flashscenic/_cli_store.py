"""The ``ingest`` and ``export`` subcommands (wired into ``flashscenic.cli``).

Each turns its flags into one call of a public function (``ingest_expression``,
``export_results``) and prints what it returns; user mistakes arrive as ``InputError`` and
``cli.main`` prints them as one line. zarr, anndata and h5py are imported only when one of
these subcommands runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .params import EXPORT_FORMATS

__all__ = ["add_ingest_parser", "add_export_parser"]



def add_ingest_parser(subparsers, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``flashscenic ingest INPUT STORE [options]``."""
    parser = subparsers.add_parser(
        "ingest", parents=[common], help="write an expression matrix into a chunked zarr expression store",
        description="Read an expression matrix (h5ad, AnnData zarr, loom as pySCENIC writes it, CSV/TSV cells x "
        "genes) a block of cells at a time, check it (names, NaN/inf, orientation) and write it as a row-chunked "
        "zarr store in AnnData's layout (anndata.read_zarr opens it). Every later stage reads from this store.",
    )
    parser.add_argument("input", help="expression file: .h5ad, .zarr, .loom, .csv or .tsv (optionally .gz)")
    parser.add_argument("store", help="the store to create (a folder, by convention NAME.zarr)")
    parser.add_argument("--format", choices=["h5ad", "zarr", "loom", "csv", "tsv"],
                        help="input format when its name does not tell")
    parser.add_argument("--layer", help="read this AnnData/loom layer instead of X")
    parser.add_argument("--log1p", action="store_true", help="store log1p of the values (SCENIC wants log "
                        "expression; use it for raw counts)")
    genes = parser.add_mutually_exclusive_group()
    genes.add_argument("--genes", metavar="FILE", help="keep only the genes listed in FILE (one per line)")
    genes.add_argument("--n-top-genes", type=int, metavar="N", help="keep the N genes of highest variance")
    parser.add_argument("--obs-columns", metavar="NAME", nargs="+", default=[],
                        help="cell annotation columns to keep (e.g. cell type labels)")
    parser.add_argument("--layout", choices=["auto", "dense", "csr"], default="auto",
                        help="X layout of the store (default: %(default)s: CSR for sparse input)")
    parser.add_argument("--memory-budget", default="256MB", metavar="SIZE",
                        help="memory for one chunk read as dense float32; sets the cells per chunk "
                        "(default: %(default)s)")
    parser.add_argument("--chunk-rows", type=int, metavar="N", help="cells per chunk (overrides --memory-budget)")
    parser.add_argument("--compression", choices=["lz4", "zstd", "none"], default="lz4",
                        help="lz4 (default): fastest; zstd: smaller store, slower to write")
    parser.add_argument("--transpose", action="store_true", help="the CSV/TSV is genes x cells")
    parser.add_argument("--gene-attribute", default="Gene", help="loom row attribute with the gene names "
                        "(default: %(default)s)")
    parser.add_argument("--cell-attribute", default="CellID", help="loom column attribute with the cell names "
                        "(default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace STORE if it exists (once the new one "
                        "is complete)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_ingest)
    return parser


def _ingest(args: argparse.Namespace) -> int:
    from .store import ingest_expression

    start = time.perf_counter()
    store = ingest_expression(
        args.input, args.store, format=args.format, layer=args.layer, log1p=args.log1p,
        genes=Path(args.genes) if args.genes else None, n_top_genes=args.n_top_genes, obs_columns=args.obs_columns,
        layout=args.layout, memory_budget=args.memory_budget, chunk_rows=args.chunk_rows,
        compression=args.compression, transpose=args.transpose,
        gene_attribute=args.gene_attribute, cell_attribute=args.cell_attribute, overwrite=args.overwrite,
        verbose=not args.quiet,
    )
    seconds = time.perf_counter() - start
    nnz = store.metadata.get("nnz", 0)
    density = nnz / max(1, store.n_cells * store.n_genes)
    print(f"Wrote {store.path}: {store.n_cells:,} cells x {store.n_genes:,} genes, {store.layout} "
          f"({density:.1%} non-zero), {store.n_chunks} chunk(s) of {store.chunk_rows:,} cells, in {seconds:.1f} s.")
    return 0


def add_export_parser(subparsers, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``flashscenic export RESULTS --format FORMAT [...]``."""
    parser = subparsers.add_parser(
        "export", parents=[common], help="write a results store in pySCENIC, AnnData or SCope formats",
        description="Write parts of a results store as pySCENIC's files (adjacencies TSV, reg.csv, GMT, JSON, "
        "AUC CSV), an AnnData (.h5ad with obsm['X_aucell']) or a SCope loom.",
    )
    parser.add_argument("results", help="the results store of a run")
    parser.add_argument("--format", dest="formats", action="append", required=True, choices=list(EXPORT_FORMATS),
                        metavar="FORMAT", help=f"one of {', '.join(EXPORT_FORMATS)}; repeat for several")
    place = parser.add_mutually_exclusive_group()
    place.add_argument("--out-dir", help="folder for the files, under their default names "
                       "(default: the folder holding RESULTS)")
    place.add_argument("--output", "-o", help="file name (with a single --format)")
    parser.add_argument("--expression", help="expression store for the loom (default: the run's)")
    parser.add_argument("--cell-annotations", metavar="COLUMN",
                        help="obs column of the expression store with cell types, for the loom")
    parser.add_argument("--genome", default="Unknown", help="genome name written into the loom")
    parser.add_argument("--title", help="loom title (default: the file name)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_export)
    return parser


def _export(args: argparse.Namespace) -> int:
    from .export import export_results

    written = export_results(
        args.results, args.formats, args.out_dir, output=args.output, expression=args.expression,
        cell_annotations=args.cell_annotations, genome=args.genome, title=args.title, verbose=not args.quiet,
    )
    for fmt, path in written.items():
        print(f"{fmt}: {path}")
    return 0
