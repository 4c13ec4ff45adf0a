"""The ``gen_ai.client.*`` metrics, message content (off unless asked for) and the API key
(never in a span, an event, an attribute or a metric, whatever its shape)."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx

from demiarch_flow.client import ApiKey, OpenRouterClient
from demiarch_flow.fake import FAKE_BASE_URL
from demiarch_flow.runner import RunRequest, run_workflow
from demiarch_flow.testing import FakeOpenRouter, make_env

from ..runner.helpers import HAIKU, SONNET, default_workflow
from .conftest import Sdk

WF = default_workflow()
MESSAGE = "a question only the user should see"


async def run(sdk: Sdk, script: str = "", *, stream: bool = False, **environ: str) -> Any:
    tracer = sdk.tracer(**environ)
    env = make_env(FakeOpenRouter(script), listeners=(tracer,), tracer=tracer)
    return await run_workflow(WF, RunRequest(MESSAGE, stream=stream), env)


def everything_exported(sdk: Sdk) -> list[str]:
    """Every name and value of every span, event, status and metric point, as text."""
    out: list[str] = []
    for span in sdk.finished():
        out += [span.name, str(span.status.description)]
        out += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
        for event in span.events:
            out += [event.name, *(f"{k}={v}" for k, v in (event.attributes or {}).items())]
    data = sdk.metrics.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    out += [f"{k}={v}" for k, v in (p.attributes or {}).items()]
    return out


async def test_duration_and_token_usage_follow_the_conventions(
    sdk: Sdk, autojump_clock: object
) -> None:
    """One failed and one answered attempt: two duration points (the failed one with
    error.type), input and output token points for the answer, and its spend in USD."""
    out = await run(sdk, f"{SONNET}=404")
    assert out.succeeded
    durations = {
        (p.attributes["gen_ai.request.model"], p.attributes.get("error.type")): p
        for p in sdk.points("gen_ai.client.operation.duration")
    }
    assert set(durations) == {(SONNET, "model_unavailable"), (HAIKU, None)}
    for point in durations.values():
        assert point.count == 1
        assert point.attributes["gen_ai.operation.name"] == "chat"
        assert point.attributes["gen_ai.provider.name"] == "openrouter"
        assert point.attributes["server.address"] == "openrouter.ai"
    assert durations[(HAIKU, None)].attributes["gen_ai.response.model"] == HAIKU
    tokens = {p.attributes["gen_ai.token.type"]: p for p in sdk.points("gen_ai.client.token.usage")}
    assert set(tokens) == {"input", "output"}
    assert tokens["input"].sum == out.prompt_tokens
    assert tokens["output"].sum == out.completion_tokens
    assert tokens["input"].attributes["gen_ai.request.model"] == HAIKU
    (spend,) = sdk.points("demiarch_flow.client.cost")
    assert spend.value == float(out.cost_usd)
    assert spend.attributes["gen_ai.request.model"] == HAIKU


async def test_message_content_is_not_exported_by_default(sdk: Sdk, autojump_clock: object) -> None:
    """Without the variable, neither the user's message nor the reply is anywhere."""
    out = await run(sdk)
    exported = "\n".join(everything_exported(sdk))
    assert MESSAGE not in exported
    assert out.content and out.content not in exported
    assert "gen_ai.input.messages" not in exported


async def test_message_content_is_exported_when_asked_for(sdk: Sdk, autojump_clock: object) -> None:
    """``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``: the chat span carries
    ``gen_ai.input.messages`` and ``gen_ai.output.messages`` in the conventions' shape."""
    import json

    out = await run(sdk, OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true")
    (chat,) = sdk.named("chat ")
    a = chat.attributes or {}
    assert json.loads(str(a["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": MESSAGE}]}
    ]
    assert json.loads(str(a["gen_ai.output.messages"])) == [
        {"role": "assistant", "parts": [{"type": "text", "content": out.content}]}
    ]


ODD_KEY = "Zq 9~|{}^`%$#!,.;=+ odd key shape 7f"
"""A key of no known shape (spaces, punctuation, no ``sk-or-`` prefix), sendable in a header."""


async def test_a_key_of_unusual_shape_echoed_by_the_server_is_never_exported(
    sdk: Sdk, autojump_clock: object
) -> None:
    """A server that puts the key in the answering model's name and the generation id, and
    content capture on: the key is in no span, event, attribute or metric point."""

    def echo(body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "model": f"echo/{ODD_KEY}", "id": f"gen-{ODD_KEY}"}

    fake = FakeOpenRouter(edit_success=echo)
    tracer = sdk.tracer(OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true")
    client = OpenRouterClient(
        httpx.AsyncClient(transport=fake), ApiKey(ODD_KEY, "test"), base_url=FAKE_BASE_URL
    )
    env = dataclasses.replace(make_env(fake, listeners=(tracer,), tracer=tracer), client=client)
    out = await run_workflow(WF, RunRequest(f"my key is {ODD_KEY}", stream=False), env)
    assert out.succeeded
    exported = everything_exported(sdk)
    assert any("echo/[redacted]" in text for text in exported)  # the echo did reach us
    assert not [text for text in exported if ODD_KEY in text]
