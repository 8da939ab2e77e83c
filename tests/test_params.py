"""Params is the one home of every parameter: the API, the command line and the stored run agree with it."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re

import pytest

import flashscenic
from flashscenic.cli import _parser
from flashscenic.errors import InputError
from flashscenic.params import CLI_DEFAULTS, Params

# the store pipeline's own: run_flashscenic trains one GRN on the matrix it is given
API_EXCLUDED = {"grn_max_cells", "grn_runs", "grn_cv_threshold", "grn_aggregation", "grn_frequency_threshold",
                "grn_min_genes_filter"}


def test_run_flashscenic_signature_is_derived_from_params():
    from flashscenic.params import STORE_PIPELINE_ONLY

    assert set(STORE_PIPELINE_ONLY) == API_EXCLUDED
    signature = inspect.signature(flashscenic.run_flashscenic).parameters
    fields = [f for f in dataclasses.fields(Params) if f.name not in API_EXCLUDED]
    assert list(signature) == ["exp_matrix", "gene_names", *[f.name for f in fields], "adj_matrix"]
    for field in fields:
        assert signature[field.name].default == field.default, field.name
    doc = inspect.getdoc(flashscenic.run_flashscenic)
    for field in fields:  # the docstring's entry is the field's help, word for word
        entry = re.search(rf"^{field.name}\n((?:    .*\n?)+)", doc, re.M).group(1)
        assert " ".join(entry.split()) == " ".join(field.metadata["help"].split()), field.name


def _flags(command: str) -> dict[str, argparse.Action]:
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest: a for a in sub._actions}


def test_every_parameter_is_a_flag_of_run_with_the_params_default_or_a_declared_one():
    flags = _flags("run")
    for field in dataclasses.fields(Params):
        if not field.metadata["cli"]:
            assert field.name == "verbose" and "quiet" in flags  # the command line's --quiet
            continue
        action = flags[field.name]
        expected = CLI_DEFAULTS[field.name][0] if field.name in CLI_DEFAULTS else field.default
        assert action.default == expected, field.name
        assert field.metadata["help"].split(". ")[0].rstrip(".") in action.help.replace("%%", "%"), field.name
        if field.metadata["choices"]:
            assert tuple(action.choices) == field.metadata["choices"], field.name
        assert action.option_strings[0] == (field.metadata["flag"] or "--" + field.name.replace("_", "-"))
    for name, (_, why) in CLI_DEFAULTS.items():  # every declared difference is explained in --help
        assert why[:40] in " ".join(flags[name].help.split()), name


def test_parsed_flags_give_params_equal_to_the_api_defaults_but_the_declared_ones():
    from flashscenic._cli_pipeline import params_from_args

    args = _parser().parse_args(["run", "in.h5ad", "--out", "x"])
    params = params_from_args(args)
    assert params == Params(**{n: d for n, (d, _) in CLI_DEFAULTS.items()})
    args = _parser().parse_args(["run", "in.h5ad", "--out", "x", "--module-percentile-thresholds", "50", "90",
                                 "--no-module-include-tf", "--ranking-db", "a.feather", "--ranking-db", "b.feather"])
    params = params_from_args(args)
    assert params.module_percentile_thresholds == (50.0, 90.0) and params.module_include_tf is False
    assert params.ranking_db_paths == ("a.feather", "b.feather")
    args = _parser().parse_args(["run", "in.h5ad", "--out", "x", "--grn-max-cells", "none", "--aucell-k", "10"])
    assert params_from_args(args).grn_max_cells is None and params_from_args(args).aucell_k == 10
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "in.h5ad", "--out", "x", "--module-k", "none"])  # not optional


@pytest.mark.parametrize("values, message", [
    ({"module_percentile_thresholds": (150,)}, "each of module_percentile_thresholds must be a number in \\[0, 100\\]"),
    ({"aucell_auc_threshold": 1.0}, "aucell_auc_threshold must be a number in \\(0, 1\\)"),
    ({"pruning_auc_threshold": 0}, "pruning_auc_threshold must be a number in \\(0, 1\\]"),
    ({"grn_max_cells": 0}, "grn_max_cells must be an integer >= 1 or None"),
    ({"aucell_batch_size": 0}, "aucell_batch_size must be an integer >= 1"),
    ({"module_k": True}, "module_k must be an integer >= 1"),
    ({"seed": 2**32}, "seed must be an integer in 0..4294967295 or None"),
    ({"pruning_merge_strategy": "intersection"}, "pruning_merge_strategy must be one of 'union', 'best'"),
    ({"module_min_fraction": 1.5}, "module_min_fraction must be a number in \\[0, 1\\] or None"),
    ({"grn_sparsity_threshold": float("inf")}, "grn_sparsity_threshold must be a finite number"),
    ({"ranking_db_paths": [3]}, "ranking_db_paths must be a string or a path"),
    ({"no_such": 1}, "unknown parameter\\(s\\) \\['no_such'\\]"),
])
def test_every_value_is_checked_when_params_are_built(values, message):
    with pytest.raises(InputError, match=message):
        Params.from_dict(values)


def test_params_round_trip_through_the_stored_dict():
    params = Params(seed=3, module_top_n_per_target=(5,), ranking_db_paths=["a", "b"])
    stored = params.as_dict()
    assert stored["module_top_n_per_target"] == [5] and stored["ranking_db_paths"] == ["a", "b"]
    assert Params.from_dict(stored) == params
    assert "verbose" not in params.as_dict(results_only=True)
    assert "aucell_batch_size" not in params.as_dict(results_only=True)  # memory, not results
    drawn = Params().with_seed().seed
    assert isinstance(drawn, int) and 0 <= drawn < 2**32 and Params(seed=4).with_seed().seed == 4
    assert hash(params) == hash(Params.from_dict(stored))  # a cache key for per-process pruners


def test_a_bad_flag_value_is_one_line_before_any_work(tmp_path, capsys):
    from flashscenic.cli import main

    start = __import__("time").perf_counter()
    code = main(["run", str(tmp_path / "absent.h5ad"), "--out", str(tmp_path / "out"),
                 "--module-percentile-thresholds", "150"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "module_percentile_thresholds" in err, err
    assert not (tmp_path / "out").exists()
    assert __import__("time").perf_counter() - start < 5
