"""The bundled simulator in its own process, for the benchmarks that measure against it."""

from __future__ import annotations

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
