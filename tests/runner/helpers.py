"""Shared helpers for runner tests: a respx router as the transport, and the default workflow."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import httpx
import respx

from demiarch_flow.client import ApiKey, OpenRouterClient
from demiarch_flow.definition import Workflow, load_workflow, parse_workflow
from demiarch_flow.runner import RunEnv, RunOutcome, RunRequest, run_workflow
from demiarch_flow.store import MemoryStore
from demiarch_flow.testing import FAKE_BASE_URL, FAKE_KEY, RecordingListener, fixed_clock

from ..conftest import DEFAULT_WORKFLOW

URL = f"{FAKE_BASE_URL}/chat/completions"
SONNET, HAIKU, GPT4O = "anthropic/claude-sonnet-4", "anthropic/claude-3.5-haiku", "openai/gpt-4o"


def default_workflow() -> Workflow:
    return load_workflow(DEFAULT_WORKFLOW)


def edited(**replacements: str) -> Workflow:
    """The default workflow text with literal replacements (old=new pairs via a dict)."""
    text = DEFAULT_WORKFLOW.read_text("utf-8")
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return parse_workflow(text)


def ok_body(
    model: str, content: str = "Hello there!", cost: float | None = 0.00009
) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 2},
    }
    if cost is not None:
        usage["cost"] = cost
    return {
        "id": f"gen-{random.randrange(10**9)}",
        "object": "chat.completion",
        "model": model,
        "provider": "Anthropic",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content},
            }
        ],
        "usage": usage,
    }


def error(
    status: int, code: Any = None, headers: dict[str, str] | None = None, **meta: Any
) -> httpx.Response:
    body: dict[str, Any] = {
        "error": {"code": status if code is None else code, "message": f"fail {status}"}
    }
    if meta:
        body["error"]["metadata"] = meta
    return httpx.Response(status, json=body, headers=headers or {})


class Harness:
    """A respx router standing in for OpenRouter, answering per model from queued responses."""

    def __init__(self, answers: dict[str, Sequence[Any]]) -> None:
        self.answers = {m: list(a) for m, a in answers.items()}
        self.router = respx.Router(assert_all_called=False)
        self.route = self.router.post(URL).mock(side_effect=self._answer)
        self.listener = RecordingListener()
        self.store = MemoryStore()
        self.times: list[float] = []

    def _answer(self, request: httpx.Request) -> httpx.Response:
        import json

        import trio

        self.times.append(trio.current_time())
        model = json.loads(request.content)["model"]
        queue = self.answers.get(model) or [httpx.Response(200, json=ok_body(model))]
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item

    @property
    def models(self) -> list[str]:
        import json

        return [json.loads(c.request.content)["model"] for c in self.route.calls]

    def env(self, seed: int = 0) -> RunEnv:
        http = httpx.AsyncClient(transport=httpx.MockTransport(self.router.async_handler))
        client = OpenRouterClient(http, ApiKey(FAKE_KEY, "test"), base_url=FAKE_BASE_URL)
        return RunEnv(
            client=client,
            store=self.store,
            rng=random.Random(seed),
            now=fixed_clock(),
            listeners=(self.listener,),
        )

    async def run(
        self,
        wf: Workflow | None = None,
        message: str = "Hi",
        model: str | None = None,
        seed: int = 0,
    ) -> RunOutcome:
        return await run_workflow(
            wf or default_workflow(), RunRequest(message, model=model), self.env(seed)
        )

    def waits(self) -> list[float]:
        return [r.wait_s for r in self.listener.of_kind("wait") if r.wait_s is not None]
