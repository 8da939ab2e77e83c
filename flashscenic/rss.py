"""Regulon specificity scores (Suo et al. 2018), equal to pySCENIC's ``regulon_specificity_scores``.

Two forms of the same numbers: :func:`regulon_specificity_scores` returns the documented
flashscenic dict (``'rss'`` array, ``'cell_types'``, ``'regulon_names'``); :func:`rss_table`
returns pySCENIC's form, a cell types x regulons DataFrame.

For regulon r and cell type t, p is the regulon's AUC over cells normalised to sum 1 and
q the indicator of t normalised to sum 1; RSS = 1 - sqrt(JS(p, q)), with JS the
Jensen-Shannon divergence in natural log (``scipy.spatial.distance.jensenshannon``).

pySCENIC loops over cell types x regulons, calling scipy once per pair. Here all pairs come
from one pass over the cells: with a = 1 / n_t and m = (p + q) / 2, a cell outside t adds
p log 2 to 2 JS, and a cell inside t adds p log(p / m) + a log(a / m). So

    2 JS(r, t) = log 2 * sum_c p_c + sum_{c in t} [p_c log(p_c / m_c) + a log(a / m_c) - p_c log 2]

and the bracket is one cells x regulons array summed per cell type (a sparse product).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import rel_entr

from .errors import InputError

__all__ = ["regulon_specificity_scores", "rss_table", "rss_by_label", "rss_of_store", "default_label_column"]

logger = logging.getLogger(__name__)

_BLOCK_VALUES = 2**22  # values per block of cells (bounds memory)


def regulon_specificity_scores(auc_matrix, cell_type_labels, regulon_names: Sequence[str] | None = None) -> dict:
    """Regulon specificity score of every regulon in every cell type, as the documented dict.

    The numbers of :func:`rss_table` (see it for the inputs, the float64 computation and
    the NaN of a regulon whose AUC is 0 everywhere), in flashscenic's documented form.

    Parameters
    ----------
    auc_matrix
        Cells x regulons AUC values: a numpy array, torch tensor or DataFrame.
    cell_type_labels
        One label per cell: a list, array or pandas Series.
    regulon_names
        Names of the regulon columns (default: a DataFrame's columns, else "0", "1", ...).

    Returns
    -------
    dict
        ``'rss'``: np.ndarray (n_cell_types x n_regulons), float64; ``'cell_types'``: the
        sorted unique labels as text (the rows of ``'rss'``); ``'regulon_names'``: the
        regulon names as text (its columns).
    """
    table = rss_table(auc_matrix, cell_type_labels, regulon_names)
    return {"rss": table.to_numpy(), "cell_types": [str(t) for t in table.index],
            "regulon_names": [str(r) for r in table.columns]}


def rss_table(auc_matrix, cell_type_labels, regulon_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Regulon specificity scores in pySCENIC's form: a cell types x regulons DataFrame (its
    numbers; the cell types sorted, where pySCENIC keeps their order of appearance).

    pySCENIC's ``regulon_specificity_scores`` returns this table; flashscenic's function of
    that name returns the same numbers as a dict (:func:`regulon_specificity_scores`).

    Parameters
    ----------
    auc_matrix
        Cells x regulons AUC values (e.g. from :func:`flashscenic.get_aucell`): a DataFrame
        (its columns name the regulons), a numpy array or a torch tensor. Values must be
        finite and >= 0.
    cell_type_labels
        One label per cell: a pandas Series, list or array. When it is a Series and
        ``auc_matrix`` a DataFrame, labels are matched to cells by index (pySCENIC uses the
        position only, so a Series in another order silently mislabels cells there); a
        Series with a default RangeIndex is used by position.
    regulon_names
        Column names for a numpy/torch ``auc_matrix`` (default 0, 1, ...). For a DataFrame,
        overrides its columns.

    Returns
    -------
    pandas.DataFrame
        Cell types (sorted) x regulons, computed in float64 whatever the input dtype
        (pySCENIC computes in the AUC's dtype, so for float32 AUCs it differs from this by
        about 1e-7; for float64 AUCs the two agree to about 1e-15). A regulon whose AUC sums to 0 over all
        cells has no distribution: its column is NaN and one warning names such regulons
        (pySCENIC divides 0 by 0 silently).
    """
    values, cells, regulons = _auc_values(auc_matrix, regulon_names)
    labels = _labels(cell_type_labels, cells, values.shape[0])
    types, codes = np.unique(labels, return_inverse=True)
    return _specificity(lambda a, b: values[a:b], values.shape[0], codes, types, regulons, checked=True)


def rss_of_store(results, labels: pd.Series) -> pd.DataFrame:
    """``rss_by_label`` of a results store's AUC, read chunk by chunk: the AUC of an atlas
    (cells x regulons) is never held whole, in float64 or at all."""
    cells = pd.Index(results.cell_names)
    codes, types = _label_codes(labels, cells)
    rss = _specificity(results.auc_reader(), len(cells), codes, types, results.regulon_names,
                       what=f"the AUC of {results.path}")
    return rss.rename_axis(labels.name)


def _label_codes(labels: pd.Series, cells: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's cell-type code (-1: no label) and the cell types (labels as text, sorted)."""
    aligned = pd.Series(_aligned(labels, cells, len(cells)), dtype=object).reset_index(drop=True)
    keep = aligned.notna().to_numpy()
    if not keep.any():
        where = f" in {labels.name!r}" if labels.name is not None else ""
        raise InputError(f"every cell's label{where} is missing; there is no cell type to score")
    types, kept_codes = np.unique(aligned[keep].astype(str).to_numpy(), return_inverse=True)
    codes = np.full(len(cells), -1, dtype=np.int64)
    codes[keep] = kept_codes
    return codes, types


def _specificity(read, n_cells: int, codes: np.ndarray, types: np.ndarray, regulons, checked: bool = False,
                 what: str = "auc_matrix"):
    """RSS from ``read(start, stop)`` (blocks of cells x regulons AUC), in float64 a block at
    a time (the same blocks in memory and from a store: the same bits); cells whose code is
    -1 belong to no cell type and are left out entirely. ``checked``: the values are known
    finite and >= 0 (else each block is checked)."""
    n_regulons = len(regulons)
    step = max(1, _BLOCK_VALUES // max(1, n_regulons))
    ranges = [(a, min(a + step, n_cells)) for a in range(0, n_cells, step)]

    def blocks():  # (rows, their codes) in float64, the unlabelled cells left out, the values checked
        for a, b in ranges:
            block, block_codes = np.asarray(read(a, b)), codes[a:b]
            if not checked:  # every cell, labelled or not, as rss_by_label checks them
                _check_values(block, a, what)
            if (block_codes < 0).any():
                block, block_codes = block[block_codes >= 0], block_codes[block_codes >= 0]
            yield np.ascontiguousarray(block, dtype=np.float64), block_codes  # C order: one order of addition

    sizes = np.bincount(codes[codes >= 0], minlength=types.size).astype(np.float64)
    totals = np.zeros(n_regulons)
    for block, _ in blocks():
        totals += block.sum(axis=0)
    empty = totals == 0
    if empty.any():
        names = [str(r) for r in np.asarray(regulons, dtype=object)[empty]]
        warnings.warn(
            f"{len(names)} regulon(s) have AUC 0 in every cell, so their specificity is "
            f"undefined (NaN): {names[:10]}",
            RuntimeWarning,
            stacklevel=3,
        )
    safe_totals = np.where(empty, 1.0, totals)
    # scipy's jensenshannon normalises p again; its sum is 1 up to rounding.
    renorm = np.zeros(n_regulons)
    for block, _ in blocks():
        renorm += (block / safe_totals).sum(axis=0)
    renorm[renorm == 0] = 1.0

    log2 = np.log(2.0)
    inside = np.zeros((types.size, n_regulons))  # per type: sum over its cells of the bracket
    p_sums = np.zeros(n_regulons)
    for block, block_codes in blocks():
        p = block / safe_totals / renorm
        a = (1.0 / sizes[block_codes])[:, None]
        m = (p + a) / 2.0
        bracket = rel_entr(p, m) + rel_entr(a, m) - p * log2
        member = sp.csr_matrix((np.ones(len(block_codes)), (block_codes, np.arange(len(block_codes)))),
                               shape=(types.size, len(block_codes)))
        inside += member @ bracket
        p_sums += p.sum(axis=0)
    js2 = np.maximum(log2 * p_sums[None, :] + inside, 0.0)  # 2 * JS; rounding can dip below 0
    rss = 1.0 - np.sqrt(js2 / 2.0)
    rss[:, empty] = np.nan
    return pd.DataFrame(rss, index=pd.Index(types, name=None), columns=pd.Index(regulons))


def default_label_column(cells: pd.DataFrame) -> str | None:
    """The label column used when none is named: the first that is not the cell names and not
    floats (a float column such as ``n_counts`` is a measurement, not a cell type)."""
    return next((str(c) for c in cells.columns if c != "cell" and not pd.api.types.is_float_dtype(cells[c].dtype)),
                None)


def rss_by_label(auc: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
    """RSS of each label's cells; a cell without a label (NaN/None) belongs to no cell type.

    ``auc``: cells x regulons; ``labels``: one label per cell, aligned by index to
    ``auc``'s rows (a RangeIndex: by position) and compared as text. Returns cell types x
    regulons, the index named after ``labels.name``. The ``rss`` command calls this and the
    run and the report call ``rss_of_store`` (the same blocks, the same bits), so all
    three group cells alike.
    """
    if not isinstance(auc, pd.DataFrame) or not isinstance(labels, pd.Series):
        raise InputError("rss_by_label takes the AUC as a DataFrame (cells x regulons) and the labels as a Series")
    values, _, regulons = _auc_values(auc, None)
    codes, types = _label_codes(labels, auc.index)
    return _specificity(lambda a, b: values[a:b], len(auc), codes, types, regulons, checked=True).rename_axis(
        labels.name)


def _auc_values(auc_matrix, regulon_names):
    cells = None
    if isinstance(auc_matrix, pd.DataFrame):
        cells = auc_matrix.index
        regulons = list(auc_matrix.columns)
        values = auc_matrix.to_numpy()
    else:
        from .modules import to_numpy

        values = to_numpy(auc_matrix)
        regulons = None
    if values.ndim != 2:
        raise InputError(f"auc_matrix must be 2-D (cells x regulons), got shape {values.shape}")
    if values.dtype == object or values.dtype.kind not in "biuf":
        raise InputError(f"auc_matrix must hold numbers, got dtype {values.dtype}")
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise InputError(f"auc_matrix has shape {values.shape}; it needs at least one cell and one regulon")
    _check_values(values)
    if regulon_names is not None:
        regulon_names = list(regulon_names)
        if len(regulon_names) != values.shape[1]:
            raise InputError(f"regulon_names has {len(regulon_names)} names but auc_matrix has {values.shape[1]} regulon columns")
        regulons = regulon_names
    elif regulons is None:
        regulons = list(range(values.shape[1]))
    return values, cells, regulons


def _check_values(values: np.ndarray, offset: int = 0, what: str = "auc_matrix") -> None:
    """NaN, infinite or negative AUC values are refused, naming the first (cells from ``offset``)."""
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise InputError(f"{what} has {int(bad.sum())} NaN or infinite value(s), first at cell {r + offset}, "
                         f"regulon {c}")
    if (values < 0).any():
        r, c = np.argwhere(values < 0)[0]
        raise InputError(
            f"{what} has negative values (first at cell {r + offset}, regulon {c}: {values[r, c]}); "
            "AUC values are >= 0"
        )


def _aligned(labels, cells, n_cells):
    """A Series of labels reordered to ``cells`` by index (a RangeIndex one: by position); others as given."""
    if isinstance(labels, pd.Series) and cells is not None and not labels.index.equals(cells):
        if cells.isin(labels.index).all() and labels.index.is_unique:
            labels = labels.reindex(cells)
        elif not isinstance(labels.index, pd.RangeIndex) or len(labels) != n_cells:
            missing = cells[~cells.isin(labels.index)]
            raise InputError(
                f"cell_type_labels' index does not match auc_matrix's cells ({len(missing)} cell(s) "
                f"without a label, e.g. {list(missing[:5])}); give one label per cell"
            )
    return labels


def _labels(labels, cells, n_cells) -> np.ndarray:
    labels = _aligned(labels, cells, n_cells)
    if isinstance(labels, (str, bytes)):
        raise InputError("cell_type_labels must be one label per cell, not one string")
    series = pd.Series(np.asarray(labels, dtype=object) if not isinstance(labels, pd.Series) else labels.to_numpy(dtype=object))
    if series.ndim != 1 or len(series) != n_cells:
        raise InputError(f"cell_type_labels has {len(series)} labels but auc_matrix has {n_cells} cells")
    if series.isna().any():
        raise InputError(f"cell_type_labels has {int(series.isna().sum())} missing label(s); label every cell or drop those cells")
    values = series.to_numpy()
    kinds = {type(v) for v in values}
    if len(kinds) > 1:
        values = values.astype(str)  # mixed types cannot be sorted; compare them as text
    return values
