"""What the benchmarks share: the bundled simulator in its own process, and how a figure of
several rounds is printed."""

from __future__ import annotations

import compileall
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def installed_env(**extra: str) -> dict[str, str]:
    """The environment of a measured ``demiarch-flow`` process: this one's, with the package's
    bytecode written and used, as an installed package has it.

    Where ``PYTHONDONTWRITEBYTECODE`` is set (this machine's kind, many container images) an
    editable install never caches its bytecode, and every process compiled the package's
    modules from source — a third of a cold ``batch`` (541 M instructions of 1,728 M, counted
    with callgrind) that no install from a wheel pays (pip compiles it on install). So the
    package is compiled here, once, and the variable is left out of the child's environment.
    """
    compileall.compile_dir(ROOT / "demiarch_flow", quiet=1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(extra)
    return env


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
