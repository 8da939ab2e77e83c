"""cisTarget pruning: which motifs are enriched in a co-expression module, and which of the
module's genes they support (the leading edge). Numerically pySCENIC 0.12 / ctxcore 0.2.

For one module G (weights w, all 1 for pySCENIC's default unweighted recovery) and one
ranking database (motifs x genes ranks R, N genes), with c = round(auc_threshold * N) - 1:

    AUC_m = sum over g in G with R_mg < c of w_g (c - R_mg) / ((c + 1) sum w)
    NES_m = (AUC_m - mean AUC) / std AUC          (over all motifs, ddof=0)
    rcc_m[r] = sum of w_g over g with R_mg <= r,   r < rank_threshold
    rank_at_max_m = first argmax_r (rcc_m[r] - mean_m' rcc_m'[r] - 2 std_m' rcc_m'[r])

How this is made fast without changing a number:

* AUC identity: AUC numerators are W @ S.T with S[m, g] = max(0, c - R_mg). S holds
  exactly c non-zeros per motif (ranks are permutations), so it is built once per database
  and the AUCs of a whole batch of modules are one sparse product (``_DatabaseKernel``).
* Recovery statistics: the mean and std over motifs of rcc[r] come from the increments of
  rcc and rcc**2 at each motif's sorted module ranks (rcc**2 grows by w (2 W - w) when a
  gene of weight w brings the cumulative weight to W), accumulated by rank: motifs x
  rank_threshold curves are never built. All of it in float64.
* Only the curves of motifs that are enriched (and annotated) are materialised, for
  their leading edges, computed from each motif's OWN curve (pySCENIC bug #635 fixed;
  ``pyscenic_compat_leading_edge=True`` reproduces the bug for audits).
* One module at a time (``prune_single_module``, ``CisTargetPruner.prune``): on the CPU,
  plain single-threaded numpy on the module's gene rows of the gene-major database (a
  motifs x genes tensor called again is read from a gene-major copy). Each
  motif's module ranks are sorted once; only the leading rows of that sorted block that
  reach below c feed the AUC, and those below rank_threshold the statistics.
"""

from __future__ import annotations

import logging
import threading
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ._device import resolve_device
from ._utils import numeric_columns
from .errors import InputError, MissingFileError
from .rankdb import RankingDatabase, read_ranking_database, transposed
from ._utils import refuse_non_utf8
from .regulons import MOTIF_COLUMNS, regulons_from_motifs

__all__ = [
    "CisTargetPruner",
    "GPUCisTargetPruner",
    "MultiDatabaseCisTargetPruner",
    "MotifAnnotation",
    "compute_nes",
    "compute_recovery_aucs",
    "filter_by_annotations",
    "prune_single_module",
    "rank_cutoff",
]

logger = logging.getLogger(__name__)

ANNOTATION_COLUMNS = ("#motif_id", "gene_name", "motif_similarity_qvalue", "orthologous_identity", "description")


# ----------------------------------------------------------------------------- cut-offs


def rank_cutoff(auc_threshold: float, n_genes: int, rank_threshold: int) -> int:
    """c = round(auc_threshold * n_genes) - 1, with ctxcore's checks as clear errors."""
    if isinstance(rank_threshold, bool) or not isinstance(rank_threshold, (int, np.integer)) or not 0 < rank_threshold < n_genes:
        raise InputError(f"rank_threshold must be an integer in 1..{n_genes - 1} for a database of {n_genes} genes, got {rank_threshold!r}")
    if not 0.0 < float(auc_threshold) <= 1.0:
        raise InputError(f"auc_threshold must be in (0, 1], got {auc_threshold!r}")
    n_top = int(round(float(auc_threshold) * n_genes))
    if not 0 < n_top <= rank_threshold:
        raise InputError(
            f"auc_threshold={auc_threshold} covers {n_top} of {n_genes} ranked genes, which must be "
            f"between 1 and rank_threshold={rank_threshold}: raise rank_threshold or lower auc_threshold"
        )
    return n_top - 1


# ----------------------------------------------------------------------------- kernels
#
# Two routes with the same arithmetic, so the same numbers: numpy on the CPU, torch on a
# GPU. One module is small work (module genes x motifs int16). On the CPU, torch's per-op
# dispatch and intra-op threads cost more than they save there, and on a loaded machine
# every threaded op waits for a busy core (measured 12-40x slower per module on 2 shared
# cores), so the CPU route stays in single-threaded numpy until it wraps the results.


