"""AUCell: per-cell regulon activity, numerically equal to pySCENIC's ``aucell``.

For a cell, genes are ranked by descending expression (0 = highest). With K =
round(auc_threshold * n_genes) and c = K - 1, the AUC of a regulon with weights w is

    AUC = sum over regulon genes g with rank_g < c of w_g * (c - rank_g)
          / ((c + 1) * sum of w)

So AUC = S @ W.T / norm, where S[cell, gene] = max(0, c - rank) has only c non-zeros per
cell: the whole step is a top-c selection per cell with pySCENIC's exact tie order, then a
product with the regulon weight matrix. Memory is O(batch_size x n_genes); the cells x
genes ranking matrix that pySCENIC builds never exists.

Ties (``ties='pyscenic'``): pySCENIC shuffles the gene columns with
``numpy.random.RandomState(seed).permutation(n_genes)`` and ranks with
``method='first'``, so among equal values the gene that comes earlier in the shuffled
order wins. We do the same. ``ties='average'`` instead returns the expected AUC under
uniformly random tie-breaking, in closed form, without a seed (see ``_average_scores``).

On the CPU (``ties='pyscenic'``) batches spread over a pool of ``torch.get_num_threads()``
threads (numba and numpy release the GIL; coarse tasks also suffer less than torch's per-batch
OpenMP regions on a loaded machine). A row's top c is selected from keys (value code, then
permuted position) of its positive values only, or of those and the first zeros along the
permutation when it has fewer than c: a sparse row is never densified (``_rank_keys``); numpy
sorts the keys per row, and a numba kernel adds each selected gene only to the regulons that
hold it (``_score_keys``).

On a GPU (``_score_with_torch``) a batch of thousands of cells (sized from the free GPU
memory) is selected with one int64 top-k of (value bits, tie position) keys, or one stable
sort for float64 and integer input, and multiplied densely with the weights in float64: the
same AUCs to 1e-6 (float32 output), though not bit for bit (the GPU sums in its own order).
"""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numba
import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from ._device import resolve_device
from .errors import InputError

__all__ = ["get_aucell", "rank_cutoff"]

logger = logging.getLogger(__name__)

Ties = Literal["pyscenic", "average"]
_CHECK_VALUES = 2**22  # values per block when scanning input for NaN/inf (bounds memory)
_CUDA_BYTES_PER_VALUE = 64  # device bytes per cell and gene of a batch: rows, keys, top-k, S (an estimate with room)
_CUDA_MEMORY_SHARE = 0.5  # of the free GPU memory, for one batch
_CUDA_ROWS_MAX = 8192  # cells per GPU batch at most: larger ones gain nothing
_RESULT_BYTES = 2**28  # scores held on the device between copies back
_SPARSE_VALUES = 2**16  # keys a CPU batch of sparse rows holds at most (or batch_size rows)
_TASKS_PER_THREAD = 4  # batches go to the pool in this many tasks a thread: fewer hand-offs, still balanced


def _is_network(value) -> bool:
    """A decoupler network: a DataFrame with ``source`` and ``target`` columns (a regulons x genes
    DataFrame of weights is a matrix, as before)."""
    return type(value).__name__ == "DataFrame" and {"source", "target"} <= set(map(str, value.columns))


