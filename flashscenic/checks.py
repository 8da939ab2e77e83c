"""Early input checks: fail in seconds, before any heavy work, with the likely cause.

A SCENIC run whose expression genes do not match the ranking databases (another species,
Ensembl IDs against symbols) runs for an hour and then fails with pySCENIC's "Signatures
dataframe is empty", or silently returns nothing. These checks read only gene names (the
databases' names come from their Feather schema or cache, not their ranks) and say what is
probably wrong and how to fix it, with examples of the names that did not match.

* :func:`check_gene_overlap`: under ``min_fraction`` (50%) of the expression genes are in a
  ranking database -> error naming the likely cause.
* :func:`check_tf_overlap`: no TF of the list is among the expression genes -> error.
* :func:`check_motif_annotation`: the annotation table lacks a column -> error naming them
  (the table is read by :meth:`MotifAnnotation.load_from_file`, which does the check; the
  loaded table is returned so it is read once).
* :func:`check_inputs` runs them all.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._utils import check_unique, read_text
from .errors import InputError

__all__ = ["GeneOverlap", "InputReport", "check_gene_overlap", "check_tf_overlap", "check_motif_annotation",
           "check_inputs", "read_tf_names"]

logger = logging.getLogger(__name__)

_EXAMPLES = 5
_GENE_ID = re.compile(r"^(ENS[A-Z]*G\d{6,}|FBgn\d{7})(\.\d+)?$")  # Ensembl (any species) or FlyBase gene IDs


@dataclass(frozen=True)
class GeneOverlap:
    """How many expression genes one ranking database knows.

    ``fraction`` is matched / expression genes: a dataset normally has genes no database
    ranks (non-coding, unplaced), so 70-95% is usual; under 50% something is wrong.
    """

    database: str
    n_expression_genes: int
    n_database_genes: int
    n_matched: int
    unmatched_examples: tuple[str, ...]

    @property
    def fraction(self) -> float:
        return self.n_matched / self.n_expression_genes if self.n_expression_genes else 0.0


@dataclass(frozen=True)
class InputReport:
    """What :func:`check_inputs` found: the overlap per database, the TFs present, the annotations."""

    gene_overlaps: tuple[GeneOverlap, ...]
    tfs_found: tuple[str, ...]
    motif_annotation: object | None  # a MotifAnnotation, already loaded


def read_tf_names(tf_names) -> list[str]:
    """TF names from a sequence, or from a file with one name per line (blank lines and ``#`` skipped)."""
    if isinstance(tf_names, (str, Path)):
        lines = (line.strip() for line in read_text(tf_names, "TF list").splitlines())
        return [line for line in lines if line and not line.startswith("#")]
    return [str(t) for t in tf_names]


def _database_genes(database) -> tuple[str, list[str]]:
    """(name, gene names) of a RankingDatabase, a database file, or a sequence of names."""
    from .rankdb import RankingDatabase, read_database_gene_names

    if isinstance(database, RankingDatabase):
        return database.name, database.gene_names.tolist()
    if isinstance(database, (str, Path)):
        return Path(database).stem, read_database_gene_names(database).tolist()
    return "database", [str(g) for g in database]


def check_gene_overlap(expression_genes: Sequence[str], database, min_fraction: float = 0.5) -> GeneOverlap:
    """Raise unless at least ``min_fraction`` of the expression genes are genes of ``database``.

    Parameters
    ----------
    expression_genes
        Gene names of the expression matrix (its columns).
    database
        A :class:`RankingDatabase`, the path of a ranking database (only its gene names are
        read), or a sequence of gene names.
    min_fraction
        Smallest acceptable fraction of expression genes found in the database.

    Returns
    -------
    GeneOverlap
        The counts, for logging or a report.
    """
    genes = [str(g) for g in expression_genes]
    if not genes:
        raise InputError("the expression matrix has no gene names; pass the gene names of its columns")
    name, db_genes = _database_genes(database)
    known = set(db_genes)
    unmatched = [g for g in genes if g not in known]
    overlap = GeneOverlap(name, len(genes), len(known), len(genes) - len(unmatched), tuple(unmatched[:_EXAMPLES]))
    logger.info("%d of %d expression genes (%.0f%%) are in %s", overlap.n_matched, len(genes),
                100 * overlap.fraction, name)
    if overlap.fraction < min_fraction:
        raise InputError(
            f"only {overlap.n_matched} of {len(genes)} expression genes ({100 * overlap.fraction:.1f}%, under "
            f"{100 * min_fraction:.0f}%) are in the ranking database {name!r}: {_likely_cause(genes, db_genes)}. "
            f"Unmatched expression genes, e.g. {', '.join(unmatched[:_EXAMPLES])}; database genes, e.g. "
            f"{', '.join(db_genes[:_EXAMPLES])}"
        )
    return overlap


def check_tf_overlap(tf_names, expression_genes: Sequence[str]) -> list[str]:
    """The TFs (list or TF-list file) that are expression genes, in list order; raise if none is.

    Without a TF among the expression genes no module, hence no regulon, can be built.
    """
    tfs = read_tf_names(tf_names)
    if not tfs:
        raise InputError("the TF list is empty; pass the TF list of the species (e.g. from download_data)")
    genes = [str(g) for g in expression_genes]
    present = set(genes)
    found = [t for t in tfs if t in present]
    logger.info("%d of %d TFs are among the %d expression genes", len(found), len(tfs), len(genes))
    if not found:
        raise InputError(
            f"none of the {len(tfs)} TFs is among the {len(genes)} expression genes: {_likely_cause(genes, tfs)}. "
            f"TFs, e.g. {', '.join(tfs[:_EXAMPLES])}; expression genes, e.g. {', '.join(genes[:_EXAMPLES])}"
        )
    return found


def check_motif_annotation(path, motif_similarity_fdr: float = 0.001, orthologous_identity_threshold: float = 0.0):
    """Load the motif annotation table, failing early (and naming them) when columns are missing.

    The column check is :meth:`MotifAnnotation.load_from_file`'s own; the loaded table is
    returned, so the run does not read it again.
    """
    from .cistarget import MotifAnnotation

    annotation = MotifAnnotation.load_from_file(path, motif_similarity_fdr, orthologous_identity_threshold)
    if annotation.table.empty:
        raise InputError(f"motif annotation file {str(path)!r} has no row with q-value <= {motif_similarity_fdr} "
                         f"and identity >= {orthologous_identity_threshold}: no motif can be annotated to a TF")
    return annotation


def check_inputs(expression_genes: Sequence[str], databases: Iterable = (), tf_names=None, motif_annotation=None,
                 min_gene_overlap: float = 0.5) -> InputReport:
    """Run every early check that applies; raise on the first problem, else return what was found.

    Parameters
    ----------
    expression_genes
        Gene names of the expression matrix.
    databases
        Ranking databases (objects or paths; only gene names are read).
    tf_names
        TF names or a TF-list file; None skips the TF check.
    motif_annotation
        Path of the motif2tf table; None skips it.
    min_gene_overlap
        See :func:`check_gene_overlap`.
    """
    genes = [str(g) for g in expression_genes]
    check_unique(genes, "expression gene names")
    overlaps = tuple(check_gene_overlap(genes, d, min_gene_overlap) for d in databases)
    tfs = tuple(check_tf_overlap(tf_names, genes)) if tf_names is not None else ()
    annotation = check_motif_annotation(motif_annotation) if motif_annotation is not None else None
    return InputReport(overlaps, tfs, annotation)


# ----------------------------------------------------------------------------- diagnosis


def _style(names: Sequence[str]) -> dict:
    """Fractions of names that are gene IDs, all upper case (human), or capitalised (mouse, fly)."""
    sample = [n for n in names[:5000] if n]
    count = max(len(sample), 1)
    letters = [n for n in sample if any(c.isalpha() for c in n)]
    return {
        "ids": sum(bool(_GENE_ID.match(n)) for n in sample) / count,
        "upper": sum(n == n.upper() for n in letters) / max(len(letters), 1),
        "capitalised": sum(n[:1].isupper() and n[1:] != n[1:].upper() for n in letters) / max(len(letters), 1),
        "numeric": sum(n.isdigit() for n in sample) / count,
    }


def _likely_cause(query: Sequence[str], reference: Sequence[str]) -> str:
    """A sentence naming the most likely reason why ``query`` names are not ``reference`` names."""
    q, r = _style(query), _style(reference)
    if q["numeric"] > 0.5:
        return ("the gene names are numbers: pass the names of the genes (e.g. adata.var_names), "
                "not their positions")
    if q["ids"] > 0.5 and r["ids"] < 0.1:
        return ("the expression genes are Ensembl/FlyBase gene IDs (e.g. ENSG00000141510) while the database "
                "uses gene symbols (e.g. TP53): use gene symbols as names (e.g. adata.var_names = "
                "adata.var['gene_symbols'], then adata.var_names_make_unique())")
    if r["ids"] > 0.5 and q["ids"] < 0.1:
        return "the database uses gene IDs while the expression genes are symbols: use a database indexed by symbol"
    upper_query, upper_reference = {n.upper() for n in query}, {n.upper() for n in reference}
    shared = len(upper_query & upper_reference)  # of the smaller set: a TF list is small, a genome is not
    if shared >= 0.5 * max(min(len(upper_query), len(upper_reference)), 1):
        if q["capitalised"] > 0.5 and r["upper"] > 0.5:
            return ("the names match only when upper-cased: the expression genes look like mouse or fly "
                    "symbols (e.g. Gapdh) and the database like human ones (e.g. GAPDH); use the databases of "
                    "the data's species (download_data(species='mouse'), or 'drosophila')")
        if q["upper"] > 0.5 and r["capitalised"] > 0.5:
            return ("the names match only when upper-cased: the expression genes look like human symbols "
                    "(e.g. GAPDH) and the database like mouse or fly ones (e.g. Gapdh); use the human databases "
                    "(download_data(species='human')), or check whether the names were upper-cased by a tool")
        return "the names differ in letter case only: check the species and whether a tool changed the case"
    return ("most names differ: check that the databases are for the data's species (human: hg38, mouse: "
            "mm10, fly: dm6) and that genes are named by symbol")
