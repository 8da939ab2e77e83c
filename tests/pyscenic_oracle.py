"""pySCENIC 0.12.1 / ctxcore 0.2.0 themselves, wrapped for the equality tests.

The oracle is imported lazily and its import-time noise (ctxcore's pkg_resources
deprecation warning) is silenced here, so the rest of the suite can stay strict.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd


def _aucell_api():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from ctxcore.genesig import GeneSignature
        from pyscenic.aucell import aucell
    return aucell, GeneSignature


def gene_names(n_genes: int) -> list[str]:
    return [f"g{j:05d}" for j in range(n_genes)]


def signatures(weights: np.ndarray) -> list:
    """One weighted ctxcore GeneSignature per row, from the row's non-zero entries."""
    _, GeneSignature = _aucell_api()
    genes = gene_names(weights.shape[1])
    return [
        GeneSignature(name=f"r{i:05d}", gene2weight={genes[j]: float(row[j]) for j in np.flatnonzero(row)})
        for i, row in enumerate(np.asarray(weights, dtype=np.float64))
    ]


def pyscenic_aucell(expression: np.ndarray, weights: np.ndarray, auc_threshold: float, seed: int) -> np.ndarray:
    """pySCENIC's ``aucell(df, signatures, auc_threshold, seed=seed)`` as cells x regulons, in row order."""
    aucell, _ = _aucell_api()
    frame = pd.DataFrame(np.asarray(expression), columns=gene_names(expression.shape[1]))
    sigs = signatures(weights)
    result = aucell(frame, sigs, auc_threshold=auc_threshold, seed=seed, num_workers=1)
    return result[[s.name for s in sigs]].to_numpy()  # pySCENIC sorts columns by name