def get_aucell(
    exp_array,
    adj_array,
    k: int | None = 50,
    auc_threshold: float = 0.05,
    device: str | torch.device = "cuda",
    batch_size: int = 32,
    seed: int | None = None,
    *,
    ties: Ties = "pyscenic",
    verbose: bool = True,
    gene_names=None,
) -> np.ndarray:
    """Score every regulon in every cell with pySCENIC's AUCell.

    Parameters
    ----------
    exp_array
        Expression, cells x genes: numpy array, scipy.sparse matrix (never densified on the
        host: on the CPU ranked from its stored values; to a GPU sent as CSR, one batch of rows
        at a time, and densified there), torch
        tensor, or (with a network) a pandas DataFrame whose columns name the genes.
        Log-transformed values as pySCENIC expects; negative values (z-scores) are fine.
    adj_array
        Regulons x genes weights (numpy, scipy.sparse or torch). The non-zero entries of a
        row are the regulon's genes and their weights (binary rows give pySCENIC's
        unweighted AUC). Weights must be finite and non-negative. Or a decoupler network
        (DataFrame: ``source``, ``target`` [, ``weight``]; e.g. CollecTRI): its sources are
        scored unweighted, in order of first appearance, with pySCENIC's rules for targets
        absent from the genes (ignored; a source under 80% present scores 0). Its
        sources are unweighted, so a ``k`` below a source's number of targets would cut
        it by gene order: that is refused; pass ``k=None``.
    k
        Keep at most the ``k`` largest weights of a regulon (ties: lower gene index wins).
        Regulons with ``k`` genes or fewer are untouched; nothing is ever padded.
        ``None`` keeps every gene, as pySCENIC does.
    auc_threshold
        Fraction of the ranked genome that counts, in (0, 1); pySCENIC's default 0.05.
    device
        ``'cuda'``, ``'cpu'``, ``'auto'`` or a ``torch.device``. ``'cuda'`` without CUDA
        warns once and runs on the CPU.
    batch_size
        Cells per batch. Bounds memory (about ``batch_size * n_genes`` values a few times
        over); results do not depend on it beyond float rounding. Sparse rows, ranked
        from their stored values alone, go as many at a time as fit in the same bound. On
        a GPU it is a floor: batches take a share of the free GPU memory (thousands of cells).
    seed
        Seed of the gene permutation that breaks ties; the same seed gives pySCENIC's
        ``aucell(..., seed=seed)`` result. ``None`` draws a fresh permutation.
    ties
        ``'pyscenic'`` (default): pySCENIC's seeded tie order. ``'average'``: the expected
        AUC over uniformly random tie-breaking, exact and seed-free (``seed`` is ignored).
    verbose
        Show a progress bar on a terminal when there is more than one batch.
    gene_names
        With a network: the expression's gene names (default: the columns of a DataFrame
        ``exp_array``).

    Returns
    -------
    numpy.ndarray
        float32 array, n_cells x n_regulons.
    """
    if ties not in ("pyscenic", "average"):
        raise InputError(f"ties={ties!r} is not one of 'pyscenic', 'average'")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise InputError(f"k must be a positive integer or None, got {k!r}")

    scored = None
    if _is_network(adj_array):
        from .regulons import network_for_aucell

        sources = list(dict.fromkeys(adj_array["source"].tolist()))  # the rows, in order of first appearance
        exp_array, adj_array, scored = network_for_aucell(exp_array, adj_array, gene_names)
        targets = np.asarray((adj_array != 0).sum(axis=1)).ravel()
        if k is not None and targets.max(initial=0) > k:  # a network is unweighted: k would cut by gene order
            row = int(np.argmax(targets))
            raise InputError(f"k={k} would keep {k} of the {int(targets[row])} targets of {sources[row]!r}, chosen by "
                             "gene order; pass k=None to score a network's every target, as pySCENIC does")
    elif gene_names is not None:
        raise InputError("gene_names is for a network (a DataFrame with columns source, target); a regulons x genes "
                         "matrix lines up with the expression's columns already")

    dev = resolve_device(device)
    expr = _Expression(exp_array)
    n_cells, n_genes = expr.shape
    c = rank_cutoff(auc_threshold, n_genes)
    weights = _regulon_weights(adj_array, n_genes, k)
    n_regulons = weights.shape[0]

    out = np.zeros((n_cells, n_regulons), dtype=np.float32)
    if c == 0 or n_cells == 0:
        return out  # no gene ranks below the cutoff: every AUC is 0, as in pySCENIC

    # Weights in float64 so the result matches pySCENIC's float64 arithmetic to ~1e-12.
    rows = np.repeat(np.arange(n_regulons), np.diff(weights.indptr))
    norm = (c + 1) * np.bincount(rows, weights=weights.data, minlength=n_regulons)
    norm[norm == 0] = 1.0  # an empty regulon scores 0, not NaN
    scaled = weights.copy()
    scaled.data /= norm[rows]
    tie_order = _TieOrder(np.random.RandomState(seed).permutation(n_genes), dev) if ties == "pyscenic" else None
    if tie_order is not None and dev.type == "cpu":
        _score_on_cpu(expr, tie_order, c, scaled, batch_size, out, verbose)
    else:
        _score_with_torch(expr, tie_order, c, scaled, batch_size, dev, out, verbose)
    if scored is not None:
        out[:, ~scored] = 0.0  # pySCENIC: under 80% of a source's targets among the genes
    return out


def rank_cutoff(auc_threshold: float, n_genes: int) -> int:
    """pySCENIC's rank cutoff c = round(auc_threshold * n_genes) - 1 (Python's round).

    Ranks below c count towards the AUC. Raises ``InputError`` where pySCENIC's
    ``derive_rank_cutoff`` would fail its assertions.
    """
    if isinstance(auc_threshold, bool) or not isinstance(auc_threshold, (int, float, np.floating)):
        raise InputError(f"auc_threshold must be a number in (0, 1), got {auc_threshold!r}")
    if not 0.0 < float(auc_threshold) < 1.0:
        raise InputError(f"auc_threshold must be in (0, 1), got {auc_threshold!r}")
    n_top = int(round(float(auc_threshold) * n_genes))
    if not 0 < n_top <= n_genes - 1:
        raise InputError(
            f"auc_threshold={auc_threshold} selects {n_top} of {n_genes} genes; it must select "
            f"between 1 and {n_genes - 1} (choose a threshold between {0.5 / n_genes:.3g} "
            f"and {(n_genes - 1.5) / n_genes:.3g})"
        )
    return n_top - 1


