"""Workflows with a ``limits`` block, and a fake provider that enforces a request rate."""

from __future__ import annotations

import httpx
import trio

from demiarch_flow.definition import Workflow, parse_workflow
from demiarch_flow.simrate import SlidingWindowLimit
from demiarch_flow.testing import FakeOpenRouter

from ..conftest import DEFAULT_WORKFLOW

SONNET, HAIKU, GPT4O = "anthropic/claude-sonnet-4", "anthropic/claude-3.5-haiku", "openai/gpt-4o"


def with_limits(
    limits: str, *, fallback: str | None = None, max_tokens: int | None = 100
) -> Workflow:
    """The default workflow plus a ``limits`` block (YAML text, indented under ``limits:``)."""
    text = DEFAULT_WORKFLOW.read_text("utf-8")
    if max_tokens is not None:
        text = text.replace("  # optional: temperature, max_tokens", f"  max_tokens: {max_tokens}")
    if fallback is not None:
        start = text.index("fallback:")
        end = text.index("\n\n", start)
        text = text[:start] + f"fallback:\n  when: [{fallback}]" + text[end:]
    return parse_workflow(text + "\nlimits:\n" + limits)


class RateLimitedFake(httpx.AsyncBaseTransport):
    """The fake provider behind a provider-side rpm limit (the simulator's own rule): a
    request past ``rpm`` in any 60 s gets a 429, and is counted."""

    def __init__(self, rpm: int, script: str = "") -> None:
        self.fake = FakeOpenRouter(script)
        self.limit = SlidingWindowLimit(rpm)
        self.times: list[float] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        now = trio.current_time()
        wait = self.limit.admit(now)
        if wait is not None:
            return httpx.Response(429, headers={"Retry-After": f"{wait:.3f}"},
                                  json={"error": {"code": 429, "message": "rate limited"}})  # fmt: skip
        self.times.append(now)
        return await self.fake.handle_async_request(request)
