"""Cells embedded by their regulon activity: a kNN graph of the AUC on the run's device, and
a UMAP of it.

The neighbour search, the costly part on many cells, runs in torch on the device (exact,
Euclidean, a block of cells at a time); umap-learn then builds the fuzzy graph from those
neighbours and lays it out on the CPU, without searching again. umap-learn is an optional
extra (``pip install flashscenic[umap]``); :func:`knn` needs only torch.

``gpu_knn`` and ``run_umap`` are upstream flashscenic's names of :func:`knn` and :func:`umap`.
"""

from __future__ import annotations

import warnings

import numpy as np

from ._device import resolve_device
from .errors import InputError, MissingDependencyError

__all__ = ["knn", "umap", "gpu_knn", "run_umap"]


def knn(auc, n_neighbors: int = 15, device="cuda", batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k nearest neighbours of every cell, computed on ``device``.

    Each cell is its own first neighbour (distance 0), as umap-learn expects of a
    precomputed kNN. Memory on the device: the AUC plus ``batch_size`` x cells distances.

    Parameters
    ----------
    auc
        Cells x regulons AUC (numpy, torch or DataFrame); finite.
    n_neighbors
        Neighbours per cell, itself included; at most the number of cells are returned.
    device
        ``'cuda'`` (the CPU, with one warning, where there is no GPU), ``'cpu'``, ``'auto'``
        or ``'cuda:N'``.
    batch_size
        Cells whose distances to all cells are computed at once.

    Returns
    -------
    tuple
        ``(indices, distances)``: cells x neighbours, int64 and float32, nearest first.
    """
    import torch

    values = _auc_array(auc)
    _check_count("n_neighbors", n_neighbors)
    _check_count("batch_size", batch_size)
    where = resolve_device(device)
    points = torch.from_numpy(values - values.mean(axis=0)).to(where)  # centred: smaller norms, exacter distances
    n_cells, k = points.shape[0], min(int(n_neighbors), points.shape[0])
    indices = np.empty((n_cells, k), dtype=np.int64)
    distances = np.empty((n_cells, k), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, n_cells, batch_size):
            stop = min(start + batch_size, n_cells)
            block = torch.cdist(points[start:stop], points)
            rows = torch.arange(stop - start, device=where)
            block[rows, rows + start] = -1.0  # each cell first, whatever the rounding
            nearest, index = torch.topk(block, k, dim=1, largest=False)
            indices[start:stop] = index.cpu().numpy()
            distances[start:stop] = nearest.clamp(min=0).cpu().numpy()
    return indices, distances


def umap(auc, n_neighbors: int = 15, n_components: int = 2, min_dist: float = 0.1, metric: str = "euclidean",
         device="cuda", knn_batch_size: int = 1024, random_state: int | None = 42, **umap_kwargs) -> np.ndarray:
    """UMAP of the cells by their regulon activity, from the :func:`knn` graph of ``device``.

    Needs umap-learn (``pip install flashscenic[umap]``). The neighbours are Euclidean, so
    ``metric`` shapes only the layout; keep ``'euclidean'`` for a consistent embedding.

    Parameters
    ----------
    auc
        Cells x regulons AUC (numpy, torch or DataFrame); finite; at least
        max(3, n_components + 2) cells.
    n_neighbors, n_components, min_dist, metric, random_state, **umap_kwargs
        Passed to ``umap.UMAP`` (``n_neighbors`` also sizes the kNN graph; at most the
        number of cells less one). ``random_state`` makes the layout reproducible (umap-learn
        then runs it on one thread); ``None`` lets it use every core.
    device, knn_batch_size
        Where and in blocks of how many cells :func:`knn` searches.

    Returns
    -------
    np.ndarray
        Cells x ``n_components``, float32.

    Raises
    ------
    MissingDependencyError
        umap-learn is not installed (an ``ImportError``).
    """
    try:
        with warnings.catch_warnings():  # umap-learn's notice that its TensorFlow variant is unavailable
            warnings.filterwarnings("ignore", message="Tensorflow not installed", category=ImportWarning)
            import umap as umap_learn
    except ImportError as error:
        raise MissingDependencyError("umap needs umap-learn: pip install flashscenic[umap]") from error
    values = _auc_array(auc)
    _check_count("n_neighbors", n_neighbors)
    needed = max(3, n_components + 2)  # with fewer cells umap-learn's spectral start fails
    if values.shape[0] < needed:
        raise InputError(f"a UMAP in {n_components} dimensions needs at least {needed} cells, got {values.shape[0]}")
    n_neighbors = min(n_neighbors, values.shape[0] - 1)
    indices, distances = knn(values, n_neighbors, device=device, batch_size=knn_batch_size)
    reducer = umap_learn.UMAP(n_neighbors=n_neighbors, n_components=n_components, min_dist=min_dist, metric=metric,
                              random_state=random_state, precomputed_knn=(indices, distances, None),
                              **umap_kwargs)
    with warnings.catch_warnings():  # both say what was asked for: a seeded layout, no index for new cells
        warnings.filterwarnings("ignore", message=r"n_jobs value .* overridden", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
        return reducer.fit_transform(values).astype(np.float32, copy=False)


gpu_knn = knn  # upstream flashscenic's names
run_umap = umap


def _auc_array(auc) -> np.ndarray:
    """The AUC as a 2-D finite float32 numpy array."""
    from .modules import to_numpy

    values = to_numpy(auc)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise InputError(f"the AUC must be cells x regulons with at least one of each, got shape {values.shape}")
    if values.dtype.kind not in "biuf":
        raise InputError(f"the AUC must hold numbers, got dtype {values.dtype}")
    values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise InputError("the AUC has NaN or infinite values; a neighbour graph needs finite ones")
    return values


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