class _TieOrder:
    """pySCENIC's ranking: descending value, ties to the gene that comes first in ``perm``.

    ``perm`` is the column shuffle pySCENIC applies before ``rank(method='first')``.
    """

    def __init__(self, perm: np.ndarray, device: torch.device):
        position = np.empty_like(perm)
        position[perm] = np.arange(perm.size)
        self.perm = torch.from_numpy(perm).to(device)
        # Larger is better in a top-k, so an earlier position gets a larger tie-breaker.
        self.tie_breaker = torch.from_numpy((2**32 - 1 - position).astype(np.int64)).to(device)
        # The CPU selection (see ``_rank_keys``): a key is a value's code above ``bits`` of position.
        index = np.int32 if perm.size < 2**31 else np.int64
        self.perm_np, self.position = perm.astype(index), position.astype(index)
        self.bits = max(1, (perm.size - 1).bit_length())

    def top_keys(self, indptr, indices, values, c: int, dense: bool) -> np.ndarray:
        """Each row's keys (rows x width, int64), the first c of which are those of its genes of
        rank 0..c-1 in rank order; the gene of a key is ``perm_np[key & (2**bits - 1)]`` (above
        the position is the value's code, or the rank in rows ranked again from float64 values).
        Rows are CSR (``indptr``, ``indices``, ``values``; canonical) or, with ``dense``,
        ``values`` holds whole rows one after another (``indices`` unused).
        """
        value_bits, exact = _float32_bits(values)
        keys = _rank_keys(indptr, indices, dense, value_bits, self.position, self.perm_np, self.bits, c)
        # numpy sorts a short row whole fastest (up to 256 int64 it sorts in SIMD registers);
        # a longer one with well over c keys is partitioned first (measured, c = 99 to 999).
        if keys.shape[1] > max(256, 1.5 * c):
            keys.partition(c - 1, axis=1)
            keys[:, :c].sort(axis=1)
        else:
            keys.sort(axis=1)
        if not exact:  # float64 values float32 cannot hold: rank again the rows where it merged two
            for i in np.flatnonzero(_merged_rows(keys, c, indptr, indices, dense, values, self.perm_np, self.bits)):
                self._rank_from_float64(keys[i], c, values, indices, indptr[i], indptr[i + 1], dense)
        return keys

    def _rank_from_float64(self, row_keys, c, values, indices, lo, hi, dense) -> None:
        """Rank one row's top c again from its float64 values. Rounding to float32 never reverses
        two values, so the genes whose code is at most that of the c-th key hold the top c; they
        are ordered by value, then position, and their first c keys (rank, not code, above the
        position) replace the row's first c."""
        low = (1 << self.bits) - 1
        candidates = row_keys[(row_keys >> self.bits) <= (row_keys[c - 1] >> self.bits)]
        position = candidates & low
        row = values[lo:hi] if dense else np.zeros(self.perm_np.size)  # a gene not stored is 0
        if not dense:
            row[indices[lo:hi]] = values[lo:hi]
        value = row[self.perm_np[position]]
        top = np.lexsort((position, np.subtract(0, value)))[:c]  # 0 - v: -0.0 ties 0.0
        row_keys[:c] = (np.arange(c) << self.bits) | position[top]

    def top_genes(self, x: torch.Tensor, c: int) -> torch.Tensor:
        """Genes of rank 0, 1, ..., c-1 in each row of ``x`` (batch x c), in torch (the GPU path)."""
        if x.dtype == torch.float32:
            return self._top_genes_float32(x, c)
        return self._top_genes_general(x, c)

    def _top_genes_float32(self, x: torch.Tensor, c: int) -> torch.Tensor:
        # float32 bits read as sign-magnitude and turned into an order-preserving int
        # (-0.0 and 0.0 both become 0), then the tie-breaker in the low 32 bits: every
        # key is distinct, so selecting the c largest keys gives the exact ranking.
        bits = x.view(torch.int32)
        magnitude = bits & 0x7FFFFFFF
        ordered = torch.where(bits < 0, -magnitude, magnitude).to(torch.int64)
        keys = ordered.bitwise_left_shift_(32).bitwise_or_(self.tie_breaker)
        return torch.topk(keys, c, dim=1, sorted=True).indices

    def _top_genes_general(self, x: torch.Tensor, c: int) -> torch.Tensor:
        # Any dtype: in permuted column order a stable descending sort is the ranking (one
        # segmented sort, no data-dependent shapes, so nothing waits for the device).
        xp = x[:, self.perm] + 0.0  # -0.0 becomes 0.0: radix sorts (CUDA) would split them
        order = torch.sort(xp, dim=1, descending=True, stable=True).indices[:, :c]
        return self.perm[order]


_NO_KEY = np.iinfo(np.int64).max  # fills a row with fewer keys than the widest: sorts after every key
_ZERO_CODE = 0x7FFFFFFF  # the code of 0.0 and -0.0 (``_code``): positive values below it, negative above


def _float32_bits(values: np.ndarray) -> tuple[np.ndarray, bool]:
    """``values`` (1-D) as the uint32 bits of float32 values (``_code`` reads them), and whether
    they are exact.

    float32 values, and float64 values that are all float32 exactly (counts, float32 data
    widened), are exact. Other float64 values are rounded to float32, which never reverses two
    values but may merge two close ones (``_merged_rows`` finds where that matters); a non-zero
    value too small for float32 keeps its sign rather than becoming 0.
    """
    if values.dtype == np.float32:
        return values.view(np.uint32), True
    with np.errstate(over="ignore"):  # beyond float32's range: inf, merged, ranked again
        narrow = values.astype(np.float32)
    if np.array_equal(narrow, values):
        return narrow.view(np.uint32), True
    flushed = (narrow == 0) & (values != 0)
    bits = narrow.view(np.uint32)
    bits[flushed] = np.where(values[flushed] > 0, 1, 0x80000001)  # the smallest float32 of that sign
    return bits, False


