"""Single-call figures of peer clients against the same simulator, for the README's comparison.

Run with an interpreter of a *separate* virtual environment that has the peers installed (they
are not project dependencies), e.g.::

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install openai litellm httpx
    python bench/run.py --peers /tmp/peers/bin/python

It prints one JSON object: per client, the median and p99 µs per sequential call, under asyncio
(the peers' native loop), with raw httpx measured the same way as the common floor.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

MODEL = "anthropic/claude-sonnet-4"
MESSAGES = [{"role": "user", "content": "Hello, benchmark"}]


async def measure(call: Callable[[], Awaitable[Any]], n: int) -> dict[str, float]:
    for _ in range(50):
        await call()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    return {
        "median_us": statistics.median(times),
        "p99_us": times[min(len(times) - 1, round(0.99 * (len(times) - 1)))],
    }


async def main(url: str, n: int) -> None:
    out: dict[str, Any] = {}
    import httpx

    async with httpx.AsyncClient() as http:

        async def raw() -> None:
            r = await http.post(f"{url}/chat/completions", json={"model": MODEL, "messages": MESSAGES},
                                headers={"Authorization": "Bearer sk-or-bench"})  # fmt: skip
            r.json()

        out["raw httpx (asyncio)"] = await measure(raw, n)
    try:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=url, api_key="sk-or-bench", max_retries=0)

        async def openai_call() -> None:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]

        out["openai SDK"] = await measure(openai_call, n)
    except ImportError:
        pass
    try:
        # LiteLLM fetches a price list from the internet at import unless told not to.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        t0 = time.perf_counter()
        import litellm

        out["litellm import s"] = time.perf_counter() - t0

        async def litellm_call() -> None:
            await litellm.acompletion(model=f"openrouter/{MODEL}", messages=MESSAGES,
                                      api_base=url, api_key="sk-or-bench", num_retries=0)  # fmt: skip

        out["LiteLLM"] = await measure(litellm_call, n)
    except ImportError:
        pass
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 300))
