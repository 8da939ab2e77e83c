"""The results store: one run's results, written stage by stage, read by exports and the report.

One zarr v3 group per run, stamped ``encoding-type: flashscenic-results`` and an
``encoding-version``, so later readers can refuse or migrate old runs clearly:

==========================  ===========================================================
``auc``                     cells x regulons float32, row chunks aligned with the
                            expression store; written chunk by chunk (``auc_done``
                            records each finished chunk, one zarr chunk per flag, so
                            concurrent workers never touch the same object)
``tf_gene_weights``         TF x gene weights of the GRN (attrs: row and column names)
``regulon_weights``         regulons x genes weights (attrs: row and column names)
``tables/*.parquet``        parquet files (in a zarr group of that name, readable with
                            ``pandas.read_parquet``): ``cells``, ``adjacencies``
                            (TF, target, importance),
                            ``motifs`` (the motif table of ``flashscenic.regulons``),
                            ``regulons`` (name, tf, type, genes, weights, score,
                            motifs, ...)
attributes                  ``parameters``, ``versions`` (packages), ``timings``
                            (seconds per stage), ``stages`` (completion markers),
                            ``expression_store`` (relative when it lies beside the
                            results store, so a run folder can be moved)
==========================  ===========================================================

Writers only write data; the run (``flashscenic.pipeline``, ``import_pyscenic``) marks a
stage complete once all of its data is written, and readers that need a finished stage
call ``require``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr

from .._utils import atomic_path, check_unique
from ..errors import IncompleteStageError, InputError, MissingFileError
from ..io import _as_text, _names
from .expression import ExpressionStore, _check_version, _codecs, _now, _open_group, _package_versions, open_expression_store

__all__ = ["RESULTS_FORMAT", "STAGES", "ResultsStore", "create_results_store", "open_results_store"]

logger = logging.getLogger(__name__)

RESULTS_FORMAT = "flashscenic-results"
RESULTS_VERSION = "0.1.0"
STAGES = ("grn", "modules", "pruning", "auc", "rss")  # the run's stages, marked complete in this order
_RESUME = "finish the run first: `flashscenic run ... --resume` (Python: run_pipeline(..., resume=True))"

_TABLES = "tables"
_REGULON_COLUMNS = ("name", "tf", "type", "genes", "weights", "score", "motifs")


DEFAULT_AUC_CHUNK_ROWS = 65_536  # cells per AUC chunk without an expression store (200 regulons: 52 MB)


def create_results_store(
    path: str | os.PathLike,
    *,
    cell_names: Sequence[str] | None = None,
    chunk_rows: int | None = None,
    expression: ExpressionStore | str | os.PathLike | None = None,
    parameters: dict | None = None,
    overwrite: bool = False,
) -> ResultsStore:
    """Create the results store of one run.

    Give ``expression`` (an ``ExpressionStore`` or its path) to take the cells and the row
    chunking from it, so AUC chunks line up with expression chunks; or give ``cell_names``
    (and optionally ``chunk_rows``) for results without a store (pySCENIC imports).
    ``parameters`` (JSON-able) are recorded with the package versions. An expression store
    beside ``path`` (a run folder) is recorded by its name, so the folder can be moved.
    With ``overwrite=True`` an existing store is replaced only once the new one is made.
    """
    path = Path(path)
    if expression is not None:
        store = expression if isinstance(expression, ExpressionStore) else open_expression_store(expression)
        if cell_names is not None:
            raise InputError("give expression= or cell_names=, not both")
        cell_names = store.cell_names
        chunk_rows = chunk_rows or store.chunk_rows
        resolved = store.path.resolve()
        expression_path = resolved.name if resolved.parent == path.parent.resolve() else str(resolved)
    else:
        expression_path = None
    if cell_names is None:
        raise InputError("a results store needs its cells: pass expression= (an expression store) or cell_names=")
    cells = _names(cell_names, "cell_names")
    if len(cells) == 0:
        raise InputError("cell_names is empty; a results store needs at least one cell")
    if chunk_rows is None:  # bounded, so that no reader of an atlas's AUC decompresses it whole
        chunk_rows = min(len(cells), DEFAULT_AUC_CHUNK_ROWS)
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise InputError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    try:
        json.dumps(parameters or {})
    except TypeError as error:
        raise InputError(f"parameters must be JSON-serialisable ({error})") from None
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass overwrite=True (or open it with open_results_store)")
    if not path.parent.exists():
        raise MissingFileError(f"the folder {path.parent} of the results store does not exist; create it first")
    with atomic_path(path) as tmp:
        group = zarr.open_group(tmp, mode="w-", zarr_format=3)
        # The parquet files live in a zarr group of their own, so listing the root's members finds
        # only zarr nodes (zarr warns about foreign objects beside them).
        group.create_group(_TABLES).attrs.update({"encoding-type": "parquet-tables", "encoding-version": "0.1.0"})
        _write_table(tmp, "cells", pd.DataFrame({"cell": pd.Series(cells, dtype=object)}))
        group.attrs.update({
            "encoding-type": RESULTS_FORMAT,
            "encoding-version": RESULTS_VERSION,
            "created": _now(),
            "n_cells": len(cells),
            "chunk_rows": int(min(chunk_rows, len(cells))),
            "expression_store": expression_path,
            "parameters": parameters or {},
            "versions": _package_versions(),
            "timings": {},
            "stages": {},
        })
    return ResultsStore(path)


def open_results_store(path: str | os.PathLike) -> ResultsStore:
    """Open an existing results store; refuse one of a newer format."""
    return ResultsStore(path)


def _write_table(root: Path, name: str, frame: pd.DataFrame) -> None:
    """Write a parquet table atomically: readers see the old table or the whole new one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(root / _TABLES / f"{name}.parquet") as tmp:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)