@numba.njit(nogil=True, cache=True, inline="always")
def _code(bits):
    """float32 bits -> int64 code, smaller for a larger value: positive values below 0x7FFFFFFF
    (0's code), negative ones above; -0.0 is 0."""
    magnitude = np.int64(bits & 0x7FFFFFFF)
    return _ZERO_CODE + magnitude if bits >> 31 else _ZERO_CODE - magnitude


@numba.njit(nogil=True, cache=True)
def _rank_keys(indptr, indices, dense, value_bits, position, perm, shift, c):
    """Keys (code << shift | permuted position) of each row's candidates for its top c, rows x
    width, unsorted, padded with ``_NO_KEY``: their c smallest, in order, are pySCENIC's ranks
    0..c-1 (value descending, then permuted position).

    A row with at least c positive values needs only those. With fewer, every positive value
    ranks first, then zeros (stored or not) in permuted order: the first c - positives genes
    along ``perm`` that hold no non-zero value. Only when zeros run out too (negative values in
    the top c) does a row need a key for every gene. A row's genes are ``indices[j]`` for CSR
    rows, ``j - indptr[i]`` for ``dense`` ones.
    """
    n_rows, n_genes = indptr.size - 1, perm.size
    longest = 0
    for i in range(n_rows):
        longest = max(longest, indptr[i + 1] - indptr[i])
    keys = np.empty((n_rows, max(longest, c)), np.int64)
    every = np.zeros(n_rows, np.bool_)  # rows that need a key for every gene
    nonzero = np.zeros(n_genes, np.bool_)
    for i in range(n_rows):
        lo, hi, k, n_nonzero = indptr[i], indptr[i + 1], 0, 0
        for j in range(lo, hi):
            code = _code(value_bits[j])
            keys[i, k] = (code << shift) | position[j - lo if dense else indices[j]]
            k += code < _ZERO_CODE  # branch-free: the next key overwrites one that is not positive
            n_nonzero += code != _ZERO_CODE
        if k < c and k + n_genes - n_nonzero < c:
            every[i] = True
            continue
        if k < c:
            k = _add_zeros(keys[i], k, c, lo, hi, indices, dense, value_bits, perm, shift, nonzero)
        keys[i, k:] = _NO_KEY
    if not every.any():
        return keys
    wide = np.full((n_rows, n_genes), _NO_KEY, np.int64)
    for i in range(n_rows):
        if not every[i]:
            wide[i, : keys.shape[1]] = keys[i]
            continue
        lo, hi, k = indptr[i], indptr[i + 1], 0
        for j in range(lo, hi):
            code = _code(value_bits[j])
            if code != _ZERO_CODE:
                wide[i, k] = (code << shift) | position[j - lo if dense else indices[j]]
                k += 1
        _add_zeros(wide[i], k, n_genes, lo, hi, indices, dense, value_bits, perm, shift, nonzero)
    return wide


@numba.njit(nogil=True, cache=True)
def _add_zeros(row, k, stop, lo, hi, indices, dense, value_bits, perm, shift, nonzero):
    """Append to ``row`` (holding k keys) the keys of the row's zero-valued genes in permuted
    order until it holds ``stop`` keys or the zeros run out; return the new count.
    ``nonzero`` is all False on entry and on return."""
    for j in range(lo, hi):
        nonzero[j - lo if dense else indices[j]] = _code(value_bits[j]) != _ZERO_CODE
    zero = np.int64(_ZERO_CODE) << shift
    for p in range(perm.size):
        if k == stop:
            break
        if not nonzero[perm[p]]:
            row[k] = zero | p
            k += 1
    for j in range(lo, hi):
        nonzero[j - lo if dense else indices[j]] = False
    return k


def _score_on_cpu(expr, tie_order: _TieOrder, c: int, weights: sp.csr_matrix, batch_size: int,
                  out: np.ndarray, verbose: bool) -> None:
    """``ties='pyscenic'`` on the CPU, into ``out``: batches spread over a pool of
    ``torch.get_num_threads()`` threads; each row's top c is selected (``_TieOrder.top_keys``),
    then ``_score_keys`` (numba, GIL released) adds each gene only to the regulons that hold it
    (~15 of 200)."""
    regulons = _regulon_blocks(weights, tie_order.perm_np)
    batches = expr.batches(batch_size, c)
    threads = min(torch.get_num_threads(), len(batches))
    n_tasks = min(len(batches), threads * _TASKS_PER_THREAD)
    tasks = [batches[i::n_tasks] for i in range(n_tasks)]

    def score(task):
        for start, stop in task:
            expr.score_rows(start, stop, tie_order, c, regulons, out[start:stop])
        return len(task)

    bar = tqdm(total=len(batches), desc="AUCell", unit="batch",
               disable=None if verbose and len(batches) > 1 else True)
    with ThreadPoolExecutor(threads) if threads > 1 else _InThread() as pool, bar:
        for done in pool.map(score, tasks):  # re-raises a batch's error here
            bar.update(done)


