"""The `flashscenic` command: version, help, the demo, and one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import flashscenic
from flashscenic.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"flashscenic {flashscenic.__version__}"


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: flashscenic" in out
    for command in ("demo", "run", "grn", "ctx", "aucell", "rss", "report", "download", "resources", "ingest", "export"):
        assert re.search(rf"^\s+{command}\s", out, re.M), command


@pytest.mark.parametrize(
    "argv, message",
    [
        pytest.param(["demo", "--n-cells", "0"], "n_cells must be a positive integer, got 0", id="no-cells"),
        pytest.param(["demo", "--n-genes", "100"], "n_genes", id="too-few-genes"),
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
