"""pySCENIC 0.12.1 / ctxcore 0.2.0 themselves, wrapped for the equality tests.

The oracle is imported lazily and its import-time noise (ctxcore's pkg_resources
deprecation warning) is silenced here, so the rest of the suite can stay strict.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pandas as pd


@contextlib.contextmanager
def numpy_object_for_import():
    """Lend ``np.object`` (removed in numpy 2) for the ``with`` block only, then remove it again.

    pySCENIC 0.12.1's ``transform`` module names it once, at import. Outside the block numpy
    is left as it was, so no test's outcome depends on whether an oracle ran before it.
    """
    lent = not has_numpy_object()
    if lent:
        np.object = object
    try:
        yield
    finally:
        if lent and has_numpy_object():
            del np.object


def has_numpy_object() -> bool:
    """Whether ``np.object`` exists (asking numpy 2 warns that it may come back: silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return hasattr(np, "object")


@contextlib.contextmanager
def numpy_global_random_state():
    """Restore numpy's global generator after the block: pySCENIC calls ``np.random.seed``."""
    state = np.random.get_state()
    try:
        yield
    finally:
        np.random.set_state(state)


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
    with numpy_global_random_state():
        result = aucell(frame, sigs, auc_threshold=auc_threshold, seed=seed, num_workers=1)
    return result[[s.name for s in sigs]].to_numpy()  # pySCENIC sorts columns by name


# --- regulons: pySCENIC's load_motifs and df2regulons (flashscenic.regulons) -------------


def _transform_api():
    """``pyscenic.utils.load_motifs`` and ``pyscenic.transform.df2regulons``.

    pyscenic.transform uses ``np.object`` (removed in numpy 2) once, at import, to build
    dtype metadata; the alias is lent for the import only and removed again.
    """
    import sys

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "pyscenic.transform" not in sys.modules:
            with numpy_object_for_import():
                import pyscenic.transform  # noqa: F401
        from pyscenic.transform import df2regulons
        from pyscenic.utils import load_motifs
    return load_motifs, df2regulons


def pyscenic_load_motifs(path) -> pd.DataFrame:
    """pySCENIC's ``load_motifs(path)``: the (TF, MotifID)-indexed frame with 'Enrichment' columns."""
    load_motifs, _ = _transform_api()
    return load_motifs(str(path))


def pyscenic_motif_frame(table: pd.DataFrame) -> pd.DataFrame:
    """A flashscenic motif table as the frame pySCENIC's ctx step returns (and load_motifs reads)."""
    columns = ["AUC", "Annotation", "Context", "MotifSimilarityQvalue", "NES", "OrthologousIdentity", "RankAtMax", "TargetGenes"]
    frame = table[columns].copy()
    frame.index = pd.MultiIndex.from_arrays([table["TF"], table["MotifID"]], names=["TF", "MotifID"])
    frame.columns = pd.MultiIndex.from_tuples([("Enrichment", c) for c in columns])
    return frame


def pyscenic_regulons(frame: pd.DataFrame) -> list:
    """pySCENIC's ``df2regulons(frame, save_columns=[NES, OrthologousIdentity, MotifSimilarityQvalue, Annotation])``.

    Its progress ``print`` calls are swallowed. Returns ctxcore ``Regulon`` objects in
    pySCENIC's order.
    """
    import contextlib
    import io

    _, df2regulons = _transform_api()
    save = ["NES", "OrthologousIdentity", "MotifSimilarityQvalue", "Annotation"]
    with contextlib.redirect_stdout(io.StringIO()):
        return df2regulons(frame, save_columns=save)


# --- modules, RSS, binarisation: pySCENIC's utils, rss and binarization ------------------


def _lend_numpy_aliases():
    """Lend ``np.float`` and ``np.msort`` (both removed in numpy 2) for one oracle call.

    pySCENIC 0.12.1 still calls them in ``rss.regulon_specificity_scores``,
    ``binarization.derive_threshold`` and ``diptest``, so on numpy 2 those functions fail
    with AttributeError before computing anything. ``np.msort(a)`` was ``np.sort(a, axis=0)``.
    Returns a function that takes the aliases back.
    """
    lent = []
    for name, value in (("float", float), ("msort", lambda a: np.sort(a, axis=0))):
        if not hasattr(np, name):
            setattr(np, name, value)
            lent.append(name)

    def give_back():
        for name in lent:
            delattr(np, name)

    return give_back


def adjacency_table(weights: np.ndarray, tf_names, gene_names) -> pd.DataFrame:
    """The positive entries of a TF x gene matrix as pySCENIC's adjacency table, in matrix order."""
    weights = np.asarray(weights, dtype=np.float64)
    rows, cols = np.nonzero(weights > 0)
    return pd.DataFrame(
        {
            "TF": np.asarray(tf_names, dtype=object)[rows],
            "target": np.asarray(gene_names, dtype=object)[cols],
            "importance": weights[rows, cols],
        }
    )


def pyscenic_modules(
    weights,
    tf_names,
    gene_names,
    *,
    percentile_thresholds=(75,),
    top_n_targets=(50,),
    top_n_per_target=(5, 10, 50),
    min_genes=20,
    expression=None,
    rho_threshold=0.03,
    keep_only_activating=True,
) -> list[tuple[str, frozenset, dict]]:
    """pySCENIC's ``modules_from_adjacencies`` on the adjacency table of ``weights``.

    Without ``expression``: ``rho_dichotomize=False`` (the expression frame is then only
    deduplicated, so a one-row placeholder is passed). Returns (TF, context, gene2weight)
    per module, in pySCENIC's order.
    """
    import logging

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pyscenic.utils import modules_from_adjacencies
    logging.getLogger("pyscenic.utils").setLevel(logging.ERROR)
    adjacencies = adjacency_table(weights, tf_names, gene_names)
    if expression is None:
        frame = pd.DataFrame(np.zeros((1, len(gene_names))), columns=list(gene_names))
    else:
        frame = pd.DataFrame(np.asarray(expression, dtype=np.float64), columns=list(gene_names))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas' groupby.apply deprecation, corrcoef of constants
        modules = modules_from_adjacencies(
            adjacencies,
            frame,
            thresholds=[q / 100 for q in percentile_thresholds],
            top_n_targets=tuple(top_n_targets),
            top_n_regulators=tuple(top_n_per_target),
            min_genes=min_genes,
            rho_dichotomize=expression is not None,
            keep_only_activating=keep_only_activating,
            rho_threshold=rho_threshold,
        )
    return [(m.transcription_factor, frozenset(m.context), dict(m.gene2weight)) for m in modules]


def pyscenic_rss(auc: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
    """pySCENIC's ``regulon_specificity_scores(auc, labels)`` (cell types in order of appearance)."""
    from pyscenic.rss import regulon_specificity_scores

    give_back = _lend_numpy_aliases()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 0/0 for a regulon whose AUC sums to 0
            return regulon_specificity_scores(auc, labels)
    finally:
        give_back()


def pyscenic_binarize(auc: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """pySCENIC's ``binarize(auc, seed=seed, num_workers=1)``: (binary frame, thresholds).

    It calls ``np.random.seed(seed)``; numpy's global generator is restored afterwards, so
    the tests that run after it draw what they would have drawn without it. Its ``multiprocessing.Pool`` is swapped for an in-process one (same ``starmap`` calls,
    same order), so no process is forked from the test run.
    """
    import itertools

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pyscenic.binarization as binarization

    class InProcessPool:
        def __init__(self, processes=None):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def starmap(self, func, iterable):
            return list(itertools.starmap(func, iterable))

    give_back = _lend_numpy_aliases()
    pool, binarization.Pool = binarization.Pool, InProcessPool
    try:
        with warnings.catch_warnings(), numpy_global_random_state():  # binarize reseeds numpy's generator
            warnings.simplefilter("ignore")
            return binarization.binarize(auc, seed=seed, num_workers=1)
    finally:
        binarization.Pool = pool
        give_back()


def pyscenic_dip(values: np.ndarray) -> float:
    """pySCENIC's Hartigan dip statistic ``diptest.dip_fn(sorted values)``."""
    from pyscenic.diptest import dip_fn

    give_back = _lend_numpy_aliases()
    try:
        return float(dip_fn(np.sort(np.asarray(values)), False, True))
    finally:
        give_back()
