"""AUC binarisation: is a regulon on or off in each cell? Equal to pySCENIC's ``binarize``.

Per regulon (``pyscenic.binarization.derive_threshold``): if Hartigan's dip test calls
the AUC distribution bimodal (p <= 0.05), a 2-component Gaussian mixture (scikit-learn,
``random_state=seed``) locates the two modes and the threshold is the minimum of a
Gaussian KDE between the two means (scipy's bounded Brent search); otherwise the threshold
is mean + 2 standard deviations. A cell is on where AUC > threshold.

The dip test's p-value is pySCENIC's Monte-Carlo one: the dips of 1000 uniform samples of
size m (m = the number of distinct AUC values) drawn after ``numpy.random.seed(seed)``,
p = (number of those dips > the sample's dip + 1) / 1001. Two things make this much faster
than pySCENIC while giving the same decision for every regulon:

- with a seed, every regulon restarts the same random stream, so the null dips depend only
  on m: they are computed once per distinct m and shared;
- p <= 0.05 means at most 49 null dips exceed the sample's dip, so the simulation stops as
  soon as a 50th one does (the regulon is then unimodal).

Differences from pySCENIC 0.12.1, by design: pySCENIC seeds only ``if seed:``, so
``seed=0`` is not reproducible there while it is here; pySCENIC's binarisation fails on
numpy 2 (it calls the removed ``np.msort`` and ``np.float``).

``binarize_auc_matrix`` is upstream flashscenic's simpler rule (no dip test: a mixture, or
mean + 2 standard deviations, for every regulon), returning a uint8 array.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd

from .errors import InputError

__all__ = ["binarize_auc", "binarize_auc_matrix", "derive_threshold", "dip_statistic"]

logger = logging.getLogger(__name__)

N_NULL_SAMPLES = 1000  # pySCENIC's numt
P_VALUE_CUTOFF = 0.05
# p = (k + 1) / (N + 1) <= 0.05  <=>  k <= this many null dips above the sample's dip
_MAX_EXCEEDING = math.floor(P_VALUE_CUTOFF * (N_NULL_SAMPLES + 1) - 1 + 1e-9)
BINARIZE_METHODS = ("gmm", "zscore")  # binarize_auc_matrix's rules
_SAME_MEANS = 1e-4  # mixture means closer than this (in AUC) are one mode: the regulon is off
_VALLEY_GRID = 1001  # points between the two means where the mixture's density is evaluated


def binarize_auc(
    auc_matrix,
    seed: int | None = None,
    num_workers: int = 1,
    *,
    threshold_overrides: Mapping[str, float] | None = None,
    regulon_names: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, pd.Series]:
    """On/off state of every regulon in every cell, with pySCENIC's thresholds.

    Parameters
    ----------
    auc_matrix
        Cells x regulons AUC values: a DataFrame (columns name the regulons), numpy array or
        torch tensor. Values must be finite. The column dtype is kept (pySCENIC computes on
        the values as given, so float32 and float64 AUCs can give slightly different
        thresholds there too).
    seed
        Seeds the dip test's simulation and the Gaussian mixture, as pySCENIC's
        ``binarize(..., seed=seed)`` does; the same seed gives pySCENIC's thresholds.
        ``None``: not reproducible.
    num_workers
        Processes to spread regulons over (1: in this process). Worker processes are
        spawned, so a script that uses more than one must call this under
        ``if __name__ == "__main__":``.
    threshold_overrides
        Regulon name -> threshold, replacing the derived ones (pySCENIC's
        ``threshold_overides``).
    regulon_names
        Column names for an array input (default 0, 1, ...); overrides a DataFrame's.

    Returns
    -------
    tuple
        ``(binary, thresholds)``: a cells x regulons DataFrame of 0/1 (int64) and a Series
        of float64 thresholds indexed by regulon, like pySCENIC's ``binarize``.
    """
    frame = _auc_frame(auc_matrix, regulon_names)
    if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)) or num_workers < 1:
        raise InputError(f"num_workers must be a positive integer, got {num_workers!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32):
        raise InputError(f"seed must be None or an integer in [0, 2**32), got {seed!r}")
    n_regulons = frame.shape[1]
    if num_workers == 1 or n_regulons < 2:
        thresholds = _thresholds_of(frame, range(n_regulons), seed)
    else:
        # spawn, not fork: a process that has run scikit-learn's OpenMP code (the mixture's
        # k-means start) hangs in forked children. Each worker gets the whole frame, so it
        # reads columns with the same memory layout as here (float32 mixture fits depend
        # on it in the last digits, in pySCENIC too).
        context = multiprocessing.get_context("spawn")
        n_workers = min(num_workers, n_regulons)
        shares = [range(i, n_regulons, n_workers) for i in range(n_workers)]
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=context) as pool:
            parts = list(pool.map(_thresholds_of, [frame] * n_workers, shares, [seed] * n_workers))
        thresholds = [0.0] * n_regulons
        for share, part in zip(shares, parts):
            for j, value in zip(share, part):
                thresholds[j] = value
    series = pd.Series(np.asarray(thresholds, dtype=np.float64), index=frame.columns)
    if threshold_overrides is not None:
        unknown = [k for k in threshold_overrides if k not in series.index]
        if unknown:
            raise InputError(f"threshold_overrides names {len(unknown)} unknown regulon(s): {unknown[:10]}")
        for name, value in threshold_overrides.items():
            series[name] = float(value)
    binary = (frame > series).astype(np.int64)
    return binary, series


def binarize_auc_matrix(auc_matrix, method: str = "gmm", random_state: int | None = 42) -> np.ndarray:
    """On/off state of every regulon in every cell, with upstream flashscenic's thresholds.

    Per regulon, ``method='gmm'`` fits a 2-component Gaussian mixture to its AUC over cells
    (scikit-learn, seeded by ``random_state``) and sets the threshold where the mixture's
    density is lowest between the two means; ``'zscore'`` sets it at mean + 2 standard
    deviations. A regulon whose AUC does not vary, or whose two means are closer than
    1e-4, has one mode and is off in every cell. For pySCENIC's thresholds (a dip test
    decides between the two rules per regulon), use :func:`binarize_auc`.

    Parameters
    ----------
    auc_matrix
        Cells x regulons AUC values: a numpy array, torch tensor or DataFrame; finite.
    method
        ``'gmm'`` or ``'zscore'``.
    random_state
        Seed of the mixture fits (``None``: not reproducible).

    Returns
    -------
    np.ndarray
        Cells x regulons, uint8: 1 where the AUC is above the regulon's threshold, else 0.
    """
    if method not in BINARIZE_METHODS:
        raise InputError(f"method={method!r} is not one of {', '.join(map(repr, BINARIZE_METHODS))}")
    values = _auc_frame(auc_matrix, None).to_numpy(dtype=np.float64)
    if method == "zscore":
        thresholds = values.mean(axis=0) + 2.0 * values.std(axis=0)
    else:
        thresholds = np.array([_mixture_valley(column, random_state) for column in values.T])
    return (values > thresholds).astype(np.uint8)


def _mixture_valley(column: np.ndarray, random_state: int | None) -> float:
    """Where a 2-component mixture's density is lowest between its means (inf: one mode)."""
    if column.max() == column.min():
        return np.inf
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(n_components=2, random_state=random_state).fit(column.reshape(-1, 1))
    means = gmm.means_.ravel()
    if abs(means[1] - means[0]) < _SAME_MEANS:
        return np.inf
    grid = np.linspace(means.min(), means.max(), _VALLEY_GRID)
    sd = np.sqrt(gmm.covariances_.ravel())
    density = (gmm.weights_ / sd * np.exp(-0.5 * ((grid[:, None] - means) / sd) ** 2)).sum(axis=1)
    return float(grid[np.argmin(density)])


