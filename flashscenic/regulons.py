"""From enriched motifs to regulons, with pySCENIC's rules and its ``reg.csv`` format.

The cisTarget step produces a *motif table*: one row per enriched, TF-annotated motif per
(TF, module context, database), with the flat columns of ``MOTIF_COLUMNS``:

==========================  ===============================================================
``TF``                      the module's transcription factor (str)
``MotifID``                 the motif (str)
``AUC``, ``NES``            the motif's recovery AUC and its normalised enrichment score
``MotifSimilarityQvalue``   q-value of the motif-to-TF annotation (NaN allowed)
``OrthologousIdentity``     orthologous identity of the annotation (NaN allowed)
``Annotation``              the annotation text (str)
``Context``                 frozenset of str: the module's labels (``'weight>75.0%'``,
                            ``'top50'``, ``'top5perTarget'``, ``'activating'`` or
                            ``'repressing'``) plus the database name, as pySCENIC
``TargetGenes``             list of (gene, weight) tuples: the leading edge, each gene with
                            its GRN weight (the TF itself 1.0)
``RankAtMax``               int: the rank at the leading edge
``Database``                the database name (str), also an element of ``Context``
==========================  ===============================================================

``write_motifs_csv`` / ``read_motifs_csv`` convert it to and from pySCENIC's ``reg.csv``
(what ``pyscenic ctx`` writes, what ``pyscenic.utils.load_motifs`` reads), and
``regulons_from_motifs`` applies pySCENIC's ``df2regulons``: one regulon per (TF, type),
the union of the target genes of all its rows with each gene's maximum weight, scored by
the best row. ``regulons_to_adjacency`` turns regulons into the regulons x genes matrix
that ``get_aucell`` scores.

Regulons also travel as decoupler networks (``source``, ``target``, ``weight``: what
``dc.mt.aucell(adata, net)`` takes and ``dc.op.collectri()`` returns):
``regulons_to_network`` and ``network_to_regulons`` convert both ways, and
``network_to_adjacency`` gives what AUCell scores for any network, with pySCENIC's rules
for targets absent from the expression matrix.
"""

from __future__ import annotations

import ast
import csv
import gzip
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from ._utils import check_unique, refuse_non_utf8, text_output
from .errors import InputError

__all__ = [
    "MOTIF_COLUMNS",
    "validate_motif_table",
    "write_motifs_csv",
    "read_motifs_csv",
    "regulons_from_motifs",
    "regulons_to_adjacency",
    "network_to_regulons",
    "regulons_to_network",
    "network_to_adjacency",
    "network_for_aucell",
]

logger = logging.getLogger(__name__)

MOTIF_COLUMNS = (
    "TF",
    "MotifID",
    "AUC",
    "NES",
    "MotifSimilarityQvalue",
    "OrthologousIdentity",
    "Annotation",
    "Context",
    "TargetGenes",
    "RankAtMax",
    "Database",
)

# reg.csv: index (TF, MotifID), then these columns under the top-level header "Enrichment",
# in the order `pyscenic ctx` writes them.
_CSV_COLUMNS = (
    "AUC",
    "Annotation",
    "Context",
    "MotifSimilarityQvalue",
    "NES",
    "OrthologousIdentity",
    "RankAtMax",
    "TargetGenes",
)
_CSV_GROUP = "Enrichment"
_INDEX_NAMES = ("TF", "MotifID")
# Fields pandas' read_csv (and so pySCENIC's load_motifs) reads as missing.
_NA_TEXT = frozenset(
    ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
     "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]
)  # fmt: skip

ACTIVATING = "activating"
REPRESSING = "repressing"
# Context elements that describe the module rather than the database.
_MODULE_LABEL = re.compile(r"activating|repressing|weight>[0-9.]+%|top[0-9]+(perTarget)?|.+\.png", re.S)

Ties = Literal["pyscenic", "first"]


# --- the motif table -----------------------------------------------------------------------