def _read_table(root: Path, name: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    target = root / _TABLES / f"{name}.parquet"
    if not target.exists():
        raise InputError(f"the results store {root} has no {name} table yet; run the stage that writes it first")
    return pq.read_table(target).to_pandas()


class ResultsStore:
    """One run's results: AUC, weights, regulons, motifs, adjacencies, and run metadata.

    Writers replace what they write; the run marks each stage complete once all of its data
    is written (``mark_complete``), and ``require`` refuses unfinished ones. The AUC is written a
    row chunk at a time so that workers can write their own chunks concurrently and a
    later run can resume from ``missing_auc_chunks()``. Everything else (tables, weight
    matrices, and the attributes: parameters, timings, stages) is written by one process,
    the coordinator: attributes are read-modify-write.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise MissingFileError(f"results store {self.path} does not exist")
        self._group = _open_group(self.path, "results store")
        attrs = self._group.attrs.asdict()
        if attrs.get("encoding-type") != RESULTS_FORMAT:
            raise InputError(f"{self.path} is not a flashscenic results store (encoding-type "
                             f"{attrs.get('encoding-type')!r}); create one with create_results_store")
        _check_version(attrs.get("encoding-version"), RESULTS_VERSION, "results store", self.path)
        self.n_cells: int = int(attrs["n_cells"])
        self.chunk_rows: int = int(attrs["chunk_rows"])

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def __repr__(self) -> str:
        done = [s for s, v in self.stages.items() if v.get("complete")]
        return f"ResultsStore({str(self.path)!r}: {self.n_cells} cells, complete stages {done})"

    # metadata ------------------------------------------------------------------------

    def _writable(self):
        return zarr.open_group(self.path, mode="r+")

    @property
    def attrs(self) -> dict:
        return zarr.open_group(self.path, mode="r").attrs.asdict()

    @property
    def parameters(self) -> dict:
        return dict(self.attrs.get("parameters", {}))

    @property
    def versions(self) -> dict:
        return dict(self.attrs.get("versions", {}))

    @property
    def timings(self) -> dict:
        return dict(self.attrs.get("timings", {}))

    @property
    def stages(self) -> dict:
        return dict(self.attrs.get("stages", {}))

    @property
    def expression_store(self) -> str | None:
        """The absolute path of the expression store of this run (recorded relative to the run folder
        when it lies beside this store), or None."""
        recorded = self.attrs.get("expression_store")
        if recorded is None:
            return None
        return str(self.path.resolve().parent / recorded)

    def update_parameters(self, **parameters) -> None:
        """Add or replace run parameters (JSON-able)."""
        group = self._writable()
        current = dict(group.attrs.get("parameters", {}))
        current.update(parameters)
        try:
            json.dumps(current)
        except TypeError as error:
            raise InputError(f"parameters must be JSON-serialisable ({error})") from None
        group.attrs["parameters"] = current

    def record_timing(self, stage: str, seconds: float) -> None:
        """Record how long ``stage`` took (seconds); a later record of the same stage replaces it."""
        group = self._writable()
        timings = dict(group.attrs.get("timings", {}))
        timings[stage] = float(seconds)
        group.attrs["timings"] = timings

    def mark_complete(self, stage: str, **info) -> None:
        """Record that ``stage`` finished (with optional JSON-able details)."""
        group = self._writable()
        stages = dict(group.attrs.get("stages", {}))
        stages[stage] = {"complete": True, "at": _now(), **info}
        group.attrs["stages"] = stages

    def forget(self, *stages: str) -> None:
        """Mark ``stages`` incomplete (their data was computed from something since replaced)."""
        group = self._writable()
        group.attrs["stages"] = {k: v for k, v in group.attrs.get("stages", {}).items() if k not in stages}

    def is_complete(self, stage: str) -> bool:
        return bool(self.stages.get(stage, {}).get("complete"))

    def require(self, *stages: str) -> None:
        """Refuse (``IncompleteStageError``) unless every one of ``stages`` is complete."""
        recorded = self.stages
        missing = [s for s in stages if not recorded.get(s, {}).get("complete")]
        if missing:
            done = [s for s, v in recorded.items() if v.get("complete")]
            raise IncompleteStageError(
                f"the run in {self.path} has not finished stage(s) {', '.join(map(repr, missing))} (complete: "
                f"{', '.join(done) if done else 'none'}); {_RESUME}")

    # cells ---------------------------------------------------------------------------

    @property
    def cell_names(self) -> np.ndarray:
        return _as_text(_read_table(self.path, "cells")["cell"])

    def write_table(self, name: str, frame: pd.DataFrame) -> None:
        """Write (replace) the parquet table ``name``, e.g. ``'rss'``."""
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise InputError(f"table name {name!r} must be letters, digits and underscores")
        _write_table(self.path, name, frame)

    def read_table(self, name: str) -> pd.DataFrame:
        """Read the parquet table ``name``."""
        return _read_table(self.path, name)

    def read_cells(self) -> pd.DataFrame:
        """The cells table: ``cell`` (names, in AUC row order) and any cell-label columns."""
        frame = _read_table(self.path, "cells")
        frame["cell"] = _as_text(frame["cell"])
        return frame

    def write_cell_labels(self, labels: pd.DataFrame) -> None:
        """Add or replace cell-label columns (e.g. cell types).

        Rows are matched to cells by index when the index holds this store's cell names (in
        any order), else by position. Categorical columns keep their category order.
        """
        labels = pd.DataFrame(labels)
        frame = self.read_cells()
        if len(labels) != self.n_cells:
            raise InputError(f"{len(labels)} rows of cell labels for the {self.n_cells} cells of this results store")
        if "cell" in labels.columns:
            raise InputError("'cell' is the column of cell names; give the labels other column names")
        index = pd.Index(labels.index.astype(str)) if labels.index.dtype == object else None
        if index is not None and index.is_unique and set(index) == set(frame["cell"]):
            labels = labels.loc[labels.index[index.get_indexer(frame["cell"])]]
        labels = labels.reset_index(drop=True)
        for column in labels.columns:
            frame[str(column)] = labels[column]
        _write_table(self.path, "cells", frame)

    def auc_chunk_ranges(self) -> list[tuple[int, int]]:
        """Row ranges of the AUC chunks (the expression store's chunks when made from one)."""
        return [(s, min(s + self.chunk_rows, self.n_cells)) for s in range(0, self.n_cells, self.chunk_rows)]

    # tables --------------------------------------------------------------------------

    def write_adjacencies(self, adjacencies: pd.DataFrame) -> None:
        """The GRN edges: columns ``TF``, ``target``, ``importance`` (pySCENIC's adjacencies)."""
        frame = _check_adjacencies(adjacencies)
        _write_table(self.path, "adjacencies", frame)

    def read_adjacencies(self) -> pd.DataFrame:
        return _read_table(self.path, "adjacencies")

    def write_motifs(self, table: pd.DataFrame) -> None:
        """The enriched-motif table (``flashscenic.regulons.MOTIF_COLUMNS``; pySCENIC's reg.csv rows)."""
        from ..regulons import MOTIF_COLUMNS, validate_motif_table

        validate_motif_table(table)
        frame = pd.DataFrame({c: table[c].to_numpy() for c in MOTIF_COLUMNS})
        frame["Context"] = [sorted(c) for c in table["Context"]]
        frame["TargetGenes"] = [[{"gene": str(g), "weight": float(w)} for g, w in t] for t in table["TargetGenes"]]
        for name in ("AUC", "NES", "MotifSimilarityQvalue", "OrthologousIdentity"):
            frame[name] = table[name].to_numpy(np.float64, na_value=np.nan)
        frame["RankAtMax"] = table["RankAtMax"].to_numpy(np.int64)
        _write_table(self.path, "motifs", frame)

    def read_motifs(self) -> pd.DataFrame:
        """The motif table, with ``Context`` as frozensets and ``TargetGenes`` as lists of tuples."""
        frame = _read_table(self.path, "motifs")
        frame["Context"] = [frozenset(c) for c in frame["Context"]]
        frame["TargetGenes"] = [[(d["gene"], float(d["weight"])) for d in t] for t in frame["TargetGenes"]]
        for name in ("TF", "MotifID", "Annotation", "Database"):
            frame[name] = frame[name].astype(object)
        return frame

    def write_regulons(self, regulons: Sequence[dict], gene_names: Sequence[str] | None = None,
                       weighted: bool = True) -> None:
        """The regulons (dicts as ``regulons_from_motifs`` returns) and their regulons x genes weights.

        The weight matrix (``regulon_weights``) is written when ``gene_names`` is given, or
        taken from ``tf_gene_weights`` / the expression store when one is recorded.
        ``weighted=False`` stores 1.0 for each regulon gene.
        """
        frame = _regulon_frame(regulons)
        if gene_names is None:
            gene_names = self._default_gene_names()
        _write_table(self.path, "regulons", frame)
        if gene_names is not None:
            from ..regulons import regulons_to_adjacency

            matrix = regulons_to_adjacency(regulons, gene_names, weighted=weighted)
            self._write_matrix("regulon_weights", matrix, list(frame["name"]), list(gene_names))

    def _default_gene_names(self):
        if "tf_gene_weights" in zarr.open_group(self.path, mode="r"):
            return zarr.open_array(self.path / "tf_gene_weights", mode="r").attrs["columns"]
        if self.expression_store and Path(self.expression_store).exists():
            return list(open_expression_store(self.expression_store).gene_names)
        return None

    def read_regulons(self) -> list[dict]:
        """The regulons as dicts (lists of genes and weights, plus whatever was stored)."""
        frame = _read_table(self.path, "regulons")
        regulons = []
        for record in frame.to_dict("records"):
            regulon = {}
            for key, value in record.items():
                if isinstance(value, np.ndarray):
                    value = value.tolist()
                elif isinstance(value, np.generic):
                    value = value.item()
                if value is None and key not in _REGULON_COLUMNS:
                    continue
                regulon[key] = value
            regulon["weights"] = [float(w) for w in regulon["weights"]]
            regulons.append(regulon)
        return regulons

    def read_regulon_weights(self) -> tuple[np.ndarray, list[str], list[str]]:
        """``(weights, regulon_names, gene_names)``: the regulons x genes matrix AUCell scores."""
        return self._read_matrix("regulon_weights")

    def write_tf_gene_weights(self, weights, tf_names: Sequence[str], gene_names: Sequence[str]) -> None:
        """The GRN as a TF x gene weight matrix (float32)."""
        weights = np.asarray(weights.toarray() if sp.issparse(weights) else weights, dtype=np.float32)
        self._write_matrix("tf_gene_weights", weights, list(_names(tf_names, "tf_names")),
                           list(_names(gene_names, "gene_names")))

    def read_tf_gene_weights(self) -> tuple[np.ndarray, list[str], list[str]]:
        """``(weights, tf_names, gene_names)``."""
        return self._read_matrix("tf_gene_weights")

    def _write_matrix(self, name: str, matrix: np.ndarray, rows: list[str], columns: list[str]) -> None:
        if matrix.ndim != 2 or matrix.shape != (len(rows), len(columns)):
            raise InputError(f"{name} is {matrix.shape} but there are {len(rows)} row and {len(columns)} column names")
        if not np.isfinite(matrix).all():
            raise InputError(f"{name} contains NaN or infinite values")
        group = self._writable()
        chunk_rows = max(1, min(len(rows), 2**24 // max(1, len(columns))))
        array = group.create_array(name, shape=matrix.shape, chunks=(chunk_rows, max(1, len(columns))),
                                   dtype="float32", compressors=_codecs("values"), fill_value=0.0, overwrite=True)
        array[...] = matrix
        array.attrs.update({"rows": [str(r) for r in rows], "columns": [str(c) for c in columns]})

    def _read_matrix(self, name: str):
        if name not in zarr.open_group(self.path, mode="r"):
            raise InputError(f"the results store {self.path} has no {name} yet; run the stage that writes it first")
        array = zarr.open_array(self.path / name, mode="r")
        return np.asarray(array[...]), list(array.attrs["rows"]), list(array.attrs["columns"])

    # GRN runs (multi-run consensus) --------------------------------------------------

    def init_grn_runs(self, seeds: Sequence[int], tf_names: Sequence[str], gene_names: Sequence[str]) -> None:
        """Room for one TF x gene weight matrix per GRN run (``grn_runs``, a zarr chunk per run) and
        per-run completion flags. The same seeds and names keep what is written (resume)."""
        group = self._writable()
        names = {"seeds": [int(s) for s in seeds], "rows": [str(t) for t in tf_names],
                 "columns": [str(g) for g in gene_names]}
        if "grn_runs" in group and dict(group["grn_runs"].attrs) == names:
            return
        shape = (len(names["seeds"]), len(names["rows"]), len(names["columns"]))
        array = group.create_array("grn_runs", shape=shape, chunks=(1, max(1, shape[1]), max(1, shape[2])),
                                   dtype="float32", compressors=_codecs("values"), fill_value=0.0, overwrite=True)
        array.attrs.update(names)
        group.create_array("grn_runs_done", shape=(shape[0],), chunks=(1,), dtype="uint8", fill_value=0,
                           overwrite=True)

    def write_grn_run(self, index: int, weights, tf_names: Sequence[str]) -> None:
        """Run ``index``'s weights (rows: ``tf_names``, which must be the runs' TFs), then its flag.
        Safe from many processes at once: each run is its own zarr chunk."""
        array = zarr.open_array(self.path / "grn_runs", mode="r+")
        if list(map(str, tf_names)) != list(array.attrs["rows"]):
            raise InputError(f"GRN run {index} has other TF rows than the run's {len(array.attrs['rows'])}")
        array[index] = np.asarray(weights, dtype=np.float32)
        zarr.open_array(self.path / "grn_runs_done", mode="r+")[index] = 1

    def missing_grn_runs(self) -> list[int]:
        return np.flatnonzero(zarr.open_array(self.path / "grn_runs_done", mode="r")[:] == 0).tolist()

    def read_grn_run(self, index: int) -> np.ndarray:
        """Run ``index``'s TF x gene weights (float32)."""
        return np.asarray(zarr.open_array(self.path / "grn_runs", mode="r")[index])

    @property
    def grn_run_seeds(self) -> list[int]:
        return list(zarr.open_array(self.path / "grn_runs", mode="r").attrs["seeds"])

    @property
    def grn_run_tf_names(self) -> list[str]:
        """The rows (TFs) of every GRN run's weights."""
        return list(zarr.open_array(self.path / "grn_runs", mode="r").attrs["rows"])

    # AUC -----------------------------------------------------------------------------

    def init_auc(self, regulon_names: Sequence[str], overwrite: bool = False, chunk_rows: int | None = None) -> None:
        """Create the empty cells x regulons AUC array and its per-chunk completion flags.

        Re-initialising with the same regulons keeps what is written (for resuming); other
        regulons, or ``overwrite=True``, start afresh, and the stages derived from the AUC
        (auc, rss) are no longer complete. ``chunk_rows``: cells per AUC chunk of a new array
        (default: the store's ``chunk_rows``), chosen when the workers are known.
        """
        names = list(_names(regulon_names, "regulon_names"))
        if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer))
                                       or chunk_rows < 1):
            raise InputError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        group = self._writable()
        if "auc" in group and not overwrite:
            if list(group["auc"].attrs.get("regulons", [])) == names:
                return
            logger.info("regulons changed: the AUC of %s starts afresh", self.path)
        if chunk_rows is not None:
            self.chunk_rows = int(min(chunk_rows, max(1, self.n_cells)))
            group.attrs["chunk_rows"] = self.chunk_rows
        n_chunks = len(self.auc_chunk_ranges())
        array = group.create_array("auc", shape=(self.n_cells, len(names)), chunks=(self.chunk_rows, max(1, len(names))),
                                   dtype="float32", compressors=_codecs("values"), fill_value=0.0, overwrite=True)
        array.attrs.update({"regulons": names})
        group.create_array("auc_done", shape=(n_chunks,), chunks=(1,), dtype="uint8", fill_value=0, overwrite=True)
        stages = dict(group.attrs.get("stages", {}))
        stages.pop("auc", None)
        stages.pop("rss", None)  # computed from the old AUC
        group.attrs["stages"] = stages

    def has_auc(self, regulon_names: Sequence[str]) -> bool:
        """Whether an AUC array of these regulons exists (``init_auc`` keeps it and its chunks)."""
        group = zarr.open_group(self.path, mode="r")
        return "auc" in group and list(group["auc"].attrs.get("regulons", [])) == list(regulon_names)

    @property
    def regulon_names(self) -> list[str]:
        """The regulons of the AUC columns."""
        return list(self._auc().attrs["regulons"])

    def _auc(self, mode="r"):
        if "auc" not in zarr.open_group(self.path, mode="r"):
            raise InputError(f"the results store {self.path} has no AUC yet; call init_auc (or run AUCell) first")
        return zarr.open_array(self.path / "auc", mode=mode)

    def write_auc_chunk(self, index: int, block) -> None:
        """Write AUC chunk ``index`` (rows of ``auc_chunk_ranges()[index]``) and flag it done.

        Safe from many processes at once: each chunk and each flag is its own zarr object.
        """
        ranges = self.auc_chunk_ranges()
        if not 0 <= index < len(ranges):
            raise InputError(f"AUC chunk {index} does not exist; there are {len(ranges)}")
        start, stop = ranges[index]
        array = self._auc("r+")
        block = np.asarray(block, dtype=np.float32)
        if block.shape != (stop - start, array.shape[1]):
            raise InputError(f"AUC chunk {index} must be {(stop - start, array.shape[1])}, got {block.shape}")
        array[start:stop] = block
        zarr.open_array(self.path / "auc_done", mode="r+")[index] = 1

    def auc_done(self) -> np.ndarray:
        """One bool per AUC chunk: written or not."""
        self._auc()
        return zarr.open_array(self.path / "auc_done", mode="r")[:].astype(bool)

    def missing_auc_chunks(self) -> list[int]:
        return np.flatnonzero(~self.auc_done()).tolist()

    def finish_auc(self, seconds: float | None = None) -> None:
        """Check that every AUC chunk is written (raises otherwise) and record the timing.

        The run marks the ``auc`` stage complete itself, with what it knows (chunks scored).
        """
        missing = self.missing_auc_chunks()
        if missing:
            raise InputError(f"{len(missing)} AUC chunk(s) are not written yet, e.g. {missing[:5]}")
        if seconds is not None:
            self.record_timing("auc", seconds)

    def write_auc(self, auc, regulon_names: Sequence[str] | None = None) -> None:
        """Write a whole cells x regulons AUC (array, or DataFrame with regulon columns) chunk by chunk."""
        if isinstance(auc, pd.DataFrame):
            regulon_names = list(auc.columns) if regulon_names is None else regulon_names
            auc = auc.to_numpy()
        auc = np.asarray(auc, dtype=np.float32)
        if regulon_names is None:
            raise InputError("regulon_names is required with an array AUC")
        if auc.ndim != 2 or auc.shape != (self.n_cells, len(regulon_names)):
            raise InputError(f"the AUC must be {self.n_cells} cells x {len(list(regulon_names))} regulons, "
                             f"got {auc.shape}")
        self.init_auc(regulon_names, overwrite=True)
        for index, (start, stop) in enumerate(self.auc_chunk_ranges()):
            self.write_auc_chunk(index, auc[start:stop])
        self.finish_auc()

    def auc_reader(self):
        """``read(start, stop)`` -> AUC rows (float32), for many reads (a scan of an atlas):
        the completeness is checked and the array opened once."""
        array = self._auc()
        missing = self.missing_auc_chunks()
        if missing:
            raise IncompleteStageError(f"the AUC of {self.path} is incomplete: {len(missing)} of "
                                       f"{len(self.auc_chunk_ranges())} chunk(s) are not written yet; {_RESUME}")
        return lambda start, stop: np.asarray(array[int(start):int(stop)])

    def read_auc(self, as_frame: bool = False):
        """The AUC (cells x regulons float32), or a DataFrame indexed by cell with regulon columns.

        Refused (``IncompleteStageError``) while any chunk is missing: unwritten rows would read as 0.
        """
        values = self.auc_reader()(0, self.n_cells)
        if not as_frame:
            return values
        return pd.DataFrame(values, index=pd.Index(self.cell_names, name="Cell"),
                            columns=pd.Index(self.regulon_names, name="Regulon"))


