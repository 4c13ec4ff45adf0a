"""What tracing costs: per run with OpenTelemetry off and on (to a local OTLP/HTTP receiver),
and the import time of the ``otel`` extra.

* full runs on a SQLite file against the bundled simulator (its own process, zero latency),
  through the composition root: ``open_world(trace=False)`` and ``open_world(trace=True)``
  exporting over OTLP/HTTP to a receiver on 127.0.0.1 (a thread of this process that reads
  every request and answers 200), interleaved in blocks so load from elsewhere hits both;
* the engine alone (in-memory transport and store): no tracer, and the tracer with the SDK's
  batch processor to the same receiver;
* cold import: ``import demiarch_flow.runtime`` (what an untraced run loads) and the same plus
  the tracer and the SDK set-up (what ``--trace`` adds);
* with valgrind on the PATH, instructions per full run off and on (callgrind, all threads:
  the exporter's encoding included; processes of N and 2N runs, the difference / N, as
  ``bench/instructions.py`` counts) — the figure that does not move with the machine's load;
* with valgrind, the listener alone: one run's records (taken from an in-memory run) replayed
  through the tracer ``--trace`` builds, exporting to the receiver, with run, conversation and
  generation ids new each run; the same replay without the tracer is subtracted — what tracing
  costs apart from the run, without the noise of the SQLite threads' timing.

Usage: ``python bench/trace.py [--quick] [--repeat N] [--calls N]`` (``just bench`` runs it
after ``bench/run.py``). Nothing is asserted; the README's Performance section copies one run.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import spread, start_simulator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demiarch_flow.client import ApiKey, OpenRouterClient  # noqa: E402
from demiarch_flow.definition import parse_workflow  # noqa: E402
from demiarch_flow.runner import RunEnv, RunRequest, run_workflow  # noqa: E402
from demiarch_flow.runtime import open_world  # noqa: E402
from demiarch_flow.store import MemoryStore  # noqa: E402
from demiarch_flow.testing import FakeOpenRouter  # noqa: E402

KEY = ApiKey("sk-or-bench", "bench")
WORKFLOW = parse_workflow(
    (ROOT / "workflows" / "chat.yaml").read_text("utf-8").replace("stream: true", "stream: false")
)
CLI = [sys.executable, "-m", "demiarch_flow"]


class Sink:
    """An OTLP/HTTP receiver that takes every export (200, empty body) and counts the bytes."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                sink.requests += 1
                sink.bytes += len(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


async def timed(call: Callable[[], Awaitable[Any]], n: int, cpu: list[float]) -> list[float]:
    """Wall µs of each of ``n`` calls; the process's CPU µs per call (every thread: the
    exporter's encoding included) appended to ``cpu``."""
    out = []
    c0 = time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        out.append((time.perf_counter() - t0) * 1e6)
    cpu.append((time.process_time() - c0) * 1e6 / n)
    return out


async def full_runs(url: str, folder: Path, n: int) -> dict[str, float]:
    """Median µs per full run on SQLite, tracing off and on, in interleaved blocks."""
    times: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    block = max(1, n // 10)
    async with (
        open_world(db=f"sqlite:///{folder / 'off.db'}", base_url=url, key=KEY, trace=False) as off,
        open_world(db=f"sqlite:///{folder / 'on.db'}", base_url=url, key=KEY, trace=True) as on,
    ):
        assert off.env.tracer is None
        assert on.env.tracer is not None
        worlds = {"off": off, "on": on}
        for world in worlds.values():  # warm-up
            for _ in range(20):
                await run_workflow(WORKFLOW, RunRequest("Hello, benchmark"), world.env)
        for _ in range(0, n, block):
            for name, world in worlds.items():

                async def call(env: RunEnv = world.env) -> None:
                    out = await run_workflow(WORKFLOW, RunRequest("Hello, benchmark"), env)
                    assert out.succeeded, out.error

                times[name] += await timed(call, block, cpu[name])
    return {**{k: statistics.median(v) for k, v in times.items()},
            **{f"cpu_{k}": statistics.median(v) for k, v in cpu.items()}}  # fmt: skip


async def engine_runs(n: int) -> dict[str, float]:
    """Median µs per run against an in-memory transport and store, tracer off and on (the SDK's
    batch processor exporting to the receiver the environment names)."""
    from demiarch_flow.telemetry import open_tracer

    def env_of(tracer: Any) -> RunEnv:
        http = httpx.AsyncClient(transport=FakeOpenRouter())
        client = OpenRouterClient(http, KEY, base_url="http://bench.invalid/api/v1")
        listeners = (tracer,) if tracer is not None else ()
        return RunEnv(client=client, store=MemoryStore(), listeners=listeners, tracer=tracer)

    times: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    block = max(1, n // 10)
    with open_tracer(True, server_url="http://bench.invalid/api/v1") as tracer:
        envs = {"off": env_of(None), "on": env_of(tracer)}
        for env in envs.values():
            for _ in range(20):
                await run_workflow(WORKFLOW, RunRequest("Hello"), env)
        for _ in range(0, n, block):
            for name, env in envs.items():

                async def call(env: RunEnv = env) -> None:
                    out = await run_workflow(WORKFLOW, RunRequest("Hello"), env)
                    assert out.succeeded, out.error

                times[name] += await timed(call, block, cpu[name])
    return {**{k: statistics.median(v) for k, v in times.items()},
            **{f"cpu_{k}": statistics.median(v) for k, v in cpu.items()}}  # fmt: skip


def import_s(code: str, repeat: int = 7) -> float:
    """Median wall seconds of a fresh interpreter running ``code``."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def child(trace: bool, calls: int, url: str, db: str) -> None:
    """A measured process: 5 warm-up then ``calls`` full runs, tracing ``trace``; everything
    pending is exported before it exits (no flush limit: valgrind is slow)."""
    from demiarch_flow.runner import owner
    from demiarch_flow.telemetry import _setup

    owner.HEARTBEAT_S = 1e9  # one UPDATE per 5 s of wall clock, stretched by valgrind
    _setup.FLUSH_S = 3600.0
    # One export at the end, as a real process exports one 5 s batch for many runs: valgrind
    # stretches the schedule fifty-fold, and a batch per run or two would be counted instead.
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = os.environ["OTEL_METRIC_EXPORT_INTERVAL"] = "3600000"

    async def main() -> None:
        async with open_world(db=db, base_url=url, key=KEY, max_in_flight=1, trace=trace) as w:
            for i in range(5 + calls):
                if i == 5:
                    # The first full collection after start-up falls where the allocation
                    # counts put it, in one process's extra runs or the other's (~2 M
                    # instructions a run: bench/instructions.py says more). Here, in neither.
                    gc.collect()
                out = await run_workflow(WORKFLOW, RunRequest("Hello, benchmark"), w.env)
                assert out.succeeded, out.error

    trio.run(main)


def replay_child(trace: bool, calls: int, url: str) -> None:
    """A measured process: one in-memory run's records replayed 3 + ``calls`` times, through
    the tracer (``trace``) or not, each replay with ids of its own."""
    import dataclasses

    from demiarch_flow.runner.records import FlowRecord, RunStart
    from demiarch_flow.telemetry import _setup, open_tracer

    _setup.FLUSH_S = 3600.0
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = os.environ["OTEL_METRIC_EXPORT_INTERVAL"] = "3600000"
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = url

    class Capture:
        def __init__(self) -> None:
            self.start: RunStart | None = None
            self.records: list[FlowRecord] = []

        def start_run(self, start: RunStart) -> None:
            self.start = start

        async def on_record(self, record: FlowRecord) -> None:
            self.records.append(record)

    async def main() -> None:
        cap = Capture()
        http = httpx.AsyncClient(transport=FakeOpenRouter())
        client = OpenRouterClient(http, KEY, base_url="http://bench.invalid/api/v1")
        env = RunEnv(client=client, store=MemoryStore(), listeners=(cap,), tracer=cap)
        assert (await run_workflow(WORKFLOW, RunRequest("Hello, benchmark"), env)).succeeded
        with open_tracer(trace, server_url="https://openrouter.ai/api/v1") as tracer:
            for i in range(3 + calls):
                run_id = f"{i:08d}-0000-4000-8000-000000000000"
                assert cap.start is not None
                start = dataclasses.replace(cap.start, run_id=run_id, conversation_id=f"c{i}")
                records = [
                    dataclasses.replace(
                        r, run_id=run_id, response_id=r.response_id and f"gen-{i}"
                    )
                    for r in cap.records
                ]  # fmt: skip
                if tracer is not None:
                    tracer.start_run(start)
                    for record in records:
                        await tracer.on_record(record)

    trio.run(main)


def callgrind_total(folder: Path, name: str, args: list[str]) -> int:
    """Instructions of ``python bench/trace.py ARGS`` under callgrind, all threads."""
    import re

    out = folder / f"callgrind.{name}.out"
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
         __file__, *args],
        env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, check=True,
    )  # fmt: skip
    found = re.search(r"^(?:totals|summary):\s*(\d+)", out.read_text(), re.MULTILINE)
    assert found, f"no totals in {out}"
    return int(found.group(1))


def listener_instructions(url: str, folder: Path, calls: int) -> float | None:
    """Instructions per replayed run that the tracer adds (``None`` without valgrind)."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    if shutil.which("valgrind") is None:
        return None
    jobs = [(side, n) for side in ("off", "on") for n in (calls, 2 * calls)]

    def total(job: tuple[str, int]) -> int:
        side, n = job
        return callgrind_total(folder, f"replay.{side}.{n}", ["--replay", side, str(n), url])

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(jobs, pool.map(total, jobs), strict=True))
    per = {side: (done[side, 2 * calls] - done[side, calls]) / calls for side in ("off", "on")}
    return per["on"] - per["off"]


def instructions(url: str, folder: Path, calls: int) -> dict[str, float] | None:
    """Instructions per full run, tracing off and on (``None`` without valgrind)."""
    import re
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    if shutil.which("valgrind") is None:
        return None

    def total(job: tuple[str, int]) -> int:
        side, n = job
        out = folder / f"callgrind.{side}.{n}.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
             __file__, "--child", side, str(n), url, f"sqlite:///{folder / f'{side}-{n}.db'}"],
            env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, check=True,
        )  # fmt: skip
        found = re.search(r"^(?:totals|summary):\s*(\d+)", out.read_text(), re.MULTILINE)
        assert found, f"no totals in {out}"
        return int(found.group(1))

    jobs = [(side, n) for side in ("off", "on") for n in (calls, 2 * calls)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(jobs, pool.map(total, jobs), strict=True))
    return {side: (done[side, 2 * calls] - done[side, calls]) / calls for side in ("off", "on")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("--repeat", type=int, help="rounds of each measurement (default 3)")
    parser.add_argument("--calls", type=int, default=20, help="callgrind: N and 2N runs")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--replay", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument(
        "--listener-only", action="store_true",
        help="only the listener's instructions per replayed run (needs valgrind)",
    )  # fmt: skip
    opts = parser.parse_args()
    if opts.replay:
        side, calls, url = opts.replay
        replay_child(side == "on", int(calls), url)
        return
    if opts.listener_only:
        sink = Sink()
        with tempfile.TemporaryDirectory(prefix="demiarch-bench-trace-") as tmp:
            extra = listener_instructions(sink.url, Path(tmp), 50)
        print(f"listener alone, instructions per replayed run: {extra:,.0f}")
        return
    if opts.child:
        side, calls, url, db = opts.child
        child(side == "on", int(calls), url, db)
        return
    n = 100 if opts.quick else 500
    rounds = opts.repeat or (1 if opts.quick else 3)
    sink = Sink()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.url
    for name in ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER"):
        os.environ.pop(name, None)
    fig: dict[str, list[float]] = defaultdict(list)
    sim, url = start_simulator()
    try:
        with tempfile.TemporaryDirectory(prefix="demiarch-bench-trace-") as tmp:
            for r in range(rounds):
                folder = Path(tmp) / f"round-{r}"
                folder.mkdir()
                full = trio.run(full_runs, url, folder, n)
                eng = trio.run(engine_runs, n)
                for k, v in full.items():
                    fig[f"full_{k}"].append(v)
                for k, v in eng.items():
                    fig[f"eng_{k}"].append(v)
            instr = instructions(url, Path(tmp), opts.calls)
            listener = listener_instructions(sink.url, Path(tmp), 50)
    finally:
        sim.terminate()
        sim.wait()
    plain = import_s("import demiarch_flow.runtime")
    traced = import_s(
        "import demiarch_flow.runtime, demiarch_flow.telemetry._listener,"
        " demiarch_flow.telemetry._setup"
    )

    def ratio(on: str, off: str) -> list[float]:
        return [a / b for a, b in zip(fig[on], fig[off], strict=True)]

    def extra(on: str, off: str) -> list[float]:
        return [a - b for a, b in zip(fig[on], fig[off], strict=True)]

    print(
        f"\ntracing cost — n={n} runs per side, {rounds} round(s): median (min–max) of the rounds;"
        f" the receiver took {sink.requests} exports, {sink.bytes / 1e6:.1f} MB"
    )
    for title, p in (("full run, SQLite, simulator", "full"), ("engine, in-memory", "eng")):
        print(
            f"{title}: wall median µs per run off {spread(fig[f'{p}_off'])}, on"
            f" {spread(fig[f'{p}_on'])} → {spread(ratio(f'{p}_on', f'{p}_off'), 3)}×;"
            f" CPU µs per run (all threads) off {spread(fig[f'{p}_cpu_off'])}, on"
            f" {spread(fig[f'{p}_cpu_on'])} → +{spread(extra(f'{p}_cpu_on', f'{p}_cpu_off'))} µs"
            f" ({spread(ratio(f'{p}_cpu_on', f'{p}_cpu_off'), 3)}×)"
        )
    if instr is not None:
        print(
            f"instructions per full run (callgrind, all threads, {opts.calls} and"
            f" {2 * opts.calls} runs): off {instr['off']:,.0f}, on {instr['on']:,.0f}"
            f" → {instr['on'] / instr['off']:.3f}× (+{instr['on'] - instr['off']:,.0f})"
        )
    if listener is not None:
        print(
            "the listener alone (one run's records replayed, ids new each time, 50 and 100"
            f" replays, the replay without the tracer subtracted): {listener:,.0f} per run"
        )
    print("target: tracing on ≤ 1.15× per full run")
    print(
        f"cold import: demiarch_flow.runtime {plain * 1000:.0f} ms;"
        f" with the tracer and the SDK {traced * 1000:.0f} ms (+{(traced - plain) * 1000:.0f} ms,"
        " paid only when tracing is on)"
    )


if __name__ == "__main__":
    main()