def validate_motif_table(table: pd.DataFrame) -> None:
    """Raise ``InputError`` unless ``table`` is a motif table (see the module docstring).

    Checks every row: the message names the row (its position) and the column. Columns
    beyond ``MOTIF_COLUMNS`` are allowed and ignored by this module.
    """
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"a motif table must be a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in MOTIF_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(
            f"the motif table lacks column(s) {missing}; it needs {list(MOTIF_COLUMNS)} "
            "(read a pySCENIC reg.csv with read_motifs_csv)"
        )
    if table.columns.duplicated().any():
        duplicates = sorted(set(table.columns[table.columns.duplicated()]))
        raise InputError(f"the motif table has duplicate columns {duplicates}")

    for name in ("AUC", "NES", "MotifSimilarityQvalue", "OrthologousIdentity"):
        values = _numeric_column(table, name)
        bad = ~np.isfinite(values) if name in ("AUC", "NES") else np.isinf(values)
        if bad.any():
            row = int(np.argmax(bad))
            allowed = "finite" if name in ("AUC", "NES") else "finite or NaN"
            raise InputError(f"motif table row {row}, column {name}: {values[row]!r} is not {allowed}")
    rank = table["RankAtMax"]
    if not pd.api.types.is_integer_dtype(rank.dtype) or pd.api.types.is_bool_dtype(rank.dtype):
        raise InputError(f"motif table column RankAtMax must hold integers, has dtype {rank.dtype}")

    columns = [table[c].to_numpy() for c in ("TF", "MotifID", "Annotation", "Context", "TargetGenes", "Database")]
    for row, (tf, motif, annotation, context, targets, database) in enumerate(zip(*columns)):
        for name, value in (("TF", tf), ("MotifID", motif), ("Database", database)):
            if not isinstance(value, str) or not value:
                raise InputError(f"motif table row {row}, column {name}: expected a non-empty str, got {value!r}")
        if not isinstance(annotation, str):
            raise InputError(f"motif table row {row}, column Annotation: expected a str, got {annotation!r}")
        if not isinstance(context, (frozenset, set)) or not all(isinstance(x, str) for x in context):
            raise InputError(f"motif table row {row}, column Context: expected a frozenset of str, got {context!r}")
        if database not in context:
            raise InputError(
                f"motif table row {row}: Database {database!r} is not an element of its Context {sorted(context)}"
            )
        _check_targets(targets, f"motif table row {row}, column TargetGenes")


def _numeric_column(table: pd.DataFrame, name: str) -> np.ndarray:
    column = table[name]
    if not pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype):
        raise InputError(f"motif table column {name} must be numeric, has dtype {column.dtype}")
    return column.to_numpy(dtype=np.float64, na_value=np.nan)


def _check_targets(targets, where: str) -> None:
    if not isinstance(targets, (list, tuple)):
        raise InputError(f"{where}: expected a list of (gene, weight) tuples, got {type(targets).__name__}")
    for item in targets:
        if (
            not isinstance(item, tuple)
            or len(item) != 2
            or not isinstance(item[0], str)
            or isinstance(item[1], (bool, np.bool_))
            or not isinstance(item[1], (int, float, np.integer, np.floating))
            or not math.isfinite(item[1])
        ):
            raise InputError(f"{where}: {item!r} is not a (gene name, finite weight) tuple")


# --- reg.csv -----------------------------------------------------------------------------


