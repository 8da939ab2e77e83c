"""pySCENIC, AnnData and SCope formats in and out of a results store.

Why: users arrive with pySCENIC files and leave wanting AnnData, a loom for SCope, or
pySCENIC's own files for tools built around it. Every stage's output can be written in
pySCENIC's format and every pySCENIC stage's output can be read back, so any single stage
can be swapped for pySCENIC's:

=================  =========================================  ===============================
format             file (pySCENIC command that writes it)     here
=================  =========================================  ===============================
adjacencies        ``adj.tsv``: ``TF target importance``      ``write_adjacencies`` /
                   (``pyscenic grn``)                         ``read_adjacencies``
motifs             ``reg.csv`` (``pyscenic ctx``)             ``flashscenic.write_motifs_csv``
                                                              / ``read_motifs_csv``
regulons           ``.gmt`` / ``.json`` (``pyscenic ctx``)    ``write_regulons_gmt``, ...
AUC                ``auc.csv``, cells x regulons              ``write_auc_csv`` /
                   (``pyscenic aucell``)                      ``read_auc_csv``
loom               SCope loom: expression + ``Regulons`` and  ``write_scope_loom`` /
                   ``RegulonsAUC`` (``pyscenic aucell``,      ``read_pyscenic_loom``
                   ``export2loom``)
AnnData            ``obsm['X_aucell']``, ``uns['regulons']``  ``results_to_anndata``
=================  =========================================  ===============================

``export_results`` writes any of these from a results store; ``import_pyscenic`` fills a
results store from pySCENIC's files.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ._utils import atomic_path, check_unique, numeric_columns, read_text, refuse_non_utf8, text_output
from .errors import InputError, MissingFileError
from .params import EXPORT_FORMATS
from .store import (STAGES, ExpressionStore, ResultsStore, create_results_store, open_expression_store,
                    open_results_store)
from .store.results import _check_adjacencies, _parse_regulon_name, _regulon_frame

__all__ = [
    "EXPORT_FORMATS",
    "export_results",
    "import_pyscenic",
    "write_adjacencies",
    "read_adjacencies",
    "write_regulons_gmt",
    "read_regulons_gmt",
    "write_regulons_json",
    "read_regulons_json",
    "write_auc_csv",
    "read_auc_csv",
    "results_to_anndata",
    "write_scope_loom",
    "read_pyscenic_loom",
]

logger = logging.getLogger(__name__)

# format -> the pipeline stages whose output it holds (exports of unfinished stages are refused)
_STAGES_NEEDED = {
    "adjacencies": ("grn",),
    "motifs": ("pruning",),
    "gmt": ("pruning",),
    "json": ("pruning",),
    "auc": ("auc",),
    "anndata": ("auc",),
    "loom": ("pruning", "auc"),
}


def _separator(path: Path) -> str:
    """pySCENIC's rule: ``.csv`` means commas, ``.tsv`` (and anything else) tabs; ``.gz`` allowed."""
    return "," if ".csv" in path.suffixes else "\t"


def _existing(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path} does not exist")
    return path


def _results(results) -> ResultsStore:
    return results if isinstance(results, ResultsStore) else open_results_store(results)


# --- adjacencies -------------------------------------------------------------------------


def write_adjacencies(adjacencies: pd.DataFrame, path: str | os.PathLike) -> Path:
    """pySCENIC's adjacencies file: columns ``TF target importance``, no index.

    Tab-separated unless the name ends in ``.csv`` (pySCENIC's rule), gzip if ``.gz``.
    Importances are written with full precision, so reading gives the same float64.
    """
    path = Path(path)
    frame = _check_adjacencies(adjacencies)
    with text_output(path) as text:
        frame.to_csv(text, sep=_separator(path), index=False)
    return path