def _check_adjacencies(adjacencies) -> pd.DataFrame:
    if not isinstance(adjacencies, pd.DataFrame):
        raise InputError(f"adjacencies must be a DataFrame with columns TF, target, importance, got "
                         f"{type(adjacencies).__name__}")
    missing = [c for c in ("TF", "target", "importance") if c not in adjacencies.columns]
    if missing:
        raise InputError(f"adjacencies lack column(s) {missing}; pySCENIC's are TF, target, importance")
    frame = pd.DataFrame({
        "TF": adjacencies["TF"].astype(str).to_numpy(dtype=object),
        "target": adjacencies["target"].astype(str).to_numpy(dtype=object),
        "importance": pd.to_numeric(adjacencies["importance"], errors="coerce").to_numpy(np.float64),
    })
    bad = ~np.isfinite(frame["importance"].to_numpy())
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(f"adjacencies row {row}: importance {adjacencies['importance'].iloc[row]!r} is not a "
                         "finite number")
    return frame


def _regulon_frame(regulons: Sequence[dict]) -> pd.DataFrame:
    """Regulon dicts -> a parquet-ready table; the required fields are checked, extra fields kept."""
    if isinstance(regulons, dict) or not isinstance(regulons, Sequence):
        raise InputError("regulons must be a list of dicts (see regulons_from_motifs)")
    records = []
    extra: list[str] = []
    for i, regulon in enumerate(regulons):
        if not isinstance(regulon, dict):
            raise InputError(f"regulons[{i}] is not a dict")
        for key in ("name", "genes", "weights"):
            if key not in regulon:
                raise InputError(f"regulons[{i}] lacks {key!r}; a regulon needs name, genes and weights")
        genes, weights = [str(g) for g in regulon["genes"]], [float(w) for w in regulon["weights"]]
        if len(genes) != len(weights):
            raise InputError(f"regulons[{i}] ({regulon['name']}) has {len(genes)} genes but {len(weights)} weights")
        name = str(regulon["name"])
        tf, kind = _parse_regulon_name(name)
        record = {"name": name, "tf": str(regulon.get("tf", tf)), "type": str(regulon.get("type", kind)),
                  "genes": genes, "weights": weights, "score": float(regulon.get("score", math.nan)),
                  "motifs": [str(m) for m in regulon.get("motifs", [])]}
        for key, value in regulon.items():
            if key not in record:
                record[key] = value
                if key not in extra:
                    extra.append(key)
        records.append(record)
    check_unique([r["name"] for r in records], "regulon names")
    frame = pd.DataFrame.from_records(records, columns=[*_REGULON_COLUMNS, *extra])
    return frame


def _parse_regulon_name(name: str) -> tuple[str, str]:
    """``'Tf(+)'`` -> ('Tf', 'activating'), ``'Tf(-)'`` -> repressing; SCope's ``'Tf (+)'``, ``'Tf (12g)'`` too."""
    text = name.strip()
    match = re.fullmatch(r"(.+?)\s*\(([+-])\)(?:\s*\(\d+g\))?", text)
    if match:
        return match.group(1), "repressing" if match.group(2) == "-" else "activating"
    match = re.fullmatch(r"(.+?)\s*\(\d+g\)", text)
    return (match.group(1) if match else text), "activating"
