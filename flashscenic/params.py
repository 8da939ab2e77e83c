"""The one home of every SCENIC parameter: default, type, allowed values, help text.

``Params`` is the parameter object of a run. ``run_flashscenic``'s keyword arguments, its
docstring's parameter list, ``run_pipeline(params=...)``, every ``flashscenic`` command-line
flag of a SCENIC parameter and the parameters a results store records are all derived
from these fields (``tests/test_params.py`` checks that they agree), so a default or a
check is written once. Building a ``Params`` validates every value, so a mistake is
reported before any stage runs, not hours later.

Where the command line deliberately differs from the Python API it is declared once, in
``CLI_DEFAULTS``, with the reason; ``flashscenic run --help`` and the README show it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError

__all__ = ["Params", "DEVICES", "MERGE_STRATEGIES", "AGGREGATION_METHODS", "EXPORT_FORMATS", "CLI_DEFAULTS", "STORE_PIPELINE_ONLY",
           "DEFAULT_DASHBOARD"]

DEFAULT_SPECIES, DEFAULT_VERSION, DEFAULT_DATASOURCE = "human", "v10", "scenic"  # of downloaded resources
DEVICES = ("auto", "cpu", "cuda")
MERGE_STRATEGIES = ("union", "best")
AGGREGATION_METHODS = ("mean_adjacency", "frequency")  # of GRN runs (upstream flashscenic's names)
DEFAULT_DASHBOARD = ":8787"  # the embedded Dask cluster's dashboard (127.0.0.1:8787, or a free port)
EXPORT_FORMATS = {  # export_results' formats -> default file name
    "adjacencies": "adjacencies.tsv",
    "motifs": "reg.csv",
    "gmt": "regulons.gmt",
    "json": "regulons.json",
    "auc": "auc.csv",
    "anndata": "aucell.h5ad",
    "loom": "scope.loom",
}

# fields that are not run_flashscenic's: the store pipeline's own (multi_run_flashscenic names its own: n_runs,
# cv_threshold, aggregation_method, frequency_threshold, min_genes_filter)
STORE_PIPELINE_ONLY = ("grn_max_cells", "grn_runs", "grn_cv_threshold", "grn_aggregation", "grn_frequency_threshold",
                       "grn_min_genes_filter")

# name -> (command-line default, why it differs from the API's)
CLI_DEFAULTS: dict[str, tuple[Any, str]] = {
    "device": ("auto", "the command line takes CUDA when there is a GPU and the CPU otherwise; the API's documented "
               "default 'cuda' falls back to the CPU with a warning"),
    "seed": (0, "a command-line run is reproducible as typed; the API's None draws a seed (recorded in the run)"),
    "grn_max_cells": (100_000, "a command-line run on an atlas trains the GRN on a sample; the API trains on every "
                      "cell unless asked"),
}


# --- checks: each returns the normalised value or raises InputError ------------------------


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _integer(low: int, high: int | None = None, optional: bool = False) -> Callable:
    def check(name, value):
        if value is None and optional:
            return None
        if not _is_int(value) or value < low or (high is not None and value >= high):
            span = f">= {low}" if high is None else f"in {low}..{high - 1}"
            raise InputError(f"{name} must be an integer {span}{' or None' if optional else ''}, got {value!r}")
        return int(value)
    return check


def _number(low: float = -math.inf, high: float = math.inf, *, open_low=False, open_high=False,
            optional: bool = False) -> Callable:
    def check(name, value):
        if value is None and optional:
            return None
        ok = _is_number(value) and math.isfinite(value)
        if ok:
            ok = (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
        if not ok:
            if low == -math.inf and high == math.inf:
                span = "a finite number"
            else:
                span = f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
            raise InputError(f"{name} must be {span}{' or None' if optional else ''}, got {value!r}")
        return float(value) if not _is_int(value) else value
    return check


def _numbers(item: Callable) -> Callable:
    def check(name, value):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise InputError(f"{name} must be a sequence of numbers, got {value!r}")
        return tuple(item(f"each of {name}", v) for v in value)
    return check


def _boolean(name, value):
    if not isinstance(value, bool):
        raise InputError(f"{name} must be True or False, got {value!r}")
    return value


def _choice(choices: tuple[str, ...]) -> Callable:
    def check(name, value):
        if value not in choices:
            raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    return check


def _text(optional: bool = True) -> Callable:
    def check(name, value):
        if value is None and optional:
            return None
        if not isinstance(value, str) and not hasattr(value, "__fspath__"):
            raise InputError(f"{name} must be a string or a path, got {value!r}")
        return str(value) if hasattr(value, "__fspath__") else value
    return check


def _paths(name, value):
    if value is None:
        return None
    if isinstance(value, str) or hasattr(value, "__fspath__"):
        value = [value]
    return tuple(_text(False)(name, v) for v in value)


def _param(default, help: str, check: Callable | None = None, *, group: str, kind: type = str,
           choices: tuple[str, ...] | None = None, result: bool = True, flag: str | None = None,
           cli: bool = True) -> Any:
    """A field of ``Params``: ``help`` is its documentation (first sentence: its ``--help``).

    ``result``: it can change the numbers (part of a run's fingerprint); ``kind``: the
    command-line type; ``flag``: a flag name other than the dash form of the field's name;
    ``cli=False``: no generated flag (the command line has its own, e.g. ``--quiet``).
    """
    return field(default=default, metadata={"help": help, "check": check or _choice(choices), "group": group,
                                            "kind": kind, "choices": choices, "result": result, "flag": flag,
                                            "cli": cli})


@dataclass(frozen=True)
class Params:
    """Every parameter of a SCENIC run, validated when built.

    Build it with keywords (``Params(grn_n_steps=500, seed=0)``) or from a mapping
    (``Params.from_dict({...})``, which names an unknown key); change it with
    ``params.replace(...)``. The fields, their defaults and their meaning are those of
    ``run_flashscenic``, but for ``STORE_PIPELINE_ONLY`` (``multi_run_flashscenic`` names the
    run count and CV threshold ``n_runs`` and ``cv_threshold``).
    """

    species: str = _param(DEFAULT_SPECIES, "Species of the downloaded resources: 'human', 'mouse' or 'drosophila'.",
                          _text(False), group="resources")
    datasource: str = _param(DEFAULT_DATASOURCE, "Resource registry used when a resource path is not given (see "
                             "download_data).", _text(False), group="resources")
    version: str = _param(DEFAULT_VERSION, "Motif collection of the downloaded resources ('v10' or 'v9').", _text(False),
                          group="resources")
    cache_dir: str | None = _param(None, "Cache of downloaded resources (default $FLASHSCENIC_CACHE, else "
                                   "./flashscenic_data).", _text(), group="resources", result=False)
    tf_list_path: str | None = _param(None, "TF list file (one name per line); default: the species' downloaded "
                                      "list.", _text(), group="resources", flag="--tf-list")
    ranking_db_paths: tuple[str, ...] | None = _param(
        None, "Feather ranking databases; default: the species' two downloaded databases.", _paths,
        group="resources", flag="--ranking-db")
    motif_annotation_path: str | None = _param(None, "motif2tf annotation table; default: the species' downloaded "
                                               "table.", _text(), group="resources", flag="--motif-annotation")
    grn_n_steps: int = _param(1000, "RegDiffusion training steps.", _integer(1), group="grn", kind=int)
    grn_sparsity_threshold: float = _param(
        1.5, "GRN weights below this are dropped (RegDiffusion's units: strong links are 5-10).", _number(),
        group="grn", kind=float)
    grn_max_cells: int | None = _param(
        None, "Train the GRN on at most this many cells, sampled with the seed (None: every cell).",
        _integer(1, optional=True), group="grn", kind=int)
    grn_max_genes: int | None = _param(
        None, "Train the GRN on at most this many genes, the most variable over its cell sample (Seurat's "
        "dispersion rule, as scanpy's flavor='seurat'); None: every gene. TFs compete like any gene (forcing "
        "them in would train on TFs that do not vary, whose links are noise); the TFs among the chosen genes "
        "are the regulators. Modules and pruning use those genes' links; AUCell still ranks every gene.",
        _integer(2, optional=True), group="grn", kind=int)
    grn_runs: int = _param(
        1, "RegDiffusion runs combined into one result by grn_aggregation (seeds spawned from the seed; with "
        "grn_max_cells each run also samples its own cells). Each run is a task of its own; how often each regulon "
        "recurs over the runs is stored.", _integer(1), group="grn", kind=int)
    grn_cv_threshold: float | None = _param(
        None, "Drop consensus edges whose coefficient of variation over the runs (std / |mean|) reaches this "
        "(None, CLI none: keep every edge; needs grn_runs > 1).", _number(0, open_low=True, optional=True),
        group="grn", kind=float)
    grn_aggregation: str = _param(
        "mean_adjacency", "How GRN runs make one result: 'mean_adjacency' (modules and pruning of the runs' mean "
        "network) or 'frequency' (the (TF, target) pairs found in at least grn_frequency_threshold of the runs' "
        "pruned regulons; multi_run_flashscenic's default).", group="grn", choices=AGGREGATION_METHODS)
    grn_frequency_threshold: float = _param(
        0.5, "With grn_aggregation 'frequency': the fraction of runs (0 < t <= 1) a (TF, target) pair must reach.",
        _number(0, 1, open_low=True), group="grn", kind=float)
    grn_min_genes_filter: int = _param(
        5, "With grn_aggregation 'frequency': drop regulons left with fewer targets than this.", _integer(0),
        group="grn", kind=int)
    module_k: int = _param(50, "Size of the top{k} modules: each TF's k strongest targets.", _integer(1),
                           group="module", kind=int)
    module_percentile_thresholds: tuple[float, ...] = _param(
        (75,), "Percentiles (0-100) of all GRN weights; weight>{q}% modules keep targets above them.",
        _numbers(_number(0, 100)), group="module", kind=float)
    module_top_n_per_target: tuple[int, ...] = _param(
        (5, 10, 50), "top{n}perTarget modules: each target's n strongest TFs, regrouped by TF.",
        _numbers(_integer(1)), group="module", kind=int)
    module_min_targets: int = _param(20, "Drop modules with fewer genes than this, the TF included (pySCENIC's "
                                     "min_genes).", _integer(0), group="module", kind=int)
    module_min_fraction: float | None = _param(
        None, "Also drop modules holding fewer than this fraction of all genes (None: off).",
        _number(0, 1, optional=True), group="module", kind=float)
    module_include_tf: bool = _param(True, "Put the TF in its own modules with weight 1.0, as pySCENIC does.",
                                     _boolean, group="module", kind=bool)
    pruning_rank_threshold: int = _param(5000, "Ranks considered by the recovery curves (must be below the "
                                         "database's gene count).", _integer(1), group="pruning", kind=int)
    pruning_auc_threshold: float = _param(0.05, "Fraction of the database's genes under the recovery curve for "
                                          "the motif AUC.", _number(0, 1, open_low=True), group="pruning",
                                          kind=float)
    pruning_nes_threshold: float = _param(3.0, "A motif is enriched when its normalised enrichment score reaches "
                                          "this.", _number(), group="pruning", kind=float)
    pruning_min_genes: int = _param(0, "Drop regulons with fewer genes than this (pySCENIC: 0).", _integer(0),
                                    group="pruning", kind=int)
    pruning_merge_strategy: str = _param(
        "union", "'union': a regulon gathers the targets of all its enriched motifs (pySCENIC); 'best': only the "
        "top-NES row of each (TF, motif) counts.", group="pruning", choices=MERGE_STRATEGIES)
    annotation_motif_similarity_fdr: float = _param(
        0.001, "Keep motif-to-TF annotations with a motif similarity q-value at most this.", _number(0, 1),
        group="annotation", kind=float)
    annotation_orthologous_identity: float = _param(
        0.0, "Keep motif-to-TF annotations with an orthologous identity at least this.", _number(0, 1),
        group="annotation", kind=float)
    aucell_k: int | None = _param(
        None, "Score at most the k strongest genes of each regulon; None scores every regulon gene, as pySCENIC "
        "does (flashscenic 0.2 capped at module_k: a deliberate change).", _integer(1, optional=True),
        group="aucell", kind=int)
    aucell_auc_threshold: float = _param(
        0.05, "Fraction of the ranked genes under the recovery curve for a cell's AUC (0 < t < 1).",
        _number(0, 1, open_low=True, open_high=True), group="aucell", kind=float)
    aucell_batch_size: int = _param(32, "Cells ranked at once (memory, not results).", _integer(1),
                                    group="aucell", kind=int, result=False)
    device: str = _param("cuda", "'cuda', 'cpu' or 'auto'; 'cuda' without CUDA warns once and uses the CPU.",
                         group="execution", choices=DEVICES)
    seed: int | None = _param(
        None, "Seed of the GRN's cell sample and training and of AUCell's tie order (pySCENIC's seed); None "
        "draws one, recorded in the results.", _integer(0, 2**32, optional=True), group="execution", kind=int)
    verbose: bool = _param(True, "Show progress bars; stage messages are logged at INFO (DEBUG when False).",
                           _boolean, group="execution", kind=bool, result=False, cli=False)

    def __post_init__(self):
        for spec in dataclasses.fields(self):
            value = spec.metadata["check"](spec.name, getattr(self, spec.name))
            object.__setattr__(self, spec.name, value)
        if self.grn_cv_threshold is not None and self.grn_runs == 1:
            raise InputError(f"grn_cv_threshold={self.grn_cv_threshold} needs several GRN runs (grn_runs > 1): the "
                             "CV of one run is 0")

    def warn_unused_cv_threshold(self, stacklevel: int = 3) -> None:
        """One warning when ``grn_cv_threshold`` is set with the 'frequency' aggregation, where it does nothing."""
        if self.grn_cv_threshold is not None and self.grn_aggregation == "frequency":
            import warnings

            warnings.warn(f"cv_threshold={self.grn_cv_threshold} has no effect with aggregation 'frequency' (it "
                          "filters the mean network of 'mean_adjacency')", UserWarning, stacklevel=stacklevel)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Params:
        """``Params`` from a mapping of field names; an unknown name is refused by name."""
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise InputError(f"unknown parameter(s) {unknown}; the parameters are {cls.names()}")
        return cls(**values)

    @classmethod
    def names(cls, *, group: str | None = None) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if group is None or f.metadata["group"] == group]

    @classmethod
    def spec(cls, name: str) -> dataclasses.Field:
        return {f.name: f for f in dataclasses.fields(cls)}[name]

    def replace(self, **changes) -> Params:
        return dataclasses.replace(self, **changes)

    def with_seed(self) -> Params:
        """This, with a seed drawn from the operating system's entropy when it has none."""
        if self.seed is not None:
            return self
        import numpy as np

        return self.replace(seed=int(np.random.SeedSequence().entropy % 2**31))

    def as_dict(self, *, results_only: bool = False) -> dict[str, Any]:
        """JSON-able values (tuples as lists); ``results_only``: those that can change the numbers."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self) if f.metadata["result"] or not results_only}

    @classmethod
    def numpydoc(cls, names: list[str]) -> str:
        """The numpydoc ``Parameters`` entries of ``names`` (indented for a function docstring)."""
        import textwrap

        lines = []
        for name in names:
            lines.append(f"    {name}")
            lines.extend(textwrap.wrap(cls.spec(name).metadata["help"], 84, initial_indent=" " * 8,
                                       subsequent_indent=" " * 8))
        return "\n".join(lines)
