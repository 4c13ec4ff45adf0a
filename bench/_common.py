"""What the benchmarks share: the bundled simulator in its own process, and how a figure of
several rounds is printed."""

from __future__ import annotations

import statistics
import subprocess
import sys


def start_simulator(*args: str) -> tuple[subprocess.Popen[str], str]:
    """``demiarch-flow simulator ARGS…`` on 127.0.0.1 (a free port); the process and its base
    URL (the first line it prints)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "demiarch_flow", "simulator", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise SystemExit("the simulator did not start")
    return proc, url


def spread(values: list[float], digits: int = 0) -> str:
    """``median (min–max)`` of the rounds."""
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"
