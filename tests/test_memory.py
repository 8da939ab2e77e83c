"""The coordinator hands freed memory back to the OS between stages (glibc only)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from flashscenic._utils import _malloc_trim

SCRIPT = textwrap.dedent("""
    import numpy as np
    from flashscenic._utils import release_freed_memory

    def rss_mib():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) // 1024 for l in f if l.startswith("VmRSS"))

    blocks = [np.ones(100_000 // 8) for _ in range(3000)]  # ~300 MB in heap-sized blocks
    last = blocks[-1]  # the top of the heap stays in use: freed pages below it stay mapped
    del blocks
    freed = rss_mib()
    release_freed_memory()
    print(freed, rss_mib())
""")


@pytest.mark.skipif(_malloc_trim() is None, reason="glibc's malloc_trim")
def test_freed_heap_memory_is_handed_back():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
    freed, trimmed = map(int, out.split())
    assert freed > 250 and trimmed < freed - 200, (freed, trimmed)