def read_adjacencies(path: str | os.PathLike) -> pd.DataFrame:
    """Read pySCENIC's adjacencies (``pyscenic grn`` output) as pySCENIC's ``load_adjacencies`` does.

    Names stay text (``keep_default_na=False``: a gene called ``NA`` is a gene).
    """
    path = _existing(path)
    try:
        frame = pd.read_csv(path, sep=_separator(path), dtype={0: str, 1: str}, keep_default_na=False,
                            float_precision="round_trip")
    except UnicodeDecodeError:
        refuse_non_utf8(path, "adjacencies file")
    except (ValueError, OSError, EOFError, pd.errors.ParserError) as error:
        raise InputError(f"cannot read {path} as adjacencies ({error})") from error
    if list(frame.columns[:3]) != ["TF", "target", "importance"]:
        raise InputError(f"{path}: the header is {list(frame.columns)[:5]}; pySCENIC adjacencies have "
                         "'TF', 'target', 'importance' (tab-separated, or commas for .csv)")
    numeric_columns(frame, ["importance"], path, "adjacencies file")
    return _check_adjacencies(frame)


# --- regulons as GMT and JSON ------------------------------------------------------------


def write_regulons_gmt(regulons: Sequence[dict], path: str | os.PathLike) -> Path:
    """Regulons as a GMT file: ``name<TAB>description<TAB>gene<TAB>gene...`` per line.

    ctxcore's ``GeneSignature.from_gmt`` (pySCENIC's reader) reads it. (ctxcore's own
    ``to_gmt`` writes ``name,<TAB>...``, a stray comma that its reader then keeps in the
    name; we write the standard form.) Weights are not part of GMT.
    """
    path = Path(path)
    lines = []
    for regulon in _checked_regulons(regulons):
        for text in (regulon["name"], *regulon["genes"]):
            if "\t" in text or "\n" in text:
                raise InputError(f"regulon {regulon['name']!r}: {text!r} contains a tab or newline, which GMT cannot hold")
        description = f"tf={regulon['tf']} type={regulon['type']}"
        lines.append("\t".join([regulon["name"], description, *regulon["genes"]]))
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_regulons_gmt(path: str | os.PathLike) -> list[dict]:
    """Read a GMT file of regulons (weights 1.0; TF and type from names like ``Tf(+)``)."""
    path = _existing(path)
    regulons = []
    text = read_text(path, "GMT file")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) < 2:
            raise InputError(f"{path}, line {number}: expected 'name<TAB>description<TAB>genes...', found no tab")
        genes = [g for g in fields[2:] if g]
        regulons.append(_regulon(fields[0], genes, [1.0] * len(genes)))
    check_unique([r["name"] for r in regulons], f"{path} regulon names")
    return regulons


def write_regulons_json(regulons: Sequence[dict], path: str | os.PathLike, weights: bool = False) -> Path:
    """Regulons as JSON: pySCENIC's ``{name: [genes]}``, or ``{name: {gene: weight}}`` with ``weights=True``."""
    path = Path(path)
    checked = _checked_regulons(regulons)
    if weights:
        content = {r["name"]: dict(zip(r["genes"], r["weights"])) for r in checked}
    else:
        content = {r["name"]: list(r["genes"]) for r in checked}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content), encoding="utf-8")
    return path


def read_regulons_json(path: str | os.PathLike) -> list[dict]:
    """Read ``{name: [genes]}`` (pySCENIC; weights 1.0) or ``{name: {gene: weight}}``."""
    text = read_text(_existing(path), "JSON file")
    try:
        content = json.loads(text)
    except ValueError as error:
        raise InputError(f"cannot read {path} as JSON ({error})") from error
    if not isinstance(content, dict):
        raise InputError(f"{path}: expected an object {{regulon name: genes}}, found {type(content).__name__}")
    regulons = []
    for name, genes in content.items():
        if isinstance(genes, dict):
            regulons.append(_regulon(name, list(genes), [float(w) for w in genes.values()]))
        elif isinstance(genes, list) and all(isinstance(g, str) for g in genes):
            regulons.append(_regulon(name, genes, [1.0] * len(genes)))
        else:
            raise InputError(f"{path}: regulon {name!r} must map to a list of gene names or {{gene: weight}}")
    return regulons


def _regulon(name: str, genes: list[str], weights: list[float]) -> dict:
    tf, kind = _parse_regulon_name(name)
    return {"name": name, "tf": tf, "type": kind, "genes": list(genes), "weights": list(weights)}


