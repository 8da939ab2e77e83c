"""pySCENIC's steps on pySCENIC's files, so that any step can be swapped for pySCENIC's own.

====================  =====================================================================
``run_grn``            expression + TF list -> adjacencies TSV (``pyscenic grn``)
``run_ctx``            adjacencies + databases + annotation -> reg.csv (``pyscenic ctx``)
``run_aucell``         expression + regulons (reg.csv, GMT, JSON) -> AUC CSV (``pyscenic aucell``)
``run_rss``            AUC (CSV or a results store) + cell labels -> RSS CSV
====================  =====================================================================

Each is what the ``flashscenic`` command of the same name calls; each reads its inputs with
``flashscenic.io`` and the stage functions, and writes its output atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .errors import InputError
from .params import Params

__all__ = ["run_grn", "run_ctx", "run_aucell", "run_rss", "read_regulons"]


def _matrix(expression, layer, log1p, transpose):
    from .io import read_expression

    adata = read_expression(expression, layer=layer, log1p=log1p, transpose=transpose)
    return adata.X, [str(g) for g in adata.var_names], [str(c) for c in adata.obs_names]


def run_grn(expression, tf_list, output: str | os.PathLike, *, params: Params | None = None,
            layer: str | None = None, log1p: bool = False, transpose: bool = False) -> pd.DataFrame:
    """RegDiffusion on ``expression`` (any input ``flashscenic.io`` reads); write and return the
    adjacencies (TF, target, importance) of the TFs of ``tf_list`` found among its genes."""
    from .checks import check_tf_overlap, read_tf_names
    from .export import write_adjacencies
    from .grn import weights_to_adjacencies
    from .stages import announce_grn_time, infer_weights, require_regdiffusion

    params = (params or Params()).with_seed()
    require_regdiffusion()
    tf_names = read_tf_names(tf_list)
    matrix, genes, _ = _matrix(expression, layer, log1p, transpose)
    announce_grn_time(len(genes), matrix.shape[0], params)
    weights, tf_rows, _ = infer_weights(matrix, genes, check_tf_overlap(tf_names, genes), params)
    table = weights_to_adjacencies(weights, tf_rows, genes)
    write_adjacencies(table, output)
    return table


def run_ctx(adjacencies, databases, annotations, output: str | os.PathLike, *, params: Params | None = None,
            expression=None, layer: str | None = None, log1p: bool = False,
            transpose: bool = False) -> tuple[pd.DataFrame, list[dict]]:
    """Modules from ``adjacencies`` pruned with ``databases`` and ``annotations``; write reg.csv.

    With ``expression``, links are split by correlation and only activating modules kept, as
    pySCENIC's ``ctx`` does; without it no split is made (the pipeline's behaviour).
    Returns the motif table and the regulons.
    """
    from .export import read_adjacencies
    from .regulons import write_motifs_csv
    from .stages import Resources, infer_weights, load_annotation, make_modules, prune

    params = (params or Params()).with_seed()
    databases = [databases] if isinstance(databases, (str, os.PathLike)) else list(databases)
    table = read_adjacencies(adjacencies) if not isinstance(adjacencies, pd.DataFrame) else adjacencies
    matrix = None
    if expression is not None:
        matrix, genes, _ = _matrix(expression, layer, log1p, transpose)
    else:
        genes = sorted(set(table["TF"].astype(str)) | set(table["target"].astype(str)))
    resources = Resources(Path(adjacencies) if not isinstance(adjacencies, pd.DataFrame) else Path("adjacencies"),
                          tuple(Path(d).resolve() for d in databases), Path(annotations).resolve())
    for database in resources.ranking_databases:
        if not database.is_file():
            from .errors import MissingFileError

            raise MissingFileError(f"ranking database {str(database)!r} does not exist")
    load_annotation(resources.motif_annotation, params)  # a bad annotation is refused before the modules
    tfs = list(dict.fromkeys(table["TF"].astype(str)))
    weights, tf_rows, _ = infer_weights(None, genes, tfs, params, adjacencies=table)
    modules = make_modules(weights, tf_rows, genes, params, expression=matrix)
    motifs, regulons = prune(modules, params, resources)
    write_motifs_csv(motifs, output)
    return motifs, regulons


def read_regulons(path: str | os.PathLike) -> list[dict]:
    """Regulons from a pySCENIC reg.csv (built with pySCENIC's rules), a .gmt or a .json file."""
    from .export import read_regulons_gmt, read_regulons_json
    from .regulons import read_motifs_csv, regulons_from_motifs

    suffixes = [s.lower() for s in Path(path).suffixes]
    if ".gmt" in suffixes:
        regulons = read_regulons_gmt(path)
    elif ".json" in suffixes:
        regulons = read_regulons_json(path)
    elif ".csv" in suffixes or ".tsv" in suffixes:
        regulons = regulons_from_motifs(read_motifs_csv(path))
    else:
        raise InputError(f"{path}: regulons must be a reg.csv (.csv), a .gmt or a .json file")
    if not regulons:
        raise InputError(f"{path} holds no regulon")
    return regulons


def run_aucell(expression, regulons, output: str | os.PathLike, *, params: Params | None = None,
               weighted: bool = False, layer: str | None = None, log1p: bool = False,
               transpose: bool = False) -> pd.DataFrame:
    """AUCell of ``regulons`` (a file ``read_regulons`` reads, or regulon dicts) in every cell of
    ``expression``; pySCENIC's 80% rule applies. Writes and returns the cells x regulons AUC."""
    from .export import write_auc_csv
    from .stages import score_regulons

    params = (params or Params()).with_seed()
    found = read_regulons(regulons) if isinstance(regulons, (str, os.PathLike)) else list(regulons)
    matrix, genes, cells = _matrix(expression, layer, log1p, transpose)
    auc = score_regulons(matrix, genes, found, params, weighted=weighted)
    frame = pd.DataFrame(auc, index=pd.Index(cells, name="Cell"),
                         columns=pd.Index([r["name"] for r in found], name="Regulon"))
    write_auc_csv(frame, output)
    return frame


def run_rss(auc, output: str | os.PathLike | None = None, *, cell_types=None,
            cell_type_column: str | None = None) -> pd.DataFrame:
    """Regulon specificity scores per cell type; write them (CSV, or TSV for ``.tsv``) when ``output`` is given.

    ``auc``: a results store (its stored RSS is used when no other labels are asked for) or
    an AUC CSV. ``cell_types``: a CSV/TSV with cell names in the first column (labels in
    ``cell_type_column``, default its first other column), or a Series of labels by cell.
    Cells without a label are left out.
    """
    from ._utils import atomic_path
    from .rss import rss_by_label

    results = None
    if (Path(auc) / "zarr.json").is_file():
        from .store import open_results_store

        results = open_results_store(auc)
    stored = results.stages.get("rss", {}) if results is not None else {}
    if (results is not None and cell_types is None and stored.get("complete")
            and cell_type_column in (None, stored.get("cell_type_column"))):
        column = stored["cell_type_column"]
        rss = results.read_table("rss").set_index("cell_type").rename_axis(column)
    else:
        frame = results.read_auc(as_frame=True) if results is not None else _read_auc_csv(auc)
        labels = _labels(cell_types, cell_type_column, results)
        missing = frame.index.difference(labels.index)
        if len(missing):
            raise InputError(f"{len(missing)} cells of the AUC have no label, e.g. {list(missing[:3])}")
        rss = rss_by_label(frame, labels)
    if output is not None:
        with atomic_path(output) as tmp:
            rss.to_csv(tmp, sep="\t" if str(output).endswith(".tsv") else ",")
    return rss


def _read_auc_csv(path):
    from .export import read_auc_csv

    return read_auc_csv(path)


def _labels(cell_types, column: str | None, results) -> pd.Series:
    """One label per cell (index: cell names), from a file, a Series, or the results store's cells."""
    from .rss import default_label_column

    if isinstance(cell_types, pd.Series):
        return cell_types
    if cell_types is not None:
        from ._utils import read_text

        sep = "\t" if Path(cell_types).suffix.lower() in (".tsv", ".txt") else ","
        read_text(cell_types, "cell-type file")  # not UTF-8: one line naming the line
        # names stay text ("NA" is a name); an empty field is a missing label
        table = pd.read_csv(cell_types, sep=sep, index_col=0, dtype=str, keep_default_na=False, na_values=[""])
        where = f"the cell-type file {cell_types}"
    elif results is not None:
        table = results.read_cells().set_index("cell")
        where = f"the cells of {results.path}"
    else:
        raise InputError("no cell labels: give --cell-types FILE (or a results store whose cells carry labels)")
    if table.shape[1] == 0:
        raise InputError(f"no cell labels in {where}: give --cell-types FILE")
    column = column or default_label_column(table) or table.columns[0]
    if column not in table.columns:
        raise InputError(f"no column {column!r} in {where}; there are {list(table.columns)}")
    if not table.index.is_unique:
        raise InputError(f"{where} names some cells twice, e.g. {list(table.index[table.index.duplicated()][:3])}")
    return table[column]
