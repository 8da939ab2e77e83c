"""A self-contained HTML report of one run: what was found, in which cells, and how long it took.

``write_report(results)`` reads a results store (``flashscenic.store``) and writes one HTML
file with its figures embedded as base64 PNGs, so it can be mailed or archived alone: no
JavaScript, no external CSS, no network (a Content-Security-Policy in the file forbids
anything but inline styles and ``data:`` images). It contains

* a run summary: cells, regulons, motif rows, cell types, stages, parameters, versions;
* a heatmap of regulon specificity scores (RSS, ``flashscenic.rss``): cell types x the
  ``top_n`` most specific regulons of each type, and a table of those regulons;
* a heatmap of the mean AUC per cell type of the same regulons;
* histograms of regulon sizes (genes per regulon) and of the NES of the enriched motifs;
* a bar chart of the stage timings.

Figures are drawn with ``matplotlib.figure.Figure`` on an Agg canvas, never through
``pyplot``, so writing a report in a notebook leaves the notebook's backend and its open
figures alone; they use matplotlib's default style whatever the caller's ``rcParams``.
Sections whose data a run lacks (no cell labels, no motif table, no timings) say so in the
report instead of failing.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import logging
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._utils import atomic_path
from .errors import InputError, MissingFileError
from .rss import default_label_column
from .store import ResultsStore, open_expression_store, open_results_store

__all__ = ["write_report"]

logger = logging.getLogger(__name__)

_MAX_TYPES = 50  # cell types (heatmap rows) shown; the largest types are kept
_MAX_REGULON_COLUMNS = 50  # regulons (heatmap columns) shown
_LABEL_CHARS = 32  # tick labels longer than this are shortened in figures
_DPI = 110


@dataclass
class _Labels:
    """One cell-type label per AUC row (``None`` where a cell has none) and where they came from."""

    values: np.ndarray  # object array of str or None
    order: list[str]  # the cell types, in display order
    source: str  # e.g. "column 'cell_type' of the results store's cells"


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
        needs the AUC; regulons, motifs, timings and cell labels are used when present.
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
        categorical's category order is the row order of the heatmaps (else sorted).
        Without any labels, the RSS and mean-AUC sections hold a note instead.
    top_n
        Regulons shown per cell type: the union over cell types of each type's ``top_n``
        most specific regulons makes the heatmap columns (at most 50: with more, fewer
        per type are shown).
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

    auc = store.read_auc(as_frame=True)  # InputError when the run has no AUC yet or it is incomplete
    stored = _stored_rss(store) if cell_types is None else None
    if stored is not None and cell_type_column not in (None, stored[0]):
        stored = None  # the caller asks for another grouping than the run's
    labels = _cell_labels(store, cell_types, stored[0] if stored is not None else cell_type_column)
    page = _Page(title or f"flashscenic report: {store.path.name}")
    _summary(page, store, auc, labels)
    _per_type_sections(page, auc, labels, int(top_n), stored[1] if stored is not None else None)
    _regulon_section(page, store)
    _recurrence_section(page, store)
    _motif_section(page, store)
    _timing_section(page, store)
    _parameter_section(page, store)

    with atomic_path(target) as tmp:
        tmp.write_text(page.render(), encoding="utf-8")
    logger.info("report of %s written to %s", store.path, target)
    return target


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
    missing = series.isna().to_numpy()
    values = np.array([None if m else str(v) for v, m in zip(series.to_numpy(dtype=object), missing)], dtype=object)
    present = {v for v in values if v is not None}
    if isinstance(series.dtype, pd.CategoricalDtype):
        order = [str(c) for c in series.cat.categories if str(c) in present]
        order += sorted(present - set(order))
    else:
        order = sorted(present, key=_natural_key)
    return _Labels(values, order, source)


# --- sections ----------------------------------------------------------------------------


def _summary(page: _Page, store: ResultsStore, auc: pd.DataFrame, labels: _Labels | None) -> None:
    attrs = store.attrs
    timings = store.timings
    done = [name for name, info in store.stages.items() if isinstance(info, dict) and info.get("complete")]
    facts: list[tuple[str, str]] = [
        ("Results store", str(store.path.resolve())),
        ("Run created", str(attrs.get("created", "unknown"))),
        ("Cells", f"{auc.shape[0]:,}"),
        ("Regulons scored (AUC)", f"{auc.shape[1]:,}"),
    ]
    types = Counter(name.endswith("(-)") for name in auc.columns)
    if types[True]:
        facts.append(("Activating / repressing", f"{types[False]:,} / {types[True]:,}"))
    if labels is not None:
        facts.append(("Cell types", f"{len(labels.order):,}, from the {labels.source}"))
    else:
        facts.append(("Cell types", "none (no cell labels)"))
    if store.expression_store:
        facts.append(("Expression store", str(store.expression_store)))
    facts.append(("Stages complete", ", ".join(done) or "none recorded"))
    if timings:
        facts.append(("Total time of the stages", _duration(sum(timings.values()))))
    page.section("summary", "Run summary", _table(facts, header=None, css="facts"))


def _per_type_sections(page: _Page, auc: pd.DataFrame, labels: _Labels | None, top_n: int,
                       stored: pd.DataFrame | None) -> None:
    if labels is None or not labels.order:
        why = ("No cell-type labels were found, so there is no regulon specificity (RSS) or mean AUC per cell type. "
               "Give labels with write_report(..., cell_types=...) or --cell-type-column, or store them with "
               "ResultsStore.write_cell_labels." if labels is None else
               f"Every cell's label is missing in the {labels.source}; there is no RSS or mean AUC per cell type.")
        page.section("rss", "Regulon specificity per cell type", _note(why))
        page.section("auc", "Mean AUC per cell type", _note(why))
        return
    if auc.shape[1] == 0:
        why = "The run scored no regulons, so there is nothing to compare between cell types."
        page.section("rss", "Regulon specificity per cell type", _note(why))
        page.section("auc", "Mean AUC per cell type", _note(why))
        return
    from .rss import rss_by_label

    notes: list[str] = []
    keep = np.array([v is not None for v in labels.values])
    if not keep.all():
        notes.append(f"{int((~keep).sum()):,} cells without a label are left out.")
    values = auc.iloc[np.flatnonzero(keep)]
    kept = labels.values[keep].astype(str)
    if stored is not None:
        rss = stored
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the note below says it
            rss = rss_by_label(auc, pd.Series(labels.values, index=auc.index))
    rss = rss.reindex(labels.order)
    undefined = [str(c) for c in rss.columns[rss.isna().all().to_numpy()]]
    if undefined:
        notes.append(f"{len(undefined)} regulon(s) have AUC 0 in every labelled cell, so their specificity is "
                     f"undefined (NaN): {undefined[:10]}.")
    sizes = pd.Series(kept).value_counts().reindex(labels.order).fillna(0).astype(int)
    mean = values.groupby(kept).mean().reindex(labels.order)

    tops = {t: rss.loc[t].dropna().sort_values(ascending=False, kind="stable").head(top_n) for t in labels.order}
    shown_types = labels.order
    if len(shown_types) > _MAX_TYPES:
        largest = set(sizes.sort_values(ascending=False, kind="stable").index[:_MAX_TYPES])
        shown_types = [t for t in labels.order if t in largest]
        notes.append(f"The heatmaps show the {_MAX_TYPES} largest of the {len(labels.order):,} cell types; "
                     "the table lists all.")
    per_type = top_n
    columns = _union(tops, shown_types, per_type)
    while len(columns) > _MAX_REGULON_COLUMNS and per_type > 1:  # every shown type keeps its best regulons
        per_type -= 1
        columns = _union(tops, shown_types, per_type)
    if per_type < top_n:
        notes.append(f"To fit {_MAX_REGULON_COLUMNS} columns, the heatmaps show the top {per_type} regulon(s) of "
                     f"each cell type instead of {top_n}; the table lists {top_n}.")
    columns = columns[:_MAX_REGULON_COLUMNS]

    body = "".join(_note(n) for n in notes)
    if columns:
        image = _heatmap(rss.loc[shown_types, columns], "RSS", "viridis")
        body += _figure("rss", image,
                        f"Heatmap of regulon specificity scores: {len(shown_types)} cell types (rows) x "
                        f"{len(columns)} regulons (columns)",
                        f"Regulon specificity score (Suo et al. 2018; 1 = active only in that cell type) of the "
                        f"{per_type} most specific regulon(s) of each cell type, ordered by cell type. Cell types: "
                        f"{labels.source}" + ("; the RSS the run stored." if stored is not None else "."))
    else:
        body += _note("No regulon has a defined specificity (every regulon's AUC is 0 in every cell).")
    rows = [(t, f"{sizes[t]:,}", ", ".join(f"{r} ({s:.3f})" for r, s in tops[t].items()) or "none")
            for t in labels.order]
    header = ("Cell type", "Cells", f"Top {top_n} regulons (RSS)")
    body += "<h3>Top regulons per cell type</h3>" + _table(rows, header=header)
    page.section("rss", "Regulon specificity per cell type", body)

    if columns:
        image = _heatmap(mean.loc[shown_types, columns], "mean AUC", "viridis")
        body = _figure("auc", image,
                       f"Heatmap of the mean AUC per cell type: {len(shown_types)} cell types (rows) x "
                       f"{len(columns)} regulons (columns)",
                       "Mean AUCell score of the cells of each type, for the regulons of the RSS heatmap.")
    else:
        body = _note("No regulons to show.")
    page.section("auc", "Mean AUC per cell type", body)


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
    image = _histogram(
        [sizes[~repressing], sizes[repressing]] if repressing.any() else [sizes],
        ["activating", "repressing"] if repressing.any() else [None],
        "genes per regulon", "regulons", integer=True)
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
    shown = 30
    caption = (f"{grn['n_runs']} GRN runs (seeds {', '.join(map(str, grn.get('seeds', [])))}); the consensus is "
               f"their mean network" + (f", edges with a CV of {grn['cv_threshold']:g} or more dropped "
                                        f"({grn.get('n_edges_cv_filtered', 0):,} edges)" if grn.get("cv_threshold")
                                        else "") +
               f". {_count(len(table), 'regulon')} found in at least one run, {always:,} in every run"
               + (f"; the {shown} most recurrent are shown." if len(table) > shown else "."))
    rows = [(name, f"{fraction:.0%}", f"{int(every_run.get(name, 0)):,}", f"{int(half.get(name, 0)):,}",
             "yes" if name in scored else "no")
            for name, fraction in zip(table["regulon"], table["recurrence"])][:shown]
    page.section("recurrence", "Regulon recurrence over GRN runs", _note(caption) + _table(
        rows, header=("Regulon", "Runs that found it", "Targets in every run", "Targets in half the runs or more",
                      "In the consensus")))


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
        page.section("motifs", "Enriched motifs (NES)", _note("The motif table is empty: no motif was enriched."))
        return
    threshold = store.parameters.get("pruning_nes_threshold")
    threshold = float(threshold) if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) else None
    image = _histogram([nes], [None], "NES (normalised enrichment score)", "motif rows", threshold=threshold)
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
    image = _bars(timings)
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


def _new_figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas (no pyplot: the caller's backend is untouched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> str:
    """The figure as base64 PNG text."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, facecolor="white")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _styled(draw):
    """Run ``draw`` under matplotlib's default style, whatever the caller's rcParams."""
    import matplotlib
    import matplotlib.style

    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(), warnings.catch_warnings():
            matplotlib.style.use("default")
            matplotlib.rcParams.update({"font.size": 9, "axes.titlesize": 10})
            warnings.simplefilter("ignore", UserWarning)  # e.g. a glyph missing from the font
            return draw(*args, **kwargs)

    return wrapper


