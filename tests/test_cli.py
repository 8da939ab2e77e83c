"""The `flashscenic` command: version, help, the demo, and one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import flashscenic
from flashscenic.cli import main

DEMO_SMALL = ["demo", "--n-cells", "300", "--n-genes", "400", "--device", "cpu"]


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"flashscenic {flashscenic.__version__}"


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: flashscenic" in out
    assert re.search(r"^\s+demo\s", out, re.M)


@pytest.mark.parametrize("ties", ["pyscenic", "average"])
def test_demo_recovers_every_planted_regulon(capsys, ties):
    assert main([*DEMO_SMALL, "--ties", ties]) == 0
    out = capsys.readouterr().out
    assert "Simulated 300 cells x 400 genes" in out
    rows = [line for line in out.splitlines() if re.match(r"\s*TF\d+\(\+\)", line)]
    assert len(rows) == 10
    assert all(row.split()[-1] == "yes" for row in rows), out
    assert re.search(r"^10/10 planted regulons recovered \(.* on cpu\)\.$", out, re.M)


@pytest.mark.parametrize(
    "argv, message",
    [
        pytest.param(["demo", "--n-cells", "0"], "n_cells must be a positive integer, got 0", id="no-cells"),
        pytest.param(["demo", "--n-genes", "200"], "use n_genes >= 310", id="too-few-genes"),
    ],
)
def test_user_error_is_one_line_with_status_2(capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("flashscenic: error: ") and message in lines[0]


def test_debug_shows_the_traceback(capsys):
    assert main(["demo", "--n-cells", "0", "--debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "InputError: n_cells must be a positive integer" in err


def test_bad_flag_value_is_a_usage_error(capsys):
    assert main(["demo", "--device", "tpu"]) == 2
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_python_m_flashscenic_reports_a_user_error_in_one_line():
    result = subprocess.run([sys.executable, "-m", "flashscenic", "demo", "--n-cells", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == "flashscenic: error: n_cells must be a positive integer, got 0"
