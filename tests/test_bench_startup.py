"""bench/startup.py stays runnable and says met / NOT met against issue 18's targets (no
timing is asserted: speed is measured by `just bench`, never by a unit test)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent / "bench" / "startup.py"


def _startup() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_startup", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_report_compares_each_median_with_its_target() -> None:
    """One line per command: median wall with its spread, median CPU, the target, met or not."""
    startup = _startup()
    figures = {name: ([0.05, 0.06, 0.5], [0.04, 0.04, 0.04]) for name in startup.TARGETS}
    figures["run (simulator)"] = ([0.9, 1.0, 1.1], [0.7, 0.8, 0.9])
    lines = startup.report(figures).splitlines()
    assert lines[0].startswith("start-up, 3 cold processes each")
    help_line = next(line for line in lines if line.strip().startswith("--help"))
    assert "0.060 (0.050–0.500)" in help_line and "≤ 0.10" in help_line
    assert help_line.endswith("met") and "NOT" not in help_line
    assert lines[-1].split()[:2] == ["run", "(simulator)"] and lines[-1].endswith("NOT met")


def test_a_cold_process_is_timed_after_a_warm_up(tmp_path: Path) -> None:
    """`cold` runs the command once more than it counts, and counts wall and CPU time."""
    startup = _startup()
    env = {**os.environ, "DEMIARCH_FLOW_HOME": str(tmp_path)}
    walls, cpus = startup.cold(["--help"], env, 2)
    assert len(walls) == len(cpus) == 2 and all(w > 0 for w in walls)


def test_a_miss_of_the_workflow_cache_is_its_own_row_without_a_target() -> None:
    """`budget (not cached)` (a new or edited workflow, checked in full) is reported beside
    `budget`, with no target and neither met nor NOT met."""
    startup = _startup()
    figures = {name: ([0.5], [0.4]) for name in startup.TARGETS}
    line = next(x for x in startup.report(figures).splitlines() if "not cached" in x)
    assert line.rstrip().endswith("-") and "met" not in line


def test_the_uncached_row_empties_the_cache_before_each_process(tmp_path: Path) -> None:
    """`cold` runs ``before`` ahead of every process, the warm-up included."""
    startup = _startup()
    env = {**os.environ, "DEMIARCH_FLOW_HOME": str(tmp_path)}
    calls: list[int] = []
    startup.cold(["--help"], env, 2, lambda: calls.append(1))
    assert len(calls) == 3