def _checked_regulons(regulons) -> list[dict]:

    frame = _regulon_frame(regulons)  # checks names, genes and weights
    return frame.loc[:, ["name", "tf", "type", "genes", "weights"]].to_dict("records")


# --- AUC as CSV --------------------------------------------------------------------------


def write_auc_csv(auc, path: str | os.PathLike, cell_names: Sequence[str] | None = None,
                  regulon_names: Sequence[str] | None = None) -> Path:
    """The AUC as pySCENIC's ``aucell`` CSV: cells x regulons, index column ``Cell``.

    ``auc`` is a DataFrame (index cells, columns regulons) or an array with
    ``cell_names`` and ``regulon_names``. Values keep full precision: float32 AUCs read
    back as the same float32.
    """
    path = Path(path)
    if not isinstance(auc, pd.DataFrame):
        if cell_names is None or regulon_names is None:
            raise InputError("an array AUC needs cell_names and regulon_names")
        auc = pd.DataFrame(np.asarray(auc), index=list(cell_names), columns=list(regulon_names))
    frame = auc.copy()
    frame.index = pd.Index(frame.index.astype(str), name="Cell")
    frame.columns = pd.Index(frame.columns.astype(str), name="Regulon")
    with text_output(path) as text:
        frame.to_csv(text, sep=_separator(path))
    return path


