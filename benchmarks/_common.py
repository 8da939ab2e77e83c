"""What every benchmark script shares: the machine description, the BENCHMARKS.md section
writer, and per-process memory probes. Standard library only: the reference venv imports
it too."""

from __future__ import annotations

import os
import platform
import re
import resource
import shlex
import sys
from pathlib import Path


def machine() -> dict:
    """CPU model, cores, RAM, Python version and 1-minute load average, for report headers."""
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram_gib, "python": platform.python_version(),
            "load": os.getloadavg()[0]}


def command_line() -> str:
    """This script's command line as a user would type it (the python relative to here when it is below)."""
    python = os.path.relpath(sys.executable)
    return shlex.join([sys.executable if python.startswith("..") else python, *sys.argv])


def optional_python(path: str | None, flag: str, skipped: str) -> str | None:
    """The python of a reference venv given as ``flag``, or None (saying that ``skipped`` will not run)."""
    if path and not Path(path).exists():
        print(f"{flag} {path} not found: skipping {skipped}")
        return None
    if not path:
        print(f"no {flag}: skipping {skipped}")
    return path or None


def write_section(path: Path, section: str) -> None:
    """Replace the section of ``path`` whose ``## `` heading is ``section``'s first line (up to
    the next ``## ``), or append it: each script owns one section, the others stay."""
    heading = section.splitlines()[0].strip()
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> None:
    """Start the peak (VmHWM) afresh, so loading the inputs does not count as kernel memory."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def children_peak_mib() -> float:
    """Peak resident set of the largest finished child process, MiB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
