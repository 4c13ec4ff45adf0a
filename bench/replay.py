"""Replay benchmark: ``simulate --replay`` over a recorded week of N runs (default 10,000).

The week is recorded first, for real: the bundled workflow run N times through the runner
against the one fake provider into a SQLite file, a run a minute, every tenth run meeting a
429 burst with Retry-After, two 500s, a stream cut after two chunks, a slow answer, or four 500s
and a fallback (tests/replay/history.py records it). Then the same file is replayed twice, in
the process a user's command would run in: the unchanged policy (which must reproduce the
record) and a shorter backoff. Printed: the wall time of each replay, best and median of R
rounds, with the read of the record apart, and runs per second. The issue's target is 10,000
runs in at most 10 s. Nothing is asserted.

Usage: ``python bench/replay.py [--runs N] [--repeat R] [--quick]`` (``just bench-replay``).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demiarch_flow.definition import parse_workflow  # noqa: E402
from demiarch_flow.pricing import PriceTable  # noqa: E402
from demiarch_flow.replay import Selection, read_record, replay  # noqa: E402
from demiarch_flow.store.sql import SqlStore  # noqa: E402
from tests.replay.history import record  # noqa: E402

WORKFLOW = ROOT / "workflows" / "chat.yaml"
SONNET = "anthropic/claude-sonnet-4"
TEN = "429@2,429@2,ok,500,500,ok,cut:2,ok,slow:3,500,500,500,500,ok,ok,ok,ok,ok"
"""Sonnet's answers to ten runs (run 5 falls back to haiku, which answers)."""
TARGET_S = 10.0


def _cpu() -> float:
    """CPU seconds of this process and of its children that have ended (the replay's workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000, help="recorded runs (default 10,000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each replay (default 3)")
    parser.add_argument("--quick", action="store_true", help="1,000 runs, one round")
    parser.add_argument(
        "--db", type=Path, metavar="FILE",
        help="record into FILE and keep it; if it exists, replay it as it is (default: a"
        " temporary file)",
    )  # fmt: skip
    opts, _ = parser.parse_known_args()  # `just bench` passes bench/run.py's options too
    logging.getLogger("demiarch_flow").setLevel(logging.ERROR)  # the fallbacks are expected
    runs, rounds = (1_000, 1) if opts.quick else (opts.runs, opts.repeat)
    text = WORKFLOW.read_text("utf-8")
    wf = parse_workflow(text, str(WORKFLOW))
    shorter = parse_workflow(text.replace("initial_delay_s: 1", "initial_delay_s: 0.25"))
    prices = PriceTable.load()
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as folder:
        path = opts.db or Path(folder) / "flow.db"
        url = f"sqlite:///{path}"
        if not path.exists():
            started = time.perf_counter()
            script = f"{SONNET}=" + ",".join([TEN] * (runs // 10 + 1))
            record(url, wf, script, [60.0 * i for i in range(runs)])
            took = time.perf_counter() - started
            print(f"recorded {runs:,} runs in {took:.1f} s (not timed below)")
        for label, edit in (("unchanged policy", wf), ("initial_delay_s: 0.25", shorter)):
            reads, totals, cpu = [], [], []
            for _ in range(rounds):
                c0 = _cpu()
                t0 = time.perf_counter()
                store = SqlStore.open_sync(url, read_only=True)
                try:
                    rec = read_record(store.engine, Selection("chat", None, None))
                finally:
                    store.close()
                t1 = time.perf_counter()
                report = replay(edit, rec, prices=prices)
                t2 = time.perf_counter()
                cpu.append(_cpu() - c0)
                reads.append(t1 - t0)
                totals.append(t2 - t0)
            best, median = min(totals), statistics.median(totals)
            verdict = (
                ("met" if median <= TARGET_S else "NOT met") if runs >= 10_000 else "not judged"
            )
            print(
                f"{label:24} {runs:,} runs: {best:.2f} s best, {median:.2f} s median wall"
                f" ({statistics.median(cpu):.2f} s CPU in all processes; the read"
                f" {statistics.median(reads):.2f} s),"
                f" {runs / median:,.0f} runs/s; {len(report.changed)} changed;"
                f" target ≤ {TARGET_S:.0f} s for 10,000 runs: {verdict}"
            )


if __name__ == "__main__":
    main()