def _plain(text: Any) -> str:
    """Text for a figure: ``$`` escaped (no mathtext), long names shortened in the middle (ends kept:
    ``'...FACTOR175(+)'`` differs from its neighbours only at the end)."""
    text = str(text)
    if len(text) > _LABEL_CHARS:
        tail = _LABEL_CHARS // 3
        text = text[: _LABEL_CHARS - tail - 1] + "\u2026" + text[-tail:]
    return text.replace("$", r"\$")


@_styled
def _heatmap(frame: pd.DataFrame, what: str, cmap: str) -> str:
    n_rows, n_columns = frame.shape
    longest_column = max((len(_plain(c)) for c in frame.columns), default=4)
    longest_row = max((len(_plain(r)) for r in frame.index), default=4)
    cell = 0.26 if max(n_rows, n_columns) <= 25 else 0.19  # inches per row/column
    font = 9.0 if cell > 0.2 else 7.5
    width = max(5.0, 1.6 + 0.075 * font / 9 * longest_row + cell * n_columns)
    height = max(2.6, 0.9 + 0.075 * font / 9 * longest_column + cell * n_rows)
    figure = _new_figure(width, height)
    ax = figure.subplots()
    values = np.ma.masked_invalid(frame.to_numpy(dtype=np.float64))
    image = ax.imshow(values, aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_xticks(np.arange(n_columns), labels=[_plain(c) for c in frame.columns], rotation=90, fontsize=font)
    ax.set_yticks(np.arange(n_rows), labels=[_plain(r) for r in frame.index], fontsize=font)
    ax.tick_params(length=0)
    ax.set_xlabel("regulon")
    ax.set_ylabel("cell type")
    for spine in ax.spines.values():
        spine.set_visible(False)
    bar = figure.colorbar(image, ax=ax, fraction=0.05, pad=0.02, shrink=min(1.0, 6.0 / max(height, 1.0)) ** 0.5)
    bar.set_label(what)
    return _png(figure)


@_styled
def _histogram(groups: list[np.ndarray], names: list[str | None], xlabel: str, ylabel: str, *,
               integer: bool = False, threshold: float | None = None) -> str:
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
    return _png(figure)


@_styled
def _bars(timings: dict[str, float]) -> str:
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
    return _png(figure)


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
figure{margin:8px 0}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:13px;color:#555;margin-top:4px}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
th,td{border-bottom:1px solid #e3e7ec;padding:3px 12px 3px 0;text-align:left;vertical-align:top;
overflow-wrap:break-word}
th{color:#444;font-weight:600}
table.facts th{width:210px;font-weight:500;color:#555}
.note{background:#fff7e0;border-left:4px solid #e0a800;padding:6px 10px;margin:8px 0;font-size:14px}
.columns{display:flex;flex-wrap:wrap;gap:32px}
.columns>div{flex:0 1 auto;min-width:0;max-width:100%}
footer{text-align:center;font-size:12px;color:#777;padding:0 0 24px}
"""

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
        nav = "".join(f'<a href="#{_e(key)}">{_e(heading)}</a>' for key, heading, _ in self.sections)
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
