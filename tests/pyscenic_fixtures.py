"""Where the real pySCENIC fixtures are (../shared beside the repo), and the skip marker for
tests that need them: a fresh clone elsewhere has no ../shared."""

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "pyscenic"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"pySCENIC fixtures not found at {FIXTURES}")
