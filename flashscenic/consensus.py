"""Consensus over several GRN runs: RegDiffusion is stochastic, so runs with different seeds differ.

Two ways to combine runs, both from upstream flashscenic's ``multi_run_flashscenic``
(``flashscenic/multi_run.py``):

* *mean adjacency*: average the runs' raw (not yet sparsity-thresholded) weight matrices,
  and optionally zero the edges whose coefficient of variation across runs is too high
  (``WeightMoments`` then ``cv_filter``). Upstream stacks the k matrices and calls
  ``mean(axis=0)`` / ``std(axis=0)`` (numpy's default ``ddof=0``); CV is ``std / |mean|``,
  0 where the mean is 0; the filter keeps ``cv < cv_threshold`` and counts the zeroed edges
  whose mean was non-zero. ``WeightMoments`` gives the same numbers without holding the k
  matrices (running sum and Welford's M2).
* *frequency* (our first name: *recurrence*): run modules and pruning per run and keep what
  recurs (``regulon_recurrence``, ``recurrent_regulons``, ``frequency_consensus``), as
  upstream's ``aggregation_method='frequency'``: a (TF, target) pair is kept when it is in at
  least ``frequency_threshold`` of the runs' pruned regulons, and a TF left with fewer than
  ``min_genes_filter`` targets is dropped. Counted per regulon (``TF(+)`` and ``TF(-)``
  apart) and per run, so a fraction never exceeds 1.

``run_seeds`` gives the per-run seeds as upstream: the given list, else
``SeedSequence(seed).spawn(n_runs)``.

Pure numpy: no torch, no files.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
from collections.abc import Sequence

import numpy as np

from .errors import InputError

__all__ = [
    "WeightMoments",
    "cv_filter",
    "regulon_recurrence",
    "recurrent_regulons",
    "frequency_consensus",
    "run_seeds",
]

logger = logging.getLogger(__name__)

_MAX_SEED = 2**32 - 1
_REGULON_NAME = re.compile(r"(.+?)\(([+-])\)")


# --- mean adjacency ----------------------------------------------------------------------


class WeightMoments:
    """Running mean and variance of equally shaped weight matrices, added one run at a time.

    Welford's update with float64 accumulators: the object holds two matrices (the running
    sum and the sum of squared deviations, M2) whatever the number of runs, so the runs of
    a full transcriptome need not all be kept in memory, as upstream's ``np.stack`` does.
    The result depends only on the matrices and the order of ``add`` calls (same order,
    same bits; another order, the same up to rounding).

    The running mean is kept as a float64 sum divided by n rather than Welford's
    incremental ``mean += delta / n``: a float64 sum of float32 (or float16) weights is
    exact unless they span a huge range, so the mean is the correctly rounded one, the
    same in any order, and exactly 0 where runs cancel (``a``, ``-a``), as numpy's
    stacked mean; M2 is Welford's ``M2 += (x - old mean) * (x - new mean)``.

    Add the runs' raw weights (RegDiffusion's ``get_adj()``, before any sparsity
    threshold): upstream averages those, and thresholds the mean once, downstream.
    """

    def __init__(self) -> None:
        self._n = 0
        self._shape: tuple[int, ...] | None = None
        self._sum: np.ndarray | None = None  # float64: the sum of the runs' weights
        self._m2: np.ndarray | None = None  # float64: sum of squared deviations from the mean

    @property
    def n(self) -> int:
        """How many matrices (runs) have been added."""
        return self._n

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The matrices' shape (None before the first ``add``)."""
        return self._shape

    def add(self, weights) -> None:
        """Add one run's weight matrix (any real dtype; finite values; the shape of the first)."""
        array = np.asarray(weights)
        if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise InputError(f"weights must be a real numeric array, got dtype {array.dtype}")
        if self._shape is not None and array.shape != self._shape:
            raise InputError(
                f"run {self._n + 1}'s weights have shape {array.shape}, the earlier runs' {self._shape}; "
                "every run must cover the same TFs and genes in the same order"
            )
        if not np.isfinite(array).all():
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise InputError(f"run {self._n + 1}'s weights hold {bad} NaN or infinite value(s)")
        if self._shape is None:
            self._shape = array.shape
            self._sum = np.array(array, dtype=np.float64)  # a copy: never the caller's array
            self._m2 = np.zeros(array.shape, dtype=np.float64)
            self._n = 1
            return
        # Welford: M2 += (x - old mean) * (x - new mean), a block of edges at a time so the
        # float64 temporaries stay small whatever the network's size.
        total, m2, values = self._sum.reshape(-1), self._m2.reshape(-1), array.reshape(-1)
        for block in _blocks(total.size):
            x = values[block]
            delta = total[block] / self._n
            np.subtract(x, delta, out=delta)
            total[block] += x
            after = total[block] / (self._n + 1)
            np.subtract(x, after, out=after)
            delta *= after
            m2[block] += delta
        self._n += 1

    def _require(self) -> None:
        if self._n == 0:
            raise InputError("no weights added yet: add() at least one run first")

    def _mean64(self) -> np.ndarray:
        return self._sum / self._n

    def _std64(self) -> np.ndarray:
        # Population std (ddof=0), as upstream's np.std(axis=0); M2 >= 0 but guard rounding.
        return np.sqrt(np.maximum(self._m2, 0.0) / self._n)

    def mean(self) -> np.ndarray:
        """The per-edge mean over the runs (float32, as upstream's consensus)."""
        self._require()
        return self._mean64().astype(np.float32)

    def std(self) -> np.ndarray:
        """The per-edge standard deviation with ``ddof=0`` (float32), as upstream's ``np.std``."""
        self._require()
        return self._std64().astype(np.float32)

    def cv(self) -> np.ndarray:
        """The coefficient of variation ``std / |mean|`` (float32), 0 where the mean is 0, as upstream.

        ``|mean|`` treats negative-mean edges as positive ones. A float32 overflow (a
        tiny non-zero mean) gives ``inf``, which any threshold filters. Where the float32
        mean (``mean()``) is 0 the CV is 0 too, so ``cv_filter`` keeps and does not count
        those edges, as upstream.
        """
        self._require()
        out = np.zeros(self._shape, dtype=np.float32)
        total, m2, cv32 = self._sum.reshape(-1), self._m2.reshape(-1), out.reshape(-1)
        for block in _blocks(total.size):  # a block at a time: small float64 temporaries
            mean = total[block] / self._n
            abs_mean = np.abs(mean)
            cv = np.zeros(mean.shape, dtype=np.float64)
            np.divide(np.sqrt(np.maximum(m2[block], 0.0) / self._n), abs_mean, out=cv, where=abs_mean > 0)
            with np.errstate(over="ignore"):
                cv32[block] = cv
            cv32[block][mean.astype(np.float32) == 0] = 0.0
        return out


