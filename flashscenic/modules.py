"""Modules: candidate regulons cut from a TF x gene weight matrix, as pySCENIC cuts them.

A module is one TF with a set of weighted target genes. pySCENIC
(``pyscenic.utils.modules_from_adjacencies``) builds several module types from the same
weights, so that motif pruning can later pick the best-supported targets:

- ``weight>75.0%``: targets whose weight is strictly above the 75th percentile (linear
  interpolation) of ALL positive weights of the whole table, one global threshold;
- ``top50``: the 50 largest weights of each TF;
- ``top5perTarget``: each target's 5 strongest TFs, regrouped by TF;

then adds the TF to its own module with weight 1.0 and drops modules with fewer than
``min_genes`` genes (the TF counts). With an expression matrix, each TF-target link is
labelled activating (Pearson rho > 0.03 over all cells) or repressing (rho < -0.03), and
modules are built separately from each set of links. :func:`build_modules` does all of
this and returns exactly pySCENIC's modules; the ``select_*`` functions are the matrix
kernels it is made of, usable on their own (torch, CPU or CUDA).

Only positive weights ever form modules. RegDiffusion's weights are signed; a negative
weight is not evidence of repression (the correlation split is), so negative and zero
entries are ignored everywhere here.

Ties are broken deterministically: among equal weights the lower gene index (for
top-k per TF) or the lower TF index (for top-n per target) wins. That is pySCENIC's choice
on an adjacency table listed in matrix order (TF by TF, genes in column order), because
``DataFrame.nlargest`` keeps the first of equal rows.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Union

import numpy as np
import scipy.sparse as sp
import torch

from ._device import resolve_device
from .errors import InputError

__all__ = [
    "Module",
    "build_modules",
    "positive_weight_percentile",
    "select_topk_targets",
    "select_threshold_targets",
    "select_top_n_per_target",
    "select_mixture_model_targets",
    "select_knee_targets",
    "filter_by_min_targets",
    "filter_by_mapped_fraction",
    "get_target_indices",
    "binarize",
    "to_numpy",
]

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor]

ACTIVATING = "activating"
REPRESSING = "repressing"
_BLOCK_VALUES = 2**24  # values per block for row-chunked work (bounds memory)
_KNEE_TOLERANCE = 1e-9  # distances below the chord smaller than this are rounding, not a knee
_MIXTURE_METHODS = ("intersection", "posterior", "noise_quantile")


# --------------------------------------------------------------------------- kernels


def select_topk_targets(
    adj: ArrayLike,
    k: int = 50,
    include_tf: bool = True,
    tf_indices: ArrayLike | None = None,
    device: str | torch.device = "cuda",
) -> torch.Tensor:
    """Keep the ``k`` largest positive weights of each TF (pySCENIC's ``top{k}`` modules).

    Parameters
    ----------
    adj
        TF x gene weights (numpy, torch or scipy.sparse). Signed weights are fine: only
        positive entries can be selected.
    k
        Targets per TF. A TF with fewer than ``k`` positive weights keeps all of them; a
        zero or negative weight is never selected. Among equal weights at the cut, the
        lower gene index wins, so the result is deterministic on every device.
    include_tf
        Put the TF into its own module with weight 1.0 (needs ``tf_indices``). As in
        pySCENIC, this happens only for a TF that has at least one selected target, and it
        overwrites the TF's own self-weight if that was selected.
    tf_indices
        Column of each TF (one per row of ``adj``); a negative value marks a TF that is
        not among the gene columns (nothing is added for it).
    device
        ``'cuda'``, ``'cpu'``, ``'auto'`` or a ``torch.device``.

    Returns
    -------
    torch.Tensor
        n_tfs x n_genes, the selected weights and zeros elsewhere, on ``device``, float64
        for float64 input and float32 otherwise.
    """
    _check_count(k, "k")
    dev = resolve_device(device)
    w = _weights(adj, dev)
    out = torch.where(_largest_mask(w, k, dim=1), w, torch.zeros((), dtype=w.dtype, device=dev))
    return _maybe_add_tf(out, include_tf, tf_indices)


def select_threshold_targets(
    adj: ArrayLike,
    threshold: float = 0.0,
    percentile: float | None = None,
    include_tf: bool = True,
    tf_indices: ArrayLike | None = None,
    device: str | torch.device = "cuda",
) -> torch.Tensor:
    """Keep weights strictly above a threshold (pySCENIC's ``weight>75.0%`` modules).

    Parameters
    ----------
    adj
        TF x gene weights; only positive entries can be selected.
    threshold
        Absolute threshold: a weight is kept when ``weight > threshold`` (and > 0).
    percentile
        If given (0 to 100), the threshold becomes this percentile of ALL positive weights
        of ``adj`` (one global value, not one per TF), with numpy's/pandas' default linear
        interpolation, exactly as pySCENIC computes it from the adjacency table. Overrides
        ``threshold``. With no positive weight, nothing is selected.
    include_tf, tf_indices, device
        As in :func:`select_topk_targets`.

    Returns
    -------
    torch.Tensor
        n_tfs x n_genes selected weights on ``device``.

    Notes
    -----
    flashscenic 0.2.0 kept weights ``>=`` the threshold and computed the percentile in
    float32 with ``torch.quantile``; pySCENIC keeps weights strictly greater than a float64
    percentile, which is what happens now.
    """
    dev = resolve_device(device)
    w = _weights(adj, dev)
    if percentile is not None:
        _check_percentile(percentile, "percentile")
        cut = positive_weight_percentile(w, percentile)
        if cut is None:
            return torch.zeros_like(w)
    else:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
            raise InputError(f"threshold must be a number, got {threshold!r}")
        if math.isnan(float(threshold)):
            raise InputError("threshold is NaN; give a number")
        cut = float(threshold)
    keep = (w > 0) & (w.double() > cut)
    out = torch.where(keep, w, torch.zeros((), dtype=w.dtype, device=dev))
    return _maybe_add_tf(out, include_tf, tf_indices)


def select_top_n_per_target(
    adj: ArrayLike,
    n: int = 5,
    include_tf: bool = True,
    tf_indices: ArrayLike | None = None,
    device: str | torch.device = "cuda",
) -> torch.Tensor:
    """For each target gene keep its ``n`` strongest TFs, regrouped by TF (``top{n}perTarget``).

    Parameters
    ----------
    adj
        TF x gene weights; only positive entries can be selected.
    n
        Regulators per target gene. Among equal weights the lower TF row wins.
    include_tf, tf_indices, device
        As in :func:`select_topk_targets`.

    Returns
    -------
    torch.Tensor
        n_tfs x n_genes selected weights on ``device``.
    """
    _check_count(n, "n")
    dev = resolve_device(device)
    w = _weights(adj, dev)
    out = torch.where(_largest_mask(w, n, dim=0), w, torch.zeros((), dtype=w.dtype, device=dev))
    return _maybe_add_tf(out, include_tf, tf_indices)


def select_mixture_model_targets(
    adj: ArrayLike,
    n_components: int = 2,
    method: str = "intersection",
    include_tf: bool = True,
    tf_indices: ArrayLike | None = None,
    device: str | torch.device = "cuda",
    *,
    per_tf: bool = False,
    max_iter: int = 500,
    tol: float = 1e-9,
) -> tuple[torch.Tensor, dict]:
    """Split the positive weights into Gaussian components and keep the signal component's.

    Why: a percentile and top-k are fixed constants, while a group of strong edges above a
    bulk of weak ones carries its own cut in the weight distribution. A Gaussian mixture
    fitted to the positive weights finds it. Not a pySCENIC module type.

    As in flashscenic's API, one mixture is fitted to ALL positive weights of ``adj``, which
    gives one threshold. ``per_tf=True`` (an extension) fits one mixture per TF instead,
    so each TF gets its own cut and a row's result does not depend on the other rows.

    The fit is deterministic (no random start, unlike scikit-learn's): the weights are cut
    at their mean, the weights above it at theirs, and so on, into ``n_components`` start
    groups; EM then runs in float64 until means, standard deviations (relative to the
    weight range) and mixing weights change by less than ``tol``, or ``max_iter`` is
    reached. Variances are floored at 1e-6 of the weights' variance. The component with the
    lowest mean is the noise, the one with the highest mean the signal.

    Every weight at or above the threshold is kept, so a stronger edge is never dropped
    while a weaker one is kept. Weights that cannot be split (n_components or fewer
    positive weights, all equal, or an empty start group) are all kept.

    Parameters
    ----------
    adj
        TF x gene weights; only positive entries are fitted and can be selected.
    n_components
        Gaussian components, 2 or more.
    method
        How the fit becomes a threshold:

        - ``'intersection'``: the weight between the noise and signal means where their
          posteriors cross (weighted densities equal); the noise mean if the signal already
          dominates there, the signal mean if it never does;
        - ``'posterior'``: keep edges with P(signal | weight) > 0.5 (all components in the
          denominator): the threshold is the lowest weight above the noise mean that the
          signal claims, so the far low tail a broad signal component also claims is not
          kept; the signal mean if it claims none;
        - ``'noise_quantile'``: noise mean + 2 noise standard deviations.
    include_tf, tf_indices, device
        As in :func:`select_topk_targets`.
    per_tf
        One mixture per TF instead of one for the whole table.
    max_iter
        Maximum EM iterations (per TF with ``per_tf``).
    tol
        Convergence tolerance.

    Returns
    -------
    tuple
        The n_tfs x n_genes selected weights on ``device``, and a dict with ``threshold``,
        ``means``, ``stds``, ``weights`` (mixing weights; components by increasing mean),
        ``converged`` and ``method``. With ``per_tf`` each of the first five is a list with
        one entry per TF. Weights that were not fitted have empty component lists,
        ``converged=False`` and their smallest positive weight as threshold (0.0 if none).
    """
    k = _check_count(n_components, "n_components")
    if k < 2:
        raise InputError(f"n_components must be 2 or more (noise and signal), got {n_components!r}")
    if method not in _MIXTURE_METHODS:
        raise InputError(f"method={method!r} is not one of {', '.join(map(repr, _MIXTURE_METHODS))}")
    _check_flag(per_tf, "per_tf")
    _check_count(max_iter, "max_iter")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise InputError(f"tol must be a positive number, got {tol!r}")
    dev = resolve_device(device)
    w = _weights(adj, dev)
    fits = [_mixture_cut(rows, k, method, max_iter, float(tol)) for rows in _curves(w, per_tf, copies=k)]
    cut, params, converged, fitted = (torch.cat(parts) for parts in zip(*fits))
    components = [[row if ok else [] for row, ok in zip(p.tolist(), fitted.tolist())] for p in params]
    info = {"threshold": cut.tolist(), "means": components[0], "stds": components[1], "weights": components[2],
            "converged": converged.tolist()}
    if not per_tf:
        info = {key: value[0] for key, value in info.items()}
    info["method"] = method
    return _keep_at_or_above(w, cut, include_tf, tf_indices), info


def select_knee_targets(
    adj: ArrayLike,
    sensitivity: float = 1.0,
    per_tf: bool = False,
    include_tf: bool = True,
    tf_indices: ArrayLike | None = None,
    device: str | torch.device = "cuda",
) -> tuple[torch.Tensor, dict]:
    """Keep the weights down to the knee of the descending weight curve (Kneedle).

    Why: sorted from strongest to weakest, weights usually fall steeply and then flatten
    into a long tail of weak edges. The knee is where the fall ends; cutting there needs no
    global constant. Not a pySCENIC module type.

    Method (after Satopaa et al. 2011, "Kneedle"): the n positive weights sorted descending,
    w_0 >= ... >= w_{n-1}, are scaled to x_i = i / (n - 1) and y_i = (w_i - w_{n-1}) /
    (w_0 - w_{n-1}); the knee is the first i with the largest ``sensitivity * (1 - x_i) -
    y_i``, the point where the scaled curve's slope falls to ``-sensitivity``. At 1.0 that
    is Kneedle's knee, the point farthest below the chord from the first to the last point;
    a higher sensitivity detects the knee earlier (fewer, stronger edges kept), a lower one
    later. Every weight >= w_knee is kept (equal weights are never split). Deterministic.
    A curve that never falls below its chord by more than 1e-9 on the scaled axes (a
    straight line has no knee, only rounding), with fewer than 3 weights, or all equal,
    keeps all of them.

    Parameters
    ----------
    adj
        TF x gene weights; only positive entries are on the curve and can be selected.
    sensitivity
        Positive number; higher detects the knee earlier.
    per_tf
        False (flashscenic's default): one knee over all TFs' positive weights, one
        threshold. True: one knee per TF.
    include_tf, tf_indices, device
        As in :func:`select_topk_targets`.

    Returns
    -------
    tuple
        The n_tfs x n_genes selected weights on ``device``, and a dict with ``threshold``
        (the knee's weight: a float, or a list per TF), ``knee_index`` (its position in the
        descending curve: an int, or a list per TF; -1 for a curve without weights) and
        ``per_tf``. A curve without a knee has its last point as knee.
    """
    if isinstance(sensitivity, bool) or not isinstance(sensitivity, (int, float, np.integer, np.floating)) or not (
        0 < float(sensitivity) < math.inf
    ):
        raise InputError(f"sensitivity must be a positive number, got {sensitivity!r}")
    _check_flag(per_tf, "per_tf")
    dev = resolve_device(device)
    w = _weights(adj, dev)
    knees = [_knee_cut(rows, float(sensitivity)) for rows in _curves(w, per_tf)]
    cut, knee = (torch.cat(parts) for parts in zip(*knees))
    info = {"threshold": cut.tolist(), "knee_index": knee.tolist()}
    if not per_tf:
        info = {key: value[0] for key, value in info.items()}
    info["per_tf"] = bool(per_tf)
    return _keep_at_or_above(w, cut, include_tf, tf_indices), info


def filter_by_min_targets(
    adj: ArrayLike,
    min_targets: int = 20,
    min_fraction: float | None = None,
    device: str | torch.device = "cuda",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop TFs (rows) with too few targets.

    Parameters
    ----------
    adj
        TF x gene module weights; a target is a positive entry (the TF itself counts when
        it was added, as in pySCENIC's ``min_genes``).
    min_targets
        Keep rows with at least this many positive entries (pySCENIC: ``min_genes=20``).
        0 disables it.
    min_fraction
        Also require at least this fraction (0 to 1) of ALL gene columns to be targets.
        ``None`` disables it. This is not pySCENIC's 80% rule (that is the fraction of a
        module's genes found in a ranking database: :func:`filter_by_mapped_fraction`).
    device
        Device to work on.

    Returns
    -------
    tuple of torch.Tensor
        The kept rows (n_kept x n_genes) and the boolean row mask (n_tfs,).
    """
    if isinstance(min_targets, bool) or not isinstance(min_targets, (int, np.integer)) or min_targets < 0:
        raise InputError(f"min_targets must be an integer >= 0, got {min_targets!r}")
    dev = resolve_device(device)
    w = _weights(adj, dev)
    counts = (w > 0).sum(dim=1)
    mask = counts >= int(min_targets)
    if min_fraction is not None:
        _check_fraction(min_fraction, "min_fraction")
        # count / n_genes >= min_fraction, without flooring (0.2.0 used int(n * fraction))
        mask &= counts.double() >= float(min_fraction) * w.shape[1]
    return w[mask], mask


def filter_by_mapped_fraction(
    adj: ArrayLike,
    reference_indices: ArrayLike | None = None,
    min_fraction: float = 0.8,
    device: str | torch.device = "cuda",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop TFs whose targets are not mostly found in a reference (a ranking database).

    pySCENIC skips a module when 20% or more of its genes are missing from the ranking
    database (``frac_missing >= 0.20`` in ``pyscenic.transform``), i.e. it keeps a module
    only when strictly more than 80% of its genes are mapped. This keeps a row when
    ``mapped / targets > min_fraction``; a row with no targets is dropped.

    Parameters
    ----------
    adj
        TF x gene module weights; a target is a positive entry.
    reference_indices
        Gene columns present in the reference. ``None`` keeps every row.
    min_fraction
        Mapped fraction that must be exceeded, 0 to 1 (pySCENIC: 0.8).
    device
        Device to work on.

    Returns
    -------
    tuple of torch.Tensor
        The kept rows and the boolean row mask.
    """
    _check_fraction(min_fraction, "min_fraction")
    dev = resolve_device(device)
    w = _weights(adj, dev)
    n_tfs, n_genes = w.shape
    if reference_indices is None:
        return w, torch.ones(n_tfs, dtype=torch.bool, device=dev)
    ref = _index_vector(reference_indices, "reference_indices", dev)
    if ref.numel() and (int(ref.min()) < 0 or int(ref.max()) >= n_genes):
        raise InputError(f"reference_indices must lie in [0, {n_genes}) (the gene columns of adj)")
    in_reference = torch.zeros(n_genes, dtype=torch.bool, device=dev)
    in_reference[ref] = True
    targets = w > 0
    total = targets.sum(dim=1).double()
    mapped = (targets & in_reference).sum(dim=1).double()
    mask = (total > 0) & (mapped / total.clamp(min=1) > float(min_fraction))
    return w[mask], mask


def get_target_indices(adj: ArrayLike, device: str | torch.device = "cuda") -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of every TF as one flat index vector with CSR-style offsets.

    Parameters
    ----------
    adj
        TF x gene module weights; a target is a positive entry.
    device
        Device to work on.

    Returns
    -------
    tuple of torch.Tensor
        ``indices``: gene columns of all targets, TF by TF, ascending within a TF;
        ``offsets``: n_tfs + 1 positions, TF i's targets are
        ``indices[offsets[i]:offsets[i + 1]]``.
    """
    dev = resolve_device(device)
    w = _weights(adj, dev)
    rows, cols = (w > 0).nonzero(as_tuple=True)
    offsets = torch.zeros(w.shape[0] + 1, dtype=torch.long, device=dev)
    offsets[1:] = torch.cumsum(torch.bincount(rows, minlength=w.shape[0]), dim=0)
    return cols, offsets


def binarize(adj: ArrayLike, device: str | torch.device = "cuda") -> torch.Tensor:
    """1.0 where a weight is positive, 0.0 elsewhere (float32), e.g. for unweighted AUCell."""
    dev = resolve_device(device)
    return (_weights(adj, dev) > 0).to(torch.float32)


def to_numpy(tensor: ArrayLike) -> np.ndarray:
    """A tensor (any device) or array as a numpy array."""
    if isinstance(tensor, torch.Tensor):
        return tensor.detach().cpu().numpy()
    return np.asarray(tensor)


def positive_weight_percentile(adj: ArrayLike, percentile: float) -> float | None:
    """The ``percentile``-th percentile (0-100) of all positive entries, as pySCENIC computes it.

    pySCENIC calls ``adjacencies['importance'].quantile(percentile / 100)``: pandas hands
    ``q * 100`` to ``numpy.percentile``, which divides by 100 again and interpolates
    linearly between order statistics. The same float64 steps are done here, with the two
    order statistics found by ``torch.kthvalue`` on the device. ``None`` when no entry is
    positive (pandas would give NaN).
    """
    _check_percentile(percentile, "percentile")
    w = _weights(adj, adj.device if isinstance(adj, torch.Tensor) else torch.device("cpu"), "adj")
    values = w[w > 0].double()
    n = values.numel()
    if n == 0:
        return None
    q = (float(percentile) / 100.0 * 100.0) / 100.0  # pandas' q * 100, numpy's / 100
    position = (n - 1) * q
    if position >= n - 1:
        return float(values.max())
    below = math.floor(position)
    gamma = position - below
    a = float(torch.kthvalue(values, below + 1).values)
    b = float(torch.kthvalue(values, below + 2).values)
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma  # numpy's _lerp


# --------------------------------------------------------------------------- modules


@dataclass(frozen=True)
class Module:
    """One module: a TF, pySCENIC's context labels, and its genes with their weights.

    ``context`` holds the module type (``'weight>75.0%'``, ``'top50'``,
    ``'top5perTarget'``) followed by ``'activating'`` or ``'repressing'`` when the
    correlation split was used. ``genes`` are sorted by descending weight, ties by gene
    column (a TF that is not a gene column comes after its equals); ``weights`` match them.
    """

    tf: str
    context: tuple[str, ...]
    genes: tuple[str, ...]
    weights: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.genes)

    @property
    def gene2weight(self) -> dict[str, float]:
        return dict(zip(self.genes, self.weights))


def build_modules(
    weights: ArrayLike,
    tf_names: Sequence[str],
    gene_names: Sequence[str],
    *,
    percentile_thresholds: Sequence[float] = (75,),
    top_n_targets: Sequence[int] = (50,),
    top_n_per_target: Sequence[int] = (5, 10, 50),
    min_genes: int = 20,
    include_tf: bool = True,
    expression=None,
    rho_threshold: float = 0.03,
    keep_only_activating: bool = True,
    device: str | torch.device = "auto",
) -> list[Module]:
    """pySCENIC's modules from a TF x gene weight matrix.

    The result equals ``pyscenic.utils.modules_from_adjacencies`` run on the adjacency
    table of the positive entries of ``weights`` (rows TF, target, importance in matrix
    order) with ``thresholds = [q / 100 for q in percentile_thresholds]``: the same modules,
    contexts, genes and weights, in pySCENIC's order (per sign: percentile modules, top
    targets, top per target; within each, TFs sorted by name).

    Parameters
    ----------
    weights
        TF x gene weights (numpy, torch or scipy.sparse), e.g. from RegDiffusion or a dense
        GRNBoost2 table. Only positive weights form links; RegDiffusion's negative weights
        are ignored (repression is decided by correlation, see ``expression``).
    tf_names
        One name per row. A TF that is not in ``gene_names`` is still added to its modules
        (weight 1.0), as pySCENIC does.
    gene_names
        One name per column. TF and gene names must each be unique.
    percentile_thresholds
        Percentiles (0-100) of ALL positive weights; ``weight>{q}%`` modules keep targets
        strictly above it. pySCENIC's command line uses (75, 90).
    top_n_targets
        ``top{n}`` modules: the n largest weights of each TF.
    top_n_per_target
        ``top{n}perTarget`` modules: each target's n strongest TFs, regrouped by TF.
    min_genes
        Drop modules with fewer genes than this, counting the TF.
    include_tf
        Add the TF to each of its modules with weight 1.0 (pySCENIC always does). Its own
        self-weight, if it was selected, is replaced.
    expression
        Optional cells x genes expression (numpy, scipy.sparse, torch or a DataFrame whose
        columns are ``gene_names``), same gene order. When given, each link is activating
        if the Pearson correlation of TF and target over all cells is > ``rho_threshold``,
        repressing if < ``-rho_threshold`` (a constant gene has no correlation and is
        neither), and module types are built from each set separately with the context
        ``'activating'`` / ``'repressing'`` added: pySCENIC's ``rho_dichotomize=True``.
        When ``None``: no split, contexts carry no sign (``rho_dichotomize=False``).
    rho_threshold
        Correlation threshold, > 0.
    keep_only_activating
        With ``expression``, build only activating modules (pySCENIC's default).
    device
        Device for the selection kernels and the correlation (``'auto'``: CUDA when
        available).

    Returns
    -------
    list of Module
    """
    dev = resolve_device(device)
    tf_names = _names(tf_names, "tf_names")
    gene_names = _names(gene_names, "gene_names")
    w = _weights(weights, dev, "weights").double()
    if w.shape != (len(tf_names), len(gene_names)):
        raise InputError(
            f"weights has shape {tuple(w.shape)} but there are {len(tf_names)} tf_names and "
            f"{len(gene_names)} gene_names; weights must be TFs x genes in that order"
        )
    percentiles = [_check_percentile(q, "percentile_thresholds") for q in _sequence(percentile_thresholds, "percentile_thresholds")]
    top_targets = [_check_count(n, "top_n_targets") for n in _sequence(top_n_targets, "top_n_targets")]
    top_per_target = [_check_count(n, "top_n_per_target") for n in _sequence(top_n_per_target, "top_n_per_target")]
    if isinstance(min_genes, bool) or not isinstance(min_genes, (int, np.integer)) or min_genes < 0:
        raise InputError(f"min_genes must be an integer >= 0, got {min_genes!r}")

    column = {g: j for j, g in enumerate(gene_names)}
    tf_cols = torch.tensor([column.get(t, -1) for t in tf_names], dtype=torch.long, device=dev)
    w = torch.where(w > 0, w, torch.zeros((), dtype=w.dtype, device=dev))

    if expression is None:
        signs = [(w, ())]
    else:
        if isinstance(rho_threshold, bool) or not isinstance(rho_threshold, (int, float)) or not rho_threshold > 0:
            raise InputError(f"rho_threshold must be a number > 0, got {rho_threshold!r}")
        linked = (w > 0).any(dim=1).cpu().numpy()
        missing = [t for t, has, col in zip(tf_names, linked, tf_cols.tolist()) if has and col < 0]
        if missing:
            raise InputError(
                f"{len(missing)} TF(s) with links are not among gene_names, so their expression "
                f"is unknown and no correlation can be computed: {missing[:10]}; add their "
                "expression or build modules without `expression`"
            )
        rho = _tf_gene_correlation(expression, tf_cols, gene_names, dev)
        zero = torch.zeros((), dtype=w.dtype, device=dev)
        signs = [(torch.where(rho > rho_threshold, w, zero), (ACTIVATING,))]
        if not keep_only_activating:
            signs.append((torch.where(rho < -rho_threshold, w, zero), (REPRESSING,)))

    # pySCENIC's percentile thresholds come from the whole table, before any sign split.
    cuts = [(q, positive_weight_percentile(w, q)) for q in percentiles]
    tf_order = sorted(range(len(tf_names)), key=lambda i: tf_names[i])  # pandas groupby order
    builder = _ModuleBuilder(tf_names, gene_names, tf_cols, tf_order, include_tf, int(min_genes))
    modules: list[Module] = []
    for signed, sign in signs:
        for q, cut in cuts:
            if cut is not None:
                selected = select_threshold_targets(signed, threshold=cut, include_tf=False, device=dev)
                modules += builder(selected, (f"weight>{q / 100 * 100}%",) + sign)  # pySCENIC's label
        for n in top_targets:
            modules += builder(select_topk_targets(signed, n, include_tf=False, device=dev), (f"top{n}",) + sign)
        for n in top_per_target:
            selected = select_top_n_per_target(signed, n, include_tf=False, device=dev)
            modules += builder(selected, (f"top{n}perTarget",) + sign)
    logger.info("built %d modules from %d TFs", len(modules), len(tf_names))
    return modules


class _ModuleBuilder:
    """Turns a selected TF x gene matrix into Module objects (TF added, min_genes applied)."""

    def __init__(self, tf_names, gene_names, tf_cols, tf_order, include_tf, min_genes):
        self.tf_names, self.gene_names = tf_names, gene_names
        self.tf_cols = tf_cols.cpu().numpy()
        self.tf_order, self.include_tf, self.min_genes = tf_order, include_tf, min_genes

    def __call__(self, selected: torch.Tensor, context: tuple[str, ...]) -> list[Module]:
        rows, cols = (selected > 0).nonzero(as_tuple=True)
        values = selected[rows, cols].cpu().numpy()
        rows, cols = rows.cpu().numpy(), cols.cpu().numpy()
        bounds = np.searchsorted(rows, np.arange(selected.shape[0] + 1))  # nonzero() is row-major
        n_genes = len(self.gene_names)
        modules = []
        for i in self.tf_order:
            lo, hi = bounds[i], bounds[i + 1]
            if lo == hi:
                continue  # no targets: no module, and no TF added (pySCENIC)
            genes, weights = cols[lo:hi], values[lo:hi].astype(np.float64)
            if self.include_tf:
                tf_col = self.tf_cols[i]
                own = genes == tf_col if tf_col >= 0 else np.zeros(genes.size, dtype=bool)
                genes = np.append(genes[~own], tf_col if tf_col >= 0 else n_genes)
                weights = np.append(weights[~own], 1.0)
            if genes.size < self.min_genes:
                continue
            order = np.lexsort((genes, -weights))
            names = tuple(self.gene_names[j] if j < n_genes else self.tf_names[i] for j in genes[order])
            modules.append(Module(self.tf_names[i], context, names, tuple(weights[order].tolist())))
        return modules


# --------------------------------------------------------------------------- helpers


def _largest_mask(w: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """The k largest positive entries along ``dim``; ties at the cut go to the lower index."""
    size = w.shape[dim]
    k = min(int(k), size)
    if k == 0 or w.numel() == 0:
        return torch.zeros(w.shape, dtype=torch.bool, device=w.device)
    v = torch.topk(w, k, dim=dim).values.amin(dim=dim, keepdim=True)  # k-th largest
    positive = w > 0
    above = positive & (w > v)
    at = positive & (w == v)
    room = k - above.sum(dim=dim, keepdim=True)
    return above | (at & (at.cumsum(dim=dim) <= room))


def _curves(w: torch.Tensor, per_tf: bool, copies: int = 1):
    """The weights to cut, as float64 row blocks: the TF rows (``per_tf``), or one row of all
    positive weights. A zero column is appended: never a positive weight, and no reduction
    runs over an empty row."""
    if not per_tf:
        yield torch.nn.functional.pad(w[w > 0].double()[None], (0, 1))
        return
    rows = max(1, _BLOCK_VALUES // max(1, copies * (w.shape[1] + 1)))
    for start in range(0, w.shape[0], rows):
        yield torch.nn.functional.pad(w[start : start + rows].double(), (0, 1))


def _keep_at_or_above(w: torch.Tensor, cut: torch.Tensor, include_tf: bool, tf_indices) -> torch.Tensor:
    """Positive weights >= their row's cut (one cut for all rows, or one per row)."""
    keep = (w > 0) & (w.double() >= cut[:, None])
    out = torch.where(keep, w, torch.zeros((), dtype=w.dtype, device=w.device))
    return _maybe_add_tf(out, include_tf, tf_indices)


def _smallest_positive(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per row, the smallest entry where ``m`` (0.0 for a row without any): a cut keeping all."""
    low = torch.where(m, x, torch.full_like(x, math.inf)).amin(dim=1)
    return torch.where(torch.isinf(low), torch.zeros_like(low), low)


def _mixture_cut(x: torch.Tensor, k: int, method: str, max_iter: int, tol: float):
    """Row-wise k-Gaussian EM on positive entries (float64); see select_mixture_model_targets.

    Returns the cut (rows), the means, stds and mixing weights (3 x rows x k, by increasing
    mean), converged and fitted (rows, bool)."""
    m = x > 0
    n = m.sum(dim=1, keepdim=True).double()
    span = (torch.where(m, x, -math.inf).amax(dim=1, keepdim=True) - _smallest_positive(x, m)[:, None])
    # start groups: cut at the mean, the part above it at its mean, and so on
    group = torch.zeros(x.shape, dtype=torch.long, device=x.device)
    above = m.clone()
    for _ in range(k - 1):
        mean = torch.where(above, x, 0.0).sum(dim=1, keepdim=True) / above.sum(dim=1, keepdim=True).clamp(min=1)
        above &= x > mean
        group += above
    resp = torch.nn.functional.one_hot(group, k).permute(0, 2, 1).double() * m[:, None]
    fit = (n[:, 0] > k) & (span[:, 0] > 0) & (resp.sum(dim=2) > 0).all(dim=1)
    params = torch.zeros(3, x.shape[0], k, dtype=x.dtype, device=x.device)
    converged = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    cut = _smallest_positive(x, m)
    rows = fit.nonzero(as_tuple=True)[0]
    if rows.numel():
        x, m, n, span, resp = x[rows], m[rows], n[rows], span[rows], resp[rows]
        mean = torch.where(m, x, 0.0).sum(dim=1, keepdim=True) / n
        floor = 1e-6 * (torch.where(m, x - mean, 0.0) ** 2).sum(dim=1, keepdim=True) / n
        fitted = _m_step(x, resp, n, floor)
        scale = torch.stack([span, span, torch.ones_like(span)])  # means and stds relative to the range
        active = torch.ones(rows.numel(), dtype=torch.bool, device=x.device)
        for _ in range(max_iter):
            new = _m_step(x, _e_step(x, fitted) * m[:, None], n, floor)
            change = ((new - fitted).abs() / scale).amax(dim=(0, 2))
            fitted = torch.where(active[None, :, None], new, fitted)
            active &= change > tol
            if not bool(active.any()):
                break
        fitted = fitted.gather(2, fitted[0].argsort(dim=1).expand(3, -1, -1))  # components by mean
        params[:, rows], converged[rows] = fitted, ~active
        cut[rows] = _mixture_threshold(x, m, fitted, method)
    return cut, params, converged, fit


def _m_step(x, resp, n, floor):
    """Means, stds (variance floored) and mixing weights (3 x rows x k) from responsibilities
    (rows x k x entries, zero off the positive entries)."""
    total = resp.sum(dim=2)
    safe = total.clamp(min=1e-300)
    mu = (resp * x[:, None]).sum(dim=2) / safe
    var = (resp * (x[:, None] - mu[:, :, None]) ** 2).sum(dim=2) / safe
    return torch.stack([mu, torch.maximum(var, floor).sqrt(), total / n])


def _log_densities(x, params):
    """log(pi_j N(x; mu_j, sd_j)) up to a shared constant, rows x k x entries."""
    mu, sd, pi = (p[:, :, None] for p in params)
    return torch.log(pi.clamp(min=1e-300)) - torch.log(sd) - 0.5 * ((x[:, None] - mu) / sd) ** 2


def _e_step(x, params):
    return torch.softmax(_log_densities(x, params), dim=1)


def _mixture_threshold(x, m, params, method: str) -> torch.Tensor:
    """The cut of each row from its fitted components (noise: first, signal: last)."""
    mu, sd = params[0], params[1]
    if method == "noise_quantile":
        return mu[:, 0] + 2.0 * sd[:, 0]
    if method == "posterior":
        claimed = m & (x > mu[:, :1]) & (_e_step(x, params)[:, -1] > 0.5)
        cut = torch.where(claimed, x, math.inf).amin(dim=1)
        return torch.where(torch.isinf(cut), mu[:, -1], cut)
    ends = params[:, :, [0, -1]]  # noise and signal only

    def signal_minus_noise(t):  # log pi_s N_s(t) - log pi_n N_n(t)
        logs = _log_densities(t[:, None], ends)[:, :, 0]
        return logs[:, 1] - logs[:, 0]

    low, high = mu[:, 0].clone(), mu[:, -1].clone()
    for _ in range(100):  # bisection; one crossing when the sign changes between the means
        mid = 0.5 * (low + high)
        signal = signal_minus_noise(mid) >= 0
        high, low = torch.where(signal, mid, high), torch.where(signal, low, mid)
    cut = torch.where(signal_minus_noise(mu[:, -1]) <= 0, mu[:, -1], high)
    return torch.where(signal_minus_noise(mu[:, 0]) >= 0, mu[:, 0], cut)


def _knee_cut(w: torch.Tensor, sensitivity: float):
    """Row-wise knee of the descending positive weights (float64); see select_knee_targets.
    Returns the knee's weight and its position (-1 for a row without positive weights)."""
    pos = w > 0
    n = pos.sum(dim=1, keepdim=True)
    ordered = torch.sort(torch.where(pos, w, torch.zeros_like(w)), dim=1, descending=True).values
    first = ordered[:, :1]
    last = ordered.gather(1, (n - 1).clamp(min=0))
    i = torch.arange(w.shape[1], device=w.device, dtype=w.dtype).expand_as(w)
    x = i / (n - 1).clamp(min=1)
    y = (ordered - last) / (first - last).clamp(min=torch.finfo(w.dtype).tiny)
    outside = torch.full_like(w, -math.inf)
    below_chord = torch.where(i < n, 1.0 - x - y, outside).amax(dim=1, keepdim=True)
    knee = torch.where(i < n, sensitivity * (1.0 - x) - y, outside).argmax(dim=1, keepdim=True)  # first maximum
    no_knee = (n < 3) | (first == last) | (below_chord <= _KNEE_TOLERANCE)
    knee = torch.where(no_knee, n - 1, knee)
    return ordered.gather(1, knee.clamp(min=0))[:, 0], knee[:, 0]


def _maybe_add_tf(out: torch.Tensor, include_tf: bool, tf_indices) -> torch.Tensor:
    if not include_tf or tf_indices is None:
        return out
    cols = _index_vector(tf_indices, "tf_indices", out.device)
    n_tfs, n_genes = out.shape
    if cols.numel() != n_tfs:
        raise InputError(f"tf_indices has {cols.numel()} entries but adj has {n_tfs} TF rows; give one per row")
    if cols.numel() and int(cols.max()) >= n_genes:
        raise InputError(
            f"tf_indices has column {int(cols.max())} but adj has {n_genes} gene columns; "
            "use a negative index for a TF that is not a gene column"
        )
    rows = ((out > 0).any(dim=1) & (cols >= 0)).nonzero(as_tuple=True)[0]
    out[rows, cols[rows]] = 1.0
    return out


def _index_vector(values, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        t = values.detach()
    else:
        arr = np.asarray(values)
        if arr.size and arr.dtype.kind not in "iu":
            raise InputError(f"{name} must hold integers, got dtype {arr.dtype}")
        t = torch.from_numpy(arr.astype(np.int64).reshape(-1))
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InputError(f"{name} must hold integers, got dtype {t.dtype}")
    if t.dim() > 1:
        raise InputError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t.reshape(-1).to(device=device, dtype=torch.long)


def _weights(adj, device: torch.device, name: str = "adj") -> torch.Tensor:
    """A validated 2-D float tensor on ``device`` (float64 kept, other types as float32)."""
    if isinstance(adj, torch.Tensor):
        t = adj.detach()
    elif sp.issparse(adj):
        t = torch.from_numpy(np.asarray(adj.toarray()))
    else:
        arr = np.asarray(adj)
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise InputError(f"{name} must hold real numbers, got dtype {arr.dtype}")
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if t.dim() != 2:
        raise InputError(f"{name} must be 2-D (TFs x genes), got shape {tuple(t.shape)}")
    if t.is_complex():
        raise InputError(f"{name} must hold real numbers, got dtype {t.dtype}")
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    t = t.to(device=device, dtype=dtype)
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        r, c = (int(v) for v in bad.nonzero()[0])
        raise InputError(
            f"{name} has {int(bad.sum())} NaN or infinite value(s), first at row {r}, column {c}; "
            "replace them (0 means no link)"
        )
    return t


def _names(names, what: str) -> list[str]:
    if isinstance(names, str):
        raise InputError(f"{what} must be a sequence of names, not one string")
    names = [str(n) for n in names]
    seen, dups = set(), []
    for n in names:
        if n in seen and n not in dups:
            dups.append(n)
        seen.add(n)
    if dups:
        raise InputError(f"{what} has {len(dups)} duplicate name(s): {dups[:10]}; names must be unique")
    return names


def _sequence(values, name: str) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        if isinstance(values, (int, float, np.integer, np.floating)) and not isinstance(values, bool):
            return [values]
        raise InputError(f"{name} must be a sequence of numbers (e.g. (75, 90)), got {values!r}")
    return list(values)


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_flag(value, name: str) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be True or False, got {value!r}")


def _check_percentile(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name} must hold numbers between 0 and 100, got {value!r}")
    if not 0 <= float(value) <= 100:
        raise InputError(f"{name} must be between 0 and 100 (a percentile, 75 not 0.75), got {value!r}")
    return float(value)


def _check_fraction(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not 0 <= float(value) <= 1:
        raise InputError(f"{name} must be a number between 0 and 1, got {value!r}")


def _tf_gene_correlation(expression, tf_cols: torch.Tensor, gene_names: list[str], device: torch.device) -> torch.Tensor:
    """Pearson correlation of each TF's expression with every gene (float64, TFs x genes).

    Two passes over row blocks (means, then centred cross-products), so the cells x genes
    matrix is never centred or copied whole. A TF that is not a gene column gets NaN; a
    constant gene gets NaN (no correlation), as ``numpy.corrcoef`` does.
    """
    n_genes = len(gene_names)
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(expression, pd.DataFrame):
        columns = [str(c) for c in expression.columns]
        if columns != gene_names:
            raise InputError(
                "expression's columns are not gene_names in the same order; reorder with "
                "expression[gene_names]"
            )
        expression = expression.to_numpy()
    if isinstance(expression, torch.Tensor):
        kind = "torch"
    elif sp.issparse(expression):
        kind, expression = "sparse", expression.tocsr()
    else:
        kind, expression = "numpy", np.asarray(expression)
        if expression.dtype == object or expression.dtype.kind not in "biuf":
            raise InputError(f"expression must hold real numbers, got dtype {expression.dtype}")
    if len(expression.shape) != 2 or expression.shape[1] != n_genes:
        raise InputError(
            f"expression has shape {tuple(expression.shape)}; it must be cells x genes with "
            f"{n_genes} columns in gene_names order"
        )
    n_cells = expression.shape[0]
    if n_cells < 2:
        raise InputError(f"expression has {n_cells} cell(s); a correlation needs at least 2")
    step = max(1, _BLOCK_VALUES // max(1, n_genes))

    def blocks():
        for start in range(0, n_cells, step):
            block = expression[start : start + step]
            if kind == "sparse":
                block = block.toarray()
            if kind != "torch":
                block = torch.from_numpy(np.asarray(block))
            block = block.to(device=device, dtype=torch.float64)
            if not bool(torch.isfinite(block).all()):
                raise InputError("expression contains NaN or infinite values; remove or impute them first")
            yield block

    total = torch.zeros(n_genes, dtype=torch.float64, device=device)
    for block in blocks():
        total += block.sum(dim=0)
    mean = total / n_cells
    present = tf_cols >= 0
    cols = tf_cols[present]
    cross = torch.zeros(cols.numel(), n_genes, dtype=torch.float64, device=device)
    squares = torch.zeros(n_genes, dtype=torch.float64, device=device)
    for block in blocks():
        centred = block - mean
        cross += centred[:, cols].T @ centred
        squares += (centred * centred).sum(dim=0)
    sd = squares.sqrt()
    rho = torch.full((tf_cols.numel(), n_genes), float("nan"), dtype=torch.float64, device=device)
    rho[present] = cross / sd[cols][:, None] / sd[None, :]
    return rho
