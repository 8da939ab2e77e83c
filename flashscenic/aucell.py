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

On the CPU (``ties='pyscenic'``) the selection runs in numpy, batches spread over a pool of
``torch.get_num_threads()`` threads (numpy releases the GIL in its kernels; coarse tasks also
suffer less than torch's per-batch OpenMP regions on a loaded machine), and a numba kernel
adds each selected gene only to the regulons that hold it (``_score_genes``). A sparse row with
at least c positive values is ranked from its stored values alone, never densified (see
``_TieOrder.top_genes_csr``).
"""

from __future__ import annotations

import logging
import threading
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
_SPARSE_VALUES = 2**16  # stored values a CPU batch of sparse rows sorts at most (or batch_size rows)
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
        Expression, cells x genes: numpy array, scipy.sparse matrix (processed one
        batch of rows at a time, never densified whole), torch tensor, or (with a network)
        a pandas DataFrame whose columns name the genes. Log-transformed
        values as pySCENIC expects; negative values (z-scores) are fine.
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
        over); results do not depend on it beyond float rounding. Sparse rows ranked from
        their stored values alone go as many at a time as fit in the same bound.
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
    norm = (c + 1) * weights.sum(axis=1)
    norm[norm == 0] = 1.0  # an empty regulon scores 0, not NaN
    scaled = weights / norm[:, None]
    tie_order = _TieOrder(np.random.RandomState(seed).permutation(n_genes), dev) if ties == "pyscenic" else None
    if tie_order is not None and dev.type == "cpu":
        score = None
        _score_on_cpu(expr, tie_order, c, scaled, batch_size, out, verbose)
    else:  # torch, with the genes x regulons weights on the device
        weights_t = torch.from_numpy(np.ascontiguousarray(scaled.T)).to(dev)
        if tie_order is not None:
            score = lambda x: _rank_product(tie_order.top_genes(x, c), n_genes, weights_t)  # noqa: E731
        else:
            score = lambda x: _average_scores(x, c) @ weights_t  # noqa: E731

    if score is not None:
        starts = range(0, n_cells, batch_size)
        bar = tqdm(starts, desc="AUCell", unit="batch", disable=None if verbose and len(starts) > 1 else True)
        with torch.inference_mode():
            for start in bar:
                stop = min(start + batch_size, n_cells)
                out[start:stop] = score(expr.rows(start, stop, dev)).to("cpu", torch.float32).numpy()
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
        # The numpy (CPU) selection: a key holds a class (2 bits) above a position (bits).
        self.perm_np, self.position = perm.astype(np.int64), position.astype(np.int64)
        self.bits = max(1, (perm.size - 1).bit_length())
        self.key_dtype = np.int32 if self.bits <= 29 else np.int64
        self.low = (1 << self.bits) - 1
        self.position_key = (self.low - self.position).astype(self.key_dtype)
        self._local = threading.local()

    def top_genes_numpy(self, x: np.ndarray, c: int) -> np.ndarray:
        """Genes of rank 0, 1, ..., c-1 in each row of the dense numpy ``x`` (batch x c)."""
        position = self._top_positions(x, c)
        return self._in_rank_order(np.take_along_axis(x, self.perm_np[position], axis=1), position)

    def top_genes_csr(self, indptr, indices, data, c: int, dense_rows, batch_size: int) -> np.ndarray:
        """Genes of rank 0..c-1 in each row of a CSR block (canonical: no duplicate entries).

        A row with at least c positive stored values has its top c among them (every gene
        not stored is 0), so only its stored values are ranked: one sort of all of them by
        (row, value descending, permuted position), the first c of each row taken. The other
        rows come dense from ``dense_rows(local row indices)``, ``batch_size`` at a time.
        """
        n_rows = indptr.size - 1
        lengths = np.diff(indptr)
        if data.size and data.min() > 0:
            positive = lengths
        else:
            counts = np.concatenate(([0], np.cumsum(data > 0, dtype=np.int64)))
            positive = counts[indptr[1:]] - counts[indptr[:-1]]
        rows = np.flatnonzero(positive >= c)
        genes = np.empty((n_rows, c), dtype=np.int64)
        if rows.size:
            lengths = lengths[rows]
            first = np.cumsum(lengths) - lengths  # where each row starts among its entries
            row = np.repeat(np.arange(rows.size, dtype=np.int64), lengths)
            if rows.size < n_rows:
                source = np.arange(int(lengths.sum())) + np.repeat(indptr[rows] - first, lengths)
                data, indices = data[source], indices[source]
            position = self.position[indices]
            take = first[:, None] + np.arange(c)
            if data.dtype == np.float32 and rows.size <= 2 ** (31 - self.bits):
                key = row << (32 + self.bits)  # row, then value, then position: 63 bits
                key |= _descending_uint32(data) << self.bits
                key |= position
                key.sort()
                top = key[take] & self.low
            else:
                top = position[np.lexsort((position, np.subtract(0, data), row))[take]]
            genes[rows] = self.perm_np[top]
        rest = np.flatnonzero(positive < c)
        for start in range(0, rest.size, batch_size):
            some = rest[start : start + batch_size]
            genes[some] = self.top_genes_numpy(dense_rows(some), c)
        return genes

    def _top_positions(self, x: np.ndarray, c: int) -> np.ndarray:
        """Permuted positions of the c highest-ranked genes of each row of ``x``, unordered.

        With v the c-th largest value of a row, every gene above v is in and the genes equal
        to v fill the places left in permuted order. A key of class (2: above v, 1: at v,
        0: below) over ``low - position`` is distinct within a row, so one partition of these
        keys selects exactly those genes, and their positions read back from the keys.
        """
        n_rows, n_genes = x.shape
        kth = n_genes - c
        values, above, at, key = self._workspace(x.dtype, n_rows, n_genes)
        np.copyto(values, x)
        values.partition(kth, axis=1)
        v = values[:, kth : kth + 1]
        np.greater_equal(x, v, out=at)
        np.greater(x, v, out=above)
        classes = np.add(at.view(np.int8), above.view(np.int8), out=at.view(np.int8))
        np.left_shift(classes, self.bits, out=key, dtype=self.key_dtype)
        key |= self.position_key
        key.partition(kth, axis=1)
        return self.low - (key[:, kth:] & self.low).astype(np.int64)

    def _workspace(self, dtype, n_rows: int, n_genes: int) -> tuple[np.ndarray, ...]:
        """This thread's buffers for ``_top_positions``, kept across batches: allocating them
        afresh each batch costs a page fault per 4 KiB (2x the selection time at 64 rows)."""
        work = getattr(self._local, "work", None)
        if work is None or work[0].dtype != dtype or work[0].shape[0] < n_rows:
            work = (np.empty((n_rows, n_genes), dtype=dtype), np.empty((n_rows, n_genes), dtype=bool),
                    np.empty((n_rows, n_genes), dtype=bool), np.empty((n_rows, n_genes), dtype=self.key_dtype))
            self._local.work = work
        return tuple(buffer[:n_rows] for buffer in work)

    def _in_rank_order(self, values: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Genes of the selected entries sorted by value (descending), then permuted position."""
        if values.dtype == np.float32 and self.bits <= 31:
            # One int64 sort: order-preserving bits of the value (negated) above the position.
            key = _descending_uint32(values)
            key <<= self.bits
            key |= position
            key.sort(axis=1)
            return self.perm_np[key & self.low]
        order = np.lexsort((position, np.subtract(0, values)), axis=1)  # 0 - v: -0.0 ties 0.0
        return self.perm_np[np.take_along_axis(position, order, axis=1)]

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
        # Any dtype: in permuted column order a stable descending sort is the ranking. Take
        # the c-th largest value v; all genes above v are in; of those equal to v, the first
        # in permuted order fill the remaining places; a stable sort of the c orders them.
        xp = x[:, self.perm] + 0.0  # -0.0 becomes 0.0: radix sorts (CUDA) would split them
        v = torch.topk(xp, c, dim=1, sorted=False).values.min(dim=1, keepdim=True).values
        above, at = xp > v, xp == v
        places_left = c - above.sum(dim=1, keepdim=True)
        chosen = above | (at & (at.cumsum(dim=1) <= places_left))
        position = chosen.nonzero()[:, 1].view(x.shape[0], c)  # ascending in each row
        order = torch.sort(xp.gather(1, position), dim=1, descending=True, stable=True).indices
        return self.perm[position.gather(1, order)]


def _descending_uint32(x: np.ndarray) -> np.ndarray:
    """float32 -> int64 in [0, 2**32) whose ascending order is descending value; -0.0 ties 0.0."""
    bits = (x + np.float32(0)).view(np.int32)  # + 0 turns -0.0 into 0.0
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # sign-magnitude -> two's complement order
    return (~ordered).astype(np.int64) + 2**31


def _score_on_cpu(expr, tie_order: _TieOrder, c: int, weights: np.ndarray, batch_size: int,
                  out: np.ndarray, verbose: bool) -> None:
    """``ties='pyscenic'`` on the CPU, into ``out``: batches spread over a pool of
    ``torch.get_num_threads()`` threads; numpy selects each row's top c, then ``_score_genes``
    (numba, GIL released) adds each gene only to the regulons that hold it (~15 of 200)."""
    by_gene = sp.csc_matrix(weights)  # gene -> (regulon, weight): ~15 of 200 regulons a gene
    # Unsigned regulon indices: numba then skips the negative-index check on each scatter.
    regulons = (by_gene.indptr.astype(np.int64), by_gene.indices.astype(np.uint32), by_gene.data)
    batches = expr.batches(batch_size)
    threads = min(torch.get_num_threads(), len(batches))
    n_tasks = min(len(batches), threads * _TASKS_PER_THREAD)
    tasks = [batches[i::n_tasks] for i in range(n_tasks)]

    def score(task):
        for start, stop in task:
            expr.score_rows(start, stop, tie_order, c, batch_size, regulons, out[start:stop])
        return len(task)

    bar = tqdm(total=len(batches), desc="AUCell", unit="batch",
               disable=None if verbose and len(batches) > 1 else True)
    with ThreadPoolExecutor(threads) if threads > 1 else _InThread() as pool, bar:
        for done in pool.map(score, tasks):  # re-raises a batch's error here
            bar.update(done)


@numba.njit(nogil=True, cache=True)
def _score_genes(genes, gene_ptr, regulon, weight, out):
    """out[i] = AUCs of the row whose genes of rank 0..c-1 are genes[i]: each gene adds
    (c - rank) * weight only to the regulons that hold it (CSR by gene), in float64."""
    c = genes.shape[1]
    acc = np.empty(out.shape[1], np.float64)
    for i in range(genes.shape[0]):
        acc[:] = 0.0
        for r in range(c):
            g = genes[i, r]
            contribution = float(c - r)
            for j in range(gene_ptr[g], gene_ptr[g + 1]):
                acc[regulon[j]] += contribution * weight[j]
        out[i, :] = acc


class _InThread:
    """The executor interface for one thread: no pool to start where only one thread runs."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(fn, items):
        return map(fn, items)


def _rank_product(genes: torch.Tensor, n_genes: int, weights_t: torch.Tensor) -> torch.Tensor:
    """S @ weights_t, with S[cell, gene of rank r] = c - r held as a CSR matrix (c non-zeros a row)."""
    return _rank_matrix(genes, n_genes, weights_t.dtype) @ weights_t


def _rank_matrix(genes: torch.Tensor, n_genes: int, dtype: torch.dtype) -> torch.Tensor:
    """S[cell, gene of rank r] = c - r, as a sparse CSR tensor with c non-zeros a row."""
    n_cells, c = genes.shape
    contribution = torch.arange(c, 0, -1, device=genes.device, dtype=dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        s = torch.sparse_csr_tensor(
            torch.arange(0, n_cells * c + 1, c, device=genes.device),
            genes.reshape(-1),
            contribution.repeat(n_cells),
            size=(n_cells, n_genes),
            check_invariants=False,
        )
    return s


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
        # Sorted, duplicate-free rows can be ranked in place; others are canonicalised a batch at a time.
        self.canonical = kind != "sparse" or bool(data.has_canonical_format)
        self._check_finite()

    def batches(self, batch_size: int) -> list[tuple[int, int]]:
        """Row ranges of one CPU batch each. Sparse rows are mostly ranked from their stored
        values, so as many go at once as fit in batch_size * n_genes of them (the longest
        row's worth a row), up to _SPARSE_VALUES: beyond it the sort leaves the cache."""
        rows = batch_size
        if self.kind == "sparse" and self.shape[0]:
            longest = max(1, int(np.diff(self.data.indptr).max()))
            rows = max(batch_size, min(batch_size * self.shape[1], _SPARSE_VALUES) // longest)
        return [(start, min(start + rows, self.shape[0])) for start in range(0, self.shape[0], rows)]

    def score_rows(self, start: int, stop: int, tie_order: _TieOrder, c: int, batch_size: int, regulons,
                   out: np.ndarray) -> None:
        """AUCs of rows [start, stop) into ``out`` (CPU); rows ranked dense go at most batch_size at a time."""
        if self.kind != "sparse":  # a dense batch is batch_size rows (see ``batches``)
            _score_genes(tie_order.top_genes_numpy(self.numpy_rows(start, stop), c), *regulons, out)
            return
        if self.canonical:
            block, first = self.data, start
        else:
            block, first = self.data[start:stop], 0  # a copy: summing its duplicates leaves the input alone
            block.sum_duplicates()
        n_rows = stop - start
        lo, hi = int(block.indptr[first]), int(block.indptr[first + n_rows])
        indptr = block.indptr[first : first + n_rows + 1] - lo
        data = block.data[lo:hi].astype(_NUMPY_DTYPE[self.dtype], copy=False)

        def dense_rows(rows: np.ndarray) -> np.ndarray:
            return block[first + rows].toarray().astype(_NUMPY_DTYPE[self.dtype], copy=False)

        genes = tie_order.top_genes_csr(indptr, block.indices[lo:hi], data, c, dense_rows, batch_size)
        _score_genes(genes, *regulons, out)

    def numpy_rows(self, start: int, stop: int) -> np.ndarray:
        """Dense rows [start, stop) as numpy on the CPU, in the dtype the ranking works in."""
        if self.kind == "torch":
            return self.data[start:stop].detach().to("cpu", self.dtype).numpy()
        return np.asarray(self.data[start:stop], dtype=_NUMPY_DTYPE[self.dtype])

    def rows(self, start: int, stop: int, device: torch.device) -> torch.Tensor:
        """Dense rows [start, stop) on ``device``, in the dtype the ranking works in."""
        block = self.data[start:stop]
        if self.kind == "sparse":
            block = block.toarray()
        if self.kind != "torch":
            block = torch.from_numpy(np.asarray(block))
        return block.to(device=device, dtype=self.dtype)

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


def _regulon_weights(adj_array, n_genes: int, k: int | None) -> np.ndarray:
    """Validated regulons x genes weights as float64 numpy, capped at k genes per row."""
    if isinstance(adj_array, torch.Tensor):
        weights = adj_array.detach().cpu().numpy()
    elif sp.issparse(adj_array):
        weights = adj_array.toarray()
    else:
        weights = np.asarray(adj_array)
    if weights.ndim == 1:
        weights = weights[None, :]
    if weights.ndim != 2:
        raise InputError(f"adj_array must be 2-D (regulons x genes), got shape {weights.shape}")
    if weights.shape[0] == 0:
        raise InputError("adj_array has no regulons (0 rows): nothing to score")
    if weights.shape[1] != n_genes:
        raise InputError(
            f"adj_array has {weights.shape[1]} gene columns but exp_array has {n_genes}; "
            "both must use the same genes in the same order"
        )
    _compute_dtype(weights.dtype, "adj_array")
    weights = weights.astype(np.float64)
    _raise_if_not_finite(weights.ravel(), lambda i: divmod(i, n_genes), "adj_array", ("regulon", "gene"))
    if (weights < 0).any():
        r, g = np.argwhere(weights < 0)[0]
        raise InputError(
            f"adj_array has {(weights < 0).sum()} negative weight(s), first at regulon {r}, "
            f"gene {g} ({weights[r, g]}); regulon weights must be >= 0"
        )
    empty = np.flatnonzero(~weights.any(axis=1))
    if empty.size:
        logger.warning("%d regulon(s) have no genes and score 0: rows %s", empty.size, empty[:10].tolist())
    if k is not None and ((weights != 0).sum(axis=1) > k).any():
        # Stable sort of -w: among equal weights the lower gene index comes first.
        keep = np.argsort(-weights, axis=1, kind="stable")[:, :k]
        capped = np.zeros_like(weights)
        np.put_along_axis(capped, keep, np.take_along_axis(weights, keep, axis=1), axis=1)
        weights = capped
    return weights


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