def _blocks(size: int, step: int = 2**22) -> list[slice]:
    """Slices of ``step`` elements (32 MiB of float64) covering ``size``."""
    return [slice(start, min(start + step, size)) for start in range(0, size, step)]


def _check_threshold(value, what: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InputError(f"{what} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{what} must be a finite number > 0, got {value!r}")
    return value


def cv_filter(mean, cv, cv_threshold: float | None) -> tuple[np.ndarray, int]:
    """Zero the edges whose coefficient of variation is at least ``cv_threshold``.

    As upstream: the consensus keeps ``mean`` where ``cv < cv_threshold`` and is 0
    elsewhere; ``n_filtered`` counts the zeroed edges whose mean was non-zero (upstream's
    ``n_edges_cv_filtered``). ``cv_threshold=None`` returns ``mean`` itself (not copied)
    and 0. The result keeps ``mean``'s dtype. Upstream notes that thresholds >= 1 rarely
    filter anything and that strict filtering did not improve regulons.
    """
    mean = np.asarray(mean)
    if cv_threshold is None:
        return mean, 0
    threshold = _check_threshold(cv_threshold, "cv_threshold")
    cv = np.asarray(cv)
    if mean.shape != cv.shape:
        raise InputError(f"mean has shape {mean.shape} but cv has shape {cv.shape}")
    for name, array in (("mean", mean), ("cv", cv)):
        if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise InputError(f"{name} must be a real numeric array, got dtype {array.dtype}")
        if np.isnan(array).any():
            raise InputError(f"{name} holds NaN; compute it with WeightMoments from finite weights")
    dropped = cv >= threshold
    filtered = np.where(dropped, np.zeros((), dtype=mean.dtype), mean)
    n_filtered = int(np.count_nonzero(dropped & (mean != 0)))
    return filtered, n_filtered


# --- recurrence --------------------------------------------------------------------------


def _regulon_identity(regulon: dict, where: str) -> tuple[str, str]:
    """(tf, type) of a regulon dict: its ``tf``/``type`` keys, else parsed from ``'TF(+)'``/``'TF(-)'``."""
    name = regulon["name"]
    match = _REGULON_NAME.fullmatch(name)
    tf = regulon.get("tf", match.group(1) if match else None)
    if not isinstance(tf, str) or not tf:
        raise InputError(f"{where} ({name!r}) has no 'tf' and its name is not like 'TF(+)' or 'TF(-)'")
    default = ("repressing" if match.group(2) == "-" else "activating") if match else "activating"
    kind = regulon.get("type", default)
    if kind not in ("activating", "repressing"):
        raise InputError(f"{where} ({name!r}): type {kind!r} is not 'activating' or 'repressing'")
    return tf, kind


def _collect(runs) -> tuple[int, dict[str, int], dict[str, dict[str, int]], dict[str, tuple[str, str]]]:
    """Count, per regulon name, the runs that have it, and per (regulon, gene) the runs that have both."""
    if isinstance(runs, (str, bytes, dict)) or not isinstance(runs, Sequence):
        raise InputError("runs must be a sequence of runs, each a list of regulon dicts")
    if len(runs) == 0:
        raise InputError("runs is empty: recurrence needs at least one run")
    regulon_count: dict[str, int] = {}
    gene_count: dict[str, dict[str, int]] = {}
    identity: dict[str, tuple[str, str]] = {}
    for r, run in enumerate(runs):
        if isinstance(run, (str, bytes, dict)) or not isinstance(run, Sequence):
            raise InputError(f"runs[{r}] is not a list of regulon dicts")
        seen: set[str] = set()
        for i, regulon in enumerate(run):
            where = f"runs[{r}][{i}]"
            if not isinstance(regulon, dict) or "name" not in regulon or "genes" not in regulon:
                raise InputError(f"{where} is not a dict with 'name' and 'genes' (see regulons_from_motifs)")
            name, genes = regulon["name"], regulon["genes"]
            if not isinstance(name, str) or not name:
                raise InputError(f"{where}: name {name!r} is not a non-empty str")
            if isinstance(genes, (str, bytes)) or not isinstance(genes, Sequence):
                raise InputError(f"{where} ({name!r}): genes must be a list of str")
            if not all(isinstance(g, str) for g in genes):
                raise InputError(f"{where} ({name!r}): genes must be a list of str")
            if name in seen:
                raise InputError(f"runs[{r}] has regulon {name!r} twice; a run's regulon names must be unique")
            seen.add(name)
            tf_kind = _regulon_identity(regulon, where)
            if identity.setdefault(name, tf_kind) != tf_kind:
                raise InputError(f"regulon {name!r} is {identity[name]} in one run but {tf_kind} in {where}")
            regulon_count[name] = regulon_count.get(name, 0) + 1
            counts = gene_count.setdefault(name, {})
            for gene in set(genes):
                counts[gene] = counts.get(gene, 0) + 1
    return len(runs), regulon_count, gene_count, identity


def regulon_recurrence(runs: Sequence[Sequence[dict]]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """How often each regulon, and each of its genes, recurs over runs.

    ``runs``: one list of regulon dicts (keys ``name``, ``genes``, ...) per run. Returns
    ``(regulon name -> fraction of runs that have it, regulon name -> {gene -> fraction of
    runs that have the regulon with that gene})``, fractions in [0, 1] computed as
    ``count / n_runs`` (upstream's ``freq``), names and genes sorted. Regulons are told
    apart by name, so ``TF(+)`` and ``TF(-)`` are counted separately (upstream keys by TF).
    """
    n_runs, regulon_count, gene_count, _ = _collect(runs)
    recurrence = {name: regulon_count[name] / n_runs for name in sorted(regulon_count)}
    genes = {
        name: {gene: gene_count[name][gene] / n_runs for gene in sorted(gene_count[name])}
        for name in sorted(gene_count)
    }
    return recurrence, genes


def recurrent_regulons(runs: Sequence[Sequence[dict]], min_fraction: float) -> list[dict]:
    """Consensus regulons: those in at least ``min_fraction`` of the runs, with their recurrent genes.

    A regulon is kept when the fraction of runs that have it is ``>= min_fraction``, with
    the genes found with it in ``>= min_fraction`` of the runs (upstream's
    ``freq >= frequency_threshold``), plus its TF when the TF was among its genes in any
    run (pySCENIC adds the TF to its own regulon). Weights are 1.0: the runs' weights are
    not comparable. A kept regulon left with no gene is dropped with a warning, as
    ``regulons_from_motifs`` drops empty regulons.

    Returns dicts in ``regulons_from_motifs``'s format (``name``, ``tf``, ``type``,
    ``genes`` sorted, ``weights``, ``n_genes``, ``motifs`` empty), plus ``recurrence``
    (the regulon's fraction), sorted as ``regulons_from_motifs``: by TF, ``TF(+)`` before
    ``TF(-)``.
    """
    if isinstance(min_fraction, (bool, np.bool_)) or not isinstance(min_fraction, numbers.Real):
        raise InputError(f"min_fraction must be a number in (0, 1], got {min_fraction!r}")
    if not (0 < float(min_fraction) <= 1):
        raise InputError(f"min_fraction must be in (0, 1], got {min_fraction!r}")
    min_fraction = float(min_fraction)
    n_runs, regulon_count, gene_count, identity = _collect(runs)
    regulons = []
    empty = []
    for name in sorted(regulon_count, key=lambda n: (*identity[n], n)):
        recurrence = regulon_count[name] / n_runs
        if recurrence < min_fraction:
            continue
        tf, kind = identity[name]
        counts = gene_count[name]
        genes = sorted(g for g, c in counts.items() if c / n_runs >= min_fraction or g == tf)
        if not genes:
            empty.append(name)
            continue
        regulons.append(
            {
                "name": name,
                "tf": tf,
                "type": kind,
                "genes": genes,
                "weights": [1.0] * len(genes),
                "n_genes": len(genes),
                "motifs": [],
                "recurrence": recurrence,
            }
        )
    if empty:
        logger.warning(
            "%d recurrent regulon(s) have no gene found in >= %g of the runs and were left out: %s",
            len(empty), min_fraction, empty[:10],
        )
    return regulons


def frequency_consensus(runs: Sequence[Sequence[dict]], frequency_threshold: float,
                        min_genes_filter: int = 5) -> tuple[list[dict], dict[str, float]]:
    """Upstream's frequency consensus of the runs' pruned regulons, and each TF's score.

    The regulons of ``recurrent_regulons(runs, frequency_threshold)`` (targets found in at
    least that fraction of the runs), less those with fewer than ``min_genes_filter``
    targets (the TF itself not counted). ``tf_frequency_scores``: per TF of a kept regulon,
    the mean frequency of its kept targets (TF excluded; a TF's ``(+)`` and ``(-)`` regulons
    together). An empty result is ``([], {})``.
    """
    if isinstance(min_genes_filter, (bool, np.bool_)) or not isinstance(min_genes_filter, numbers.Integral) \
            or min_genes_filter < 0:
        raise InputError(f"min_genes_filter must be an integer >= 0, got {min_genes_filter!r}")
    _, genes = regulon_recurrence(runs)
    kept, frequencies = [], {}
    for regulon in recurrent_regulons(runs, frequency_threshold):
        targets = [g for g in regulon["genes"] if g != regulon["tf"]]
        if len(targets) < min_genes_filter:
            continue
        kept.append(regulon)
        frequencies.setdefault(regulon["tf"], []).extend(genes[regulon["name"]][g] for g in targets)
    return kept, {tf: float(np.mean(f)) if f else 0.0 for tf, f in sorted(frequencies.items())}


# --- seeds ------------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def run_seeds(seed: int | None, n_runs: int, seeds: Sequence[int] | None = None) -> list[int]:
    """The per-run seeds, as upstream: ``seeds`` when given, else derived from ``seed``.

    ``seeds`` must hold ``n_runs`` ints in 0..2**32-1 and is returned as given. Otherwise
    each seed is ``int(child.generate_state(1)[0])`` for the children of
    ``numpy.random.SeedSequence(seed).spawn(n_runs)`` (upstream's derivation, which avoids
    the correlations of ``seed + i``); ``seed=None`` draws fresh entropy, so the runs are
    not reproducible.
    """
    if not _is_int(n_runs) or n_runs < 1:
        raise InputError(f"n_runs must be an integer >= 1, got {n_runs!r}")
    n_runs = int(n_runs)
    if seeds is not None:
        if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (Sequence, np.ndarray)):
            raise InputError(f"seeds must be a list of {n_runs} ints, got {type(seeds).__name__}")
        if len(seeds) != n_runs:
            raise InputError(f"seeds length ({len(seeds)}) must equal n_runs ({n_runs})")
        for i, value in enumerate(seeds):
            if not _is_int(value) or not 0 <= value <= _MAX_SEED:
                raise InputError(f"seeds[{i}] = {value!r} is not an int in 0..2**32-1")
        return [int(value) for value in seeds]
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise InputError(f"seed must be a non-negative int or None, got {seed!r}")
    children = np.random.SeedSequence(None if seed is None else int(seed)).spawn(n_runs)
    return [int(child.generate_state(1)[0]) for child in children]
