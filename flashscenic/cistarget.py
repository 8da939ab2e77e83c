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
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ._device import resolve_device
from ._utils import numeric_columns
from .errors import InputError, MissingFileError
from .rankdb import RankingDatabase, read_ranking_database
from ._utils import refuse_non_utf8
from .regulons import MOTIF_COLUMNS, regulons_from_motifs

__all__ = [
    "CisTargetPruner",
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


def _sort_rows(values: torch.Tensor, with_order: bool):
    """Each row sorted ascending (and the permutation when ``with_order``). Ranks within a
    motif are distinct, so any sort is deterministic; numpy's introsort on a contiguous
    copy is about 5x faster than torch.sort on the CPU."""
    if values.device.type != "cpu":
        return torch.sort(values, dim=1) if with_order else (torch.sort(values, dim=1).values, None)
    array = np.ascontiguousarray(values.numpy())
    if not with_order:
        return torch.from_numpy(np.sort(array, axis=1)), None
    order = np.argsort(array, axis=1)
    return torch.from_numpy(np.take_along_axis(array, order, axis=1)), torch.from_numpy(order)


def _gather_columns(ranks: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """ranks[:, index]; numpy's fancy indexing is about 8x faster than torch's on the CPU."""
    if ranks.device.type != "cpu":
        return ranks[:, index]
    return torch.from_numpy(ranks.numpy()[:, index.numpy()])


def _auc_numerators(module_ranks: torch.Tensor, weights: torch.Tensor | None, c: int) -> torch.Tensor:
    """sum_g w_g max(0, c - R_mg) for every motif; module_ranks is motifs x module genes.
    ``weights=None`` (unweighted) stays in integers: exact, and no float64 copy."""
    scores = (c - module_ranks.to(torch.int32)).clamp_(min=0)
    if weights is None:
        return scores.sum(dim=1).to(torch.float64)
    return scores.to(torch.float64) @ weights


def _recovery_moments(module_ranks: torch.Tensor, weights: torch.Tensor | None, rank_threshold: int):
    """Mean and std (ddof=0) over motifs of rcc[r], r < rank_threshold, in float64.

    ``weights=None`` is unweighted recovery: the k-th best module gene of a motif raises
    rcc by 1 and rcc**2 by 2k - 1, all integers, so the variance numerator M*S2 - S1**2 is
    exact and only the final division and square root round.
    """
    n_motifs, n_genes = module_ranks.shape
    ranks, order = _sort_rows(module_ranks, with_order=weights is not None)
    if weights is None:
        first, second = _unweighted_increments(ranks, rank_threshold)
        s1, s2 = first.cumsum(0), second.cumsum(0)
        variance = (n_motifs * s2 - s1 * s1).to(torch.float64) / (n_motifs * n_motifs)
        return s1.to(torch.float64) / n_motifs, variance.sqrt_()
    counted = ranks < rank_threshold
    at = ranks[counted].long()
    step = weights[order]
    cumulative = step.cumsum(dim=1)
    first = torch.bincount(at, weights=step[counted], minlength=rank_threshold)[:rank_threshold]
    second = torch.bincount(at, weights=(step * (2 * cumulative - step))[counted], minlength=rank_threshold)[:rank_threshold]
    mean = first.cumsum(0) / n_motifs
    variance = (second.cumsum(0) / n_motifs - mean**2).clamp_(min=0)
    return mean, variance.sqrt_()


def _unweighted_increments(ranks: torch.Tensor, rank_threshold: int, use_numpy: bool | None = None):
    """Per rank r < rank_threshold: how many motifs gain a module gene there, and the sum of
    (2k - 1) over those gains (k: the gene's place in its motif's sorted row), int64.

    Rows are sorted, so the counted ranks are a prefix of each row and k follows from the
    prefix lengths. numpy does this about 2x faster than torch on the CPU.
    """
    if use_numpy is None:
        use_numpy = ranks.device.type == "cpu"
    if use_numpy:
        array = ranks.numpy()
        counted = array < rank_threshold
        lengths = counted.sum(axis=1)
        at = array[counted]
        place = np.arange(at.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        first = np.bincount(at, minlength=rank_threshold)
        second = np.bincount(at, weights=2 * place + 1, minlength=rank_threshold)
        return torch.from_numpy(first), torch.from_numpy(np.rint(second).astype(np.int64))
    n_motifs, n_genes = ranks.shape
    counted = ranks < rank_threshold
    at = ranks[counted].long()
    odd = torch.arange(1, 2 * n_genes, 2, device=ranks.device).expand(n_motifs, n_genes)
    first = torch.bincount(at, minlength=rank_threshold)
    second = torch.bincount(at, weights=odd[counted].to(torch.float64), minlength=rank_threshold)
    return first, second.round().to(torch.int64)


def _recovery_curves(module_ranks: torch.Tensor, weights: torch.Tensor, rank_threshold: int) -> torch.Tensor:
    """rcc[m, r] for the given motifs (rows of module_ranks), float64."""
    n_motifs = module_ranks.shape[0]
    counted = module_ranks < rank_threshold
    rows = torch.arange(n_motifs, device=module_ranks.device)[:, None].expand_as(module_ranks)[counted]
    flat = rows * rank_threshold + module_ranks[counted].long()
    curves = torch.zeros(n_motifs * rank_threshold, dtype=torch.float64, device=module_ranks.device)
    curves.index_add_(0, flat, weights.expand_as(module_ranks)[counted])
    return curves.view(n_motifs, rank_threshold).cumsum_(1)


def _leading_edges(module_ranks, weights, avg2std, rank_threshold):
    """Recovery curves, rank_at_max and leading-edge masks (module genes with rank <=
    rank_at_max) of the given motifs (rows of module_ranks)."""
    curves = _recovery_curves(module_ranks, weights, rank_threshold)
    rank_at_max = torch.argmax(curves - avg2std, dim=1)  # first maximum, as numpy
    return curves, rank_at_max, module_ranks <= rank_at_max[:, None]


def compute_nes(aucs) -> torch.Tensor:
    """NES = (AUC - mean) / std over the motifs of one module, std with ddof=0 (pySCENIC).

    Computed with numpy on the 1-D vector, exactly as pySCENIC does, so NES values are
    bit-identical and a motif at the threshold is enriched in both or in neither. A
    database where every motif has the same AUC has no spread: NES is NaN, as in pySCENIC,
    and nothing counts as enriched.
    """
    aucs = torch.as_tensor(aucs, dtype=torch.float64)
    array = aucs.cpu().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        nes = (array - array.mean()) / array.std()
    return torch.from_numpy(nes).to(aucs.device)


def compute_recovery_aucs(rankings, module_gene_indices, rank_threshold: int, auc_threshold: float, weights=None):
    """Recovery curves (motifs x rank_threshold) and AUCs of one module, as ctxcore's ``recovery``.

    This materialises every curve, which is what pySCENIC does per module; the pruner
    avoids it. Returns float64 tensors.
    """
    ranks, index, w = _module_inputs(rankings, module_gene_indices, weights)
    c = rank_cutoff(auc_threshold, ranks.shape[1], rank_threshold)
    module_ranks = _gather_columns(ranks, index)
    curves = _recovery_curves(module_ranks, w, rank_threshold)
    return curves, _auc_numerators(module_ranks, None if weights is None else w, c) / ((c + 1) * w.sum())


def prune_single_module(rankings, module_gene_indices, rank_threshold: int = 5000, auc_threshold: float = 0.05,
                        nes_threshold: float = 3.0, weights=None) -> dict:
    """Enriched motifs of one module and their leading edges (no annotation filter).

    ``weights`` gives weighted recovery; ``None`` is pySCENIC's default unweighted recovery.

    Returns a dict of tensors: ``enriched_mask`` (motifs), ``nes``, ``aucs`` (motifs),
    ``rccs`` (enriched motifs x rank_threshold: only those are built),
    ``leading_edge_masks`` (enriched motifs x module genes), ``rank_at_max`` (enriched).
    """
    ranks, index, w = _module_inputs(rankings, module_gene_indices, weights)
    c = rank_cutoff(auc_threshold, ranks.shape[1], rank_threshold)
    module_ranks = _gather_columns(ranks, index)
    aucs = _auc_numerators(module_ranks, None if weights is None else w, c) / ((c + 1) * w.sum())
    nes = compute_nes(aucs)
    enriched = nes >= nes_threshold
    if enriched.any():
        mean, std = _recovery_moments(module_ranks, None if weights is None else w, rank_threshold)
        avg2std = mean + 2.0 * std
    else:  # no leading edge to find: skip the statistics
        avg2std = torch.zeros(rank_threshold, dtype=torch.float64, device=ranks.device)
    curves, rank_at_max, members = _leading_edges(module_ranks[enriched], w, avg2std, rank_threshold)
    return {"enriched_mask": enriched, "nes": nes, "aucs": aucs, "rccs": curves,
            "leading_edge_masks": members, "rank_at_max": rank_at_max}


def _module_inputs(rankings, module_gene_indices, weights):
    """Tensors for the single-module functions: ranks (motifs x genes), gene index, weights."""
    ranks = torch.as_tensor(rankings) if not isinstance(rankings, RankingDatabase) else torch.from_numpy(rankings.rankings)
    if ranks.ndim != 2 or ranks.dtype.is_floating_point:
        raise InputError(f"rankings must be an integer motifs x genes matrix, got {tuple(ranks.shape)} {ranks.dtype}")
    index = torch.as_tensor(np.asarray(module_gene_indices), dtype=torch.long, device=ranks.device).reshape(-1)
    if index.numel() == 0:
        raise InputError("the module has no genes")
    if index.min() < 0 or index.max() >= ranks.shape[1]:
        raise InputError(f"module gene indices must lie in 0..{ranks.shape[1] - 1}")
    if weights is None:
        w = torch.ones(index.numel(), dtype=torch.float64, device=ranks.device)
    else:
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64), device=ranks.device).reshape(-1)
        if w.shape != index.shape:
            raise InputError(f"{w.numel()} weights for {index.numel()} module genes")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
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
            return motif_id in self.table.index.get_level_values("MotifID")
        return (tf_name, motif_id) in self.table.index

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
        """AUCs of a batch of modules (modules x motifs, float64) in one sparse product."""
        lengths = torch.tensor([len(i) for i in indices], device=self.device)
        crow = torch.cat([torch.zeros(1, dtype=torch.int64, device=self.device), lengths.cumsum(0)])
        cols = torch.from_numpy(np.concatenate(indices)).to(self.device)
        vals = torch.from_numpy(np.concatenate(weights).astype(np.float64)).to(self.device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            modules = torch.sparse_csr_tensor(crow, cols, vals, size=(len(indices), self.database.n_genes),
                                              check_invariants=False)
            numerators = (modules @ self.scores_t()).to_dense()
        totals = torch.tensor([float(np.sum(w)) for w in weights], dtype=torch.float64, device=self.device)
        return numerators / ((self.c + 1) * totals[:, None])

    def module_ranks(self, index: np.ndarray) -> torch.Tensor:
        """Motifs x module genes ranks (a transposed view of the gathered gene rows)."""
        return self.ranks_by_gene[torch.from_numpy(index).to(self.device)].T


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
        kernel = self._single
        result = prune_single_module(
            torch.from_numpy(kernel.database.rankings), np.asarray(module_gene_indices).reshape(-1),
            self.rank_threshold, self.auc_threshold, self.nes_threshold, weights)
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
            aucs = kernel.aucs([i for _, i, _ in batch], recovery_weights).cpu()
            for (number, index, weights), recovery, auc_row in zip(batch, recovery_weights, aucs):
                rows += self._enriched_rows(kernel, index, weights, recovery, auc_row, compute_nes(auc_row),
                                            tf_names[number], contexts[number])
        return rows

    def _enriched_rows(self, kernel, index, weights, recovery, aucs, nes, tf, context) -> list[list]:
        database = kernel.database
        enriched = torch.nonzero(nes >= self.nes_threshold).flatten().cpu().numpy()
        if enriched.size == 0:
            return []
        known = self.motif_annotations or MotifAnnotation()
        annotations = known.motifs_of(tf).reindex(database.motif_names[enriched])
        if self.filter_for_annotation and self.motif_annotations is not None:
            keep = annotations["Annotation"].notna().to_numpy()
        else:
            keep = np.ones(enriched.size, dtype=bool)
        if not keep.any():
            return []
        module_ranks = kernel.module_ranks(index)
        recovery_t = torch.from_numpy(recovery).to(self.device)
        mean, std = _recovery_moments(module_ranks, recovery_t if self.weighted_recovery else None, kernel.rank_threshold)
        positions, curve_motifs = self._curve_motifs(enriched, keep, annotations)
        curve_ranks = module_ranks[torch.from_numpy(curve_motifs).to(self.device)]
        _, rank_at_max, members = _leading_edges(curve_ranks, recovery_t, mean + 2.0 * std, kernel.rank_threshold)
        curve_ranks, members = curve_ranks.cpu().numpy(), members.cpu().numpy()
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
