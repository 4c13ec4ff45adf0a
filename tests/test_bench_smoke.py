"""The benchmark script stays runnable: its in-process engine measurement on a few runs.

No timing is asserted (speed is measured by `just bench`, never by a unit test); this only
keeps bench/run.py from rotting.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import trio

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def test_bench_engine_measures_a_few_runs() -> None:
    """bench_engine runs real workflow runs against an in-memory transport and reports figures;
    it checks itself that every run succeeded with its own generation id and three journal rows
    (it used to answer every run with one generation id, so all runs but the first stayed
    ``running``)."""
    spec = importlib.util.spec_from_file_location("bench_run", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = trio.run(module.bench_engine, 5)
    assert set(result) == {"bare_us", "run_us", "overhead_us", "machine_us"}
    assert result["overhead_us"] == result["run_us"] - result["bare_us"]
    assert result["run_us"] > 0
