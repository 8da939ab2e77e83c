"""pySCENIC 0.12.1's pruning path (transform.module2df on a ctxcore database), for tests.

pySCENIC's ``transform`` module fails to import under numpy 2 only because it names
``np.object``; the alias is lent for that import only (``pyscenic_oracle.numpy_object_for_import``)
and removed again, so numpy is the same before and after any oracle call.
"""

from __future__ import annotations

import warnings
from functools import partial

import numpy as np
import pandas as pd

from pyscenic_oracle import numpy_object_for_import


def _imports():
    with warnings.catch_warnings(), numpy_object_for_import():  # pySCENIC 0.12.1 predates numpy 2
        warnings.simplefilter("ignore")
        from ctxcore.genesig import GeneSignature, Regulon
        from ctxcore.recovery import aucs, leading_edge, recovery
        from ctxcore.rnkdb import RankingDatabase
        from pyscenic import transform
        from pyscenic.utils import load_motif_annotations
    return {
        "GeneSignature": GeneSignature, "Regulon": Regulon, "aucs": aucs, "leading_edge": leading_edge,
        "recovery": recovery, "RankingDatabase": RankingDatabase, "transform": transform,
        "load_motif_annotations": load_motif_annotations,
    }


def frame_database(rankings: np.ndarray, motif_names, gene_names, name: str):
    """A ctxcore RankingDatabase over a motifs x genes frame held in memory."""
    base = _imports()["RankingDatabase"]

    class FrameDatabase(base):
        def __init__(self):
            self._df = pd.DataFrame(rankings, index=pd.Index(motif_names, name="features"), columns=list(gene_names))
            super().__init__(name)

        @property
        def total_genes(self):
            return self._df.shape[1]

        @property
        def genes(self):
            return tuple(self._df.columns)

        def load_full(self):
            return self._df

        def load(self, gs):
            return self._df.loc[:, self._df.columns.isin(gs.genes)]

    return FrameDatabase()


def pyscenic_module2df(database, tf: str, gene2weight: dict, context, annotation_file, *, rank_threshold: int,
                       auc_threshold: float, nes_threshold: float, weighted_recovery: bool = False,
                       motif_similarity_fdr: float = 0.001, orthologous_identity_threshold: float = 0.0) -> pd.DataFrame:
    """pySCENIC's enriched-motif rows for one module (flat columns, index TF/MotifID)."""
    api = _imports()
    module = api["Regulon"](name=f"{tf}_module", gene2weight=gene2weight, transcription_factor=tf, gene2occurrence=[],
                            context=frozenset(context))
    annotations = api["load_motif_annotations"](str(annotation_file), motif_similarity_fdr=motif_similarity_fdr,
                                                orthologous_identity_threshold=orthologous_identity_threshold)
    features = partial(api["transform"].module2features_auc1st_impl, rank_threshold=rank_threshold,
                       auc_threshold=auc_threshold, nes_threshold=nes_threshold, filter_for_annotation=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = api["transform"].module2df(database, module, annotations, weighted_recovery=weighted_recovery,
                                           module2features_func=features)
    if len(frame) == 0:
        return pd.DataFrame()
    frame.columns = frame.columns.droplevel(0)
    return frame


def ctxcore_module(rankings: np.ndarray, module_index: np.ndarray, weights: np.ndarray, *, rank_threshold: int,
                   auc_threshold: float, nes_threshold: float, weighted: bool):
    """AUC, NES and, for enriched motifs, rank-at-max and leading-edge positions from each
    motif's OWN curve (bug #635 fixed), with ctxcore's public functions."""
    api = _imports()
    genes = np.array([f"g{i}" for i in module_index])
    frame = pd.DataFrame(rankings[:, module_index], columns=genes)
    recovery_weights = weights if weighted else np.ones(len(module_index))
    n_genes = rankings.shape[1]
    curves, aucs = api["recovery"](frame, n_genes, recovery_weights, rank_threshold, auc_threshold)
    aucs_direct = api["aucs"](frame, n_genes, recovery_weights, auc_threshold)
    nes = (aucs - aucs.mean()) / aucs.std()
    enriched = np.flatnonzero(nes >= nes_threshold)
    avg2std = curves.mean(axis=0) + 2.0 * curves.std(axis=0)
    edges = [api["leading_edge"](curves[m], avg2std, frame.values[m], np.arange(len(module_index)), weights)
             for m in enriched]
    return {"aucs": aucs, "aucs_direct": aucs_direct, "nes": nes, "enriched": enriched,
            "rank_at_max": np.array([r for _, r in edges]),
            "leading_edge": [np.array([int(g) for g, _ in genes_weights]) for genes_weights, _ in edges]}