def derive_threshold(values, seed: int | None = None) -> float:
    """pySCENIC's threshold for one regulon's AUC values (``derive_threshold(..., method='hdt')``)."""
    values = np.asarray(values)
    if values.ndim != 1 or values.size == 0:
        raise InputError(f"values must be a non-empty 1-D array, got shape {values.shape}")
    if values.dtype.kind not in "biuf" or not np.isfinite(values).all():
        raise InputError("values must be finite numbers")
    return _threshold(values, seed, {})


def dip_statistic(values) -> float:
    """Hartigan's dip statistic of a sample, as pySCENIC's ``diptest.dip_fn`` computes it.

    Samples with at most 4 distinct values have dip 0 (pySCENIC's rule).
    """
    values = np.asarray(values)
    if values.ndim != 1 or values.dtype.kind not in "biuf" or not np.isfinite(values).all():
        raise InputError("values must be a 1-D array of finite numbers")
    support, counts = np.unique(values, return_counts=True)
    return _dip(support, counts)


# --------------------------------------------------------------------------- threshold


def _thresholds_of(frame: pd.DataFrame, positions, seed) -> list[float]:
    cache: dict = {}  # null dips by number of distinct values, shared by these regulons
    # frame.iloc[:, j].to_numpy() is pySCENIC's auc_mtx[name].values: same values, same layout
    return [_threshold(frame.iloc[:, j].to_numpy(), seed, cache) for j in positions]


