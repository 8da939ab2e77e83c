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
"""

from __future__ import annotations

import logging
import warnings
from typing import Literal

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
) -> np.ndarray:
    """Score every regulon in every cell with pySCENIC's AUCell.

    Parameters
    ----------
    exp_array
        Expression, cells x genes: numpy array, scipy.sparse matrix (processed one
        batch of rows at a time, never densified whole) or torch tensor. Log-transformed
        values as pySCENIC expects; negative values (z-scores) are fine.
    adj_array
        Regulons x genes weights (numpy, scipy.sparse or torch). The non-zero entries of a
        row are the regulon's genes and their weights (binary rows give pySCENIC's
        unweighted AUC). Weights must be finite and non-negative.
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
        over); results do not depend on it beyond float rounding.
    seed
        Seed of the gene permutation that breaks ties; the same seed gives pySCENIC's
        ``aucell(..., seed=seed)`` result. ``None`` draws a fresh permutation.
    ties
        ``'pyscenic'`` (default): pySCENIC's seeded tie order. ``'average'``: the expected
        AUC over uniformly random tie-breaking, exact and seed-free (``seed`` is ignored).
    verbose
        Show a progress bar on a terminal when there is more than one batch.

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
    weights_t = torch.from_numpy(np.ascontiguousarray((weights / norm[:, None]).T)).to(dev)
    if ties == "pyscenic":
        tie_order = _TieOrder(np.random.RandomState(seed).permutation(n_genes), dev)
        score = lambda x: _rank_product(tie_order.top_genes(x, c), n_genes, weights_t)  # noqa: E731
    else:
        score = lambda x: _average_scores(x, c) @ weights_t  # noqa: E731

    starts = range(0, n_cells, batch_size)
    bar = tqdm(starts, desc="AUCell", unit="batch", disable=None if verbose and len(starts) > 1 else True)
    with torch.inference_mode():
        for start in bar:
            stop = min(start + batch_size, n_cells)
            out[start:stop] = score(expr.rows(start, stop, dev)).to("cpu", torch.float32).numpy()
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

    def top_genes(self, x: torch.Tensor, c: int) -> torch.Tensor:
        """Genes of rank 0, 1, ..., c-1 in each row of ``x`` (batch x c)."""
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
        return _largest_first(ordered.bitwise_left_shift_(32).bitwise_or_(self.tie_breaker), c)

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


def _largest_first(keys: torch.Tensor, c: int) -> torch.Tensor:
    """Column indices of the c largest keys of each row, largest first (keys are distinct).

    On the CPU numpy's introselect is about 3x faster than torch.topk, so it selects there.
    """
    if keys.device.type != "cpu":
        return torch.topk(keys, c, dim=1, sorted=True).indices
    keys = keys.numpy()
    top = np.argpartition(keys, keys.shape[1] - c, axis=1)[:, -c:]
    order = np.argsort(np.take_along_axis(keys, top, axis=1), axis=1)[:, ::-1]
    return torch.from_numpy(np.take_along_axis(top, order, axis=1))


def _rank_product(genes: torch.Tensor, n_genes: int, weights_t: torch.Tensor) -> torch.Tensor:
    """S @ weights_t, with S[cell, gene of rank r] = c - r held as a CSR matrix (c non-zeros a row)."""
    n_cells, c = genes.shape
    contribution = torch.arange(c, 0, -1, device=genes.device, dtype=weights_t.dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        s = torch.sparse_csr_tensor(
            torch.arange(0, n_cells * c + 1, c, device=genes.device),
            genes.reshape(-1),
            contribution.repeat(n_cells),
            size=(n_cells, n_genes),
            check_invariants=False,
        )
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
        self._check_finite()

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