@numba.njit(nogil=True, cache=True)
def _merged_rows(keys, c, indptr, indices, dense, values, perm, shift):
    """Rows (sorted keys, see ``top_keys``) where two keys of the top c, or the last of it and a
    key beyond with its code, share a float32 code but not their float64 value: there the
    float32 order is not pySCENIC's and the row must be ranked from its float64 values."""
    low = (np.int64(1) << shift) - 1
    row_values = np.zeros(perm.size)  # a CSR row's values by gene (0 where none is stored)
    merged = np.zeros(keys.shape[0], np.bool_)
    for i in range(keys.shape[0]):
        lo, hi = indptr[i], indptr[i + 1]
        if not dense:
            for j in range(lo, hi):
                row_values[indices[j]] = values[j]
        last_code, last_value = np.int64(-1), 0.0
        for r in range(keys.shape[1]):
            code = keys[i, r] >> shift
            if r >= c and code != last_code:
                continue  # beyond the top c only the last one's code matters (keys there may be unsorted)
            g = perm[keys[i, r] & low]
            value = values[lo + g] if dense else row_values[g]
            if code == last_code and value != last_value:
                merged[i] = True
                break
            if r < c:
                last_code, last_value = code, value
        if not dense:
            for j in range(lo, hi):
                row_values[indices[j]] = 0.0
    return merged


@numba.njit(nogil=True, cache=True)
def _score_keys(keys, c, shift, span, blocks, out):
    """out[i] = AUCs of the row whose genes of rank 0..c-1 have the keys ``keys[i, :c]`` (see
    ``_TieOrder.top_keys``): each gene adds (c - rank) * weight only to the regulons that hold it
    (``_regulon_blocks``), in float64, in rank order."""
    low = (np.int64(1) << shift) - 1
    regulon = blocks.view(np.uint32)
    acc = np.empty(out.shape[1] + 1, np.float64)  # the last one takes the padding's zeros
    first, count = np.empty(c, np.int64), np.empty(c, np.int64)
    for i in range(keys.shape[0]):
        for r in range(c):  # the genes' block spans first: their loads then overlap
            s = span[keys[i, r] & low]
            first[r], count[r] = s >> 32, s & 0xFFFFFFFF
        acc[:] = 0.0
        for r in range(c):
            contribution = float(c - r)
            for b in range(first[r], first[r] + count[r]):
                for q in range(4):
                    acc[regulon[16 * b + 8 + q]] += contribution * blocks[8 * b + q]
        out[i, :] = acc[:-1]