def _threshold(data: np.ndarray, seed: int | None, cache: dict) -> float:
    if data.dtype.kind not in "f":
        data = data.astype(np.float64)
    if not _is_bimodal(data, seed, cache):
        return float(data.mean() + 2.0 * data.std())
    from scipy import stats
    from scipy.optimize import minimize_scalar
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(n_components=2, covariance_type="full", random_state=seed).fit(data.reshape(-1, 1))
    # pySCENIC passes sorted(gmm.means_), two 1-element arrays, as the bounds.
    result = minimize_scalar(fun=stats.gaussian_kde(data), bounds=sorted(gmm.means_), method="bounded")
    return float(np.asarray(result.x).reshape(-1)[0])


def _is_bimodal(data: np.ndarray, seed: int | None, cache: dict) -> bool:
    support, counts = np.unique(data, return_counts=True)
    m = support.size
    if m <= 4:
        return False  # dip 0 for the sample and every null sample: pySCENIC's p-value is None
    dip = _dip(support, counts)
    null = cache.get(m)
    if null is None:
        null = cache[m] = _NullDips(m, seed)
    return null.at_most_exceeding(dip, _MAX_EXCEEDING)


class _NullDips:
    """Dips of pySCENIC's 1000 uniform null samples of size m, computed lazily, in order."""

    def __init__(self, m: int, seed: int | None):
        # pySCENIC: np.random.seed(seed); np.random.uniform(size=numt * m).reshape(numt, m)
        self.samples = np.random.RandomState(seed).uniform(size=N_NULL_SAMPLES * m).reshape(N_NULL_SAMPLES, m)
        self.samples.sort(axis=1)
        self.dips: list[float] = []

    def _dip(self, i: int) -> float:
        while len(self.dips) <= i:
            row = self.samples[len(self.dips)]
            if (np.diff(row) > 0).all():
                self.dips.append(_dip(row, np.ones(row.size, dtype=np.int64)))
            else:
                self.dips.append(_dip(*np.unique(row, return_counts=True)))
        return self.dips[i]

    def at_most_exceeding(self, dip: float, limit: int) -> bool:
        """True when at most ``limit`` of the null dips are strictly greater than ``dip``."""
        exceeding = 0
        for i in range(N_NULL_SAMPLES):
            if self._dip(i) > dip:
                exceeding += 1
                if exceeding > limit:
                    return False
        return True


# --------------------------------------------------------------------------- dip statistic
#
# Hartigan, J. A. & Hartigan, P. M. (1985), "The dip test of unimodality", Ann. Statist.
# 13(1):70-84. The iteration below (greatest convex minorant of the CDF's left limits and
# least concave majorant of the CDF on a shrinking interval; the interval moves to where
# they differ most until that difference stops growing; the dip is half the largest
# deviation of the CDF from the minorant pieces left of the interval and the majorant
# pieces right of it) follows the formulation of J. Bauer's dip_test
# (https://github.com/tatome/dip_test), which pySCENIC's pyscenic/diptest.py uses. This is
# an independent implementation; tests/test_binarize.py checks it against pySCENIC's
# numbers, including its conventions (dip 0 for at most 4 distinct values, ties at the
# first/last touch point, the reflected construction of the majorant).