def _module_block_np(ranks: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The module's ranks gene-major: module genes x motifs, C order. From a gene-major
    database (``RankingDatabase.rankings`` is a transposed view) that is a gather of
    contiguous rows; a motif-major matrix pays one transposing copy."""
    if ranks.strides[0] < ranks.strides[1]:
        return ranks.T[index]
    return np.ascontiguousarray(ranks[:, index].T)


def _rows_below(sorted_block: np.ndarray, limit: int) -> int:
    """How many leading rows of a block whose columns are sorted hold a value below
    ``limit``. Row minima never decrease down such a block, so a binary search finds it
    reading a handful of rows."""
    low, high = 0, sorted_block.shape[0]
    while low < high:
        middle = (low + high) // 2
        if sorted_block[middle].min() < limit:
            low = middle + 1
        else:
            high = middle
    return low


def _auc_numerators_np(block: np.ndarray, weights: np.ndarray | None, c: int) -> np.ndarray:
    """sum_g w_g max(0, c - R_mg) for every motif (block: module genes x motifs), float64.
    Unweighted stays in integers (int16 when the ranks are: c - R cannot overflow)."""
    if block.dtype != np.int16 or c > np.iinfo(np.int16).max:
        block = block.astype(np.int32)
    scores = c - block
    np.maximum(scores, 0, out=scores)
    if weights is None:
        return scores.sum(axis=0, dtype=np.int64).astype(np.float64)
    return weights @ scores.astype(np.float64)


def _nes_np(aucs: np.ndarray) -> np.ndarray:
    """(AUC - mean) / std over motifs, ddof=0, exactly pySCENIC's numpy expression."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (aucs - aucs.mean()) / aucs.std()


def _increments_np(sorted_block: np.ndarray, rank_threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Unweighted recovery statistics by rank, from a block whose columns (motifs) are
    sorted: per rank r < rank_threshold, how many motifs gain a module gene there, and the
    sum of (2k - 1) over those gains (k: the gene's place in its motif, so the row it sits
    in), int64. Only the leading rows that hold a counted rank are read."""
    top = np.ascontiguousarray(sorted_block[:_rows_below(sorted_block, rank_threshold)])
    first, second = np.zeros(rank_threshold, np.int64), np.zeros(rank_threshold, np.int64)
    _count_gains(top, rank_threshold, first, second)
    return first, second


@numba.njit(nogil=True, cache=True)
def _count_gains(top, rank_threshold, first, second):  # pragma: no cover - compiled
    """One pass over the rows (row k: every motif's k-th smallest module rank): at each
    rank below the threshold, one more gain and 2k + 1 more of rcc**2. Integers, exact
    (numpy's way, a weighted bincount after a masked gather, took 2.5x as long)."""
    for k in range(top.shape[0]):
        odd = 2 * k + 1
        for m in range(top.shape[1]):
            rank = top[k, m]
            if rank < rank_threshold:
                first[rank] += 1
                second[rank] += odd


def _unweighted_moments_np(sorted_block: np.ndarray, rank_threshold: int):
    """Mean and std (ddof=0) over motifs of the unweighted rcc[r], r < rank_threshold.

    The k-th best module gene of a motif raises rcc by 1 and rcc**2 by 2k - 1, all
    integers, so the variance numerator M*S2 - S1**2 is exact and only the final division
    and square root round.
    """
    n_motifs = sorted_block.shape[1]
    first, second = _increments_np(sorted_block, rank_threshold)
    s1, s2 = np.cumsum(first), np.cumsum(second)
    variance = (n_motifs * s2 - s1 * s1) / (n_motifs * n_motifs)
    return s1 / n_motifs, np.sqrt(variance)


def _recovery_moments_np(block: np.ndarray, weights: np.ndarray | None, rank_threshold: int):
    """Mean and std (ddof=0) over motifs of rcc[r], r < rank_threshold, float64, for a
    module (block: module genes x motifs). Weighted: a gene of weight w that brings its
    motif's cumulative weight to W raises rcc**2 by w (2 W - w), summed motif by motif."""
    if weights is None:
        return _unweighted_moments_np(np.sort(block, axis=0), rank_threshold)
    n_motifs = block.shape[1]
    module_ranks = block.T
    order = np.argsort(module_ranks, axis=1)
    ranks = np.take_along_axis(module_ranks, order, axis=1)
    counted = ranks < rank_threshold
    at = ranks[counted]
    step = weights[order]
    cumulative = step.cumsum(axis=1)
    first = np.bincount(at, weights=step[counted], minlength=rank_threshold)
    second = np.bincount(at, weights=(step * (2 * cumulative - step))[counted], minlength=rank_threshold)
    mean = first.cumsum() / n_motifs
    variance = np.maximum(second.cumsum() / n_motifs - mean**2, 0)
    return mean, np.sqrt(variance)


def _recovery_curves_np(module_ranks: np.ndarray, weights: np.ndarray, rank_threshold: int) -> np.ndarray:
    """rcc[m, r] for the given motifs (rows of module_ranks: motifs x module genes),
    float64. Ranks within a motif are distinct, so each bin holds one weight and only the
    cumulative sum rounds."""
    n_motifs = module_ranks.shape[0]
    counted = module_ranks < rank_threshold
    flat = (np.arange(n_motifs)[:, None] * rank_threshold + module_ranks)[counted]
    curves = np.bincount(flat, weights=np.broadcast_to(weights, module_ranks.shape)[counted],
                         minlength=n_motifs * rank_threshold)
    return curves.reshape(n_motifs, rank_threshold).cumsum(axis=1)


def _leading_edges_np(module_ranks: np.ndarray, weights: np.ndarray, avg2std: np.ndarray, rank_threshold: int):
    """Recovery curves, rank_at_max and leading-edge masks (module genes with rank <=
    rank_at_max) of the given motifs (rows of module_ranks: motifs x module genes)."""
    curves = _recovery_curves_np(module_ranks, weights, rank_threshold)
    rank_at_max = np.argmax(curves - avg2std, axis=1)  # the first maximum
    return curves, rank_at_max, module_ranks <= rank_at_max[:, None]


def _prune_np(ranks: np.ndarray, index: np.ndarray, weights: np.ndarray | None, c: int, rank_threshold: int,
              nes_threshold: float) -> dict:
    """``prune_single_module`` on the CPU, numpy arrays in and out.

    Unweighted, each motif's module ranks are sorted first: the AUC then reads only the
    leading rows that reach below c, and the recovery statistics those below
    rank_threshold. Motifs are enriched in almost every module of a real database, so the
    sort is rarely wasted.
    """
    block = _module_block_np(ranks, index)
    if weights is None:
        recovery = np.ones(len(index))
        ordered = np.sort(block, axis=0)
        numerators = _auc_numerators_np(ordered[:_rows_below(ordered, c)], None, c)
        aucs = numerators / ((c + 1) * len(index))
    else:
        recovery = weights
        aucs = _auc_numerators_np(block, weights, c) / ((c + 1) * weights.sum())
    nes = _nes_np(aucs)
    enriched = nes >= nes_threshold
    if not enriched.any():  # no leading edge to find: skip the statistics
        avg2std = np.zeros(rank_threshold)
    elif weights is None:
        mean, std = _unweighted_moments_np(ordered, rank_threshold)
        avg2std = mean + 2.0 * std
    else:
        mean, std = _recovery_moments_np(block, weights, rank_threshold)
        avg2std = mean + 2.0 * std
    curves, rank_at_max, members = _leading_edges_np(block[:, enriched].T, recovery, avg2std, rank_threshold)
    return {"enriched_mask": enriched, "nes": nes, "aucs": aucs, "rccs": curves,
            "leading_edge_masks": members, "rank_at_max": rank_at_max}


# The torch route (a GPU): the same steps on tensors, on any device.


def _auc_numerators(module_ranks: torch.Tensor, weights: torch.Tensor | None, c: int) -> torch.Tensor:
    scores = (c - module_ranks.to(torch.int32)).clamp_(min=0)
    if weights is None:
        return scores.sum(dim=1).to(torch.float64)
    return scores.to(torch.float64) @ weights


def _unweighted_increments(ranks: torch.Tensor, rank_threshold: int, use_numpy: bool | None = None):
    """``_increments_np`` for a tensor of sorted rows (int64 tensors); ``use_numpy``
    defaults to numpy for CPU tensors."""
    if use_numpy is None:
        use_numpy = ranks.device.type == "cpu"
    if use_numpy:
        first, second = _increments_np(ranks.cpu().numpy().T, rank_threshold)
        return torch.from_numpy(first).to(ranks.device), torch.from_numpy(second).to(ranks.device)
    n_motifs, n_genes = ranks.shape
    counted = ranks < rank_threshold
    at = ranks[counted].long()
    odd = torch.arange(1, 2 * n_genes, 2, device=ranks.device).expand(n_motifs, n_genes)
    first = torch.bincount(at, minlength=rank_threshold)
    second = torch.bincount(at, weights=odd[counted].to(torch.float64), minlength=rank_threshold)
    return first, second.round().to(torch.int64)


def _recovery_moments(module_ranks: torch.Tensor, weights: torch.Tensor | None, rank_threshold: int):
    n_motifs = module_ranks.shape[0]
    if weights is None:
        first, second = _unweighted_increments(torch.sort(module_ranks, dim=1).values, rank_threshold)
        s1, s2 = first.cumsum(0), second.cumsum(0)
        variance = (n_motifs * s2 - s1 * s1).to(torch.float64) / (n_motifs * n_motifs)
        return s1.to(torch.float64) / n_motifs, variance.sqrt_()
    ranks, order = torch.sort(module_ranks, dim=1)
    counted = ranks < rank_threshold
    at = ranks[counted].long()
    step = weights[order]
    cumulative = step.cumsum(dim=1)
    first = torch.bincount(at, weights=step[counted], minlength=rank_threshold)
    second = torch.bincount(at, weights=(step * (2 * cumulative - step))[counted], minlength=rank_threshold)
    mean = first.cumsum(0) / n_motifs
    variance = (second.cumsum(0) / n_motifs - mean**2).clamp_(min=0)
    return mean, variance.sqrt_()


def _recovery_curves(module_ranks: torch.Tensor, weights: torch.Tensor, rank_threshold: int) -> torch.Tensor:
    n_motifs = module_ranks.shape[0]
    counted = module_ranks < rank_threshold
    rows = torch.arange(n_motifs, device=module_ranks.device)[:, None].expand_as(module_ranks)[counted]
    flat = rows * rank_threshold + module_ranks[counted].long()
    curves = torch.zeros(n_motifs * rank_threshold, dtype=torch.float64, device=module_ranks.device)
    curves.index_add_(0, flat, weights.expand_as(module_ranks)[counted])
    return curves.view(n_motifs, rank_threshold).cumsum_(1)


def _leading_edges(module_ranks: torch.Tensor, weights: torch.Tensor, avg2std: torch.Tensor, rank_threshold: int):
    curves = _recovery_curves(module_ranks, weights, rank_threshold)
    rank_at_max = torch.argmax(curves - avg2std, dim=1)  # the first maximum, as numpy
    return curves, rank_at_max, module_ranks <= rank_at_max[:, None]


def _prune_torch(ranks: torch.Tensor, index: torch.Tensor, weights: torch.Tensor | None, c: int,
                 rank_threshold: int, nes_threshold: float) -> dict:
    """``_prune_np`` on tensors (the GPU route; it runs on CPU tensors too, for tests)."""
    module_ranks = ranks[:, index]
    recovery = torch.ones(index.numel(), dtype=torch.float64, device=ranks.device) if weights is None else weights
    aucs = _auc_numerators(module_ranks, weights, c) / ((c + 1) * recovery.sum())
    nes = torch.from_numpy(_nes_np(aucs.cpu().numpy())).to(ranks.device)
    enriched = nes >= nes_threshold
    if bool(enriched.any()):
        mean, std = _recovery_moments(module_ranks, weights, rank_threshold)
        avg2std = mean + 2.0 * std
    else:  # no leading edge to find: skip the statistics
        avg2std = torch.zeros(rank_threshold, dtype=torch.float64, device=ranks.device)
    curves, rank_at_max, members = _leading_edges(module_ranks[enriched], recovery, avg2std, rank_threshold)
    return {"enriched_mask": enriched, "nes": nes, "aucs": aucs, "rccs": curves,
            "leading_edge_masks": members, "rank_at_max": rank_at_max}


# ----------------------------------------------------------------------------- single-module API


def compute_nes(aucs) -> torch.Tensor:
    """NES = (AUC - mean) / std over the motifs of one module, std with ddof=0 (pySCENIC).

    Computed in float64 with numpy on the 1-D vector, exactly as pySCENIC does, so NES of
    float64 AUCs are bit-identical to pySCENIC's and a motif at the threshold is enriched in
    both or in neither. The result keeps the input's floating dtype and device, as torch
    functions do (float32 AUCs give float32 NES; a list, as numpy reads it, and integers
    give float64). A database where every motif has the same AUC has no spread: NES is
    NaN, as in pySCENIC, and nothing counts as enriched.
    """
    aucs = aucs if isinstance(aucs, torch.Tensor) else torch.from_numpy(np.asarray(aucs))
    dtype = aucs.dtype if aucs.is_floating_point() else torch.float64
    nes = _nes_np(aucs.detach().to(device="cpu", dtype=torch.float64).numpy())
    return torch.from_numpy(nes).to(device=aucs.device, dtype=dtype)


def compute_recovery_aucs(rankings, module_gene_indices, rank_threshold: int, auc_threshold: float, weights=None):
    """Recovery curves (motifs x rank_threshold) and AUCs of one module, as ctxcore's ``recovery``.

    This materialises every curve, which is what pySCENIC does per module; the pruner
    avoids it. Returns float64 tensors. A motifs x genes tensor called again is read from a
    gene-major copy, as in ``prune_single_module``.
    """
    ranks, index, w = _module_inputs(rankings, module_gene_indices, weights)
    c = rank_cutoff(auc_threshold, ranks.shape[1], rank_threshold)
    if isinstance(ranks, np.ndarray):
        block = _module_block_np(ranks, index)
        recovery = np.ones(len(index)) if w is None else w
        aucs = _auc_numerators_np(block, w, c) / ((c + 1) * recovery.sum())
        return torch.from_numpy(_recovery_curves_np(block.T, recovery, rank_threshold)), torch.from_numpy(aucs)
    module_ranks = ranks[:, torch.from_numpy(index).to(ranks.device)]
    w = None if w is None else torch.from_numpy(w).to(ranks.device)
    recovery = torch.ones(len(index), dtype=torch.float64, device=ranks.device) if w is None else w
    aucs = _auc_numerators(module_ranks, w, c) / ((c + 1) * recovery.sum())
    return _recovery_curves(module_ranks, recovery, rank_threshold), aucs


def prune_single_module(rankings, module_gene_indices, rank_threshold: int = 5000, auc_threshold: float = 0.05,
                        nes_threshold: float = 3.0, weights=None) -> dict:
    """Enriched motifs of one module and their leading edges (no annotation filter).

    ``rankings``: a ``RankingDatabase`` or a motifs x genes integer matrix (numpy, or a
    torch tensor: a GPU tensor runs on its GPU). ``weights`` gives weighted recovery;
    ``None`` is pySCENIC's default unweighted recovery.

    Returns a dict of tensors: ``enriched_mask`` (motifs), ``nes``, ``aucs`` (motifs),
    ``rccs`` (enriched motifs x rank_threshold: only those are built),
    ``leading_edge_masks`` (enriched motifs x module genes), ``rank_at_max`` (enriched).

    Called in a loop on the same motifs x genes CPU tensor, the second call makes one
    gene-major copy of it (the database's size again, kept until the tensor goes) and later
    calls read their genes' rows from it, which makes a call several times faster. The copy
    follows the tensor as autograd does, by its version counter: in-place torch operations
    are seen, writes torch does not count (through a numpy array or another tensor sharing
    its memory, or ``.data``) are not; pass a new tensor after such a write. A numpy matrix
    is read as it is every call; a ``RankingDatabase`` is gene-major already.
    """
    ranks, index, w = _module_inputs(rankings, module_gene_indices, weights)
    c = rank_cutoff(auc_threshold, ranks.shape[1], rank_threshold)
    if isinstance(ranks, np.ndarray):
        result = _prune_np(ranks, index, w, c, rank_threshold, nes_threshold)
        return {key: torch.from_numpy(value) for key, value in result.items()}
    return _prune_torch(ranks, torch.from_numpy(index).to(ranks.device),
                        None if w is None else torch.from_numpy(w).to(ranks.device), c, rank_threshold, nes_threshold)


class _GeneMajorCopy:
    """A gene-major copy of the last motifs x genes CPU tensor the single-module functions
    read twice in a row.

    A module's columns of a motif-major matrix are one scattered read per motif: on 1,500 x
    12,000 int16, 0.8 ms a module against 0.07 ms for the same genes' rows of a gene-major
    copy, which takes 13 ms to make (measured here). So the first call on a tensor reads it
    as it is, the second makes the copy, and later calls read the copy while the tensor is
    the same object over the same memory (pointer, shape, strides, dtype) with the same
    version counter, which every in-place torch op bumps (autograd's own test for a changed
    tensor), and a fixed sample of its entries still matches. One copy is kept; it is
    dropped with its tensor. Inference-mode tensors, which keep no version, are never copied.
    """

    _PROBES = 64

    def __init__(self):
        self._lock = threading.Lock()
        self._entry = None  # (weakref to the tensor, its layout and version, copy or None, probe positions)

    def ranks(self, tensor: torch.Tensor) -> np.ndarray:
        """Motifs x genes numpy ranks of a CPU tensor, a view of the copy where there is one."""
        ranks = tensor.detach().numpy()
        if (ranks.ndim != 2 or ranks.dtype.kind not in "iu" or ranks.size == 0 or tensor.is_inference()
                or ranks.strides[0] <= ranks.strides[1]):
            return ranks  # gene-major already, no version to follow, or refused by the caller
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor._version)
        with self._lock:
            entry = self._entry
            if entry is None or entry[0]() is not tensor or entry[1] != key:
                rows = np.linspace(0, ranks.shape[0] - 1, self._PROBES).astype(np.int64)
                columns = np.random.default_rng(ranks.shape[1]).integers(0, ranks.shape[1], self._PROBES)
                self._entry = (weakref.ref(tensor, self._forget), key, None, (rows, columns))
                return ranks
            reference, _, copy, (rows, columns) = entry
            if copy is None:
                copy = transposed(ranks)
                self._entry = (reference, key, copy, (rows, columns))
            elif not np.array_equal(ranks[rows, columns], copy[columns, rows]):
                self._entry = None
                return ranks
            return copy.T

    def _forget(self, reference) -> None:
        # No lock: the collector may call this inside ``ranks``; one assignment under the GIL.
        entry = self._entry
        if entry is not None and entry[0] is reference:
            self._entry = None


_gene_major_copy = _GeneMajorCopy()


def _module_inputs(rankings, module_gene_indices, weights):
    """Checked inputs of the single-module functions: the motifs x genes ranks (numpy, or
    the tensor itself when it lives on a GPU), the module's gene index (int64) and its
    weights (float64, None when unweighted)."""
    if isinstance(rankings, RankingDatabase):
        ranks = rankings.rankings
    elif isinstance(rankings, torch.Tensor):
        ranks = rankings.detach() if rankings.device.type != "cpu" else _gene_major_copy.ranks(rankings)
    else:
        ranks = np.asarray(rankings)
    if isinstance(ranks, torch.Tensor):
        integer = not (ranks.dtype.is_floating_point or ranks.dtype.is_complex or ranks.dtype == torch.bool)
    else:
        integer = ranks.dtype.kind in "iu"
    if ranks.ndim != 2 or not integer:
        raise InputError(f"rankings must be an integer motifs x genes matrix, got {tuple(ranks.shape)} {ranks.dtype}")
    n_genes = ranks.shape[1]
    index = module_gene_indices.detach().cpu().numpy() if isinstance(module_gene_indices, torch.Tensor) \
        else np.asarray(module_gene_indices)
    index = index.reshape(-1)
    if index.size == 0:
        raise InputError("the module has no genes")
    if index.dtype.kind not in "iu":
        raise InputError(f"module gene indices must be integers, got dtype {index.dtype}")
    index = index.astype(np.int64, copy=False)
    if index.min() < 0 or index.max() >= n_genes:
        raise InputError(f"module gene indices must lie in 0..{n_genes - 1}")
    if weights is None:
        return ranks, index, None
    w = weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else weights
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    if w.shape != index.shape:
        raise InputError(f"{w.size} weights for {index.size} module genes")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise InputError("module weights must be finite, non-negative and not all zero")
    return ranks, index, w


# ----------------------------------------------------------------------------- annotations


def _column_names(column_names, n_columns: int, path: Path, what: str) -> list[str]:
    """``column_names`` checked against the file: one distinct name per column."""
    if not isinstance(column_names, Sequence) or isinstance(column_names, str) or not all(
            isinstance(c, str) for c in column_names):
        raise InputError(f"column_names must be a sequence of column names, got {column_names!r}")
    names = list(column_names)
    if len(names) != n_columns or len(set(names)) != len(names):
        raise InputError(f"column_names must be {n_columns} distinct names, one per column of {what} "
                         f"{str(path)!r}; got {names}")
    return names


@dataclass
class MotifAnnotation:
    """Motif-to-TF annotations (a motif2tf ``.tbl`` snapshot), filtered as pySCENIC does.

    ``table`` is indexed by (TF, MotifID) with columns MotifSimilarityQvalue,
    OrthologousIdentity and Annotation; one row per pair: where the snapshot has several,
    the lowest q-value wins, then the highest identity, then the later line (pySCENIC's
    sort-and-keep-last).
    """

    table: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["MotifSimilarityQvalue", "OrthologousIdentity", "Annotation"],
        index=pd.MultiIndex.from_arrays([[], []], names=["TF", "MotifID"])))

    @classmethod
    def load_from_file(cls, fname, motif_similarity_fdr: float = 0.001, orthologous_identity_threshold: float = 0.0,
                       column_names: Sequence[str] | None = None) -> "MotifAnnotation":
        """Read a motif2tf TSV; keep rows with q-value <= fdr and identity >= threshold (NaN fails both).

        ``column_names``, as pySCENIC's ``load_motif_annotations``: the columns to read, by
        name, when the header has them all (e.g. ``ANNOTATION_COLUMNS`` on a 13-column v10
        table); otherwise the file's columns in order, instead of its header line (still its
        first line, and skipped), for a table whose header spells them otherwise. Either way
        the names must include #motif_id, gene_name, motif_similarity_qvalue,
        orthologous_identity and description.
        """
        path = Path(fname)
        what = "motif annotation file"
        if not path.is_file():
            raise MissingFileError(f"{what} {str(path)!r} does not exist")
        try:
            header = list(pd.read_csv(path, sep="\t", nrows=0).columns)
            by_name = column_names is not None and set(column_names) <= set(header)
            names = header if column_names is None or by_name else _column_names(column_names, len(header), path,
                                                                                  what)
            missing = [c for c in ANNOTATION_COLUMNS if c not in names]
            if missing:
                source = "column_names" if column_names is not None else f"{what} {str(path)!r}"
                raise InputError(
                    f"{source} lacks the column(s) {', '.join(missing)}; "
                    f"a motif2tf table (.tbl) has {', '.join(ANNOTATION_COLUMNS)}"
                )
            raw = pd.read_csv(path, sep="\t", header=0, names=names, usecols=list(ANNOTATION_COLUMNS),
                              dtype={"#motif_id": str, "gene_name": str, "description": str})
        except UnicodeDecodeError:
            refuse_non_utf8(path, what)
        numeric_columns(raw, ["motif_similarity_qvalue", "orthologous_identity"], path, what)
        return cls.from_frame(raw, motif_similarity_fdr, orthologous_identity_threshold)

    @classmethod
    def from_frame(cls, raw: pd.DataFrame, motif_similarity_fdr: float = 0.001,
                   orthologous_identity_threshold: float = 0.0) -> "MotifAnnotation":
        frame = raw.rename(columns={
            "#motif_id": "MotifID", "gene_name": "TF", "motif_similarity_qvalue": "MotifSimilarityQvalue",
            "orthologous_identity": "OrthologousIdentity", "description": "Annotation",
        })
        keep = (frame["MotifSimilarityQvalue"] <= motif_similarity_fdr) & (
            frame["OrthologousIdentity"] >= orthologous_identity_threshold)
        frame = frame[keep].sort_values(["MotifSimilarityQvalue", "OrthologousIdentity"],
                                        ascending=[False, True], kind="stable")
        frame = frame.drop_duplicates(["TF", "MotifID"], keep="last").set_index(["TF", "MotifID"]).sort_index()
        return cls(frame[["MotifSimilarityQvalue", "OrthologousIdentity", "Annotation"]])

    def has_annotation(self, motif_id: str, tf_name: str | None = None) -> bool:
        """Is the motif annotated (to ``tf_name``, or to any TF when None)?"""
        if tf_name is None:
            return motif_id in self._annotated_motifs()
        return (tf_name, motif_id) in self.table.index

    def _annotated_motifs(self) -> frozenset:
        """Every motif with an annotation, built once: a per-motif lookup must not scan the table."""
        motifs = self.__dict__.get("_motifs")
        if motifs is None:
            motifs = frozenset(self.table.index.get_level_values("MotifID"))
            self.__dict__["_motifs"] = motifs
        return motifs

    def get_annotation(self, motif_id: str, tf_name: str | None = None) -> dict | None:
        """The annotation row of (tf_name, motif_id) as a dict, or None if there is none.

        With ``tf_name=None``, the motif's best annotation to any TF: the lowest q-value,
        then the highest orthologous identity, then the TF first by name (the same order
        that picks one row per TF and motif).
        """
        if tf_name is not None:
            return self.table.loc[(tf_name, motif_id)].to_dict() if (tf_name, motif_id) in self.table.index else None
        rows = self.table[self.table.index.get_level_values("MotifID") == motif_id]
        if rows.empty:
            return None
        best = rows.reset_index().sort_values(["MotifSimilarityQvalue", "OrthologousIdentity", "TF"],
                                              ascending=[True, False, True], kind="stable")
        return best.iloc[0][["MotifSimilarityQvalue", "OrthologousIdentity", "Annotation"]].to_dict()

    def motifs_of(self, tf_name: str) -> pd.DataFrame:
        """The annotation rows of one TF, indexed by MotifID."""
        by_tf = self.__dict__.get("_by_tf")
        if by_tf is None:  # built once: a lookup per module must not scan the whole table
            by_tf = {tf: rows.droplevel("TF") for tf, rows in self.table.groupby(level="TF", sort=False)}
            self.__dict__["_by_tf"] = by_tf
        return by_tf.get(tf_name, self.table.iloc[:0].droplevel("TF"))


_NO_ANNOTATIONS = MotifAnnotation()  # a pruner without annotations: one empty table, not one a module


def filter_by_annotations(result: dict, motif_names: Sequence[str], motif_annotations: MotifAnnotation | None,
                          filter_for_annotation: bool = True, tf_name: str | None = None) -> dict:
    """Keep only enriched motifs annotated to ``tf_name`` (any TF when None) in a
    ``prune_single_module`` result; leading-edge arrays are cut to match. Without
    annotations (None) or with ``filter_for_annotation=False`` the result is returned as is."""
    if motif_annotations is None or not filter_for_annotation:
        return result
    enriched = torch.nonzero(result["enriched_mask"]).flatten().cpu().numpy()
    keep = np.array([motif_annotations.has_annotation(motif_names[i], tf_name) for i in enriched], dtype=bool)
    out = dict(result)
    mask = result["enriched_mask"].clone()
    mask[torch.from_numpy(enriched[~keep]).to(mask.device)] = False
    out["enriched_mask"] = mask
    keep_t = torch.from_numpy(keep).to(mask.device)
    for key in ("rccs", "leading_edge_masks", "rank_at_max"):
        out[key] = result[key][keep_t]
    return out


# ----------------------------------------------------------------------------- database kernel


class _DatabaseKernel:
    """One database on one device, with the sparse S.T (genes x motifs) for batch AUCs."""

    def __init__(self, database: RankingDatabase, device: torch.device, auc_threshold: float, rank_threshold: int):
        self.database = database
        self.device = device
        self.c = rank_cutoff(auc_threshold, database.n_genes, rank_threshold)
        self.rank_threshold = rank_threshold
        self.ranks_by_gene = torch.from_numpy(database.ranks_by_gene).to(device)
        self._scores_t = None
        self._batched = None  # leading edges in batches (default: on a GPU); tests set it on the CPU

    def scores_t(self) -> torch.Tensor:
        """S.T as CSR: row g holds c - R_mg for the motifs m where gene g ranks below c."""
        if self._scores_t is None:
            ranks = self.ranks_by_gene
            crow = [torch.zeros(1, dtype=torch.int64, device=self.device)]
            cols, values = [], []
            for start in range(0, ranks.shape[0], 2048):
                block = ranks[start : start + 2048]
                hit = block < self.c
                crow.append(hit.sum(dim=1).cumsum(0) + crow[-1][-1])
                genes, motifs = hit.nonzero(as_tuple=True)
                cols.append(motifs)
                values.append((self.c - block[genes, motifs]).to(torch.float64))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                self._scores_t = torch.sparse_csr_tensor(
                    torch.cat(crow), torch.cat(cols), torch.cat(values),
                    size=tuple(ranks.shape), check_invariants=False)
        return self._scores_t

    def aucs(self, indices: list[np.ndarray], weights: list[np.ndarray]) -> torch.Tensor:
        """AUCs of a batch of modules (modules x motifs, float64) in one sparse product. Each
        module row's genes go in ascending order (canonical CSR, which cuSPARSE assumes)."""
        orders = [np.argsort(i, kind="stable") for i in indices]
        lengths = torch.tensor([len(i) for i in indices], device=self.device)
        crow = torch.cat([torch.zeros(1, dtype=torch.int64, device=self.device), lengths.cumsum(0)])
        cols = torch.from_numpy(np.concatenate([i[o] for i, o in zip(indices, orders)])).to(self.device)
        vals = torch.from_numpy(np.concatenate([np.asarray(w, np.float64)[o] for w, o in zip(weights, orders)]))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            modules = torch.sparse_csr_tensor(crow, cols, vals.to(self.device),
                                              size=(len(indices), self.database.n_genes), check_invariants=False)
            numerators = (modules @ self.scores_t()).to_dense()
        totals = torch.tensor([float(np.sum(w)) for w in weights], dtype=torch.float64, device=self.device)
        return numerators / ((self.c + 1) * totals[:, None])

    def leading_edges(self, jobs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], weighted: bool) -> list[tuple]:
        """For each job (database gene ``index`` of a module, its recovery weights, the motifs
        whose curves are wanted): those motifs' ranks of the module genes, rank_at_max and
        leading-edge masks, as numpy. The statistics cover every motif; the curves only those
        asked for. On the CPU one module at a time with numpy, straight from the database; on a
        GPU (``batched``) many modules in one go (``_batched_leading_edges``)."""
        if not self.batched:
            out = []
            for index, recovery, motifs in jobs:
                block = self.database.ranks_by_gene[index]
                mean, std = _recovery_moments_np(block, recovery if weighted else None, self.rank_threshold)
                rows = block[:, motifs].T
                _, rank_at_max, members = _leading_edges_np(rows, recovery, mean + 2.0 * std, self.rank_threshold)
                out.append((rows, rank_at_max, members))
            return out
        return _batched_leading_edges(self.ranks_by_gene, jobs, weighted, self.rank_threshold,
                                      _batch_elements(self.device))

    @property
    def batched(self) -> bool:
        return self.device.type != "cpu" if self._batched is None else self._batched


