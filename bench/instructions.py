"""Instructions per call (valgrind's callgrind): raw httpx against a full durable run.

Wall-clock figures move ±20 % with whatever else the machine does; instruction counts do not.
Each side runs in its own process under ``valgrind --tool=callgrind`` against the bundled
simulator (its own process, not measured: zero latency, no faults, every answer its own
generation id), once with N and once with 2N sequential calls after the same warm-up; the
per-call figure is the difference of the two totals divided by N, so interpreter start-up,
imports, opening the database and the warm-up cancel out. All threads are counted (the SQL runs
in trio's worker thread). The sides:

* ``raw`` — ``httpx.AsyncClient.post`` on trio and ``response.json()``: the floor;
* ``table`` — ``run_workflow`` of the bundled workflow with blocking requests (LoadContext →
  Request → Persist, checkpoints and journal, SQLite file in WAL), driven by the transition
  table (the default);
* ``statemachine`` — the same run driven by a python-statemachine instance per run
  (``DEMIARCH_FLOW_MACHINE=statemachine``): the engine before the table;
* ``sync-full`` — the table run on a SQLite URL with ``?synchronous=full`` (a sync per commit);
* ``memory`` — the table run on the in-memory store: ``table − memory`` is the SQL store's cost;
* ``bare-mem`` and ``engine-mem`` — the engine's own overhead, with no I/O at all: a bare
  ``OpenRouterClient.complete`` through the in-memory :class:`FakeOpenRouter` transport, and a
  run (checkpoints and journal on, in-memory store) through the same transport;
  ``engine-mem − bare-mem`` is what the engine adds to the call (issue 17's "engine overhead
  apart from I/O"; ``bench/run.py`` prints the same difference in µs).

Each process collects garbage once after its warm-up, so that the first full collection after
start-up falls in neither process's extra calls (it added ~2 M instructions a call to the one
it fell in). ``--kinds`` picks the sides (raw is always measured).

Both full-run sides use the composition root (``runtime.open_world``: the store, the client,
the owner) with one connection, as raw httpx has; the owner's heartbeat (one ``UPDATE`` per 5 s
of wall clock, which valgrind stretches fifty-fold) is turned off in the measured processes.
Beside each count, the same process run natively (no valgrind) gives the median wall clock per
call. ``--top K`` also prints where a table run's instructions go: the difference of the two
callgrind profiles, by shared object and by C function (callgrind sees the interpreter, not
Python functions; ``bench/run.py`` has the cProfile view).

Usage: ``python bench/instructions.py [--calls N] [--warmup W] [--top K] [--db-query Q]
[--kinds K,…]``
(``just bench-instr``). Without valgrind on the PATH it says so and exits 0. Nothing is
asserted: the README copies one run's output.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import start_simulator

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("raw", "table", "statemachine", "sync-full", "memory", "bare-mem", "engine-mem")
LABELS = {
    "raw": "raw httpx.AsyncClient POST (trio)",
    "table": "full run, SQLite, transition table",
    "statemachine": "full run, SQLite, python-statemachine",
    "sync-full": "full run, SQLite ?synchronous=full",
    "memory": "the same run, in-memory store",
    "bare-mem": "bare client call, in-memory transport",
    "engine-mem": "run, in-memory transport and store",
}
KEY = "sk-or-bench"
PAYLOAD = {
    "model": "anthropic/claude-sonnet-4",
    "messages": [{"role": "user", "content": "Hello, benchmark"}],
}
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


# ------------------------------------------------------------------ the measured process


def child(kind: str, calls: int, warmup: int, url: str, workflow: str, db: str) -> None:
    """Make ``warmup`` then ``calls`` sequential calls of ``kind``; print the wall clock of
    each measured call (µs) as one JSON line."""
    sys.path.insert(0, str(ROOT))
    import trio

    from demiarch_flow.runtime import http_client, open_world

    times: list[float] = []

    async def measured(call: object) -> None:
        assert callable(call)
        for _ in range(warmup):
            await call()
        # The objects start-up made are promoted into the oldest generation by the first full
        # collection, which falls wherever the allocation counts put it: in one of the two
        # processes' extra calls, it added ~2 M instructions a call. Collected here, it falls
        # in neither (a long process pays it once, at start-up).
        gc.collect()
        for _ in range(calls):
            t0 = time.perf_counter()
            await call()
            times.append((time.perf_counter() - t0) * 1e6)

    async def raw() -> None:
        async with http_client(1) as http:

            async def call() -> None:
                r = await http.post(f"{url}/chat/completions", json=PAYLOAD, headers=HEADERS)
                r.json()

            await measured(call)

    async def full_run() -> None:
        from demiarch_flow.client import ApiKey
        from demiarch_flow.definition import load_workflow
        from demiarch_flow.runner import RunRequest, owner, run_workflow
        from demiarch_flow.runner.table import MACHINE_ENV

        os.environ[MACHINE_ENV] = "statemachine" if kind == "statemachine" else "table"
        owner.HEARTBEAT_S = 1e9  # see the module docstring
        wf = load_workflow(workflow)
        assert not wf.request.stream
        key = ApiKey(KEY, "bench")
        async with open_world(db=db, base_url=url, key=key, max_in_flight=1) as world:
            env = world.env
            if kind == "memory":
                from demiarch_flow.store import MemoryStore

                env = dataclasses.replace(env, store=MemoryStore())

            async def call() -> None:
                outcome = await run_workflow(wf, RunRequest("Hello, benchmark"), env)
                assert outcome.succeeded, outcome.error

            await measured(call)

    async def in_memory() -> None:
        """No I/O: the fake transport answers in-process (its own generation id each time)."""
        from demiarch_flow.definition import load_workflow
        from demiarch_flow.fake import fake_client
        from demiarch_flow.runner import RunEnv, RunRequest, run_workflow
        from demiarch_flow.runner.table import MACHINE_ENV
        from demiarch_flow.store import MemoryStore
        from demiarch_flow.testing import FakeOpenRouter

        os.environ[MACHINE_ENV] = "table"
        wf = load_workflow(workflow)
        client = fake_client(FakeOpenRouter())
        env = RunEnv(client=client, store=MemoryStore())

        if kind == "bare-mem":

            async def call() -> None:
                await client.complete(PAYLOAD, timeout_s=120)

        else:

            async def call() -> None:
                outcome = await run_workflow(wf, RunRequest("Hello, benchmark"), env)
                assert outcome.succeeded, outcome.error

        await measured(call)

    trio.run(raw if kind == "raw" else in_memory if kind.endswith("-mem") else full_run)
    print(json.dumps(times))


# ------------------------------------------------------------------ the parent


class Bench:
    """Spawns the measured processes: each in a fresh SQLite file under ``folder``."""

    def __init__(self, folder: Path, url: str, warmup: int, query: str = "") -> None:
        self.folder = folder
        self.query = query
        self.url = url
        self.warmup = warmup
        self.workflow = folder / "chat-blocking.yaml"
        text = (ROOT / "workflows" / "chat.yaml").read_text("utf-8")
        self.workflow.write_text(text.replace("stream: true", "stream: false"), "utf-8")
        self.env = {**os.environ, "PYTHONHASHSEED": "0", "DEMIARCH_FLOW_HOME": str(folder)}
        self.env.pop("DEMIARCH_FLOW_MACHINE", None)
        self.runs = 0

    def command(self, kind: str, calls: int) -> list[str]:
        self.runs += 1
        query = "?synchronous=full" if kind == "sync-full" else self.query
        db = f"sqlite:///{self.folder / f'{kind}-{calls}-{self.runs}.db'}{query}"
        return [sys.executable, __file__, "--child", kind, str(calls), str(self.warmup),
                self.url, str(self.workflow), db]  # fmt: skip

    def wall(self, kind: str, calls: int) -> list[float]:
        """µs per call, natively."""
        out = subprocess.run(self.command(kind, calls), env=self.env, capture_output=True,
                             text=True, check=True)  # fmt: skip
        times: list[float] = json.loads(out.stdout.strip().splitlines()[-1])
        return times

    def instructions(self, kind: str, calls: int) -> tuple[int, Path]:
        """Total instructions (all threads) of a process making ``calls`` calls."""
        profile = self.folder / f"callgrind.{kind}.{calls}.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={profile}",
             *self.command(kind, calls)],
            env=self.env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return total_of(profile), profile


def total_of(profile: Path) -> int:
    """The ``totals:`` (or ``summary:``) line of a callgrind out file: instructions."""
    found = re.search(r"^(?:totals|summary):\s*(\d+)", profile.read_text(), re.MULTILINE)
    assert found, f"no totals in {profile}"
    return int(found.group(1))


def by_function(profile: Path, *, inclusive: bool = False) -> dict[tuple[str, str], int]:
    """Instructions per (shared object, ``file.c:function``), from ``callgrind_annotate``;
    inlined code has no object (``?``), and so belongs to the object of its caller."""
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--show-percs=no",
         f"--inclusive={'yes' if inclusive else 'no'}", str(profile)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    costs: dict[tuple[str, str], int] = defaultdict(int)
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+(\S.*?)(?:\s+\[(.+)\])?$", line)
        if m and ":" in m.group(2):
            where, _, function = m.group(2).rpartition(":")
            obj = Path(m.group(3)).name if m.group(3) else "?"
            costs[obj, f"{Path(where).name}:{function}"] += int(m.group(1).replace(",", ""))
    return costs


#: C entry points whose inclusive cost names a part of the run (callgrind_annotate's names).
PARTS = (
    ("worker threads: the store's transactions", "_threadmodule.c:thread_run"),
    ("  of which SQLite executing statements", "cursor.c:_pysqlite_query_execute"),
    ("json encoding (checkpoints, request bodies)", "_json.c:encoder_call"),
    ("json decoding (replies)", "_json.c:scanner_call"),
    ("the cyclic garbage collector", "gcmodule.c:gc_collect_main"),
)


def top(small: Path, large: Path, calls: int, k: int) -> None:
    """Where the instructions of ``calls`` extra runs go: large − small, per call."""

    def diff(inclusive: bool) -> dict[tuple[str, str], float]:
        a, b = by_function(small, inclusive=inclusive), by_function(large, inclusive=inclusive)
        return {key: (b.get(key, 0) - a.get(key, 0)) / calls for key in set(a) | set(b)}

    own, incl = diff(False), diff(True)
    whole = sum(own.values())
    print(f"\nwhere a table run's {whole:,.0f} instructions go (per call; callgrind's C view):")
    for label, function in PARTS:
        cost = sum(v for (_, f), v in incl.items() if f == function)
        print(f"  {cost:12,.0f}  {cost / whole:5.1%}  {label} (inclusive of {function})")
    objects: dict[str, float] = defaultdict(float)
    for (obj, _), cost in own.items():
        objects[obj] += cost
    print("  by shared object, exclusive (? = inlined interpreter code):")
    for obj, cost in sorted(objects.items(), key=lambda kv: -kv[1])[:k]:
        print(f"  {cost:12,.0f}  {cost / whole:5.1%}  {obj}")
    print("  by C function, exclusive:")
    for (obj, function), cost in sorted(own.items(), key=lambda kv: -kv[1])[:k]:
        print(f"  {cost:12,.0f}  {cost / whole:5.1%}  {function} ({obj})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="N (default 20): runs N and 2N")
    parser.add_argument("--warmup", type=int, default=5, help="calls before the measured ones")
    parser.add_argument("--wall-calls", type=int, default=200, help="native calls per process")
    parser.add_argument("--rounds", type=int, default=3, help="native processes per side")
    parser.add_argument("--jobs", type=int, default=2, help="valgrind processes at once")
    parser.add_argument("--top", type=int, default=0, metavar="K", help="print the top K costs")
    parser.add_argument(
        "--db-query", default="", metavar="Q",
        help="appended to the full runs' SQLite URLs, e.g. '?synchronous=full'",
    )  # fmt: skip
    parser.add_argument(
        "--kinds", default=",".join(KINDS), metavar="K,…",
        help=f"the sides to measure (default all: {','.join(KINDS)}; raw is always measured)",
    )  # fmt: skip
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        kind, calls, warmup, url, workflow, db = opts.child
        child(kind, int(calls), int(warmup), url, workflow, db)
        return
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind): no instruction counts")
        return
    n = opts.calls
    kinds = ("raw", *(k for k in KINDS[1:] if k in opts.kinds.split(",")))
    sim, url = start_simulator()
    try:
        with tempfile.TemporaryDirectory(prefix="demiarch-instr-") as tmp:
            bench = Bench(Path(tmp), url, opts.warmup, opts.db_query)
            rounds: dict[str, list[float]] = defaultdict(list)
            for _ in range(opts.rounds):  # interleaved, so load from elsewhere hits all alike
                for kind in kinds:
                    rounds[kind].append(statistics.median(bench.wall(kind, opts.wall_calls)))
            wall = {kind: statistics.median(rounds[kind]) for kind in rounds}
            jobs = [(kind, calls) for kind in kinds for calls in (n, 2 * n)]
            with ThreadPoolExecutor(max_workers=opts.jobs) as pool:
                done = dict(
                    zip(jobs, pool.map(lambda j: bench.instructions(*j), jobs), strict=True)
                )
            per_call = {k: (done[k, 2 * n][0] - done[k, n][0]) / n for k in kinds}
            report(n, opts.warmup, f"{opts.rounds} × {opts.wall_calls}", per_call, wall)
            if opts.top and "table" in kinds:
                top(done["table", n][1], done["table", 2 * n][1], n, opts.top)
    finally:
        sim.terminate()
        sim.wait()


def report(
    n: int, warmup: int, wall_calls: str, per_call: dict[str, float], wall: dict[str, float]
) -> None:
    raw = per_call["raw"]
    print(
        f"\ninstructions per call (callgrind, all threads): processes of {n} and {2 * n}"
        f" sequential calls after {warmup} warm-up ones, the difference / {n};"
        f" wall clock: median µs per call of {wall_calls} native calls (median of the processes)"
    )
    print(f"{'':40} {'instructions':>14} {'ratio':>8} {'wall µs':>9} {'ratio':>7}")
    for kind, count in per_call.items():
        line = f"{LABELS[kind]:40} {count:14,.0f} {count / raw:7.2f}×"
        if kind in wall:
            line += f" {wall[kind]:9,.0f} {wall[kind] / wall['raw']:6.2f}×"
        print(line)
    if "bare-mem" in per_call and "engine-mem" in per_call:
        over = per_call["engine-mem"] - per_call["bare-mem"]
        print(
            f"engine overhead apart from I/O (run − bare call, in-memory): {over:,.0f}"
            f" instructions per run"
            + (
                f" ({wall['engine-mem'] - wall['bare-mem']:,.0f} µs wall)"
                if "engine-mem" in wall and "bare-mem" in wall
                else ""
            )
        )
    if "statemachine" in per_call and "table" in per_call:
        saved = per_call["statemachine"] - per_call["table"]
        share = saved / per_call["statemachine"]
        print(f"the table saves {saved:,.0f} instructions per run ({share:.0%} of the run)")


if __name__ == "__main__":
    main()
