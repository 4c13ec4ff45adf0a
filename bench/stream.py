"""Streaming benchmark: ``OpenRouterClient.stream`` against raw httpx reading the same stream.

The bundled simulator runs in its own process and answers every request with a stream of N
content chunks (fault ``chunks:N``). Both sides run in this process under trio, over the same
kind of ``httpx.AsyncClient``, in the same run. The raw side is the least work that yields the
text: ``aiter_lines()``, ``json.loads`` of each ``data:`` line, the delta appended to a list.
Printed, with the ratio beside each pair:

* time to first token (median over R requests of a 50-chunk reply), and what we add over raw;
* CPU time per chunk over a 10,000-chunk reply (``time.process_time``; best of R);
* peak traced memory per chunk at 1,000 and 10,000 chunks (flat per chunk = linear, not
  quadratic, string building).

Usage: ``python bench/stream.py [--quick]`` (``just bench-stream``). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demiarch_flow.client import ApiKey, OpenRouterClient  # noqa: E402

MODEL = "anthropic/claude-sonnet-4"
KEY = ApiKey("sk-or-bench", "bench")
HEADERS = {"Authorization": f"Bearer {KEY.value}", "Content-Type": "application/json"}
CLI = [sys.executable, "-m", "demiarch_flow"]


def start_simulator(chunks: int) -> tuple[subprocess.Popen[str], str]:
    return _common.start_simulator("--faults", f"*=chunks:{chunks}*")


def payload() -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "stream"}], "stream": True}


async def raw(http: httpx.AsyncClient, url: str, first: list[float]) -> str:
    """Raw httpx: the least work that yields the reply's text."""
    parts: list[str] = []
    body = json.dumps(payload()).encode()
    async with http.stream("POST", f"{url}/chat/completions", content=body, headers=HEADERS) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                choices = chunk.get("choices")
                if choices:
                    text = choices[0].get("delta", {}).get("content")
                    if text:
                        if not first:
                            first.append(time.perf_counter())
                        parts.append(text)
    return "".join(parts)


async def ours(client: OpenRouterClient, first: list[float]) -> str:
    async def on_delta(text: str) -> None:
        if not first:
            first.append(time.perf_counter())

    result = await client.stream(payload(), timeout_s=600, on_delta=on_delta)
    assert result.completion is not None, result.error
    return result.completion.content


Side = Callable[[list[float]], Awaitable[str]]


async def ttft(side: Side, rounds: int) -> float:
    """Median seconds from sending to the first token."""
    times = []
    for _ in range(rounds):
        first: list[float] = []
        start = time.perf_counter()
        await side(first)
        times.append(first[0] - start)
    return statistics.median(times)


async def cpu_per_chunk(side: Side, chunks: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        await side([])
        best = min(best, time.process_time() - start)
    return best / chunks


async def peak_per_chunk(side: Side, chunks: int) -> float:
    tracemalloc.start()
    text = await side([])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(text) > chunks
    return peak / chunks


async def measure(url_small: str, url_big: str, url_mid: str, rounds: int) -> None:
    async with httpx.AsyncClient(timeout=600) as http:
        small = OpenRouterClient(http, KEY, base_url=url_small)
        big = OpenRouterClient(http, KEY, base_url=url_big)
        mid = OpenRouterClient(http, KEY, base_url=url_mid)
        for side in (lambda f: raw(http, url_small, f), lambda f: ours(small, f)):
            await ttft(side, 3)  # warm the pool and the code paths
        t_raw = await ttft(lambda f: raw(http, url_small, f), rounds)
        t_ours = await ttft(lambda f: ours(small, f), rounds)
        c_raw = await cpu_per_chunk(lambda f: raw(http, url_big, f), 10_000, max(2, rounds // 10))
        c_ours = await cpu_per_chunk(lambda f: ours(big, f), 10_000, max(2, rounds // 10))
        m_raw = {
            1000: await peak_per_chunk(lambda f: raw(http, url_mid, f), 1000),
            10_000: await peak_per_chunk(lambda f: raw(http, url_big, f), 10_000),
        }
        m_ours = {
            1000: await peak_per_chunk(lambda f: ours(mid, f), 1000),
            10_000: await peak_per_chunk(lambda f: ours(big, f), 10_000),
        }
    print(f"\nstreaming benchmark — bundled simulator on 127.0.0.1, {rounds} rounds")
    print(f"{'':34}{'raw httpx':>12}{'demiarch':>12}{'ratio / diff':>16}")
    print(
        f"{'time to first token (median)':34}{t_raw * 1e3:>10.3f}ms{t_ours * 1e3:>10.3f}ms"
        f"{(t_ours - t_raw) * 1e3:>+13.3f}ms"
    )
    print(
        f"{'CPU per chunk (10,000 chunks)':34}{c_raw * 1e6:>10.2f}µs{c_ours * 1e6:>10.2f}µs"
        f"{c_ours / c_raw:>15.2f}×"
    )
    for n in (1000, 10_000):
        print(
            f"{f'peak memory per chunk ({n:,})':34}{m_raw[n]:>11.0f}B{m_ours[n]:>11.0f}B"
            f"{m_ours[n] / m_raw[n]:>15.2f}×"
        )
    growth = m_ours[10_000] / m_ours[1000]
    print(f"memory per chunk, 10,000 vs 1,000 chunks (1.0 = flat): {growth:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    sims = [start_simulator(n) for n in (50, 10_000, 1000)]
    try:
        urls = [url for _, url in sims]
        trio.run(measure, urls[0], urls[1], urls[2], 20 if args.quick else 100)
    finally:
        for proc, _ in sims:
            proc.kill()


if __name__ == "__main__":
    main()
