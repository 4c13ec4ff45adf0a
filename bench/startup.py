"""Start-up: how long a command takes as a whole process, against issue 18's targets.

Each command runs as a fresh process (``python -m demiarch_flow …``, what the script does) ten
times after one warm-up run (which also leaves the bytecode cache an installed package has);
the figure is the median wall time, with the spread and the median CPU time (user + system,
which other work on the machine moves much less than the wall clock). The reports read a small
SQLite database that a few runs against the bundled simulator filled first; ``run`` is one chat
turn against that simulator, end to end (blocking, ``--quiet``); the key comes from
``OPENROUTER_API_KEY`` (what ``key status`` reads first; asking the OS keyring costs whatever
its backend costs).

A command that reads a workflow finds it checked already (the warm-up run left it in the cache
of checked workflows, as any earlier command does for a user); ``budget (not cached)`` empties
that cache before each process, so its figure is the one of a new or edited workflow file,
checked in full (PyYAML, jsonschema, python-statemachine) — it has no target of its own.

Usage: ``python bench/startup.py [--repeat N]`` (``just bench-startup``); ``bench/run.py``
prints the same table with its other figures.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collections.abc import Callable

from _common import installed_env, start_simulator

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "demiarch_flow"]

#: Issue 18's targets, seconds of wall time (median of 10 cold processes on the project's machine).
TARGETS: dict[str, float | None] = {
    "--help": 0.10,
    "key status": 0.25,
    "history": 0.35,
    "usage": 0.35,
    "runs list": 0.35,
    "budget": 0.35,
    "budget (not cached)": None,
    "run (simulator)": 0.45,
}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cold(
    argv: list[str], env: dict[str, str], repeat: int, before: Callable[[], None] = lambda: None
) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of ``repeat`` fresh processes of ``demiarch-flow argv``, after one
    warm-up (``before`` runs ahead of each, untimed); each must exit 0."""
    walls, cpus = [], []
    for i in range(repeat + 1):
        before()
        cpu, t0 = _children_cpu(), time.perf_counter()
        subprocess.run([*CLI, *argv], env=env, capture_output=True, check=True)
        if i:  # the first is the warm-up
            walls.append(time.perf_counter() - t0)
            cpus.append(_children_cpu() - cpu)
    return walls, cpus


def commands(url: str, db: str) -> dict[str, list[str]]:
    run = ["run", "-m", "hello", "--base-url", url, "--db", db, "--no-stream", "--quiet"]
    return {
        "--help": ["--help"],
        "key status": ["key", "status"],
        "history": ["history", "--db", db],
        "usage": ["usage", "--db", db],
        "runs list": ["runs", "list", "--db", db],
        "budget": ["budget", "--db", db],
        "budget (not cached)": ["budget", "--db", db],
        "run (simulator)": run,
    }


def startup_figures(
    url: str, folder: Path, repeat: int = 10
) -> dict[str, tuple[list[float], list[float]]]:
    """Each command's wall and CPU seconds (see the module doc); ``url`` is the simulator's."""
    env = installed_env()  # an installed package has its bytecode cached
    env = {k: v for k, v in env.items() if not k.startswith(("OPENROUTER_", "DEMIARCH"))}
    env.update(
        DEMIARCH_FLOW_HOME=str(folder), OPENROUTER_API_KEY="sk-or-bench-0123456789", NO_COLOR="1"
    )
    db = f"sqlite:///{folder / 'small.db'}"
    todo = commands(url, db)
    for _ in range(3):  # a small database: three runs, their messages, usage and journal
        subprocess.run([*CLI, *todo["run (simulator)"]], env=env, capture_output=True, check=True)
    cache = folder / "cache"
    return {
        name: cold(argv, env, repeat, lambda: shutil.rmtree(cache, ignore_errors=True))
        if "not cached" in name
        else cold(argv, env, repeat)
        for name, argv in todo.items()
    }


def report(figures: dict[str, tuple[list[float], list[float]]]) -> str:
    """The table ``just bench`` prints: median (min–max) wall, median CPU, target, met."""
    n = len(next(iter(figures.values()))[0])
    lines = [
        f"start-up, {n} cold processes each (after one warm-up): median wall (min–max), median CPU",
        f"  {'command':19} {'wall s':>20} {'cpu s':>7} {'target':>7}",
    ]
    for name, (walls, cpus) in figures.items():
        wall = statistics.median(walls)
        target = TARGETS[name]
        spread = f"{wall:.3f} ({min(walls):.3f}–{max(walls):.3f})"
        met = "" if target is None else "met" if wall <= target else "NOT met"
        goal = "-" if target is None else f"≤ {target:.2f}"
        lines.append(
            f"  {name:19} {spread:>20} {statistics.median(cpus):7.3f} {goal:>7}  {met}".rstrip()
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="cold processes per command")
    opts = parser.parse_args()
    sim, url = start_simulator()
    try:
        with tempfile.TemporaryDirectory(prefix="demiarch-startup-") as tmp:
            figures = startup_figures(url, Path(tmp), opts.repeat)
    finally:
        sim.terminate()
        sim.wait()
    print(report(figures))


if __name__ == "__main__":
    main()