def _batch_elements(device: torch.device) -> int:
    """(module gene, motif) pairs a batch of leading edges holds: a share of the free GPU memory
    (about 40 bytes a pair), a fixed 4 M on the CPU."""
    if device.type != "cuda":
        return 2**22
    free, _ = torch.cuda.mem_get_info(device)
    return max(2**22, int(free * 0.25) // 40)


def _batched_leading_edges(ranks_by_gene: torch.Tensor, jobs, weighted: bool, rank_threshold: int,
                           max_elements: int) -> list[tuple]:
    """``_DatabaseKernel.leading_edges`` for many modules on ``ranks_by_gene``'s device.

    Modules go in groups of at most ``max_elements`` (module gene, motif) pairs, padded to
    their longest module with rank ``rank_threshold`` (never counted, never in a leading
    edge), and pass through fixed-shape kernels only: a sort along the genes, scatter-adds
    into per-module histograms, cumulative sums, one argmax per curve (the first maximum, as
    numpy). Each group is copied back once. Unweighted, every sum is of integers and the
    result is numpy's bit for bit; weighted, the GPU's sums round in their own order.
    """
    device = ranks_by_gene.device
    n_motifs = ranks_by_gene.shape[1]
    T = rank_threshold
    out: list[tuple] = []
    for group in _job_groups(jobs, n_motifs, max_elements):
        n, L = len(group), max(len(job[0]) for job in group)
        index = np.zeros((n, L), np.int64)
        recovery = np.zeros((n, L), np.float64)
        valid = np.zeros((n, L), bool)
        for b, (genes, weights, _) in enumerate(group):
            index[b, : len(genes)], recovery[b, : len(genes)], valid[b, : len(genes)] = genes, weights, True
        index_t, recovery_t, valid_t = (torch.from_numpy(a).to(device) for a in (index, recovery, valid))
        block = ranks_by_gene[index_t].to(torch.int64)  # modules x genes x motifs
        block.masked_fill_(~valid_t[:, :, None], T)
        base = torch.arange(n, device=device)[:, None, None] * T
        if weighted:
            ranks, order = torch.sort(block, dim=1)
            step = recovery_t[:, :, None].expand_as(block).gather(1, order)
            cumulative = step.cumsum(dim=1)
            gains, squares = step, step * (2 * cumulative - step)
        else:
            ranks = torch.sort(block, dim=1).values
            gains = torch.ones((), dtype=torch.int64, device=device).expand_as(ranks)
            squares = torch.arange(1, 2 * L, 2, device=device)[None, :, None].expand_as(ranks)
        counted = ranks < T
        flat = (base + ranks.clamp(max=T - 1)).reshape(-1)
        zero = torch.zeros((), dtype=gains.dtype, device=device)
        first = torch.zeros(n * T, dtype=gains.dtype, device=device).index_add_(
            0, flat, torch.where(counted, gains, zero).reshape(-1)).view(n, T).cumsum(1)
        second = torch.zeros(n * T, dtype=squares.dtype, device=device).index_add_(
            0, flat, torch.where(counted, squares, zero).reshape(-1)).view(n, T).cumsum(1)
        if weighted:  # as _recovery_moments_np
            mean = first / n_motifs
            std = (second / n_motifs - mean**2).clamp_(min=0).sqrt_()
        else:  # as _unweighted_moments_np: integers, then one division and one square root
            mean = first.to(torch.float64) / n_motifs
            std = ((n_motifs * second - first * first).to(torch.float64) / (n_motifs * n_motifs)).sqrt_()
        avg2std = mean + 2.0 * std
        pair_module = np.concatenate([np.full(len(job[2]), b) for b, job in enumerate(group)]).astype(np.int64)
        pair_motif = np.concatenate([np.asarray(job[2], np.int64) for job in group])
        pair_module_t, pair_motif_t = torch.from_numpy(pair_module).to(device), torch.from_numpy(pair_motif).to(device)
        rows = block[pair_module_t, :, pair_motif_t]  # pairs x genes: each curve motif's ranks
        row_counted = rows < T
        curves = torch.zeros(len(pair_module) * T, dtype=torch.float64, device=device).index_add_(
            0, (torch.arange(len(pair_module), device=device)[:, None] * T + rows.clamp(max=T - 1)).reshape(-1),
            torch.where(row_counted, recovery_t[pair_module_t], 0.0).reshape(-1)).view(-1, T).cumsum_(1)
        rank_at_max = torch.argmax(curves - avg2std[pair_module_t], dim=1)
        members = rows <= rank_at_max[:, None]
        rows_np, rank_np, members_np = rows.cpu().numpy(), rank_at_max.cpu().numpy(), members.cpu().numpy()
        first_pair = 0
        for b, (genes, _, motifs) in enumerate(group):
            pairs = slice(first_pair, first_pair + len(motifs))
            k = len(genes)
            out.append((rows_np[pairs, :k], rank_np[pairs], members_np[pairs, :k]))
            first_pair += len(motifs)
    return out


def _job_groups(jobs: list, n_motifs: int, max_elements: int):
    """Consecutive jobs whose padded block (jobs x longest module x motifs) holds at most
    ``max_elements`` values; a job larger than that goes alone."""
    group, longest = [], 0
    for job in jobs:
        if group and max(longest, len(job[0])) * (len(group) + 1) * n_motifs > max_elements:
            yield group
            group, longest = [], 0
        group.append(job)
        longest = max(longest, len(job[0]))
    if group:
        yield group


# ----------------------------------------------------------------------------- pruner


def mostly_absent(n_genes: int, n_present: int) -> bool:
    """pySCENIC's 80% rule: a module is skipped in a database that lacks 20% or more of its genes."""
    return n_genes == 0 or (n_genes - n_present) / n_genes >= 0.20


def select_motif_rows(table: pd.DataFrame, merge_strategy: str) -> pd.DataFrame:
    """Apply a merge strategy to motif rows: 'union' keeps all, 'best' the top NES per (TF, motif),
    the survivors in their original order."""
    if merge_strategy == "union" or table.empty:
        return table
    best = table.sort_values("NES", ascending=False, kind="stable").drop_duplicates(["TF", "MotifID"])
    return best.sort_index()


class CisTargetPruner:
    """Prune co-expression modules into regulons with cisTarget ranking databases.

    Parameters mirror pySCENIC's ``prune2df``: ``rank_threshold`` (5000), ``auc_threshold``
    (0.05), ``nes_threshold`` (3.0). ``min_genes_per_regulon`` drops smaller regulons
    (pySCENIC applies no minimum: 0). ``merge_strategy='union'`` builds each regulon from
    every enriched motif of every database and module type (pySCENIC); ``'best'`` first
    keeps, per (TF, motif), only the row with the highest NES. ``weighted_recovery`` uses
    the module weights in recovery curves (pySCENIC's default is unweighted).
    ``pyscenic_compat_leading_edge`` reproduces pySCENIC bug #635 (leading edges taken from
    the wrong motifs' curves) for audits; never use it for analysis. ``module_batch_size``
    modules share one sparse AUC product; ``verbose`` shows a progress bar on a terminal.
    Without annotations loaded every enriched motif counts (annotation columns empty).
    ``GPUCisTargetPruner`` and ``MultiDatabaseCisTargetPruner``, upstream flashscenic's
    names, are this class: it prunes on any device, with one database or several.

    Example
    -------
    >>> pruner = CisTargetPruner(device="cpu")
    >>> pruner.load_database(["db_500bp.feather", "db_10kb.feather"])  # doctest: +SKIP
    >>> pruner.load_annotations("motifs.tbl")  # doctest: +SKIP
    >>> regulons = pruner.prune_modules(modules, tf_names, gene_names)  # doctest: +SKIP
    """

    def __init__(self, rank_threshold: int = 5000, auc_threshold: float = 0.05, nes_threshold: float = 3.0,
                 device: str | torch.device = "cuda", min_genes_per_regulon: int = 0, merge_strategy: str = "union",
                 *, weighted_recovery: bool = False, pyscenic_compat_leading_edge: bool = False,
                 module_batch_size: int = 256, verbose: bool = True):
        from .params import MERGE_STRATEGIES

        if merge_strategy not in MERGE_STRATEGIES:
            raise InputError(f"merge_strategy={merge_strategy!r} is not one of {', '.join(map(repr, MERGE_STRATEGIES))}")
        if not 0.0 < float(auc_threshold) <= 1.0:
            raise InputError(f"auc_threshold must be in (0, 1], got {auc_threshold!r}")
        if isinstance(module_batch_size, bool) or not isinstance(module_batch_size, int) or module_batch_size < 1:
            raise InputError(f"module_batch_size must be a positive integer, got {module_batch_size!r}")
        self.rank_threshold = rank_threshold
        self.auc_threshold = auc_threshold
        self.nes_threshold = nes_threshold
        self.device = resolve_device(device)
        self.min_genes_per_regulon = min_genes_per_regulon
        self.merge_strategy = merge_strategy
        self.weighted_recovery = weighted_recovery
        self.pyscenic_compat_leading_edge = pyscenic_compat_leading_edge
        self.module_batch_size = module_batch_size
        self.verbose = verbose
        self.kernels: list[_DatabaseKernel] = []
        self.motif_annotations: MotifAnnotation | None = None
        self.filter_for_annotation = True

    # -- loading ------------------------------------------------------------------------

    def load_database(self, paths, database_names=None) -> None:
        """Load one or more Feather ranking databases (replacing any loaded before)."""
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        names = [database_names] if isinstance(database_names, str) else database_names
        if names is not None and len(names) != len(paths):
            raise InputError(f"{len(names)} database names for {len(paths)} databases")
        databases = [read_ranking_database(p, None if names is None else names[i]) for i, p in enumerate(paths)]
        self._set_databases(databases)

    def load_from_tensor(self, rankings, motif_names=None, gene_names=None, *, name: str = "database") -> None:
        """Use a motifs x genes rank matrix held in memory as the (only) database."""
        self._set_databases([RankingDatabase.from_array(rankings, motif_names, gene_names, name)])

    def _set_databases(self, databases: list[RankingDatabase]) -> None:
        names = [d.name for d in databases]
        if len(set(names)) != len(names):
            raise InputError(f"database names must be distinct, got {names}")
        self.kernels = [_DatabaseKernel(d, self.device, self.auc_threshold, self.rank_threshold) for d in databases]

    def load_annotations(self, annotation_file, filter_for_annotation: bool = True,
                         motif_similarity_fdr: float = 0.001, orthologous_identity_threshold: float = 0.0) -> None:
        """Load the motif2tf table; with ``filter_for_annotation`` a motif counts for a module
        only when it is annotated to the module's own TF."""
        self.motif_annotations = MotifAnnotation.load_from_file(
            annotation_file, motif_similarity_fdr, orthologous_identity_threshold)
        self.filter_for_annotation = filter_for_annotation

    @property
    def database_names(self) -> list[str]:
        return [k.database.name for k in self.kernels]

    @property
    def _single(self) -> _DatabaseKernel:
        if len(self.kernels) != 1:
            raise InputError(f"this call needs exactly one database; {len(self.kernels)} are loaded")
        return self.kernels[0]

    @property
    def gene_names(self) -> list[str]:
        return self._single.database.gene_names.tolist()

    @property
    def motif_names(self) -> list[str]:
        return self._single.database.motif_names.tolist()

    def genes_to_indices(self, genes: Sequence[str]) -> torch.Tensor:
        """Database column of each gene the (single) database has; absent genes are skipped."""
        index, present = self._single.database.gene_indices(genes)
        return torch.from_numpy(index[present]).to(self.device)

    # -- single-database, index-based API (flashscenic 0.2 compatible) --------------------

    def prune(self, module_gene_indices, weights=None, tf_name: str | None = None) -> dict:
        """Prune one module given as database gene indices (single database); ``weights``
        given means weighted recovery, as in ``prune_single_module``."""
        kernel = self._single  # computed where the database lives: its tensor on a GPU
        result = prune_single_module(kernel.database if kernel.device.type == "cpu" else kernel.ranks_by_gene.T,
                                     module_gene_indices, self.rank_threshold, self.auc_threshold, self.nes_threshold,
                                     weights)
        if self.motif_annotations is not None and self.filter_for_annotation:
            result = filter_by_annotations(result, kernel.database.motif_names, self.motif_annotations, True, tf_name)
        return result

    def prune_batch(self, modules, weights_list=None) -> list[dict]:
        """``prune`` for each module (database gene indices)."""
        return [self.prune(m, None if weights_list is None else weights_list[i]) for i, m in enumerate(modules)]

    def get_enriched_motif_names(self, result: dict) -> list[str]:
        names = self._single.database.motif_names
        return [names[i] for i in torch.nonzero(result["enriched_mask"]).flatten().tolist()]

    def get_leading_edge_genes(self, result: dict, module_gene_indices) -> list[list[str]]:
        """Leading-edge gene names per enriched motif, in rank order."""
        names = self._single.database.gene_names
        index = np.asarray(torch.as_tensor(module_gene_indices).cpu()).reshape(-1)
        ranks = self._single.database.ranks_by_gene[index]
        enriched = torch.nonzero(result["enriched_mask"]).flatten().tolist()
        out = []
        for row, motif in enumerate(enriched):
            members = np.flatnonzero(result["leading_edge_masks"][row].cpu().numpy())
            order = np.argsort(ranks[members, motif], kind="stable")
            out.append([names[index[members[j]]] for j in order])
        return out

    # -- modules to motifs to regulons ---------------------------------------------------

    def motif_table(self, modules, tf_names: Sequence[str], gene_names: Sequence[str], weights_list=None,
                    contexts=None) -> pd.DataFrame:
        """Enriched, annotated motifs of every module in every database: pySCENIC's ``reg.csv``
        rows (flat columns, see ``flashscenic.regulons.MOTIF_COLUMNS``), in a deterministic order.

        ``modules``: per module, gene indices into ``gene_names`` or gene names; the TF is
        part of the module only if listed (pySCENIC's modules include it, weight 1.0).
        ``weights_list``: per module, the GRN weights carried by the target genes (default
        1.0). ``contexts``: per module, its context labels (e.g. ``('weight>75.0%',
        'activating')``); a module is repressing when 'repressing' is among them.
        """
        if not self.kernels:
            raise InputError("no ranking database loaded: call load_database first")
        modules = [self._module_genes(m, gene_names) for m in modules]
        if len(tf_names) != len(modules):
            raise InputError(f"{len(tf_names)} TF names for {len(modules)} modules")
        weights_list = [np.ones(len(m)) for m in modules] if weights_list is None else [
            np.asarray(w, dtype=np.float64).reshape(-1) for w in weights_list]
        if any(len(w) != len(m) for w, m in zip(weights_list, modules)):
            raise InputError("each module needs one weight per gene")
        contexts = [()] * len(modules) if contexts is None else [tuple(c) for c in contexts]
        rows = []
        for kernel in self.kernels:
            rows += self._prune_database(kernel, modules, list(tf_names), weights_list, contexts)
        table = pd.DataFrame(rows, columns=list(MOTIF_COLUMNS))
        return table.sort_values(["TF", "MotifID", "Database"], kind="stable").reset_index(drop=True)

    def prune_modules(self, modules, tf_names: Sequence[str], gene_names: Sequence[str], weights_list=None, *,
                      contexts=None) -> list[dict]:
        """Regulons from modules, by pySCENIC's rules (see ``flashscenic.regulons``).

        Each dict: name, tf, type, motif, motifs, n_genes, genes, weights (GRN weights; the
        TF 1.0), context, database, nes, auc, rank_at_max, annotation,
        motif_similarity_qvalue, orthologous_identity, score.
        """
        table = self.motif_table(modules, tf_names, gene_names, weights_list, contexts)
        return self._merge_regulons_by_tf(self._merge_regulons(table))

    def _merge_regulons(self, table: pd.DataFrame) -> pd.DataFrame:
        return select_motif_rows(table, self.merge_strategy)

    def _merge_regulons_by_tf(self, table: pd.DataFrame) -> list[dict]:
        """One regulon per (TF, type): union of targets, max weight (pySCENIC's df2regulons)."""
        if table.empty:
            return []
        regulons = regulons_from_motifs(table)
        return [r for r in regulons if r["n_genes"] >= self.min_genes_per_regulon]

    def clear_gpu_memory(self) -> None:
        """Drop the databases and cached products and return GPU memory to the driver."""
        self.kernels = []
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- internals ----------------------------------------------------------------------

    @staticmethod
    def _module_genes(module, gene_names: Sequence[str]) -> list[str]:
        values = module.detach().cpu().numpy() if isinstance(module, torch.Tensor) else np.asarray(module)
        if values.dtype.kind in "iu":
            if values.size and (values.min() < 0 or values.max() >= len(gene_names)):
                raise InputError(f"module gene indices must lie in 0..{len(gene_names) - 1}")
            return [gene_names[i] for i in values.tolist()]
        return [str(g) for g in values.tolist()]

    def _prune_database(self, kernel: _DatabaseKernel, modules, tf_names, weights_list, contexts) -> list[list]:
        database = kernel.database
        jobs = []  # (module number, database gene index, weights of those genes)
        for number, genes in enumerate(modules):
            index, present = database.gene_indices(genes)
            if mostly_absent(len(genes), int(present.sum())):
                logger.info("module %d of %s: under 80%% of its genes are in %s; skipped",
                            number, tf_names[number], database.name)
                continue
            jobs.append((number, index[present], weights_list[number][present]))
        rows = []
        starts = range(0, len(jobs), self.module_batch_size)
        bar = tqdm(starts, desc=f"pruning with {database.name}", unit="batch",
                   disable=None if self.verbose and len(starts) > 1 else True)
        for start in bar:
            batch = jobs[start : start + self.module_batch_size]
            recovery_weights = [w if self.weighted_recovery else np.ones(len(i)) for _, i, w in batch]
            aucs = kernel.aucs([i for _, i, _ in batch], recovery_weights).cpu().numpy()  # one copy a batch
            found, edge_jobs = [], []  # the modules with rows to write, and their leading-edge jobs
            for (number, index, weights), recovery, auc_row in zip(batch, recovery_weights, aucs):
                nes = _nes_np(auc_row)
                chosen = self._chosen_motifs(database, nes, tf_names[number])
                if chosen is not None:
                    enriched, annotations, positions, curve_motifs = chosen
                    found.append((number, index, weights, auc_row, nes, enriched, annotations, positions))
                    edge_jobs.append((index, recovery, curve_motifs))
            edges = kernel.leading_edges(edge_jobs, self.weighted_recovery)
            for (number, index, weights, auc_row, nes, enriched, annotations, positions), edge in zip(found, edges):
                rows += self._motif_rows(database, index, weights, auc_row, nes, enriched, annotations, positions,
                                         edge, tf_names[number], contexts[number])
        return rows

    def _chosen_motifs(self, database, nes: np.ndarray, tf: str):
        """The enriched motifs of one module that become rows: None, or (enriched motif
        numbers, their annotations, the positions that become rows, the motif whose curve
        each row takes)."""
        enriched = np.flatnonzero(nes >= self.nes_threshold)
        if enriched.size == 0:
            return None
        known = self.motif_annotations or _NO_ANNOTATIONS
        annotations = known.motifs_of(tf).reindex(database.motif_names[enriched])
        if self.filter_for_annotation and self.motif_annotations is not None:
            keep = annotations["Annotation"].notna().to_numpy()
        else:
            keep = np.ones(enriched.size, dtype=bool)
        if not keep.any():
            return None
        positions, curve_motifs = self._curve_motifs(enriched, keep, annotations)
        return enriched, annotations, positions, curve_motifs

    def _motif_rows(self, database, index, weights, aucs, nes, enriched, annotations, positions, edge, tf,
                    context) -> list[list]:
        curve_ranks, rank_at_max, members = edge
        gene_names = database.gene_names[index]
        rows = []
        full_context = frozenset((*context, database.name))
        for k, position in enumerate(positions):
            motif = enriched[position]
            inside = np.flatnonzero(members[k])
            inside = inside[np.argsort(curve_ranks[k, inside])]  # leading edge in rank order, as pySCENIC
            targets = [(gene_names[j], float(weights[j])) for j in inside]
            note = annotations.iloc[position]
            rows.append([tf, database.motif_names[motif], float(aucs[motif]), float(nes[motif]),
                         float(note["MotifSimilarityQvalue"]), float(note["OrthologousIdentity"]),
                         note["Annotation"] if isinstance(note["Annotation"], str) else np.nan,
                         full_context, targets, int(rank_at_max[k]), database.name])
        return rows

    def _curve_motifs(self, enriched: np.ndarray, keep: np.ndarray, annotations: pd.DataFrame):
        """Which enriched motifs become rows (positions in ``enriched``, in output order),
        and the motif whose recovery curve and ranks give each row its leading edge.

        Normally a motif's own. With ``pyscenic_compat_leading_edge``, pySCENIC bug #635:
        it sorts the annotated rows by (q-value desc, identity asc), then applies that
        sorted keep-mask positionally to the curves in enriched order, so the k-th row
        takes the curve of the k-th kept position of the unsorted list.
        """
        if not self.pyscenic_compat_leading_edge:
            positions = np.flatnonzero(keep)
            return positions, enriched[positions]
        order = np.lexsort((annotations["OrthologousIdentity"].to_numpy(), -annotations["MotifSimilarityQvalue"].to_numpy()))
        return order[keep[order]], enriched[np.flatnonzero(keep[order])]


GPUCisTargetPruner = CisTargetPruner  # upstream flashscenic's names for the same pruner
MultiDatabaseCisTargetPruner = CisTargetPruner