def read_auc_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read an AUC matrix (``pyscenic aucell`` CSV/TSV: cells x regulons, cell names first)."""
    path = _existing(path)
    try:
        frame = pd.read_csv(path, sep=_separator(path), index_col=0, dtype={0: str}, float_precision="round_trip")
    except UnicodeDecodeError:
        refuse_non_utf8(path, "AUC table")
    except (ValueError, OSError, EOFError, pd.errors.ParserError) as error:
        raise InputError(f"cannot read {path} as an AUC table ({error})") from error
    numeric_columns(frame, list(frame.columns), path, "AUC table")
    check_unique(frame.index, f"{path} cell names")
    check_unique(frame.columns, f"{path} regulon names")
    frame.index = pd.Index(frame.index.astype(str), name="Cell")
    frame.columns = pd.Index(frame.columns.astype(str), name="Regulon")
    return frame


# --- AnnData ----------------------------------------------------------------------------


def results_to_anndata(results, adata=None):
    """An AnnData with the AUC in ``obsm['X_aucell']`` and the regulons in ``uns``.

    ``adata`` given: a copy of it with the results added (its cells must be the results'
    cells, in any order). Otherwise a new AnnData without X: obs = the cells, var = the
    genes of the regulon weight matrix (when stored).

    Adds ``obsm['X_aucell']`` (cells x regulons, float32), ``uns['aucell']['regulon_names']``
    (the column names, as pySCENIC's ``add_scenic_metadata``) and, when regulons are
    stored, ``uns['regulons'][name]`` = ``{'tf', 'type', 'score', 'genes', 'weights', 'motifs'}``.
    """
    import anndata

    store = _results(results)
    auc = store.read_auc()
    cells = store.cell_names
    names = store.regulon_names
    if adata is None:
        genes = store.read_regulon_weights()[2] if store.is_complete("pruning") and _has(store, "regulon_weights") else []
        out = anndata.AnnData(obs=pd.DataFrame(index=pd.Index(cells, dtype=object)),
                              var=pd.DataFrame(index=pd.Index(genes, dtype=object)))
    else:
        position = pd.Index(cells).get_indexer(adata.obs_names)
        if (position < 0).any() or len(adata.obs_names) != len(cells):
            missing = adata.obs_names[position < 0][:5].tolist()
            raise InputError(f"the AnnData's cells are not the results' cells ({adata.n_obs} vs {len(cells)} cells; "
                             f"not in the results e.g. {missing})")
        out = adata.copy()
        auc = auc[position]
    out.obsm["X_aucell"] = np.ascontiguousarray(auc, dtype=np.float32)
    out.uns["aucell"] = {"regulon_names": np.array(names, dtype=object)}
    if store.is_complete("pruning"):
        out.uns["regulons"] = {
            r["name"]: {
                "tf": r["tf"],
                "type": r["type"],
                "score": float(r["score"]),
                "genes": np.array(r["genes"], dtype=object),
                "weights": np.asarray(r["weights"], dtype=np.float64),
                "motifs": np.array(r.get("motifs") or [], dtype=object),
            }
            for r in store.read_regulons()
        }
    return out


def _has(store: ResultsStore, name: str) -> bool:
    import zarr

    return name in zarr.open_group(store.path, mode="r")


# --- SCope loom -------------------------------------------------------------------------

_LOOM_SPEC_VERSION = "3.0.0"


def _ascii(values) -> np.ndarray:
    """Strings as loompy stores them: ASCII bytes, other characters as XML character references."""
    return np.array([str(v).encode("ascii", "xmlcharrefreplace") for v in values])


def _structured(columns: Sequence[str], values: np.ndarray) -> np.ndarray:
    """A numpy structured array (an HDF5 compound) with one field per column, as pySCENIC writes."""
    values = np.asarray(values)
    out = np.empty(values.shape[0], dtype=[(str(c), values.dtype) for c in columns])
    for j, c in enumerate(columns):
        out[str(c)] = values[:, j]
    return out


def write_scope_loom(
    results,
    path: str | os.PathLike,
    expression: ExpressionStore | str | os.PathLike | None = None,
    *,
    embedding=None,
    cell_annotations=None,
    auc_thresholds: dict | None = None,
    title: str | None = None,
    genome: str = "Unknown",
    tree_structure: Sequence[str] = (),
    compress_metadata: bool = False,
    verbose: bool = True,
) -> Path:
    """A loom file for SCope in pySCENIC's layout (``export2loom``), written with h5py.

    Layout (loom 3.0.0): ``/matrix`` genes x cells (the expression store's values),
    row attributes ``Gene`` and ``Regulons`` (genes x regulons 0/1 membership, one
    compound field per regulon), column attributes ``CellID``, ``nGene``, ``RegulonsAUC``
    (one compound field per regulon), ``Embedding``/``Embeddings_X``/``Embeddings_Y``,
    ``Clusterings``/``ClusterID``, and global attributes ``title``, ``Genome``,
    ``MetaData`` (JSON: embeddings, clusterings, regulon thresholds), ``SCopeTreeL1-3``.

    Parameters
    ----------
    results
        A ``ResultsStore`` (or its path) with AUC and regulons.
    expression
        The expression store (default: the one recorded in the results store).
    embedding
        cells x 2 coordinates (array or DataFrame). Default: the first two principal
        components of the AUC (pySCENIC computes a t-SNE, which needs scikit-learn and
        does not scale; any embedding can be passed here).
    cell_annotations
        Cell type per cell for SCope's clustering: an obs column name of the expression
        store, or a sequence / Series (by cell name) of labels. Default: ``'-'`` for all.
    auc_thresholds
        ``{regulon: threshold}`` for SCope's binarisation; regulons without one get none.
    compress_metadata
        zlib + base64 the MetaData as pySCENIC's ``compress=True`` (only SCope reads that).
    """
    import h5py

    store = _results(results)
    path = Path(path)
    expr = _expression_for(store, expression)
    cells = store.cell_names
    if not np.array_equal(expr.cell_names, cells):
        raise InputError(f"the expression store {expr.path} and the results {store.path} have different cells "
                         "(or cell order); export from the run's own expression store")
    regulons = store.read_regulons()
    names = store.regulon_names
    by_name = {r["name"]: r for r in regulons}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(f"the AUC has regulons without a stored definition, e.g. {missing[:5]}")
    genes = expr.gene_names
    gene_position = {g: j for j, g in enumerate(genes)}
    membership = np.zeros((len(genes), len(names)), dtype=np.int64)
    for k, name in enumerate(names):
        rows = [gene_position[g] for g in by_name[name]["genes"] if g in gene_position]
        membership[rows, k] = 1

    auc = store.read_auc()
    coordinates = _embedding(embedding, auc, cells)
    labels = _annotations(cell_annotations, expr, cells)
    clusters = sorted(set(labels))
    cluster_id = {name: i for i, name in enumerate(clusters)}
    cluster_ids = np.array([cluster_id[x] for x in labels], dtype=np.int64)
    thresholds = dict(auc_thresholds or {})
    unknown = sorted(set(thresholds) - set(names))
    if unknown:
        raise InputError(f"auc_thresholds names regulon(s) that are not in the results: {unknown[:5]}")
    metadata = {
        "embeddings": [{"id": -1, "name": "PCA of AUC (default)" if embedding is None else "Embedding"}],
        "annotations": [{"name": "", "values": []}],
        "clusterings": [{"id": 0, "group": "celltype", "name": "Cell Type",
                         "clusters": [{"id": i, "description": name} for i, name in enumerate(clusters)]}],
        "regulonThresholds": [
            {
                "regulon": name,
                "defaultThresholdValue": float(thresholds[name]),
                "defaultThresholdName": "gaussian_mixture_split",
                "allThresholds": {"gaussian_mixture_split": float(thresholds[name])},
                "motifData": _logo(by_name[name]),
            }
            for name in names if name in thresholds
        ],
    }
    meta_text = json.dumps(metadata)
    if compress_metadata:
        meta_text = base64.b64encode(zlib.compress(meta_text.encode("ascii"))).decode("ascii")
    tree = list(tree_structure)
    if len(tree) > 3:
        raise InputError(f"tree_structure has {len(tree)} levels; SCope takes at most 3")
    tree += [""] * (3 - len(tree))
    file_attrs = {
        "title": title if title is not None else path.name.rsplit(".", 1)[0],
        "MetaData": meta_text,
        "Genome": genome,
        **{f"SCopeTreeL{i + 1}": level for i, level in enumerate(tree)},
        "CreationDate": datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ"),
        "LOOM_SPEC_VERSION": _LOOM_SPEC_VERSION,
    }

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for group in ("attrs", "layers", "row_attrs", "col_attrs", "row_graphs", "col_graphs"):
                f.create_group(group)
            n_genes, n_cells = len(genes), len(cells)
            matrix = f.create_dataset("matrix", shape=(n_genes, n_cells), dtype="float32",
                                      chunks=(min(64, n_genes), min(64, n_cells)), maxshape=(n_genes, None),
                                      compression="gzip", compression_opts=2, shuffle=False, fletcher32=False)
            n_expressed = np.zeros(n_cells, dtype=np.int64)
            for start, stop, block in expr.iter_chunks("dense", verbose=verbose):
                matrix[:, start:stop] = block.T
                n_expressed[start:stop] = np.count_nonzero(block, axis=1)
            f["row_attrs/Gene"] = _ascii(genes)
            f["row_attrs/Regulons"] = _structured(names, membership)
            f["col_attrs/CellID"] = _ascii(cells)
            f["col_attrs/nGene"] = n_expressed
            f["col_attrs/RegulonsAUC"] = _structured(names, auc)
            f["col_attrs/Embedding"] = _structured(["_X", "_Y"], coordinates)
            f["col_attrs/Embeddings_X"] = _structured(["-1"], coordinates[:, :1])
            f["col_attrs/Embeddings_Y"] = _structured(["-1"], coordinates[:, 1:])
            f["col_attrs/Clusterings"] = _structured(["0"], cluster_ids[:, None])
            f["col_attrs/ClusterID"] = cluster_ids
            for key, value in file_attrs.items():
                f["attrs"][key] = np.bytes_(str(value).encode("ascii", "xmlcharrefreplace"))
    return path


def _expression_for(store: ResultsStore, expression) -> ExpressionStore:
    if isinstance(expression, ExpressionStore):
        return expression
    if expression is not None:
        return open_expression_store(expression)
    if store.expression_store is None:
        raise InputError(f"the results store {store.path} records no expression store; pass expression= "
                         "(CLI --expression) to write a loom, which holds the expression matrix")
    return open_expression_store(store.expression_store)


def _logo(regulon: dict) -> str:
    """The motif logo file name (a context element ending in .png), as pySCENIC's fetch_logo."""
    for element in regulon.get("context") or []:
        if str(element).endswith(".png"):
            return str(element)
    return ""


def _embedding(embedding, auc: np.ndarray, cells) -> np.ndarray:
    if embedding is None:
        return _pca2(auc)
    if isinstance(embedding, pd.DataFrame):
        if embedding.index.isin(cells).all() and len(embedding) == len(cells):
            embedding = embedding.loc[list(cells)]
        embedding = embedding.to_numpy()
    coordinates = np.asarray(embedding, dtype=np.float64)
    if coordinates.shape != (len(cells), 2):
        raise InputError(f"embedding must be cells x 2 ({len(cells)} x 2), got {coordinates.shape}")
    if not np.isfinite(coordinates).all():
        raise InputError("embedding contains NaN or infinite values")
    return coordinates


def _pca2(auc: np.ndarray) -> np.ndarray:
    """The first two principal components of the AUC (signs fixed: largest loading positive)."""
    x = np.asarray(auc, dtype=np.float64)
    out = np.zeros((x.shape[0], 2))
    if x.shape[0] < 2 or x.shape[1] == 0:
        return out
    centred = x - x.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    top = vectors[:, ::-1][:, :2].copy()  # eigh sorts ascending
    for j in range(top.shape[1]):
        if top[np.abs(top[:, j]).argmax(), j] < 0:
            top[:, j] *= -1
    out[:, : top.shape[1]] = centred @ top
    return out


def _annotations(cell_annotations, expr: ExpressionStore, cells) -> list[str]:
    if cell_annotations is None:
        return ["-"] * len(cells)
    if isinstance(cell_annotations, str):
        obs = expr.obs()
        if cell_annotations not in obs.columns:
            raise InputError(f"the expression store has no obs column {cell_annotations!r}; it has "
                             f"{list(obs.columns)} (ingest with obs_columns=[...] to keep one)")
        return [str(x) for x in obs[cell_annotations].to_numpy()]
    if isinstance(cell_annotations, pd.Series):
        labels = cell_annotations.reindex(list(cells))
        if labels.isna().any():
            raise InputError(f"cell_annotations has no label for {int(labels.isna().sum())} cell(s), "
                             f"e.g. {labels.index[labels.isna()][:3].tolist()}")
        return [str(x) for x in labels.to_numpy()]
    labels = list(cell_annotations)
    if len(labels) != len(cells):
        raise InputError(f"cell_annotations has {len(labels)} labels for {len(cells)} cells")
    return [str(x) for x in labels]


def read_pyscenic_loom(path: str | os.PathLike, gene_attribute: str = "Gene",
                       cell_attribute: str = "CellID") -> tuple[pd.DataFrame, list[dict]]:
    """The AUC and the regulons of a pySCENIC loom (``pyscenic aucell -o x.loom`` or SCope's).

    Returns ``(auc, regulons)``: the AUC as a cells x regulons DataFrame (from
    ``RegulonsAUC``) and the regulons (from the ``Regulons`` membership; weights 1.0,
    genes sorted by name, as ``regulons_from_motifs`` sorts them). The expression itself is read by ``ingest_expression``.
    """
    import h5py

    from .io import _loom_strings

    path = _existing(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"cannot open {path} as a loom (HDF5) file: {error}") from error
    with handle as f:
        try:
            rows, cols = f["row_attrs"], f["col_attrs"]
        except KeyError:
            raise InputError(f"{path} is not a loom file (no /row_attrs, /col_attrs)") from None
        for group, name in ((cols, "RegulonsAUC"), (rows, "Regulons"), (rows, gene_attribute), (cols, cell_attribute)):
            if name not in group:
                raise InputError(f"{path} has no {name!r} attribute; is it a loom written by pySCENIC's aucell "
                                 "or export2loom?")
        auc = cols["RegulonsAUC"][:]
        membership = rows["Regulons"][:]
        genes = np.asarray(_loom_strings(rows[gene_attribute][:]), dtype=object)
        cells = np.asarray(_loom_strings(cols[cell_attribute][:]), dtype=object)
    names = list(auc.dtype.names or ())
    frame = pd.DataFrame({n: auc[n] for n in names}, index=pd.Index(cells, name="Cell"))
    frame.columns = pd.Index(names, name="Regulon")
    regulons = []
    for name in membership.dtype.names or ():
        members = sorted(genes[np.asarray(membership[name]) != 0].tolist())
        regulons.append(_regulon(name, members, [1.0] * len(members)))
    return frame, regulons


# --- whole results store in and out ------------------------------------------------------


def export_results(
    results,
    formats: str | Sequence[str],
    out_dir: str | os.PathLike | None = None,
    *,
    output: str | os.PathLike | None = None,
    expression: ExpressionStore | str | os.PathLike | None = None,
    cell_annotations=None,
    genome: str = "Unknown",
    title: str | None = None,
    verbose: bool = True,
) -> dict[str, Path]:
    """Write a results store in one or more formats; return ``{format: path}``.

    ``formats``: any of ``EXPORT_FORMATS`` (``'adjacencies'``, ``'motifs'`` (reg.csv),
    ``'gmt'``, ``'json'``, ``'auc'`` (CSV), ``'anndata'`` (.h5ad), ``'loom'`` (SCope)).
    Files get their default names in ``out_dir`` (default: the folder holding the results
    store), or the name ``output`` when a single format is written. Existing files are
    replaced, each atomically. ``expression``, ``cell_annotations``, ``genome`` and
    ``title`` are for the loom. A format whose stage the run has not finished is refused
    (``IncompleteStageError``, before any file is written): its data would be partial.
    """
    store = _results(results)
    wanted = [formats] if isinstance(formats, str) else list(formats)
    unknown = [f for f in wanted if f not in EXPORT_FORMATS]
    if unknown or not wanted:
        raise InputError(f"unknown export format(s) {unknown or wanted}; choose from {list(EXPORT_FORMATS)}")
    if output is not None and len(wanted) != 1:
        raise InputError("output= names one file; with several formats use out_dir=")
    folder = Path(out_dir) if out_dir is not None else store.path.resolve().parent
    if not folder.is_dir():
        raise MissingFileError(f"the output folder {folder} does not exist; create it first")
    store.require(*dict.fromkeys(stage for fmt in wanted for stage in _STAGES_NEEDED[fmt]))
    written = {}
    for fmt in dict.fromkeys(wanted):
        target = Path(output) if output is not None else folder / EXPORT_FORMATS[fmt]
        if fmt == "adjacencies":
            write_adjacencies(store.read_adjacencies(), target)
        elif fmt == "motifs":
            from .regulons import write_motifs_csv

            write_motifs_csv(store.read_motifs(), target)
        elif fmt == "gmt":
            write_regulons_gmt(store.read_regulons(), target)
        elif fmt == "json":
            write_regulons_json(store.read_regulons(), target)
        elif fmt == "auc":
            write_auc_csv(store.read_auc(as_frame=True), target)
        elif fmt == "anndata":
            adata = results_to_anndata(store)
            with atomic_path(target) as tmp:
                adata.write_h5ad(tmp)
        else:
            write_scope_loom(store, target, expression, cell_annotations=cell_annotations, genome=genome,
                             title=title, verbose=verbose)
        logger.info("wrote %s (%s)", target, fmt)
        written[fmt] = target
    return written


def import_pyscenic(
    results: str | os.PathLike | ResultsStore,
    *,
    adjacencies: str | os.PathLike | None = None,
    motifs: str | os.PathLike | None = None,
    regulons: str | os.PathLike | None = None,
    auc: str | os.PathLike | None = None,
    loom: str | os.PathLike | None = None,
    expression: ExpressionStore | str | os.PathLike | None = None,
    verbose: bool = True,
) -> ResultsStore:
    """Fill a results store from pySCENIC's files, so any stage can be pySCENIC's.

    A missing store is created: from ``expression`` (its cells and chunks) when given,
    else from the cells of the ``auc`` CSV or the ``loom``. Each file replaces that part
    of the store and marks its pipeline stage complete (the store's writers leave stage
    markers to the caller):

    - ``adjacencies``: ``pyscenic grn`` output -> adjacencies table (stage ``grn``);
    - ``motifs``: ``pyscenic ctx`` reg.csv -> motif table, and regulons built from it
      with pySCENIC's rules (``regulons_from_motifs``) (stage ``pruning``);
    - ``regulons``: ``.gmt`` or ``.json`` regulons (weights 1.0 unless the JSON has them)
      (stage ``pruning``);
    - ``auc``: ``pyscenic aucell`` CSV/TSV -> AUC (cells matched by name) (stage ``auc``);
    - ``loom``: ``pyscenic aucell`` loom -> AUC and regulons (stages ``pruning``, ``auc``).
    """
    given = {k: v for k, v in dict(adjacencies=adjacencies, motifs=motifs, regulons=regulons, auc=auc,
                                   loom=loom).items() if v is not None}
    if not given:
        raise InputError("nothing to import: give adjacencies=, motifs=, regulons=, auc= or loom=")
    if motifs is not None and regulons is not None:
        raise InputError("give motifs= (regulons are built from them) or regulons=, not both")
    auc_frame = read_auc_csv(auc) if auc is not None else None
    loom_auc, loom_regulons = read_pyscenic_loom(loom) if loom is not None else (None, None)
    if auc_frame is not None and loom_auc is not None:
        raise InputError("give auc= or loom= (which holds an AUC), not both")
    auc_frame = auc_frame if auc_frame is not None else loom_auc

    if isinstance(results, ResultsStore):
        store = results
    elif Path(results).exists():
        store = open_results_store(results)
    elif expression is not None:
        store = create_results_store(results, expression=expression, parameters={"imported": sorted(given)})
    elif auc_frame is not None:
        store = create_results_store(results, cell_names=list(auc_frame.index), parameters={"imported": sorted(given)})
    else:
        raise InputError(f"{results} does not exist yet; to create it give expression= (an expression store) "
                         "or an auc= / loom= file that lists the cells")

    # stages after the first one imported were computed from what is now replaced
    imported = {"grn": adjacencies is not None, "pruning": motifs is not None or regulons is not None
                or loom_regulons is not None, "auc": auc_frame is not None}
    first = next(i for i, stage in enumerate(STAGES) if imported.get(stage))
    store.forget(*[stage for stage in STAGES[first + 1:] if not imported.get(stage)])
    if adjacencies is not None:
        table = read_adjacencies(adjacencies)
        store.write_adjacencies(table)
        store.mark_complete("grn", imported=os.fspath(adjacencies), n_edges=len(table))
    if motifs is not None:
        from .regulons import read_motifs_csv, regulons_from_motifs

        table = read_motifs_csv(_existing(motifs))
        found = regulons_from_motifs(table)
        store.write_motifs(table)
        store.write_regulons(found)
        store.mark_complete("pruning", imported=os.fspath(motifs), n_regulons=len(found))
    if regulons is not None:
        path = _existing(regulons)
        suffixes = [s.lower() for s in path.suffixes]
        if ".gmt" in suffixes:
            found = read_regulons_gmt(path)
        elif ".json" in suffixes:
            found = read_regulons_json(path)
        else:
            raise InputError(f"cannot tell the format of {path}; regulons are read from .gmt or .json "
                             "(for a reg.csv use motifs=)")
        store.write_regulons(found)
        store.mark_complete("pruning", imported=os.fspath(regulons), n_regulons=len(found))
    if loom_regulons is not None:
        store.write_regulons(loom_regulons)
        store.mark_complete("pruning", imported=os.fspath(loom), n_regulons=len(loom_regulons))
    if auc_frame is not None:
        cells = store.cell_names
        position = pd.Index(auc_frame.index).get_indexer(cells)
        if (position < 0).any() or len(auc_frame) != len(cells):
            absent = [c for c, p in zip(cells, position) if p < 0][:5]
            raise InputError(f"the AUC's cells ({len(auc_frame)}) are not the store's cells ({len(cells)}); "
                             f"missing e.g. {absent}")
        store.write_auc(auc_frame.to_numpy()[position], list(auc_frame.columns))
        store.mark_complete("auc", imported=os.fspath(auc if auc is not None else loom),
                            n_regulons=auc_frame.shape[1])
    return store
