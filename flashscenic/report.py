"""A self-contained HTML report of one run: what was found, in which cells, and how long it took.

``write_report(results)`` reads a results store (``flashscenic.store``) and writes one HTML
file with its figures embedded as base64 PNGs, so it can be mailed or archived alone: no
JavaScript, no external CSS, no network (a Content-Security-Policy in the file forbids
anything but inline styles and ``data:`` images). It contains

* a run summary: cells, regulons, motif rows, cell types, stages;
* the cells embedded by their regulon activity, coloured by cell type: a UMAP of the AUC
  where umap-learn is installed (``pip install flashscenic[umap]``; ``make install`` has
  it), else its PCA; the caption says which;
* a heatmap of each regulon's mean AUC per cell type (scaled per regulon), regulons and cell
  types ordered by hierarchical clustering, with their dendrograms;
* each regulon's binarised activity: the fraction of the cells of each type in which it is
  on, with pySCENIC's thresholds (``flashscenic.binarize_auc``);
* a heatmap of regulon specificity scores (RSS, ``flashscenic.rss``): cell types x the
  ``top_n`` most specific regulons of each type, and a table of those regulons;
* histograms of regulon sizes and of the NES of the enriched motifs, the regulons'
  recurrence over GRN runs (after a multi-run), stage timings, parameters and versions.

The report scales with the run, not with the cells: the AUC is read once, in blocks of at
most 2**22 values whatever the store's chunking, summed per cell type, and a fixed seeded
random subsample of at most 20,000 cells is kept for the per-cell figures (embedding,
binarisation); their captions say so. An RSS the run did not store (labels other than the
run's) is computed block by block too. The binarisation thresholds are derived from 1,000
of those cells: pySCENIC's dip test, mixture and density fits cost about 0.1 s a regulon
whatever the number of cells. The UMAP of the subsample takes seconds (about 15 s for
20,000 cells on two CPU cores, plus umap-learn's compilation on its first call in a process).
Heatmaps with many regulons grow with the number of rows, at
a legible font, up to 200 rows (then the most specific regulons are shown, and the caption
says so).

Figures are drawn with ``matplotlib.figure.Figure`` on an Agg canvas, never through
``pyplot``, so writing a report in a notebook leaves the notebook's backend and its open
figures alone; they use matplotlib's default style whatever the caller's ``rcParams``.
Sections whose data a run lacks (no cell labels, no motif table, no timings) say so in the
report instead of failing.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import html
import io
import logging
import math
import os
import re
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._utils import atomic_path
from .errors import InputError, MissingDependencyError, MissingFileError
from .rss import default_label_column
from .store import ResultsStore, open_expression_store, open_results_store

__all__ = ["write_report"]

logger = logging.getLogger(__name__)

_MAX_TYPES = 50  # cell types shown in the figures; the largest types are kept
_MAX_REGULON_COLUMNS = 50  # regulons (columns) of the RSS heatmap
_MAX_HEATMAP_ROWS = 200  # regulons (rows) of the activity and binarisation heatmaps
_SAMPLE_CELLS = 20_000  # cells kept for the per-cell figures (embedding, on/off fractions)
_BINARIZE_CELLS = 1_000  # of those, cells whose AUC sets the binarisation thresholds (its cost is per regulon)
_SEED = 0  # of the subsamples, the binarisation and the UMAP
_UMAP_NEIGHBOURS = 15  # umap-learn's default
_BLOCK_VALUES = 2**22  # AUC values read at a time, whatever the store's chunking (bounds memory)
_MIN_FONT = 7.0  # points: no label in a figure is smaller
_LABEL_CHARS = 32  # tick labels longer than this are shortened in figures
_DPI = 110


@dataclass
class _Labels:
    """The cell type of each AUC row and where the labels came from."""

    codes: np.ndarray  # int32 per cell: index into ``order``, -1 where the cell has no label
    order: list[str]  # the cell types, in display order of the tables
    source: str  # e.g. "column 'cell_type' of the results store's cells"


@dataclass
class _Auc:
    """What the report needs of the AUC, gathered in one pass over its blocks."""

    names: list[str]  # the regulons (columns)
    n_cells: int
    sums: np.ndarray  # cell types x regulons: sum of the AUC of each type's cells (float64)
    counts: np.ndarray  # cells per type
    rows: np.ndarray  # the subsample: sorted row numbers
    sample: np.ndarray  # the subsample's AUC, len(rows) x regulons (float32)

    @property
    def means(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sums / self.counts[:, None]


def write_report(
    results: ResultsStore | str | os.PathLike,
    path: str | os.PathLike | None = None,
    *,
    cell_type_column: str | None = None,
    cell_types: Sequence | pd.Series | np.ndarray | None = None,
    top_n: int = 5,
    title: str | None = None,
) -> Path:
    """Write an HTML report of a run, with its figures embedded, and return its path.

    Parameters
    ----------
    results
        The run's results store (``ResultsStore``) or its path (``DIR/results.zarr``). It
        needs the AUC; regulons, motifs, timings, recurrence and cell labels are used when
        present.
    path
        The HTML file to write (replaced if it exists). Default: ``report.html`` in the
        folder that holds the results store (``DIR/report.html`` for ``DIR/results.zarr``),
        as ``flashscenic run`` writes it; the store itself is a zarr group, so the report
        is not put inside it.
    cell_type_column
        The cell-label column to group cells by: looked up in the results store's cells
        table (``ResultsStore.read_cells``), then in the ``obs`` of the expression store
        the run was made from. Default: the column the run computed its RSS with (its
        stored RSS is then shown, not recomputed); without one, the first label column of
        the cells table, else of ``obs``, skipping float columns (continuous values, not
        labels).
    cell_types
        One label per cell, in the AUC's row order, or a ``pandas.Series`` indexed by cell
        name. Wins over the stored labels; give this or ``cell_type_column``, not both.
        Cells whose label is missing (None/NaN) are left out of the per-type figures. A
        categorical's category order is the row order of the tables (else sorted).
        Without any labels, the per-type sections hold a note instead and the embedding
        is not coloured.
    top_n
        Regulons shown per cell type: the union over cell types of each type's ``top_n``
        most specific regulons makes the RSS heatmap's columns (at most 50: with more,
        fewer per type are shown).
    title
        The report's title (default: "flashscenic report: " and the store's folder name).

    Returns
    -------
    pathlib.Path
        The path of the report written.

    Raises
    ------
    InputError
        The store has no AUC, the labels do not match the cells (wrong number, cells
        missing from a Series' index), the column does not exist, or ``top_n`` is not a
        positive integer. ``MissingFileError`` (an ``InputError``) when the store or the
        report's folder does not exist.
    """
    store = results if isinstance(results, ResultsStore) else open_results_store(results)
    if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 1:
        raise InputError(f"top_n must be a positive integer, got {top_n!r}")
    if cell_types is not None and cell_type_column is not None:
        raise InputError("give cell_types= (the labels) or cell_type_column= (where to find them), not both")
    target = Path(path) if path is not None else store.path.resolve().parent / "report.html"
    if target.is_dir():
        raise InputError(f"{target} is a folder; give the path of the HTML file to write, "
                         f"e.g. {target / 'report.html'}")
    if not target.parent.exists():
        raise MissingFileError(f"the folder {target.parent} of the report does not exist; create it first")
    read = store.auc_reader()  # refuses a store without a complete AUC before any work

    start = time.perf_counter()
    stored = _stored_rss(store) if cell_types is None else None
    if stored is not None and cell_type_column not in (None, stored[0]):
        stored = None  # the caller asks for another grouping than the run's
    labels = _cell_labels(store, cell_types, stored[0] if stored is not None else cell_type_column)
    grouping = labels if labels is not None and labels.order else None  # None: no cell has a label
    auc = _scan(store, grouping, read)
    rss = None
    if grouping is not None and auc.names:
        rss = stored[1] if stored is not None else _computed_rss(store, grouping)
    per_type = None if grouping is None or not auc.names else _PerType(auc, grouping, rss)

    page = _Page(title or f"flashscenic report: {store.path.name}")
    _summary(page, store, auc, labels)
    _embedding_section(page, auc, per_type)
    _activity_section(page, per_type, _no_types(labels, auc))
    _binary_section(page, auc, per_type)
    _rss_section(page, per_type, _no_types(labels, auc), int(top_n), stored is not None)
    _regulon_section(page, store)
    _recurrence_section(page, store)
    _motif_section(page, store)
    _timing_section(page, store)
    _parameter_section(page, store)

    with atomic_path(target) as tmp:
        tmp.write_text(page.render(), encoding="utf-8")
    logger.info("report of %s written to %s in %.1f s", store.path, target, time.perf_counter() - start)
    return target


# --- the AUC, read once -------------------------------------------------------------------


def _auc_blocks(store: ResultsStore, read) -> Iterator[tuple[int, np.ndarray]]:
    """The AUC in blocks (first row, rows) of at most ``_BLOCK_VALUES`` values, each within one chunk.

    Bounded whatever the chunking: a store imported from pySCENIC may be one chunk of all
    cells. ``read``: the store's ``auc_reader()`` (its completeness checked once).
    """
    step = max(1, _BLOCK_VALUES // max(1, len(store.regulon_names)))
    for start, stop in store.auc_chunk_ranges():
        for first in range(start, stop, step):
            yield first, read(first, min(first + step, stop))


def _subsample(n_cells: int) -> np.ndarray:
    """The rows of the per-cell figures: all cells, or a seeded random ``_SAMPLE_CELLS`` of them."""
    if n_cells <= _SAMPLE_CELLS:
        return np.arange(n_cells)
    return np.sort(np.random.default_rng(_SEED).choice(n_cells, size=_SAMPLE_CELLS, replace=False))


def _scan(store: ResultsStore, labels: _Labels | None, read=None) -> _Auc:
    """Sum the AUC per cell type and keep the subsample's rows, in one pass over its blocks
    (``read``: the store's ``auc_reader()``, made here when not given)."""
    import scipy.sparse as sp

    names = store.regulon_names
    n_cells = store.n_cells
    n_types = len(labels.order) if labels is not None else 0
    rows = _subsample(n_cells)
    sums = np.zeros((n_types, len(names)))
    counts = np.zeros(n_types, dtype=np.int64)
    sample = np.empty((rows.size, len(names)), dtype=np.float32)
    for start, block in _auc_blocks(store, read or store.auc_reader()):
        stop = start + block.shape[0]
        if labels is not None:
            codes = labels.codes[start:stop]
            keep = np.flatnonzero(codes >= 0)
            member = sp.csr_matrix((np.ones(keep.size), (codes[keep], keep)), shape=(n_types, block.shape[0]))
            sums += member @ block.astype(np.float64)
            counts += np.bincount(codes[keep], minlength=n_types)
        first, last = np.searchsorted(rows, [start, stop])
        sample[first:last] = block[rows[first:last] - start]
    return _Auc(names, n_cells, sums, counts, rows, sample)


def _computed_rss(store: ResultsStore, labels: _Labels) -> pd.DataFrame:
    """The RSS of a grouping the run stored none for, computed as the run computes it (block by block)."""
    from .rss import rss_of_store

    grouping = pd.Series(pd.Categorical.from_codes(labels.codes, categories=labels.order))  # by position
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the RSS section says it
        return rss_of_store(store, grouping)


# --- cell labels -------------------------------------------------------------------------


def _stored_rss(store: ResultsStore) -> tuple[str, pd.DataFrame] | None:
    """The label column and RSS table (cell types x regulons) the run stored, if it finished its RSS.

    The report shows the run's numbers rather than computing its own, which could differ.
    """
    column = store.stages.get("rss", {}).get("cell_type_column")
    if not store.is_complete("rss") or column is None:
        return None
    table = store.read_table("rss")
    rss = table.set_index(table.columns[0])  # the first column holds the labels
    rss.index = rss.index.astype(str)
    return str(column), rss


def _cell_labels(store: ResultsStore, cell_types, column: str | None) -> _Labels | None:
    """The labels to group cells by, or None (with no labels anywhere and none asked for)."""
    cells = pd.Index(store.cell_names)
    if cell_types is not None:
        return _labels_from(_given_labels(cell_types, cells), "labels given to write_report")
    table = store.read_cells().drop(columns="cell")
    if column is not None:
        if column in table.columns:
            return _labels_from(table[column], f"column {column!r} of the results store's cells table")
        obs = _expression_obs(store)
        if obs is not None and column in obs.columns:
            return _labels_from(_align_obs(obs[column], cells), f"obs column {column!r} of the expression store")
        found = list(table.columns) + ([c for c in obs.columns if c not in table.columns] if obs is not None else [])
        raise InputError(f"no cell-label column {column!r}; the cells of {store.path} have {found or 'none'} "
                         "(store labels with ResultsStore.write_cell_labels, or pass cell_types=)")
    name = default_label_column(table)
    if name is not None:
        return _labels_from(table[name], f"column {name!r} of the results store's cells table "
                            "(its first label column)")
    obs = _expression_obs(store)
    name = default_label_column(obs) if obs is not None else None
    if name is not None:
        return _labels_from(_align_obs(obs[name], cells),
                            f"obs column {name!r} of the expression store (its first label column)")
    return None


def _given_labels(cell_types, cells: pd.Index) -> pd.Series:
    """``cell_types`` as a Series in the AUC's row order (aligned by name when it is a named Series)."""
    if isinstance(cell_types, (str, bytes)):
        raise InputError("cell_types must be one label per cell, not one string; to name a stored column use "
                         "cell_type_column=")
    if isinstance(cell_types, pd.Series):
        index = cell_types.index
        if index.is_unique and cells.isin(index).all() and not index.equals(cells):
            return cell_types.reindex(cells).reset_index(drop=True)
        if len(cell_types) == len(cells) and (index.equals(cells) or isinstance(index, pd.RangeIndex)):
            return cell_types.reset_index(drop=True)
        missing = cells[~cells.isin(index)]
        raise InputError(f"cell_types is a Series whose index lacks {len(missing)} of the {len(cells)} cells "
                         f"(e.g. {list(missing[:3])}); index it by cell name or give one label per cell in order")
    values = cell_types if isinstance(cell_types, pd.Categorical) else np.asarray(cell_types, dtype=object)
    if getattr(values, "ndim", 1) != 1:
        raise InputError(f"cell_types must be one label per cell (1-D), got shape {np.shape(values)}")
    if len(values) != len(cells):
        raise InputError(f"cell_types has {len(values)} labels but the results store has {len(cells)} cells")
    return pd.Series(values)


def _expression_obs(store: ResultsStore) -> pd.DataFrame | None:
    """The ``obs`` of the run's expression store, or None when none is recorded or it is gone."""
    path = store.expression_store
    if not path or not Path(path).exists():
        return None
    try:
        return open_expression_store(path).obs()
    except InputError as error:
        logger.warning("cell labels: cannot read the expression store %s (%s)", path, error)
        return None


def _align_obs(column: pd.Series, cells: pd.Index) -> pd.Series:
    if column.index.equals(cells):
        return column.reset_index(drop=True)
    if not cells.isin(column.index).all():
        raise InputError("the expression store's obs does not list the cells of the results store; pass cell_types=")
    return column.reindex(cells).reset_index(drop=True)


def _natural_key(text: str) -> tuple:
    """Sort key that puts 'type2' before 'type10' (and is a total order: the text breaks ties)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower())
            for part in re.split(r"(\d+)", text) if part], text


def _labels_from(series: pd.Series, source: str) -> _Labels:
    """Labels compared as text (1 and '1' are one type); codes, not a million Python strings."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    texts = [str(u) for u in np.asarray(uniques, dtype=object)]
    present = set(texts)
    if isinstance(series.dtype, pd.CategoricalDtype):
        order = [str(c) for c in series.cat.categories if str(c) in present]
        order += sorted(present - set(order))
    else:
        order = sorted(present, key=_natural_key)
    position = {text: i for i, text in enumerate(order)}
    lookup = np.array([position[t] for t in texts] + [-1], dtype=np.int32)  # code -1 (no label) stays -1
    return _Labels(lookup[codes], order, source)


# --- per cell type -----------------------------------------------------------------------


class _PerType:
    """What the per-cell-type sections share: the types shown, their clustering, the regulons shown."""

    def __init__(self, auc: _Auc, labels: _Labels, rss: pd.DataFrame):
        self.labels = labels
        self.rss = rss.reindex(index=labels.order, columns=auc.names)
        self.sizes = pd.Series(auc.counts, index=labels.order)
        self.notes: list[str] = []
        unlabelled = auc.n_cells - int(auc.counts.sum())
        if unlabelled:
            self.notes.append(f"{unlabelled:,} cells without a label are left out.")
        shown = np.arange(len(labels.order))
        if shown.size > _MAX_TYPES:
            largest = np.argsort(-auc.counts, kind="stable")[:_MAX_TYPES]
            shown = np.sort(largest)
            self.notes.append(f"The heatmaps show the {_MAX_TYPES} largest of the {len(labels.order):,} cell types; "
                              "the table lists all.")
        scaled = _zscores(auc.means[shown])
        order, self.type_tree = _cluster(scaled)
        self.types = shown[order]  # the shown types, in clustering order
        self.scaled = scaled[order]  # their mean AUC scaled per regulon (shown types x all regulons)
        specificity = self.rss.iloc[self.types].max(axis=0, skipna=True).to_numpy(np.float64)
        regulons = np.arange(len(auc.names))
        self.regulon_note = ""
        if regulons.size > _MAX_HEATMAP_ROWS:
            regulons = np.sort(np.argsort(-np.nan_to_num(specificity, nan=-1.0), kind="stable")[:_MAX_HEATMAP_ROWS])
            self.regulon_note = (f"the {_MAX_HEATMAP_ROWS} most cell-type-specific of the {len(auc.names):,} regulons "
                                 "(highest RSS in any cell type shown)")
        order, self.regulon_tree = _cluster(self.scaled[:, regulons].T)
        self.regulons = regulons[order]  # the heatmaps' regulons, in clustering order

    def type_names(self, types: np.ndarray) -> list[str]:
        return [self.labels.order[t] for t in types]


def _zscores(values: np.ndarray) -> np.ndarray:
    """Each column scaled to mean 0 and standard deviation 1 over the rows (a constant column: 0)."""
    values = np.asarray(values, dtype=np.float64)
    spread = values.std(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = (values - values.mean(axis=0)) / spread
    scaled[:, ~(spread > 0)] = 0.0
    return scaled


def _cluster(items: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Leaf order and linkage (average, Euclidean, optimal leaf order) of the rows of ``items``."""
    n = items.shape[0]
    if n < 2:
        return np.arange(n), None
    from scipy.cluster.hierarchy import leaves_list, linkage

    tree = linkage(np.nan_to_num(items), method="average", metric="euclidean", optimal_ordering=True)
    return leaves_list(tree), tree


def _no_types(labels: _Labels | None, auc: _Auc) -> str:
    """Why there are no per-type figures (for the notes)."""
    if labels is None:
        return ("No cell-type labels were found, so there is no regulon specificity (RSS) or mean AUC per cell type. "
                "Give labels with write_report(..., cell_types=...) or --cell-type-column, or store them with "
                "ResultsStore.write_cell_labels.")
    if not labels.order:
        return f"Every cell's label is missing in the {labels.source}; there is no RSS or mean AUC per cell type."
    return "The run scored no regulons, so there is nothing to compare between cell types."


# --- sections ----------------------------------------------------------------------------


def _summary(page: _Page, store: ResultsStore, auc: _Auc, labels: _Labels | None) -> None:
    attrs = store.attrs
    timings = store.timings
    done = [name for name, info in store.stages.items() if isinstance(info, dict) and info.get("complete")]
    facts: list[tuple[str, str]] = [
        ("Results store", str(store.path.resolve())),
        ("Run created", str(attrs.get("created", "unknown"))),
    ]
    types = Counter(name.endswith("(-)") for name in auc.names)
    if types[True]:
        facts.append(("Activating / repressing", f"{types[False]:,} / {types[True]:,}"))
    if labels is not None:
        facts.append(("Cell types", f"{len(labels.order):,}, from the {labels.source}"))
    else:
        facts.append(("Cell types", "none (no cell labels)"))
    if auc.rows.size < auc.n_cells:
        facts.append(("Cells in per-cell figures", f"{auc.rows.size:,}, a random subsample (seed {_SEED})"))
    if store.expression_store:
        facts.append(("Expression store", str(store.expression_store)))
    facts.append(("Stages complete", ", ".join(done) or "none recorded"))
    tiles = [(f"{auc.n_cells:,}", "cells"), (f"{len(auc.names):,}", "regulons"),
             (f"{len(labels.order):,}" if labels is not None else "none", "cell types"),
             (_duration(sum(timings.values())) if timings else "not recorded", "total time of the stages")]
    body = _columns('<div class="tiles">' + "".join(f"<div><b>{_e(value)}</b><span>{_e(what)}</span></div>"
                                                    for value, what in tiles) + "</div>",
                    _table(facts, header=None, css="facts"))
    page.section("summary", "Run summary", body)


def _sample_note(auc: _Auc) -> str:
    if auc.rows.size < auc.n_cells:
        return f"a random subsample of {auc.rows.size:,} of the {auc.n_cells:,} cells (seed {_SEED})"
    return f"all {auc.n_cells:,} cells"


def _embedding_section(page: _Page, auc: _Auc, per_type: _PerType | None) -> None:
    """A UMAP of the AUC, which sets cell types apart as SCENIC users expect to see them; a PCA
    (linear, deterministic, no extra dependency) where umap-learn is missing or cells are too few."""
    heading = "Cells by regulon activity"
    if len(auc.names) < 2:
        page.section("cells", heading, _note(f"An embedding needs at least 2 regulons; the run scored "
                                             f"{len(auc.names)}."))
        return
    if per_type is not None:
        codes = per_type.labels.codes[auc.rows]
        shown = sorted(per_type.types)  # legend in the tables' order
        groups = [(per_type.labels.order[t], codes == t) for t in shown]
        rest = (codes >= 0) & ~np.isin(codes, shown)
        if rest.any():
            groups.append((f"other {len(per_type.labels.order) - len(shown):,} types", rest))
        if (codes < 0).any():
            groups.append(("no label", codes < 0))
        colouring = f"coloured by cell type ({per_type.labels.source})"
    else:
        groups = [("cells", np.ones(auc.rows.size, dtype=bool))]
        colouring = "not coloured: the cells have no labels"
    coordinates, why_not = _umap(auc.sample)
    if coordinates is not None:
        image = _render(_embedding_figure, coordinates, ["UMAP1", "UMAP2"], groups)
        caption = (f"UMAP of the regulon activity (AUC, each regulon scaled to unit variance; "
                   f"{_UMAP_NEIGHBOURS} nearest neighbours, seed {_SEED}) of {_sample_note(auc)}, {colouring}. "
                   "Distances between clusters are not to scale.")
        alt = f"Scatter plot of {auc.rows.size:,} cells on a UMAP of regulon activity"
    else:
        coordinates, explained = _pca(auc.sample, 4)
        axes = [f"PC{i + 1} ({share:.0%})" for i, share in enumerate(explained)]
        image = _render(_embedding_figure, coordinates, axes, groups)
        caption = (f"PCA, not UMAP: {why_not}. Principal components of the regulon activity (AUC, each regulon "
                   f"scaled to unit variance) of {_sample_note(auc)}, {colouring}; percentages: variance explained.")
        alt = f"Scatter plot of {auc.rows.size:,} cells on their first principal components of regulon activity"
    page.section("cells", heading, _figure("embedding", image, alt, caption))


def _umap(values: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The UMAP of the standardised AUC, its kNN on the CPU (seeded, so reproducible, and no
    GPU context in the coordinator); or None and why there is none."""
    from .embedding import umap

    if values.shape[0] <= _UMAP_NEIGHBOURS:
        return None, f"{values.shape[0]} cells are too few for a UMAP of {_UMAP_NEIGHBOURS} neighbours"
    try:
        return umap(_standardised(values), n_neighbors=_UMAP_NEIGHBOURS, device="cpu", random_state=_SEED), ""
    except MissingDependencyError:
        return None, "umap-learn is not installed (pip install flashscenic[umap])"


def _standardised(values: np.ndarray) -> np.ndarray:
    """Columns centred and scaled to unit variance (a constant column stays 0), in float64."""
    x = np.asarray(values, dtype=np.float64)
    x = x - x.mean(axis=0)
    spread = x.std(axis=0)
    return x / np.where(spread > 0, spread, 1.0)


def _pca(values: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Cells x components scores and the fraction of variance each explains (columns standardised)."""
    x = _standardised(values)
    covariance = x.T @ x
    eigenvalues, vectors = np.linalg.eigh(covariance)
    top = np.argsort(eigenvalues)[::-1][: min(n_components, x.shape[1])]
    vectors = vectors[:, top]
    vectors *= np.where(vectors[np.abs(vectors).argmax(axis=0), np.arange(top.size)] < 0, -1.0, 1.0)  # fixed signs
    total = eigenvalues.clip(min=0).sum()
    explained = eigenvalues[top].clip(min=0) / total if total > 0 else np.zeros(top.size)
    return x @ vectors, explained


def _activity_section(page: _Page, per_type: _PerType | None, why: str) -> None:
    heading = "Regulon activity per cell type"
    if per_type is None:
        page.section("auc", heading, _note(why))
        return
    types, regulons = per_type.types, per_type.regulons
    values = per_type.scaled[:, regulons].T  # regulons x cell types
    limit = float(min(3.0, max(1.0, np.abs(values).max(initial=0.0))))
    image = _render(_heatmap_figure, values, [per_type.rss.columns[r] for r in regulons], per_type.type_names(types),
                    per_type.regulon_tree, per_type.type_tree, cmap="RdBu_r", vmin=-limit, vmax=limit,
                    what="mean AUC, z-score", ylabel="regulon", xlabel="cell type")
    caption = (f"Mean AUC of each cell type's cells, scaled per regulon (z-score over the cell types shown); "
               f"{per_type.regulon_note or f'all {len(regulons):,} regulons'}. Regulons and cell types are ordered "
               f"by hierarchical clustering (average linkage, Euclidean distance of these scores), as the "
               f"dendrograms show. Cell types: {per_type.labels.source}.")
    body = "".join(_note(n) for n in per_type.notes)
    page.section("auc", heading, body + _figure(
        "auc", image, f"Clustered heatmap of mean AUC per cell type: {len(regulons)} regulons (rows) x "
        f"{len(types)} cell types (columns)", caption))


def _binary_section(page: _Page, auc: _Auc, per_type: _PerType | None) -> None:
    """The fraction of cells in which each regulon is on, with pySCENIC's thresholds from a subsample."""
    from .binarization import binarize_auc

    heading = "Binarised regulon activity"
    if not auc.names:
        page.section("binary", heading, _note("No regulon was scored: there is no activity to binarise."))
        return
    fit = np.arange(auc.rows.size)
    if fit.size > _BINARIZE_CELLS:
        fit = np.sort(np.random.default_rng(_SEED).choice(fit.size, size=_BINARIZE_CELLS, replace=False))
    fitted = pd.DataFrame(auc.sample[fit], columns=auc.names)  # a frame, not an array: no torch import
    # binarize_auc keeps the 1000 null samples of each number of distinct values it meets (megabytes
    # each) for the length of a call, and shares them between regulons: one call per such number
    distinct = np.array([np.unique(fitted.iloc[:, j].to_numpy()).size for j in range(fitted.shape[1])])
    thresholds = np.empty(fitted.shape[1])
    for m in np.unique(distinct):
        same = np.flatnonzero(distinct == m)
        thresholds[same] = binarize_auc(fitted.iloc[:, same], seed=_SEED)[1].to_numpy()
    on = auc.sample > thresholds[None, :]
    how = (f"A regulon is on in a cell where its AUC exceeds pySCENIC's threshold (flashscenic.binarize_auc, seed "
           f"{_SEED}: dip test, then a Gaussian mixture, else mean + 2 SD), derived from "
           + (f"{fit.size:,} random cells" if fit.size < auc.n_cells else "all cells")
           + f"; on-fractions counted over {_sample_note(auc)}.")
    if per_type is None:
        fraction = on.mean(axis=0)
        regulons = np.argsort(-fraction, kind="stable")[:_MAX_HEATMAP_ROWS]
        image = _render(_heatmap_figure, fraction[regulons, None], [auc.names[r] for r in regulons], ["all cells"],
                        None, None, cmap="Purples", vmin=0.0, vmax=1.0, what="fraction of cells on",
                        ylabel="regulon", xlabel="")
        shown = (f"the {regulons.size} regulons most often on, of {len(auc.names):,}"
                 if regulons.size < len(auc.names) else f"all {regulons.size} regulons, most often on first")
        caption = f"Fraction of the cells in which each regulon is on ({shown}); the cells have no labels. " + how
        page.section("binary", heading, _figure("binary", image, f"Heatmap of the fraction of cells in which each of "
                                                f"{regulons.size} regulons is on", caption))
        return
    import scipy.sparse as sp

    codes = per_type.labels.codes[auc.rows]
    types, regulons = per_type.types, per_type.regulons
    keep = np.flatnonzero(np.isin(codes, types))
    position = np.full(len(per_type.labels.order), -1)
    position[types] = np.arange(types.size)
    member = sp.csr_matrix((np.ones(keep.size), (position[codes[keep]], keep)), shape=(types.size, codes.size))
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = (member @ on[:, regulons].astype(np.float64)) / np.asarray(member.sum(axis=1))
    unsampled = [per_type.labels.order[t] for t in types[np.asarray(member.sum(axis=1)).ravel() == 0]]
    image = _render(_heatmap_figure, fraction.T, [auc.names[r] for r in regulons], per_type.type_names(types),
                    per_type.regulon_tree, per_type.type_tree, cmap="Purples", vmin=0.0, vmax=1.0,
                    what="fraction of cells on", ylabel="regulon", xlabel="cell type")
    caption = (f"Fraction of each cell type's cells in which each regulon is on; rows and columns in the order of "
               f"the activity heatmap above ({per_type.regulon_note or f'all {regulons.size:,} regulons'}). " + how
               + (f" Grey: no cell of {len(unsampled)} type(s) in the subsample ({', '.join(unsampled[:5])})."
                  if unsampled else ""))
    page.section("binary", heading, _figure(
        "binary", image, f"Heatmap of the fraction of cells in which each regulon is on: {regulons.size} regulons "
        f"(rows) x {types.size} cell types (columns)", caption))


def _rss_section(page: _Page, per_type: _PerType | None, why: str, top_n: int, stored: bool) -> None:
    heading = "Regulon specificity per cell type"
    if per_type is None:
        page.section("rss", heading, _note(why))
        return
    rss, order = per_type.rss, per_type.labels.order
    notes: list[str] = []
    undefined = [str(c) for c in rss.columns[rss.isna().all().to_numpy()]]
    if undefined:
        notes.append(f"{len(undefined)} regulon(s) have AUC 0 in every labelled cell, so their specificity is "
                     f"undefined (NaN): {undefined[:10]}.")
    tops = {t: rss.loc[t].dropna().sort_values(ascending=False, kind="stable").head(top_n) for t in order}
    shown_types = per_type.type_names(per_type.types)
    per_type_n = top_n
    columns = _union(tops, shown_types, per_type_n)
    while len(columns) > _MAX_REGULON_COLUMNS and per_type_n > 1:  # every shown type keeps its best regulons
        per_type_n -= 1
        columns = _union(tops, shown_types, per_type_n)
    if per_type_n < top_n:
        notes.append(f"To fit {_MAX_REGULON_COLUMNS} columns, the heatmaps show the top {per_type_n} regulon(s) of "
                     f"each cell type instead of {top_n}; the table lists {top_n}.")
    columns = columns[:_MAX_REGULON_COLUMNS]

    body = "".join(_note(n) for n in notes)
    if columns:
        values = rss.loc[shown_types, columns].to_numpy(np.float64)
        column_order, column_tree = _cluster(values.T)
        columns = [columns[c] for c in column_order]
        image = _render(_heatmap_figure, values[:, column_order], shown_types, columns, per_type.type_tree,
                        column_tree, cmap="viridis", vmin=None, vmax=None, what="RSS", ylabel="cell type",
                        xlabel="regulon")
        body += _figure("rss", image,
                        f"Heatmap of regulon specificity scores: {len(shown_types)} cell types (rows) x "
                        f"{len(columns)} regulons (columns)",
                        f"Regulon specificity score (Suo et al. 2018; 1 = active only in that cell type) of the "
                        f"{per_type_n} most specific regulon(s) of each cell type; cell types in the order of the "
                        f"activity heatmap, regulons ordered by hierarchical clustering of their scores. Cell types: "
                        f"{per_type.labels.source}" + ("; the RSS the run stored." if stored else "."))
    else:
        body += _note("No regulon has a defined specificity (every regulon's AUC is 0 in every cell).")
    rows = [(t, f"{per_type.sizes[t]:,}", ", ".join(f"{r} ({s:.3f})" for r, s in tops[t].items()) or "none")
            for t in order]
    header = ("Cell type", "Cells", f"Top {top_n} regulons (RSS)")
    body += "<h3>Top regulons per cell type</h3>" + _table(rows, header=header)
    page.section("rss", heading, body)


def _union(tops: dict[str, pd.Series], cell_types: list[str], n: int) -> list[str]:
    """The first ``n`` regulons of each cell type, in cell-type order, each once."""
    columns: dict[str, None] = {}
    for cell_type in cell_types:
        columns.update(dict.fromkeys(tops[cell_type].index[:n]))
    return list(columns)


def _regulon_section(page: _Page, store: ResultsStore) -> None:
    try:
        regulons = store.read_regulons()
    except InputError:
        page.section("regulons", "Regulon sizes", _note("The results store has no regulons table."))
        return
    if not regulons:
        page.section("regulons", "Regulon sizes", _note("The run found no regulons."))
        return
    sizes = np.array([len(r["genes"]) for r in regulons])
    repressing = np.array([str(r.get("type", "")) == "repressing" for r in regulons])
    image = _render(
        _histogram_figure, [sizes[~repressing], sizes[repressing]] if repressing.any() else [sizes],
        ["activating", "repressing"] if repressing.any() else [None], "genes per regulon", "regulons", integer=True)
    caption = (f"{len(sizes):,} regulons; genes per regulon: median {np.median(sizes):g}, "
               f"range {sizes.min():,} to {sizes.max():,}.")
    largest = sorted(regulons, key=lambda r: -len(r["genes"]))[:10]
    rows = [(r["name"], str(r.get("tf", "")), str(r.get("type", "")), f"{len(r['genes']):,}",
             _number(r.get("score"))) for r in largest]
    body = _columns(_figure("sizes", image, f"Histogram of regulon sizes ({_count(len(sizes), 'regulon')})", caption),
                    "<h3>Largest regulons</h3>" + _table(rows, header=("Regulon", "TF", "Type", "Genes", "Score")))
    page.section("regulons", "Regulon sizes", body)


def _recurrence_section(page: _Page, store: ResultsStore) -> None:
    """With several GRN runs (``--grn-runs``): how often each regulon, and each of its targets,
    recurs over the runs (only when this run's pruning computed it, not after an import)."""
    if not store.stages.get("pruning", {}).get("recurrence"):
        return
    grn = store.stages["grn"]
    table = store.read_table("regulon_recurrence").sort_values(["recurrence", "regulon"], ascending=[False, True])
    targets = store.read_table("target_recurrence")
    every_run = targets[targets["recurrence"] == 1.0].groupby("regulon").size()
    half = targets[targets["recurrence"] >= 0.5].groupby("regulon").size()
    scored = {r["name"] for r in store.read_regulons()}
    always = int((table["recurrence"] == 1.0).sum())
    n_runs = int(grn["n_runs"])
    shown = 30
    frequency = store.stages.get("pruning", {}).get("aggregation") == "frequency"
    threshold = store.parameters.get("params", {}).get("grn_frequency_threshold")
    consensus = (f"the consensus keeps the targets found in at least {threshold:.0%} of the runs"
                 if frequency and isinstance(threshold, (int, float)) else "the consensus is their mean network"
                 + (f", edges with a CV of {grn['cv_threshold']:g} or more dropped "
                    f"({grn.get('n_edges_cv_filtered', 0):,} edges)" if grn.get("cv_threshold") else ""))
    caption = (f"{n_runs} GRN runs (seeds {', '.join(map(str, grn.get('seeds', [])))}); {consensus}" +
               f". {_count(len(table), 'regulon')} found in at least one run, {always:,} in every run"
               + (f"; the table lists the {shown} most recurrent." if len(table) > shown else "."))
    runs = np.rint(table["recurrence"].to_numpy(np.float64) * n_runs).astype(int)
    in_consensus = table["regulon"].isin(scored).to_numpy()
    image = _render(_recurrence_figure, runs, in_consensus, n_runs)
    rows = [(name, f"{fraction:.0%}", f"{int(every_run.get(name, 0)):,}", f"{int(half.get(name, 0)):,}",
             "yes" if name in scored else "no")
            for name, fraction in zip(table["regulon"], table["recurrence"])][:shown]
    figure = _figure("recurrence", image, f"Bar chart of the number of GRN runs that found each of "
                     f"{_count(len(table), 'regulon')}", "Regulons by the number of GRN runs that found them; "
                     "dark: regulons of the consensus, which the other sections show.")
    page.section("recurrence", "Regulon recurrence over GRN runs", _note(caption) + _columns(figure, _table(
        rows, header=("Regulon", "Runs that found it", "Targets in every run", "Targets in half the runs or more",
                      "In the consensus"))))


def _motif_section(page: _Page, store: ResultsStore) -> None:
    try:
        motifs = store.read_motifs()
    except InputError:
        page.section("motifs", "Enriched motifs (NES)", _note(
            "The results store has no motif table (e.g. the regulons were imported, or pruning was skipped), "
            "so there is no NES distribution."))
        return
    nes = pd.to_numeric(motifs["NES"], errors="coerce").to_numpy(np.float64)
    nes = nes[np.isfinite(nes)]
    if nes.size == 0:
        frequency = store.stages.get("pruning", {}).get("aggregation") == "frequency"
        page.section("motifs", "Enriched motifs (NES)", _note(
            "A frequency consensus of GRN runs has no single motif table: its regulons gather the targets several "
            "runs' motifs found." if frequency else "The motif table is empty: no motif was enriched."))
        return
    threshold = store.parameters.get("pruning_nes_threshold")
    threshold = float(threshold) if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) else None
    image = _render(_histogram_figure, [nes], [None], "NES (normalised enrichment score)", "motif rows",
                    threshold=threshold)
    caption = (f"{nes.size:,} enriched motif rows of {motifs['TF'].nunique():,} TFs; NES median {np.median(nes):.2f}, "
               f"max {nes.max():.2f}" + (f"; dashed line: the NES threshold {threshold:g}" if threshold is not None
                                          else "") + ".")
    page.section("motifs", "Enriched motifs (NES)",
                 _figure("nes", image, f"Histogram of the NES of {nes.size} enriched motif rows", caption))


def _timing_section(page: _Page, store: ResultsStore) -> None:
    timings = {str(k): float(v) for k, v in store.timings.items()
               if isinstance(v, (int, float)) and math.isfinite(float(v))}
    if not timings:
        page.section("timings", "Stage timings", _note("No stage timings were recorded for this run."))
        return
    image = _render(_timing_figure, timings)
    total = sum(timings.values())
    rows = [(stage, _duration(seconds), f"{100 * seconds / total:.0f}%" if total > 0 else "")
            for stage, seconds in timings.items()]
    body = _columns(_figure("timings", image, f"Bar chart of the time of {_count(len(timings), 'stage')}",
                            f"Wall-clock time per stage; {_duration(total)} in all."),
                    _table(rows, header=("Stage", "Time", "Share")))
    page.section("timings", "Stage timings", body)


def _parameter_section(page: _Page, store: ResultsStore) -> None:
    parameters = sorted(store.parameters.items())
    versions = [(k, "not installed" if v is None else str(v)) for k, v in store.versions.items()]
    body = _columns(
        "<h3>Parameters</h3>" + (_table([(k, _value(v)) for k, v in parameters], header=("Parameter", "Value"))
                                 if parameters else _note("No parameters were recorded.")),
        "<h3>Package versions</h3>" + (_table(versions, header=("Package", "Version"))
                                       if versions else _note("No versions were recorded.")))
    page.section("parameters", "Parameters and versions", body)


# --- figures -----------------------------------------------------------------------------


@contextlib.contextmanager
def _style():
    """matplotlib's default style, whatever the caller's rcParams, restored afterwards."""
    import matplotlib
    import matplotlib.style

    with matplotlib.rc_context(), warnings.catch_warnings():
        matplotlib.style.use("default")
        matplotlib.rcParams.update({"font.size": 9, "axes.titlesize": 10})
        warnings.simplefilter("ignore", UserWarning)  # e.g. a glyph missing from the font
        yield


def _render(draw, *args, **kwargs) -> str:
    """Draw a figure under ``_style`` and return it as base64 PNG text."""
    with _style():
        figure = draw(*args, **kwargs)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=_DPI, facecolor="white")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _new_figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas (no pyplot: the caller's backend is untouched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _plain(text: Any) -> str:
    """Text for a figure: ``$`` escaped (no mathtext), long names shortened in the middle (ends kept:
    ``'...FACTOR175(+)'`` differs from its neighbours only at the end)."""
    text = str(text)
    if len(text) > _LABEL_CHARS:
        tail = _LABEL_CHARS // 3
        text = text[: _LABEL_CHARS - tail - 1] + "\u2026" + text[-tail:]
    return text.replace("$", r"\$")


def _label_size(n: int) -> tuple[float, float]:
    """Inches per heatmap row (or column) and the font of its label, in points: the more labels, the
    smaller, but never under ``_MIN_FONT`` and never closer than the font's line height."""
    if n <= 25:
        return 0.24, 9.0
    if n <= 40:
        return 0.19, 8.0
    return 0.15, _MIN_FONT


def _text_inches(labels: Sequence[str], font: float) -> float:
    """About the width of the longest label (DejaVu Sans averages 0.6 em per character)."""
    return 0.6 * font / 72 * max((len(label) for label in labels), default=1)


def _heatmap_figure(values: np.ndarray, row_labels: Sequence, column_labels: Sequence, row_tree, column_tree, *,
                    cmap: str, vmin: float | None, vmax: float | None, what: str, ylabel: str, xlabel: str):
    """A heatmap sized by its labels (each row and column as tall as its font needs), row labels at
    the right, column labels below, dendrograms (when given) at the left and on top, the colour bar
    in the top-left corner."""
    import matplotlib

    rows, columns = [_plain(r) for r in row_labels], [_plain(c) for c in column_labels]
    row_inches, row_font = _label_size(len(rows))
    column_inches, column_font = _label_size(len(columns))
    left, top = 1.1, 0.8
    width, height = max(1.0, column_inches * len(columns)), row_inches * len(rows)
    figure = _new_figure(left + width + 0.45 + _text_inches(rows, row_font) + 0.35,
                         top + height + 0.45 + _text_inches(columns, column_font) + 0.35)
    grid = figure.add_gridspec(2, 2, width_ratios=[left, width], height_ratios=[top, height], wspace=0, hspace=0)
    ax = figure.add_subplot(grid[1, 1])
    colours = matplotlib.colormaps[cmap].with_extremes(bad="#d9d9d9")
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=colours, vmin=vmin, vmax=vmax,
                      interpolation="nearest")
    ax.set_yticks(np.arange(len(rows)), labels=rows, fontsize=row_font)
    ax.set_xticks(np.arange(len(columns)), labels=columns, rotation=90, fontsize=column_font)
    ax.yaxis.tick_right()
    ax.yaxis.set_label_position("right")
    ax.tick_params(length=0)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if row_tree is not None:
        _dendrogram(figure.add_subplot(grid[1, 0]), row_tree, "left", len(rows))
    if column_tree is not None:
        _dendrogram(figure.add_subplot(grid[0, 1]), column_tree, "top", len(columns))
    corner = figure.add_subplot(grid[0, 0])
    corner.set_axis_off()
    bar = figure.colorbar(image, cax=corner.inset_axes([0.08, 0.3, 0.8, 0.16]), orientation="horizontal")
    bar.ax.xaxis.set_ticks_position("top")
    bar.ax.xaxis.set_label_position("top")
    bar.ax.tick_params(labelsize=_MIN_FONT)
    bar.set_label(what, fontsize=8)
    bar.ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(3))
    return figure


def _dendrogram(ax, tree: np.ndarray, orientation: str, n_leaves: int) -> None:
    """Draw ``tree`` with its leaves at the heatmap's rows (left) or columns (top)."""
    from scipy.cluster.hierarchy import dendrogram

    dendrogram(tree, orientation=orientation, ax=ax, no_labels=True, color_threshold=0,
               above_threshold_color="#555555")
    if orientation == "left":
        ax.set_ylim(10 * n_leaves, 0)  # leaf i at 5 + 10 i: the centre of heatmap row i
    else:
        ax.set_xlim(0, 10 * n_leaves)
    ax.set_axis_off()


_PALETTES = ("tab10", "tab20", "tab20b", "tab20c")


def _colours(n: int) -> list:
    """``n`` distinct colours: tab10 for up to 10 groups, else tab20, tab20b and tab20c (60)."""
    import matplotlib

    if n <= 10:
        return list(matplotlib.colormaps["tab10"].colors)[:n]
    every = [c for name in _PALETTES[1:] for c in matplotlib.colormaps[name].colors]
    return [every[i % len(every)] for i in range(n)]


def _embedding_figure(coordinates: np.ndarray, axes: Sequence[str], groups: list[tuple[str, np.ndarray]]):
    """Columns 1 x 2 (and 3 x 4 when there are four), named by ``axes``, one colour per group, legend at the right."""
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D

    n_panels = 2 if coordinates.shape[1] >= 4 else 1
    named = [(name, mask) for name, mask in groups if mask.any()]
    colours = _colours(len(named))
    greys = {"no label": "#bbbbbb"}
    colour_of = [greys.get(name, "#999999" if name.startswith("other ") else colours[i])
                 for i, (name, _) in enumerate(named)]
    point = np.zeros(coordinates.shape[0], dtype=np.int64)
    for i, (_, mask) in enumerate(named):
        point[mask] = i
    legend_columns = -(-len(named) // 20)  # at most 20 entries a column: they fit the figure's height
    legend_width = 0.0 if len(named) < 2 else 0.5 + legend_columns * (0.3 + _text_inches(
        [_plain(name) for name, _ in named], 8))
    figure = _new_figure(4.0 * n_panels + legend_width, 4.0)
    n = coordinates.shape[0]
    size = 12.0 if n <= 2000 else 5.0 if n <= 8000 else 2.5
    shuffled = np.random.default_rng(_SEED).permutation(n)  # no group painted over the others by order
    palette = np.array([to_rgba(c) for c in colour_of])
    for panel, ax in enumerate(figure.subplots(1, n_panels, squeeze=False)[0]):
        x, y = 2 * panel, 2 * panel + 1
        ax.scatter(coordinates[shuffled, x], coordinates[shuffled, y], s=size, c=palette[point[shuffled]],
                   linewidths=0, alpha=0.8)
        ax.set_xlabel(axes[x])
        ax.set_ylabel(axes[y])
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    if len(named) > 1:
        handles = [Line2D([], [], linestyle="", marker="o", markersize=6, markerfacecolor=c, markeredgewidth=0)
                   for c in colour_of]
        figure.legend(handles, [_plain(name) for name, _ in named], loc="outside right upper", frameon=False,
                      fontsize=8, ncols=legend_columns, handletextpad=0.2, borderaxespad=0.2)
    return figure


def _histogram_figure(groups: list[np.ndarray], names: list[str | None], xlabel: str, ylabel: str, *,
                      integer: bool = False, threshold: float | None = None):
    every = np.concatenate(groups)
    edges = np.histogram_bin_edges(every, bins="auto")
    if len(edges) > 41:
        edges = np.histogram_bin_edges(every, bins=40)
    if integer and every.max() - every.min() < 40:
        edges = np.arange(every.min(), every.max() + 2) - 0.5
    from matplotlib.ticker import MaxNLocator

    figure = _new_figure(5.6, 3.2)
    ax = figure.subplots()
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    present = [(g, n) for g, n in zip(groups, names) if len(g)]
    colours = ["#3b75af", "#c8553d"]
    ax.hist([g for g, _ in present], bins=edges, stacked=len(present) > 1, label=[n or "" for _, n in present],
            color=colours[: len(present)], edgecolor="white", linewidth=0.5)
    if threshold is not None:
        ax.axvline(threshold, color="#444444", linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    if len(present) > 1:
        ax.legend(frameon=False)
    return figure


def _recurrence_figure(runs: np.ndarray, in_consensus: np.ndarray, n_runs: int):
    """Regulons by the number of runs that found them, those of the consensus stacked first."""
    from matplotlib.ticker import MaxNLocator

    positions = np.arange(1, n_runs + 1)
    kept = np.bincount(runs[in_consensus], minlength=n_runs + 1)[1:]
    other = np.bincount(runs[~in_consensus], minlength=n_runs + 1)[1:]
    figure = _new_figure(max(3.6, 1.6 + 0.45 * n_runs), 3.0)
    ax = figure.subplots()
    ax.bar(positions, kept, color="#1f3b57", label="in the consensus")
    ax.bar(positions, other, bottom=kept, color="#9fb4c8", label="not in the consensus")
    ax.set_xticks(positions)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"GRN runs that found the regulon (of {n_runs})")
    ax.set_ylabel("regulons")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False, fontsize=8)
    return figure


def _timing_figure(timings: dict[str, float]):
    stages = list(timings)
    seconds = np.array([timings[s] for s in stages])
    figure = _new_figure(5.6, max(1.8, 0.9 + 0.32 * len(stages)))
    ax = figure.subplots()
    positions = np.arange(len(stages))
    ax.barh(positions, seconds, color="#3b75af")
    ax.set_yticks(positions, labels=[_plain(s) for s in stages])
    ax.invert_yaxis()  # the first stage on top
    ax.set_xlabel("seconds")
    ax.spines[["top", "right"]].set_visible(False)
    top = seconds.max() if seconds.size and seconds.max() > 0 else 1.0
    ax.set_xlim(0, top * 1.25)
    for position, value in zip(positions, seconds):
        ax.text(value + top * 0.01, position, _plain(_duration(value)), va="center", fontsize=8)
    return figure


# --- HTML --------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:0;color:#1d1d1f;
background:#f6f7f9;line-height:1.45;font-size:15px}
header{background:#1f3b57;color:#fff;padding:20px 32px}
header h1{margin:0 0 4px;font-size:24px;font-weight:600;overflow-wrap:anywhere}
header p{margin:0;opacity:.85;font-size:13px;overflow-wrap:anywhere}
nav{padding:8px 32px;background:#e8ecf1;font-size:13px}
nav a{margin-right:16px;color:#1f3b57;text-decoration:none;white-space:nowrap;display:inline-block}
main{max-width:1180px;margin:0 auto;padding:8px 24px 32px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:12px 20px 16px;margin:16px 0}
h2{font-size:19px;margin:4px 0 10px;color:#1f3b57}
h3{font-size:15px;margin:16px 0 6px}
figure{margin:8px 0;overflow-x:auto}
figure img{display:block}
figcaption{font-size:13px;color:#555;margin-top:4px}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
th,td{border-bottom:1px solid #e3e7ec;padding:3px 12px 3px 0;text-align:left;vertical-align:top;
overflow-wrap:break-word}
th{color:#444;font-weight:600}
table.facts th{width:210px;font-weight:500;color:#555}
.note{background:#fff7e0;border-left:4px solid #e0a800;padding:6px 10px;margin:8px 0;font-size:14px}
.columns{display:flex;flex-wrap:wrap;gap:32px}
.columns>div{flex:0 1 auto;min-width:0;max-width:100%}
.tiles{display:grid;grid-template-columns:repeat(2,minmax(120px,1fr));gap:10px}
.tiles div{background:#eef3f8;border-radius:6px;padding:8px 14px}
.tiles b{display:block;font-size:24px;font-weight:600;color:#1f3b57;white-space:nowrap}
.tiles span{font-size:13px;color:#555}
footer{text-align:center;font-size:12px;color:#777;padding:0 0 24px}
"""

_NAV = {"summary": "Summary", "cells": "Cells", "auc": "Activity", "binary": "On/off", "rss": "Specificity",
        "regulons": "Regulon sizes", "recurrence": "Recurrence", "motifs": "Motifs", "timings": "Timings",
        "parameters": "Parameters"}  # short names for the navigation bar: one line on a laptop


class _Page:
    """Sections and notes of the report, rendered into one HTML document."""

    def __init__(self, title: str):
        self.title = title
        self.sections: list[tuple[str, str, str]] = []
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)

    def section(self, key: str, heading: str, body: str) -> None:
        self.sections.append((key, heading, body))

    def render(self) -> str:
        from . import __version__

        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        nav = "".join(f'<a href="#{_e(key)}">{_e(_NAV.get(key, heading))}</a>' for key, heading, _ in self.sections)
        notes = "".join(_note(n) for n in self.notes)
        sections = "".join(f'<section id="{_e(key)}"><h2>{_e(heading)}</h2>{body}</section>'
                           for key, heading, body in self.sections)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_e(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<header><h1>{_e(self.title)}</h1><p>SCENIC results written by flashscenic; report made {_e(now)}"
            "</p></header>\n"
            f"<nav>{nav}</nav>\n<main>\n{notes}{sections}\n</main>\n"
            f"<footer>flashscenic {_e(__version__)}</footer>\n</body>\n</html>\n"
        )


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _figure(key: str, png: str, alt: str, caption: str) -> str:
    return (f'<figure id="figure-{_e(key)}"><img src="data:image/png;base64,{png}" alt="{_e(alt)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _columns(*parts: str) -> str:
    """Blocks side by side on a wide page, stacked on a narrow one."""
    return '<div class="columns">' + "".join(f"<div>{part}</div>" for part in parts) + "</div>"


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None, css: str | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    if header:
        body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    else:  # key/value facts: the key as a row header
        body = "".join(f"<tr><th>{_e(row[0])}</th>" + "".join(f"<td>{_e(c)}</td>" for c in row[1:]) + "</tr>"
                       for row in rows)
    attribute = f' class="{_e(css)}"' if css else ""
    return f"<table{attribute}>{head}{body}</table>"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.3g} s" if seconds < 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)} min {rest:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes)} min"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _number(value: Any) -> str:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return "" if not math.isfinite(float(value)) else f"{float(value):.3g}"
    return "" if value is None else str(value)


def _value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return "none" if value is None else str(value)