def write_motifs_csv(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a motif table as pySCENIC's ``reg.csv`` (gzip-compressed if ``path`` ends in ``.gz``).

    The layout is what ``pyscenic ctx ... -o reg.csv`` writes: a three-row header
    (``,,Enrichment,...`` / ``,,AUC,Annotation,Context,...`` / ``TF,MotifID,,...``), index
    (TF, MotifID), ``Context`` as ``frozenset({...})`` and ``TargetGenes`` as a list of
    tuples, so ``pyscenic.utils.load_motifs`` reads the file. Context elements are written
    sorted (pySCENIC's order follows Python's string hashing and changes between runs), so
    the same table always gives the same bytes. ``Database`` is not written: it is part of
    ``Context``. Missing q-values and identities are written as empty fields, as pandas does.
    """
    validate_motif_table(table)
    columns = {
        "AUC": table["AUC"].to_numpy(np.float64),
        "Annotation": table["Annotation"].to_numpy(object),
        "Context": [_format_context(c) for c in table["Context"]],
        "MotifSimilarityQvalue": _numeric_column(table, "MotifSimilarityQvalue"),
        "NES": table["NES"].to_numpy(np.float64),
        "OrthologousIdentity": _numeric_column(table, "OrthologousIdentity"),
        "RankAtMax": table["RankAtMax"].to_numpy(np.int64),
        "TargetGenes": [_format_targets(t) for t in table["TargetGenes"]],
    }
    frame = pd.DataFrame(
        {(_CSV_GROUP, name): columns[name] for name in _CSV_COLUMNS},
        index=pd.MultiIndex.from_arrays(
            [table["TF"].to_numpy(object), table["MotifID"].to_numpy(object)], names=list(_INDEX_NAMES)
        ),
    )
    with text_output(path) as text:
        frame.to_csv(text, lineterminator="\n")


def _format_context(context: Iterable[str]) -> str:
    """``str(frozenset(...))`` with the elements sorted: ``frozenset({'a', 'b'})``."""
    if not context:
        return "frozenset()"
    return "frozenset({" + ", ".join(repr(str(x)) for x in sorted(context)) + "})"


def _format_targets(targets: Sequence[tuple[str, float]]) -> str:
    """``str(list_of_tuples)`` with plain Python str and float (numpy scalars would print as np.float64(...))."""
    return "[" + ", ".join(f"({str(gene)!r}, {float(weight)!r})" for gene, weight in targets) + "]"


def read_motifs_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read pySCENIC's ``reg.csv`` (plain or ``.gz``) into a motif table.

    Nothing in the file is evaluated: ``TargetGenes`` and ``Context`` are parsed as
    literals. ``Database`` is the one ``Context`` element that is not a module label
    (``activating``, ``repressing``, ``weight>X%``, ``topN``, ``topNperTarget``,
    ``X.png``). Empty or NA q-values and identities become NaN (as in pandas); an empty
    annotation becomes ``''`` (pandas would give NaN). Columns other than the eight
    ``Enrichment`` columns pySCENIC writes are ignored with a warning. A malformed file
    raises ``InputError`` naming the line and column.
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as handle:
            return _parse_motifs_csv(csv.reader(handle, skipinitialspace=True), path)
    except UnicodeDecodeError:
        refuse_non_utf8(path, "reg.csv")
    except (gzip.BadGzipFile, EOFError, csv.Error) as error:
        raise InputError(f"{path}: not a readable reg.csv ({error})") from error


def _parse_motifs_csv(reader, path: str) -> pd.DataFrame:
    header = []
    for _ in range(3):
        row = next(reader, None)
        if row is None:
            raise InputError(f"{path}: ends inside the three-line reg.csv header (line {reader.line_num + 1})")
        header.append(row)
    groups, names, index_names = header
    if len(groups) != len(names) or len(index_names) != len(names) or len(names) < 2:
        raise InputError(f"{path}: the three header lines have {[len(h) for h in header]} fields; they must agree")
    if groups[:2] != ["", ""] or names[:2] != ["", ""] or index_names[:2] != list(_INDEX_NAMES):
        raise InputError(
            f"{path}: not a pySCENIC reg.csv; the header must start with ',,Enrichment' / ',,AUC' / "
            f"'TF,MotifID' (lines 1-3), found {groups[:3]} / {names[:3]} / {index_names[:3]}"
        )
    position = {}
    for j in range(2, len(names)):
        if groups[j] == _CSV_GROUP and names[j] in _CSV_COLUMNS and names[j] not in position:
            position[names[j]] = j
    missing = [c for c in _CSV_COLUMNS if c not in position]
    if missing:
        raise InputError(f"{path}: the header (lines 1-2) lacks the Enrichment column(s) {missing}")
    ignored = len(names) - 2 - len(position)
    if ignored:
        logger.warning("%s: ignoring %d column(s) that are not pySCENIC's Enrichment columns", path, ignored)

    data = {name: [] for name in MOTIF_COLUMNS}
    contexts: dict[str, tuple[frozenset, str]] = {}  # contexts repeat: parse each text once
    for row in reader:
        line = reader.line_num
        if not row:
            continue  # a blank line, which pandas skips too
        if len(row) != len(names):
            raise InputError(f"{path}, line {line}: {len(row)} fields, the header has {len(names)}")
        field = {name: row[j] for name, j in position.items()}
        for name, value in (("TF", row[0]), ("MotifID", row[1])):
            if not value:
                raise InputError(f"{path}, line {line}, column {name}: empty")
            data[name].append(value)
        for name in ("AUC", "NES", "MotifSimilarityQvalue", "OrthologousIdentity"):
            data[name].append(_parse_float(field[name], path, line, name))
        try:
            data["RankAtMax"].append(int(field["RankAtMax"]))
        except ValueError:
            text = field["RankAtMax"]
            raise InputError(f"{path}, line {line}, column RankAtMax: {text!r} is not an integer") from None
        data["Annotation"].append(field["Annotation"])
        text = field["Context"]
        if text not in contexts:
            contexts[text] = _parse_context(text, f"{path}, line {line}, column Context")
        context, database = contexts[text]
        data["Context"].append(context)
        data["Database"].append(database)
        data["TargetGenes"].append(_parse_targets(field["TargetGenes"], f"{path}, line {line}, column TargetGenes"))

    return motif_frame(data)


def motif_frame(columns: dict[str, list] | None = None) -> pd.DataFrame:
    """A motif table from its columns' values (``MOTIF_COLUMNS``), typed as the module
    docstring says: float64 scores, int64 ``RankAtMax``, the rest objects. None: an empty table."""
    columns = columns or {name: [] for name in MOTIF_COLUMNS}
    return pd.DataFrame(
        {
            name: pd.Series(columns[name], dtype=np.int64 if name == "RankAtMax" else np.float64)
            if name in ("AUC", "NES", "MotifSimilarityQvalue", "OrthologousIdentity", "RankAtMax")
            else pd.Series(columns[name], dtype=object)
            for name in MOTIF_COLUMNS
        }
    )


def _parse_float(text: str, path: str, line: int, name: str) -> float:
    if text in _NA_TEXT:
        value = math.nan
    else:
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"{path}, line {line}, column {name}: {text!r} is not a number") from None
    if name in ("AUC", "NES") and not math.isfinite(value):
        raise InputError(f"{path}, line {line}, column {name}: {text!r} is not a finite number")
    return value


_FROZENSET = re.compile(r"frozenset\((.*)\)", re.S)


def _parse_context(text: str, where: str) -> tuple[frozenset, str]:
    """``frozenset({'a', 'b'})`` (or a plain set literal) -> (frozenset, database name)."""
    match = _FROZENSET.fullmatch(text.strip())
    inner = match.group(1).strip() if match else text
    try:
        value = ast.literal_eval(inner) if inner else set()
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if not isinstance(value, (set, frozenset)) or not all(isinstance(x, str) for x in value):
        raise InputError(f"{where}: {text[:80]!r} is not a frozenset of strings")
    databases = sorted(x for x in value if not _MODULE_LABEL.fullmatch(x))
    if len(databases) != 1:
        raise InputError(
            f"{where}: expected exactly one database name among the context labels {sorted(value)}, "
            f"found {databases or 'none'}"
        )
    return frozenset(value), databases[0]


_SIMPLE_TUPLE = r"\('([^'\\\n]*)', ([-+0-9.eEinfa]+)\)"
_SIMPLE_TARGETS = re.compile(rf"\[(?:{_SIMPLE_TUPLE}(?:, {_SIMPLE_TUPLE})*)?\]")
_TUPLE = re.compile(_SIMPLE_TUPLE)
_NUMPY_SCALAR = re.compile(r"np\.float(?:16|32|64)\(([^()]*)\)")  # pySCENIC under numpy 2 writes np.float64(2.5)


def _parse_targets(text: str, where: str) -> list[tuple[str, float]]:
    """``[('Gene', 0.5), ...]`` -> list of (str, float), never evaluating code.

    The common form (single-quoted names without escapes, plain numbers) is parsed with a
    regular expression, about 10x faster than ``ast.literal_eval``, which handles the rest,
    weights written as numpy 2 prints them (``np.float64(2.5)``) included.
    """
    if _SIMPLE_TARGETS.fullmatch(text):
        try:
            targets = [(gene, float(weight)) for gene, weight in _TUPLE.findall(text)]
        except ValueError:
            targets = None
        if targets is not None:
            _check_targets(targets, where)
            return targets
    try:
        value = ast.literal_eval(_NUMPY_SCALAR.sub(r"\1", text))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise InputError(f"{where}: {text[:80]!r} is not a list of (gene, weight) tuples") from None
    if isinstance(value, (list, tuple)):
        value = [(item[0], float(item[1])) if _is_pair(item) else item for item in value]
    _check_targets(value, where)
    return value


def _is_pair(item) -> bool:
    return (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[1], (int, float))
        and not isinstance(item[1], bool)
    )


# --- regulons ----------------------------------------------------------------------------


def regulons_from_motifs(table: pd.DataFrame, *, ties: Ties = "pyscenic") -> list[dict]:
    """Regulons from a motif table, as pySCENIC's ``df2regulons``.

    Rows are grouped by (TF, type), type ``'repressing'`` where the row's Context contains
    ``'repressing'``, else ``'activating'``; each group is one regulon named ``TF(+)`` or
    ``TF(-)``. Its genes are the union of the rows' target genes, each with its maximum
    weight over the rows (within one row a repeated gene keeps its last weight, as a dict
    would). No minimum size is applied.

    Score of a row: ``NES * min(-log10(q), 10) / 10 * identity``, where the q-value factor
    is 1 when q is NaN or when pySCENIC's ``math.log`` fails (q <= 0), and the identity
    factor is left out when the identity is NaN. The regulon's score is the maximum.

    The descriptive fields come from the regulon's highest-NES row (the *top row*). Among
    rows with equal NES, ``ties='pyscenic'`` picks the row pySCENIC picks: the first row of
    ``group.sort_values('NES', ascending=False)``, which uses numpy's unstable quicksort on
    the group's rows in table order, so the pick among equal NES can differ between numpy
    versions and CPUs (as pySCENIC's own). ``ties='first'`` picks the first such row in
    table order, the same everywhere. Only ``motif``, ``database``, ``auc``, ``rank_at_max``,
    ``annotation`` and the two annotation numbers can differ; the score and genes cannot.

    Returns
    -------
    list of dict, sorted by (TF, type) as pySCENIC's groupby (``TF(+)`` before ``TF(-)``),
    each with:
    ``name``, ``tf``, ``type`` ('activating' or 'repressing');
    ``genes`` (sorted), ``weights`` (float, same order), ``n_genes``;
    ``score`` (max row score);
    ``motif`` (top row's MotifID) and ``motifs`` (every MotifID of the regulon, by
    decreasing best NES, ties by name);
    ``context`` (sorted union of all rows' Context labels: module types and databases);
    from the top row: ``database``, ``nes``, ``auc``, ``rank_at_max``, ``annotation``,
    ``motif_similarity_qvalue``, ``orthologous_identity``.
    An empty table gives an empty list (pySCENIC raises).
    """
    if ties not in ("pyscenic", "first"):
        raise InputError(f"ties={ties!r} is not one of 'pyscenic', 'first'")
    validate_motif_table(table)
    if len(table) == 0:
        return []

    tf = table["TF"].to_numpy(object)
    motif = table["MotifID"].to_numpy(object)
    nes = table["NES"].to_numpy(np.float64)
    auc = table["AUC"].to_numpy(np.float64)
    qvalue = _numeric_column(table, "MotifSimilarityQvalue")
    identity = _numeric_column(table, "OrthologousIdentity")
    annotation = table["Annotation"].to_numpy(object)
    context = table["Context"].to_numpy(object)
    targets = table["TargetGenes"].to_numpy(object)
    rank_at_max = table["RankAtMax"].to_numpy(np.int64)
    database = table["Database"].to_numpy(object)

    groups: dict[tuple[str, str], list[int]] = {}
    for row in range(len(table)):
        kind = REPRESSING if REPRESSING in context[row] else ACTIVATING
        groups.setdefault((tf[row], kind), []).append(row)

    regulons = []
    empty = []
    for (tf_name, kind), rows in sorted(groups.items()):
        top = rows[_top_position(nes[rows], ties)]
        score = None
        gene2weight: dict[str, float] = {}
        best_nes: dict[str, float] = {}
        labels: set[str] = set()
        for row in rows:
            # Regulon.union keeps max(self.score, other.score) and, gene by gene,
            # max([old, new]): the earlier value unless the new one is strictly larger.
            row_score = _row_score(nes[row], qvalue[row], identity[row])
            score = row_score if score is None else max(score, row_score)
            for gene, weight in dict(targets[row]).items():
                if gene not in gene2weight or weight > gene2weight[gene]:
                    gene2weight[gene] = weight
            if motif[row] not in best_nes or nes[row] > best_nes[motif[row]]:
                best_nes[motif[row]] = nes[row]
            labels |= context[row]
        name = f"{tf_name}({'-' if kind == REPRESSING else '+'})"
        if not gene2weight:
            empty.append(name)
            continue
        genes = sorted(gene2weight)
        regulons.append(
            {
                "name": name,
                "tf": tf_name,
                "type": kind,
                "motif": motif[top],
                "motifs": sorted(best_nes, key=lambda m: (-best_nes[m], m)),
                "n_genes": len(genes),
                "genes": genes,
                "weights": [float(gene2weight[g]) for g in genes],
                "context": sorted(labels),
                "database": database[top],
                "nes": float(nes[top]),
                "auc": float(auc[top]),
                "rank_at_max": int(rank_at_max[top]),
                "annotation": annotation[top],
                "motif_similarity_qvalue": float(qvalue[top]),
                "orthologous_identity": float(identity[top]),
                "score": float(score),
            }
        )
    if empty:
        logger.warning(
            "%d regulon(s) have no target genes in any row and were left out (pySCENIC would fail): %s",
            len(empty),
            empty[:10],
        )
    return regulons


def _top_position(nes: np.ndarray, ties: Ties) -> int:
    """Position of the highest NES in ``nes`` (a group's rows in table order; no NaN)."""
    if ties == "first":
        return int(np.argmax(nes))
    # pandas' nargsort(ascending=False) with its default kind='quicksort', which
    # DataFrame.sort_values('NES', ascending=False) runs: reverse, argsort, reverse.
    reversed_positions = np.arange(len(nes))[::-1]
    order = reversed_positions[nes[::-1].argsort(kind="quicksort")][::-1]
    return int(order[0])


def _row_score(nes: float, qvalue: float, identity: float) -> float:
    """pySCENIC's ``_regulon4group.score``, statement for statement (math.log, not numpy)."""
    nes, qvalue, identity = float(nes), float(qvalue), float(identity)
    fraction = 1.0
    try:
        fraction = min(-math.log(qvalue, 10), 10) / 10 if not math.isnan(qvalue) else 1.0
    except ValueError:  # q <= 0: math domain error, pySCENIC keeps the factor 1
        pass
    score = nes * fraction
    return score if math.isnan(identity) else score * identity


def regulons_to_adjacency(regulons: Sequence[dict], gene_names: Sequence[str], *, weighted: bool = False) -> np.ndarray:
    """The regulons x genes matrix that ``get_aucell`` scores (float32).

    ``weighted=False`` (default, as flashscenic 0.2.0 and pySCENIC's CLI): 1.0 for each
    regulon gene. ``weighted=True``: the regulon's weights, as pySCENIC's Python ``aucell``
    uses them; weights must then be finite and positive (a zero would silently drop the gene).

    Regulon genes that are not in ``gene_names`` are left out, and a warning gives the
    counts. pySCENIC's AUCell scores a regulon 0 in every cell when fewer than 80% of its
    genes are in the expression matrix; with the missing genes left out here, applying
    that rule is the caller's concern (compare ``n_genes`` with the row's non-zeros).
    """
    names = list(gene_names)
    for j, gene in enumerate(names):
        if not isinstance(gene, str):
            raise InputError(f"gene_names[{j}] is {gene!r}; gene names must be str")
    check_unique(names, "gene_names")
    column = {gene: j for j, gene in enumerate(names)}
    matrix = np.zeros((len(regulons), len(names)), dtype=np.float32)
    n_dropped = n_total = 0
    touched = []
    for i, regulon in enumerate(regulons):
        if not isinstance(regulon, dict) or "genes" not in regulon or "weights" not in regulon:
            raise InputError(f"regulons[{i}] is not a dict with 'genes' and 'weights' (see regulons_from_motifs)")
        genes, weights = list(regulon["genes"]), np.asarray(regulon["weights"], dtype=np.float64)
        if len(genes) != weights.size:
            raise InputError(f"regulons[{i}] ({regulon.get('name')}) has {len(genes)} genes but {weights.size} weights")
        if weighted and not (np.isfinite(weights) & (weights > 0)).all():
            raise InputError(
                f"regulons[{i}] ({regulon.get('name')}) has weights that are not finite and positive; "
                "use weighted=False for a binary matrix"
            )
        present = [(column[g], w) for g, w in zip(genes, weights) if g in column]
        n_total += len(genes)
        if len(present) < len(genes):
            n_dropped += len(genes) - len(present)
            touched.append(regulon.get("name", i))
        if present:
            cols, values = zip(*present)
            matrix[i, list(cols)] = values if weighted else 1.0
    if n_dropped:
        logger.warning(
            "%d of %d regulon gene(s) are not in gene_names and were left out, in %d of %d regulon(s) "
            "(first: %s); check pySCENIC's 80%% rule before scoring",
            n_dropped,
            n_total,
            len(touched),
            len(regulons),
            touched[:5],
        )
    return matrix


# --- decoupler networks ------------------------------------------------------------------


def network_to_regulons(network: pd.DataFrame) -> list[dict]:
    """Regulons from a decoupler network (``source``, ``target`` and optionally ``weight``).

    A network is what decoupler's ``dc.op.collectri()``, ``dc.op.dorothea()`` or
    ``dc.mt.aucell(adata, net)`` take: one row per (source, target) edge; ``weight`` is the
    mode of regulation (+1 / -1 for CollecTRI), 1.0 when the column is absent. Each source
    becomes one regulon: ``name`` = the source, ``tf`` = the source without a trailing
    ``(+)`` or ``(-)``, ``type`` = ``'repressing'`` for a ``(-)`` suffix and ``'activating'``
    otherwise, ``genes`` and ``weights`` in the network's row order, ``n_genes``. Regulons
    come in order of first appearance, so ``regulons_to_network`` gives the rows back
    (grouped by source). Other columns (``confidence``, ``resources``, ...) are ignored.

    Raises ``InputError`` (one line) for a missing column, an empty or non-text name, a
    duplicated (source, target) edge, or a weight that is not a finite number.
    """
    sources, targets, weights = _network_columns(network)
    regulons: dict[str, dict] = {}
    for source, target, weight in zip(sources, targets, weights):
        regulon = regulons.get(source)
        if regulon is None:
            tf, kind = _tf_and_type(source)
            regulon = regulons[source] = {"name": source, "tf": tf, "type": kind, "genes": [], "weights": []}
        regulon["genes"].append(target)
        regulon["weights"].append(float(weight))
    return [{**r, "n_genes": len(r["genes"])} for r in regulons.values()]


def regulons_to_network(regulons: Sequence[dict]) -> pd.DataFrame:
    """The regulons as a decoupler network: columns ``source`` (the regulon's name),
    ``target`` (its genes, in order) and ``weight`` (float64: each gene's weight).

    ``dc.mt.aucell(adata, net)`` (or any decoupler method) scores it; ``network_to_regulons``
    reads it back to the same names, genes and weights. The sign of a regulon is its name
    (``TF(+)`` / ``TF(-)``); weights are kept as they are (a pipeline regulon's are its GRN
    weights, the TF itself 1.0).
    """
    if isinstance(regulons, (str, bytes, pd.DataFrame)) or not isinstance(regulons, Sequence):
        raise InputError(f"regulons must be a list of regulon dicts, got {type(regulons).__name__}")
    sources, targets, weights = [], [], []
    seen: set[str] = set()
    for i, regulon in enumerate(regulons):
        name, genes, values = _regulon_fields(regulon, i)
        if name in seen:
            raise InputError(f"regulons[{i}]: the name {name!r} is used twice; regulon names must be unique")
        seen.add(name)
        sources += [name] * len(genes)
        targets += genes
        weights += values
    return pd.DataFrame({"source": pd.Series(sources, dtype=object), "target": pd.Series(targets, dtype=object),
                         "weight": np.asarray(weights, dtype=np.float64)})


def network_to_adjacency(network: pd.DataFrame, gene_names: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """What AUCell scores for a network, with pySCENIC's rules for genes absent from the matrix.

    Returns ``(names, adjacency, scored)``: the sources in order of first appearance; the
    sources x genes 0/1 float32 matrix of their targets among ``gene_names`` (unweighted, as
    pySCENIC's command line and decoupler's ``aucell``: a weight of -1 is a target too);
    and a bool mask, False for each source that pySCENIC scores 0 in every cell because
    fewer than 80% of its targets are in the matrix (``ctxcore``'s ``enrichment4cells``).
    Targets absent from the matrix are otherwise ignored, as pySCENIC does; a warning names
    the sources scored 0. No target at all among the genes is refused: the identifiers differ.
    """
    regulons = network_to_regulons(network)
    names = [str(g) for g in gene_names]
    check_unique(names, "gene names")
    column = {gene: j for j, gene in enumerate(names)}
    adjacency = np.zeros((len(regulons), len(names)), dtype=np.float32)
    scored = np.ones(len(regulons), dtype=bool)
    for i, regulon in enumerate(regulons):
        present = [column[g] for g in regulon["genes"] if g in column]
        adjacency[i, present] = 1.0
        scored[i] = bool(present) and float(len(present)) / float(len(regulon["genes"])) >= 0.80
    if not adjacency.any():
        targets = sorted({g for r in regulons for g in r["genes"]})
        raise InputError(f"none of the network's {len(targets)} targets is among the {len(names)} genes (targets "
                         f"start {targets[:3]}, genes start {names[:3]}): use the same gene identifiers and species")
    if not scored.all():
        zeroed = [r["name"] for r, ok in zip(regulons, scored) if not ok]
        logger.warning("%d of %d source(s) have fewer than 80%% of their targets among the genes and score 0, as "
                       "in pySCENIC: %s", len(zeroed), len(regulons), zeroed[:10])
    return [r["name"] for r in regulons], adjacency, scored


def network_for_aucell(exp_array, network: pd.DataFrame, gene_names: Sequence[str] | None):
    """``get_aucell``'s network input: ``(expression, adjacency, scored)`` (see ``network_to_adjacency``).

    The gene names are ``gene_names``, else the columns of a pandas DataFrame ``exp_array``;
    the expression is returned as values (a DataFrame's ``to_numpy()``).
    """
    if gene_names is None:
        if not isinstance(exp_array, pd.DataFrame):
            raise InputError("scoring a network needs the expression's gene names: pass gene_names=[...] (one per "
                             "column) or a cells x genes DataFrame")
        gene_names = [str(c) for c in exp_array.columns]
    n_columns = exp_array.shape[1]
    if len(gene_names) != n_columns:
        raise InputError(f"{len(gene_names)} gene names for {n_columns} expression columns")
    if isinstance(exp_array, pd.DataFrame):
        exp_array = exp_array.to_numpy()
    _, adjacency, scored = network_to_adjacency(network, gene_names)
    return exp_array, adjacency, scored


def _network_columns(network) -> tuple[list[str], list[str], np.ndarray]:
    if not isinstance(network, pd.DataFrame):
        raise InputError(f"a network must be a pandas DataFrame with columns source, target[, weight], got "
                         f"{type(network).__name__}")
    missing = [c for c in ("source", "target") if c not in network.columns]
    if missing:
        raise InputError(f"the network lacks column(s) {missing}; a decoupler network has columns source, target "
                         f"and (optional) weight, it has {list(network.columns)[:10]}")
    if network.columns.duplicated().any():
        duplicated = sorted(set(network.columns[network.columns.duplicated()]))
        raise InputError(f"the network has duplicate columns {duplicated}")
    if len(network) == 0:
        raise InputError("the network has no rows: nothing to score")
    names = {}
    for column in ("source", "target"):
        values = network[column].to_numpy(object)
        for row, value in enumerate(values):
            if not isinstance(value, str) or not value:
                raise InputError(f"network row {row}, column {column}: expected a non-empty str, got {value!r}")
        names[column] = values.tolist()
    if "weight" in network.columns:
        column = network["weight"]
        if not pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype):
            raise InputError(f"network column weight must be numeric, has dtype {column.dtype}")
        weights = column.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(weights)
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(f"network row {row}, column weight: {float(weights[row])} is not a finite number")
    else:
        weights = np.ones(len(network))
    edges = pd.MultiIndex.from_arrays([names["source"], names["target"]])
    if edges.has_duplicates:
        duplicated = edges.duplicated()
        row = int(np.argmax(duplicated))
        raise InputError(f"network row {row} repeats the edge ({names['source'][row]!r}, {names['target'][row]!r}) "
                         f"({int(duplicated.sum())} repeated edge(s)); keep one row per source and target")
    return names["source"], names["target"], weights


def _tf_and_type(name: str) -> tuple[str, str]:
    if name.endswith("(-)") and len(name) > 3:
        return name[:-3], REPRESSING
    if name.endswith("(+)") and len(name) > 3:
        return name[:-3], ACTIVATING
    return name, ACTIVATING


def _regulon_fields(regulon, i: int) -> tuple[str, list[str], list[float]]:
    if not isinstance(regulon, dict) or not {"name", "genes", "weights"} <= set(regulon):
        raise InputError(f"regulons[{i}] is not a dict with 'name', 'genes' and 'weights' (see regulons_from_motifs)")
    name, genes, weights = regulon["name"], list(regulon["genes"]), list(regulon["weights"])
    if not isinstance(name, str) or not name:
        raise InputError(f"regulons[{i}]: the name must be a non-empty str, got {name!r}")
    if len(genes) != len(weights):
        raise InputError(f"regulons[{i}] ({name}) has {len(genes)} genes but {len(weights)} weights")
    for gene in genes:
        if not isinstance(gene, str) or not gene:
            raise InputError(f"regulons[{i}] ({name}): gene {gene!r} is not a non-empty str")
    if len(set(genes)) != len(genes):
        raise InputError(f"regulons[{i}] ({name}) lists a gene twice")
    values = []
    for weight in weights:
        if isinstance(weight, (bool, np.bool_)) or not isinstance(weight, (int, float, np.integer, np.floating)) \
                or not math.isfinite(weight):
            raise InputError(f"regulons[{i}] ({name}): weight {weight!r} is not a finite number")
        values.append(float(weight))
    return name, genes, values