def _dip(support: np.ndarray, counts: np.ndarray) -> float:
    """Dip of a sample given its sorted distinct values and their counts."""
    m = support.size
    if m <= 4 or support[0] == support[-1]:
        return 0.0
    cdf = np.cumsum(counts, dtype=float)
    cdf /= cdf[-1]
    mass = np.asarray(counts, dtype=float) / np.sum(counts)
    lo, hi = 0, m
    best = 0.0
    left_pieces, right_pieces = [np.zeros(1)], [np.ones(1)]
    while True:
        x, f, p = support[lo:hi], cdf[lo:hi], mass[lo:hi]
        minorant, low_touch = _convex_minorant(x, f - p)
        majorant, high_touch = _concave_majorant(x, f)
        gap_low = np.abs(majorant[low_touch] - minorant[low_touch])
        gap_high = np.abs(majorant[high_touch] - minorant[high_touch])
        widest_low, widest_high = gap_low.max(), gap_high.max()
        if widest_high > widest_low:
            right = high_touch[gap_high == widest_high][-1]
            left = low_touch[low_touch <= right][-1]
            widest = widest_high
        else:
            left = low_touch[gap_low == widest_low][0]
            right = high_touch[high_touch >= left][0]
            widest = widest_low
        if widest <= best or right == 0:
            break
        best = max(
            best,
            np.abs(minorant[: left + 1] - f[: left + 1]).max(),
            np.abs(majorant[right:] - f[right:] + p[right:]).max(),
        )
        left_pieces.append(minorant[1 : left + 1])
        right_pieces.insert(0, majorant[right:-1])
        lo, hi = lo + left, lo + right + 1
    below = np.concatenate(left_pieces)
    above = np.concatenate(right_pieces)
    deviation = max(
        np.abs(cdf[: below.size] - below).max(),
        np.abs(cdf[m - above.size - 1 : m - 1] - above).max(),
    )
    return float(deviation / 2)


def _convex_minorant(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greatest convex minorant of the points (x_i, y_i), x increasing.

    From each vertex, the next vertex is the later point of smallest slope (the nearest one
    when several share it). Returns the minorant at every x_i and the vertex indices.
    """
    n = x.size
    values = np.empty(n, dtype=np.float64)
    values[0] = y[0]
    vertices = [0]
    v = 0
    while v < n - 1:
        run = x[v + 1 :] - x[v]
        slopes = (y[v + 1 :] - y[v]) / run
        k = int(np.argmin(slopes))
        values[v + 1 : v + k + 2] = y[v] + run[: k + 1] * slopes[k]
        v += k + 1
        vertices.append(v)
    return values, np.asarray(vertices)


def _concave_majorant(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least concave majorant, as the convex minorant of the point set turned by 180 degrees."""
    values, vertices = _convex_minorant(x.max() - x[::-1], 1 - y[::-1])
    return 1 - values[::-1], x.size - 1 - vertices[::-1]


# --------------------------------------------------------------------------- input


def _auc_frame(auc_matrix, regulon_names) -> pd.DataFrame:
    if isinstance(auc_matrix, pd.DataFrame):
        frame = auc_matrix
    else:
        from .modules import to_numpy

        values = to_numpy(auc_matrix)
        if values.ndim != 2:
            raise InputError(f"auc_matrix must be 2-D (cells x regulons), got shape {values.shape}")
        frame = pd.DataFrame(values)
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise InputError(f"auc_matrix has shape {frame.shape}; it needs at least one cell and one regulon")
    if regulon_names is not None:
        regulon_names = list(regulon_names)
        if len(regulon_names) != frame.shape[1]:
            raise InputError(f"regulon_names has {len(regulon_names)} names but auc_matrix has {frame.shape[1]} regulon columns")
        frame = frame.set_axis(regulon_names, axis=1)
    if frame.columns.has_duplicates:
        dups = list(frame.columns[frame.columns.duplicated()].unique()[:10])
        raise InputError(f"auc_matrix has duplicate regulon names: {dups}")
    for name, dtype in frame.dtypes.items():
        if dtype == object or np.dtype(dtype).kind not in "biuf":
            raise InputError(f"auc_matrix column {name!r} has dtype {dtype}; AUC values must be numbers")
    values = frame.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        r, c = np.argwhere(~np.isfinite(values))[0]
        raise InputError(f"auc_matrix has NaN or infinite values, first at cell {r}, regulon {frame.columns[c]!r}")
    return frame