def _regulon_blocks(weights: sp.csr_matrix, perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each gene's regulons and weights for ``_score_keys``, in blocks of one cache line.

    A block is 8 float64: 4 weights, then 4 uint32 regulon indices in the upper half; a gene's
    regulons (~15 of 200) fill its blocks in order, the last padded with weight 0 on regulon
    n_regulons. One line a block, 64-byte aligned, and fixed blocks of 4 leave fewer loop exits
    to mispredict. ``span[p]`` = (first block << 32) | blocks, for the gene at permuted position p.
    """
    by_gene = weights.tocsc()
    counts = np.diff(by_gene.indptr)
    n_blocks = -(-counts // 4)
    first = np.concatenate(([0], np.cumsum(n_blocks)))
    buffer = np.zeros(8 * int(first[-1]) + 8)
    offset = (-buffer.ctypes.data % 64) // 8
    blocks = buffer[offset : offset + 8 * int(first[-1])]
    slot = np.arange(by_gene.nnz) - np.repeat(by_gene.indptr[:-1], counts)  # place in the gene's list
    block = np.repeat(first[:-1], counts) + slot // 4
    blocks[8 * block + slot % 4] = by_gene.data
    regulon = blocks.view(np.uint32)
    regulon.reshape(-1, 16)[:, 8:12] = weights.shape[0]
    regulon[16 * block + 8 + slot % 4] = by_gene.indices
    span = (first[:-1].astype(np.int64) << 32) | n_blocks
    return span[perm], blocks


class _InThread:
    """The executor interface for one thread: no pool to start where only one thread runs."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(fn, items):
        return map(fn, items)


def torch_batch_rows(dev: torch.device, n_genes: int, batch_size: int) -> int:
    """Cells per batch of the torch path: ``batch_size`` on the CPU; on a GPU as many as fit in
    a share of its free memory (``_CUDA_BYTES_PER_VALUE`` a cell and gene), at least
    ``batch_size`` and at most ``_CUDA_ROWS_MAX``: thousands of cells, not 32."""
    if dev.type != "cuda":
        return batch_size
    free, _ = torch.cuda.mem_get_info(dev)
    fit = int(free * _CUDA_MEMORY_SHARE) // (_CUDA_BYTES_PER_VALUE * n_genes)
    return max(batch_size, min(fit, _CUDA_ROWS_MAX))


def _score_with_torch(expr, tie_order: _TieOrder | None, c: int, weights: sp.csr_matrix, batch_size: int,
                      dev: torch.device, out: np.ndarray, verbose: bool) -> None:
    """AUCs into ``out`` with torch on ``dev`` (the GPU path, and ``ties='average'``), with the
    genes x regulons weights dense on the device.

    Made for a GPU: batches sized by ``torch_batch_rows``; a batch's rows (CSR as CSR) are
    prepared and pinned by a helper thread while the device works on the one before, copied
    asynchronously and densified on the device; scores stay there and come back once per
    chunk of ``_RESULT_BYTES``. Nothing in the loop waits for the device.
    """
    weights_t = torch.from_numpy(np.ascontiguousarray(weights.toarray().T)).to(dev)
    n_cells, n_genes = expr.shape
    n_regulons = weights.shape[0]
    rows = torch_batch_rows(dev, n_genes, batch_size)
    batches = [(start, min(start + rows, n_cells)) for start in range(0, n_cells, rows)]
    per_chunk = max(1, _RESULT_BYTES // (4 * max(n_regulons, 1) * rows))  # batches a copy back
    pin = dev.type == "cuda"
    out_t = torch.from_numpy(out)
    bar = tqdm(total=len(batches), desc="AUCell", unit="batch", disable=None if verbose and len(batches) > 1 else True)
    with torch.inference_mode(), ThreadPoolExecutor(1, thread_name_prefix="aucell-upload") as pool:
        pending = pool.submit(expr.host_rows, *batches[0], pin)
        for first in range(0, len(batches), per_chunk):
            chunk = batches[first : first + per_chunk]
            lo, hi = chunk[0][0], chunk[-1][1]
            scores = out_t[lo:hi] if dev.type == "cpu" else torch.empty((hi - lo, n_regulons), dtype=torch.float32,
                                                                        device=dev)
            for index, (start, stop) in enumerate(chunk, start=first):
                host = pending.result()
                if index + 1 < len(batches):
                    pending = pool.submit(expr.host_rows, *batches[index + 1], pin)
                x = expr.on_device(host, dev)
                if tie_order is not None:
                    batch = _rank_product(tie_order.top_genes(x, c), n_genes, weights_t)
                else:
                    batch = _average_scores(x, c) @ weights_t
                scores[start - lo : stop - lo] = batch
                bar.update()
            if dev.type != "cpu":
                out_t[lo:hi] = scores.cpu()  # the one wait for the device, once per chunk
    bar.close()


def _rank_product(genes: torch.Tensor, n_genes: int, weights_t: torch.Tensor) -> torch.Tensor:
    """S @ weights_t, with S[cell, gene of rank r] = c - r, dense on the device: a scatter and a
    dense float64 product, deterministic and with no sparse format (and its index order) at all."""
    n_cells, c = genes.shape
    contribution = torch.arange(c, 0, -1, device=genes.device, dtype=weights_t.dtype)
    s = torch.zeros((n_cells, n_genes), dtype=weights_t.dtype, device=genes.device)
    s.scatter_(1, genes, contribution.expand(n_cells, c))
    return s @ weights_t


def _average_scores(x: torch.Tensor, c: int) -> torch.Tensor:
    """Expected max(0, c - rank) under uniformly random tie-breaking (float64, batch x genes).

    A gene whose value is shared by m genes, a of which rank strictly above, takes each
    rank a..a+m-1 with probability 1/m, so its expected contribution is
    sum_{j=a}^{min(a+m, c)-1} (c - j) / m. Only values >= v (the c-th largest) can have a < c.
    """
    top = torch.topk(x, c, dim=1, sorted=True).values  # descending
    v = top[:, -1:]
    ascending = top.flip(1).contiguous()
    n_le = torch.searchsorted(ascending, x, right=True)  # top values <= x
    n_lt = torch.searchsorted(ascending, x, right=False)  # top values < x
    at = x == v
    above = c - n_le  # values > x: all of them are in the top when x >= v
    group = torch.where(at, at.sum(dim=1, keepdim=True), n_le - n_lt).to(torch.float64)
    above = above.to(torch.float64)
    last = torch.minimum(above + group, torch.full_like(above, c)) - 1  # last rank that counts
    n_counted = last - above + 1
    total = n_counted * c - (above + last) * n_counted / 2
    return torch.where(x >= v, total / group, torch.zeros_like(total))


class _Expression:
    """Uniform row-batch access to a cells x genes matrix (numpy, scipy.sparse, torch).

    Checks the shape and scans for NaN/inf up front, block by block, so a bad value is
    reported with its location before any work starts.
    """

    def __init__(self, data):
        if isinstance(data, torch.Tensor):
            kind = "torch"
        elif sp.issparse(data):
            kind = "sparse"
            data = data.tocsr()
        else:
            kind = "numpy"
            data = np.asarray(data)
        if data.ndim != 2:
            raise InputError(f"exp_array must be 2-D (cells x genes), got shape {tuple(data.shape)}")
        if data.shape[1] < 2:
            raise InputError(f"exp_array has {data.shape[1]} gene column(s); AUCell needs at least 2")
        self.kind, self.data, self.shape = kind, data, tuple(int(n) for n in data.shape)
        self.dtype = _compute_dtype(data.dtype, "exp_array")
        # Sorted, duplicate-free rows are ranked in place; others are canonicalised (a copy) a batch at a time.
        self.canonical = kind != "sparse" or bool(data.has_canonical_format)
        self._check_finite()

    def batches(self, batch_size: int, c: int) -> list[tuple[int, int]]:
        """Row ranges of one CPU batch each. Sparse rows are ranked from keys of their stored
        values (at least c a row), so as many go at once as fit in batch_size * n_genes keys
        (the longest row's, or c, a row), up to _SPARSE_VALUES: beyond it the keys leave the cache."""
        rows = batch_size
        if self.kind == "sparse" and self.shape[0]:
            widest = max(c, int(np.diff(self.data.indptr).max()))
            rows = max(batch_size, min(batch_size * self.shape[1], _SPARSE_VALUES) // widest)
        return [(start, min(start + rows, self.shape[0])) for start in range(0, self.shape[0], rows)]

    def score_rows(self, start: int, stop: int, tie_order: _TieOrder, c: int, regulons, out: np.ndarray) -> None:
        """AUCs of rows [start, stop) into ``out`` (CPU). Sparse rows are ranked from their
        stored values, never densified."""
        dtype = _NUMPY_DTYPE[self.dtype]
        n_rows = stop - start
        if self.kind != "sparse":
            values = np.ascontiguousarray(self.numpy_rows(start, stop)).ravel()
            indptr = np.arange(0, n_rows * self.shape[1] + 1, self.shape[1], dtype=np.int64)
            keys = tie_order.top_keys(indptr, indptr, values, c, dense=True)
        else:
            if self.canonical:
                block, first = self.data, start
            else:
                block, first = self.data[start:stop], 0  # a copy: summing its duplicates leaves the input alone
                block.sum_duplicates()
            lo, hi = int(block.indptr[first]), int(block.indptr[first + n_rows])
            indptr = block.indptr[first : first + n_rows + 1].astype(np.int64) - lo
            values = np.ascontiguousarray(block.data[lo:hi], dtype=dtype)
            keys = tie_order.top_keys(indptr, block.indices[lo:hi], values, c, dense=False)
        _score_keys(keys, c, tie_order.bits, *regulons, out)

    def numpy_rows(self, start: int, stop: int) -> np.ndarray:
        """Dense rows [start, stop) as numpy on the CPU, in the dtype the ranking works in."""
        if self.kind == "torch":
            return self.data[start:stop].detach().to("cpu", self.dtype).numpy()
        return np.asarray(self.data[start:stop], dtype=_NUMPY_DTYPE[self.dtype])

    def host_rows(self, start: int, stop: int, pin: bool):
        """Rows [start, stop) ready to send to a device, never densified on the host: CPU
        tensors ``(indptr, indices, values)`` of CSR rows, or the dense block; pinned (page-
        locked, so the copy is asynchronous) with ``pin``. Runs in the upload thread."""
        if self.kind == "torch":
            block = self.data[start:stop]
            return block.pin_memory() if pin and block.device.type == "cpu" else block
        dtype = _NUMPY_DTYPE[self.dtype]
        if self.kind == "sparse":
            lo, hi = int(self.data.indptr[start]), int(self.data.indptr[stop])
            parts = ((self.data.indptr[start : stop + 1] - lo).astype(np.int64), self.data.indices[lo:hi],
                     np.asarray(self.data.data[lo:hi], dtype=dtype))
        else:
            parts = (np.asarray(self.data[start:stop], dtype=dtype),)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensors = tuple(torch.from_numpy(np.ascontiguousarray(part)) for part in parts)
        tensors = tuple(t.pin_memory() for t in tensors) if pin else tensors
        return tensors if self.kind == "sparse" else tensors[0]

    def on_device(self, host, device: torch.device) -> torch.Tensor:
        """``host_rows``'s rows as a dense batch on ``device``, in the dtype the ranking works in:
        copied without waiting, CSR rows densified there (duplicate entries summed, as scipy does)."""
        if not isinstance(host, tuple):
            return host.to(device=device, non_blocking=True).to(self.dtype)
        indptr, indices, values = (t.to(device, non_blocking=True) for t in host)
        n_rows = indptr.numel() - 1
        rows = torch.repeat_interleave(torch.arange(n_rows, device=device), indptr.diff(),
                                       output_size=values.numel())  # the size given: no wait for the device
        x = torch.zeros((n_rows, self.shape[1]), dtype=self.dtype, device=device)
        return x.index_put_((rows, indices.long()), values.to(self.dtype), accumulate=not self.canonical)

    def _check_finite(self) -> None:
        integer = not self.data.dtype.is_floating_point if self.kind == "torch" else self.data.dtype.kind in "iub"
        if integer:
            return  # integers cannot be NaN or infinite
        if self.kind == "sparse":
            values = self.data.data
            for start in range(0, values.size, _CHECK_VALUES):
                _raise_if_not_finite(
                    values[start : start + _CHECK_VALUES],
                    lambda i, s=start: _csr_location(self.data, s + i),
                    "exp_array",
                )
            return
        n_genes = self.shape[1]
        step = max(1, _CHECK_VALUES // n_genes)
        for start in range(0, self.shape[0], step):
            block = self.data[start : start + step]
            if self.kind == "torch":
                if bool(torch.isfinite(block).all()):
                    continue
                block = block.cpu().numpy()
            _raise_if_not_finite(block.ravel(), lambda i, s=start: (s + i // n_genes, i % n_genes), "exp_array")


def _regulon_weights(adj_array, n_genes: int, k: int | None) -> sp.csr_matrix:
    """Validated regulons x genes weights as a float64 CSR matrix, capped at k genes per row.

    Sparse from the start: a regulon holds a few hundred of tens of thousands of genes, and
    every check and the scaling then touch its genes only.
    """
    if isinstance(adj_array, torch.Tensor):
        adj_array = adj_array.detach().cpu()
        if adj_array.layout != torch.strided:
            adj_array = adj_array.to_dense()
        if adj_array.is_floating_point() and adj_array.dtype not in (torch.float32, torch.float64):
            adj_array = adj_array.float()  # exact for float16 and bfloat16, which numpy lacks
        adj_array = adj_array.numpy()
    if not sp.issparse(adj_array):
        adj_array = np.asarray(adj_array)
        if adj_array.ndim == 1:
            adj_array = adj_array[None, :]
        if adj_array.ndim != 2:
            raise InputError(f"adj_array must be 2-D (regulons x genes), got shape {adj_array.shape}")
    if adj_array.shape[0] == 0:
        raise InputError("adj_array has no regulons (0 rows): nothing to score")
    if adj_array.shape[1] != n_genes:
        raise InputError(
            f"adj_array has {adj_array.shape[1]} gene columns but exp_array has {n_genes}; "
            "both must use the same genes in the same order"
        )
    if adj_array.dtype.kind == "f" and adj_array.dtype not in (np.float32, np.float64):
        adj_array = adj_array.astype(np.float64)  # float16 exactly, longdouble to the scores' precision: numba has neither
    _compute_dtype(adj_array.dtype, "adj_array")
    # A copy either way: the caller's matrix is left alone.
    weights = (sp.csr_matrix(adj_array) if sp.issparse(adj_array)
               else sp.csr_matrix(_dense_nonzero(adj_array), shape=adj_array.shape)).astype(np.float64)
    weights.sum_duplicates()
    weights.eliminate_zeros()
    values = weights.data
    _raise_if_not_finite(values, lambda i: _csr_location(weights, i), "adj_array", ("regulon", "gene"))
    if (values < 0).any():
        first = int(np.argmax(values < 0))
        r, g = _csr_location(weights, first)
        raise InputError(
            f"adj_array has {(values < 0).sum()} negative weight(s), first at regulon {r}, "
            f"gene {g} ({values[first]}); regulon weights must be >= 0"
        )
    sizes = np.diff(weights.indptr)
    empty = np.flatnonzero(sizes == 0)
    if empty.size:
        logger.warning("%d regulon(s) have no genes and score 0: rows %s", empty.size, empty[:10].tolist())
    if k is not None and (sizes > k).any():
        keep = np.zeros(values.size, dtype=bool)
        for r, (lo, hi) in enumerate(zip(weights.indptr[:-1], weights.indptr[1:])):
            # Largest weights first; among equal weights the lower gene index (indices are sorted).
            keep[lo + np.argsort(-values[lo:hi], kind="stable")[:k]] = True
        rows = np.repeat(np.arange(weights.shape[0]), sizes)[keep]
        weights = sp.csr_matrix((values[keep], (rows, weights.indices[keep])), shape=weights.shape)
    return weights


@numba.njit(nogil=True, cache=True)
def _dense_nonzero(matrix):
    """(data, indices, indptr) of a dense 2-D array's non-zero entries (NaN included): one pass
    to count, one to copy; scipy's conversion takes 5x longer on a regulons x 20,000 matrix."""
    n_rows, n_cols = matrix.shape
    indptr = np.zeros(n_rows + 1, np.int64)
    for r in range(n_rows):
        n = 0
        for g in range(n_cols):
            n += matrix[r, g] != 0
        indptr[r + 1] = indptr[r] + n
    indices, data = np.empty(indptr[-1], np.int64), np.empty(indptr[-1], matrix.dtype)
    for r in range(n_rows):
        k = indptr[r]
        for g in range(n_cols):
            if matrix[r, g] != 0:
                indices[k], data[k] = g, matrix[r, g]
                k += 1
    return data, indices, indptr


_NUMPY_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


def _compute_dtype(dtype, name: str) -> torch.dtype:
    """The float dtype to rank in: float32/64 as given; smaller floats widen exactly; ints to float64."""
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float64, torch.float32):
            return dtype
        if dtype.is_floating_point:
            return torch.float32
        if dtype.is_complex:
            raise InputError(f"{name} has dtype {dtype}; expected real numbers")
        return torch.float64
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return torch.float64
    if dtype.kind == "f" and dtype.itemsize > 8:
        raise InputError(f"{name} has dtype {dtype}; AUCell ranks float32 or float64 values: convert it (to "
                         "float64 it may merge values that differ only beyond float64's precision)")
    if dtype.kind == "f":
        return torch.float32
    if dtype.kind in "iub":
        return torch.float64
    raise InputError(f"{name} has dtype {dtype}; expected real numbers (float or integer)")


def _raise_if_not_finite(values: np.ndarray, locate, name: str, axes=("cell", "gene")) -> None:
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(values.sum()):
            return  # NaN and inf survive a sum (faster than isfinite); an overflow just looks closer
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.argmax(bad))
        row, col = locate(first)
        raise InputError(
            f"{name} contains {int(bad.sum())} NaN or infinite value(s), first at "
            f"{axes[0]} {row}, {axes[1]} {col} ({values[first]}); remove or impute them first"
        )


def _csr_location(matrix: sp.csr_matrix, data_index: int) -> tuple[int, int]:
    row = int(np.searchsorted(matrix.indptr, data_index, side="right") - 1)
    return row, int(matrix.indices[data_index])
