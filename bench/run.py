"""Benchmarks: demiarch-flow against raw httpx on the same loopback simulator, in one run.

The bundled simulator runs in its own process (zero latency, no faults) so it does not share
the GIL with the client under test; both clients then run in this process under trio. Printed:

* raw httpx.AsyncClient (the floor): sequential median / p99 µs per call, calls/s with 10 and
  100 requests in flight (naive: that many tasks calling in a loop);
* demiarch-flow full run (LoadContext → Request → Persist + journal, SQLite file in WAL): the
  same figures and the ratio to raw httpx (concurrency bounded as ``batch`` does it);
* engine overhead alone: a run against an in-memory transport and store, minus a bare post
  through the same transport;
* cold start of ``--help`` and ``validate``; a 2,000-line batch on a cold start (timeouts
  counted) and the peak RSS of a 10,000-line batch.

Usage: ``python bench/run.py [--quick]`` (``just bench``). Nothing here is asserted: the numbers
are for the README, and for a human to compare against the targets in issue 6.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demiarch_flow.cli._common import http_client, open_world  # noqa: E402
from demiarch_flow.client import ApiKey, OpenRouterClient  # noqa: E402
from demiarch_flow.definition import load_workflow  # noqa: E402
from demiarch_flow.runner import RunEnv, RunRequest, run_workflow  # noqa: E402
from demiarch_flow.store import MemoryStore  # noqa: E402

KEY = ApiKey("sk-or-bench", "bench")
WORKFLOW = load_workflow(ROOT / "workflows" / "chat.yaml")
PAYLOAD = {
    "model": WORKFLOW.models[0],
    "messages": [{"role": "user", "content": "Hello, benchmark"}],
}
HEADERS = {"Authorization": f"Bearer {KEY.value}", "Content-Type": "application/json"}
CLI = [sys.executable, "-m", "demiarch_flow"]


def start_simulator() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*CLI, "simulator"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise SystemExit("the simulator did not start")
    return proc, url


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def sequential(call: Callable[[], Awaitable[Any]], n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        await call()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


async def throughput(call: Callable[[], Awaitable[Any]], in_flight: int, total: int) -> float:
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(in_flight):
            nursery.start_soon(worker)
    return total / (time.perf_counter() - t0)


async def bench_raw(url: str, n: int, total: int) -> dict[str, float]:
    out: dict[str, float] = {}
    async with http_client(100) as http:

        async def call() -> None:
            r = await http.post(f"{url}/chat/completions", json=PAYLOAD, headers=HEADERS)
            r.json()

        seq = await sequential(call, n, 50)
        out["median_us"], out["p99_us"] = statistics.median(seq), pct(seq, 99)
        out["rps_10"] = await throughput(call, 10, total)
        out["rps_100"] = await throughput(call, 100, total)
    return out


async def bench_flow(url: str, n: int, total: int, folder: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for label, concurrency in (("seq", 1), ("10", 10), ("100", 100)):
        db = f"sqlite:///{folder / f'flow-{label}.db'}"
        async with open_world(
            db=db, base_url=url, key=KEY, max_in_flight=min(concurrency, 32)
        ) as world:

            async def call(world: Any = world) -> None:
                outcome = await run_workflow(WORKFLOW, RunRequest("Hello, benchmark"), world.env)
                assert outcome.succeeded, outcome.error

            if concurrency == 1:
                seq = await sequential(call, n, 50)
                out["median_us"], out["p99_us"] = statistics.median(seq), pct(seq, 99)
            else:
                out[f"rps_{label}"] = await throughput(call, concurrency, total)
    return out


async def bench_engine(n: int) -> dict[str, float]:
    """A run with an in-memory transport and store, against a bare post on the same transport."""
    body = json.dumps({
        "id": "gen-1", "model": PAYLOAD["model"],
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4, "cost": 0.00001},
    }).encode()  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = OpenRouterClient(http, KEY, base_url="http://bench.invalid/api/v1")
    store = MemoryStore()
    env = RunEnv(client=client, store=store)

    async def bare() -> None:
        await client.complete(PAYLOAD, timeout_s=120)

    async def run() -> None:
        await run_workflow(WORKFLOW, RunRequest("Hello"), env)

    base = statistics.median(await sequential(bare, n, 100))
    full = statistics.median(await sequential(run, n, 100))
    return {"bare_us": base, "run_us": full, "overhead_us": full - base}


def cold_start(args: list[str], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(
            [str(ROOT / ".venv" / "bin" / "demiarch-flow"), *args], capture_output=True, check=True
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def batch(url: str, lines: int, folder: Path, concurrency: int = 100) -> dict[str, float]:
    """A batch subprocess on a cold start: wall time, peak RSS, timeouts and failures."""
    inp = folder / f"in-{lines}.jsonl"
    inp.write_text(
        "".join(json.dumps({"id": i, "message": f"question {i}"}) + "\n" for i in range(lines))
    )
    out = folder / f"out-{lines}.jsonl"
    env = {**os.environ, "OPENROUTER_API_KEY": KEY.value}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*CLI, "batch", str(inp), "--concurrency", str(concurrency), "--quiet", "--out", str(out),
         "--db", f"sqlite:///{folder / f'batch-{lines}.db'}", "--base-url", url],
        env=env,
    )  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    results = [json.loads(line) for line in out.read_text().splitlines()]
    timeouts = sum(1 for r in results for a in r["attempts"] if a["error_class"] == "timeout")
    return {
        "wall_s": wall,
        "runs_per_s": len(results) / wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "succeeded": sum(r["status"] == "succeeded" for r in results),
        "timeouts": timeouts,
        "exit": os.waitstatus_to_exitcode(status),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument(
        "--peers",
        metavar="PYTHON",
        help="interpreter of a separate venv with openai/litellm installed (see bench/peers.py)",
    )
    opts = parser.parse_args()
    n, total = (100, 400) if opts.quick else (500, 2000)
    sim, url = start_simulator()
    try:
        with tempfile.TemporaryDirectory(prefix="demiarch-bench-") as tmp:
            folder = Path(tmp)
            raw = trio.run(bench_raw, url, n, total)
            flow = trio.run(bench_flow, url, n, total, folder)
            engine = trio.run(bench_engine, n)
            help_s = cold_start(["--help"])
            validate_s = cold_start(["validate", str(ROOT / "workflows" / "chat.yaml")])
            b2k = batch(url, 400 if opts.quick else 2000, folder)
            b10k = batch(url, 1000 if opts.quick else 10000, folder)
            peers = None
            if opts.peers:
                res = subprocess.run(
                    [opts.peers, str(ROOT / "bench" / "peers.py"), url, str(n)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                peers = json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        sim.terminate()
        sim.wait()

    rows = [
        ("sequential, median µs per call", raw["median_us"], flow["median_us"]),
        ("sequential, p99 µs per call", raw["p99_us"], flow["p99_us"]),
        ("calls/s, 10 in flight", raw["rps_10"], flow["rps_10"]),
        ("calls/s, 100 in flight", raw["rps_100"], flow["rps_100"]),
    ]
    print(f"\ndemiarch-flow benchmark — simulator on 127.0.0.1, zero latency, n={n}, total={total}")
    print(f"{'':34} {'raw httpx':>12} {'demiarch-flow':>14} {'ratio':>7}")
    for label, r, f in rows:
        ratio = f / r if "µs" in label else r / f
        print(f"{label:34} {r:12.0f} {f:14.0f} {ratio:6.2f}×")
    print("(ratio: how many times slower demiarch-flow is; below 1 means faster)")
    print(f"\nengine overhead: {engine['overhead_us']:.0f} µs per run "
          f"(run {engine['run_us']:.0f} µs vs bare client call {engine['bare_us']:.0f} µs, in-memory transport and store)")  # fmt: skip
    print(f"cold start: --help {help_s:.3f} s, validate {validate_s:.3f} s")
    if peers:
        floor = peers["raw httpx (asyncio)"]["median_us"]
        print(
            "\npeers (asyncio, separate venv), sequential median µs per call and ratio to raw httpx:"
        )
        for name, fig in peers.items():
            if isinstance(fig, dict):
                print(f"  {name:24} {fig['median_us']:8.0f} µs  {fig['median_us'] / floor:5.2f}×")
        if "litellm import s" in peers:
            print(f"  LiteLLM import: {peers['litellm import s']:.2f} s")
    for name, b in (("batch (cold start)", b2k), ("batch (peak RSS)", b10k)):
        lines = (
            400
            if opts.quick and b is b2k
            else 1000
            if opts.quick
            else (2000 if b is b2k else 10000)
        )
        print(f"{name}: {lines} lines, concurrency 100 — {b['wall_s']:.1f} s, {b['runs_per_s']:.0f} runs/s, "
              f"{b['succeeded']} succeeded, {b['timeouts']} timeouts, peak RSS {b['peak_rss_mb']:.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
