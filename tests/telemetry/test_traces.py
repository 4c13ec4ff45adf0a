"""A run as an OpenTelemetry trace: the spans, their links and attributes, drawn from the
runner's records over the one fake provider, in trio's virtual time."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from demiarch_flow.runner import RunRequest, run_workflow
from demiarch_flow.runner.resume import resume_run
from demiarch_flow.store import MemoryStore
from demiarch_flow.testing import FakeOpenRouter, make_env

from ..runner.helpers import HAIKU, SONNET, default_workflow
from .conftest import Sdk

WF = default_workflow()


async def traced_run(sdk: Sdk, script: str, *, stream: bool = False, **environ: str) -> Any:
    tracer = sdk.tracer(**environ)
    env = make_env(FakeOpenRouter(script), listeners=(tracer,), tracer=tracer)
    return await run_workflow(WF, RunRequest("Hi there", stream=stream), env)


def only(spans: list[ReadableSpan]) -> ReadableSpan:
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


async def test_a_run_that_retries_falls_back_and_succeeds_is_one_trace(
    sdk: Sdk, autojump_clock: object
) -> None:
    """500 (retried after 1 s), 404 (fallback), then haiku answers: a root invoke_workflow
    span, three chat CLIENT spans and one wait span under it, all in one trace, with the
    transitions as events on the root."""
    out = await traced_run(sdk, f"{SONNET}=500,404")
    assert out.succeeded
    root = only(sdk.named("invoke_workflow"))
    assert root.name == "invoke_workflow chat"
    assert root.kind is SpanKind.INTERNAL and root.parent is None
    attrs = root.attributes or {}
    assert attrs["demiarch_flow.run.id"] == out.run_id
    assert attrs["gen_ai.conversation.id"] == out.conversation_id
    assert attrs["demiarch_flow.workflow.sha256"] == WF.sha256
    assert attrs["demiarch_flow.run.status"] == "succeeded"
    assert attrs["demiarch_flow.run.final_state"] == "Done"
    assert attrs["demiarch_flow.run.attempts"] == 3
    assert attrs["demiarch_flow.run.resume_count"] == 0
    assert attrs["demiarch_flow.run.cost_usd"] == float(out.cost_usd)
    assert root.status.status_code is StatusCode.UNSET
    moves = [
        (e.attributes["demiarch_flow.from"], e.attributes["demiarch_flow.event"])
        for e in root.events
        if e.name == "transition" and e.attributes
    ]
    assert moves == [
        ("LoadContext", "loaded"), ("Request", "retryable"), ("Backoff", "retry"),
        ("Request", "model_failed"), ("Fallback", "next_model"), ("Request", "succeeded"),
        ("Persist", "saved"),
    ]  # fmt: skip
    chats = sorted(sdk.named("chat "), key=lambda s: s.start_time or 0)
    assert [c.name for c in chats] == [f"chat {SONNET}", f"chat {SONNET}", f"chat {HAIKU}"]
    for chat in chats:
        assert chat.kind is SpanKind.CLIENT
        assert chat.parent is not None and chat.parent.span_id == root.context.span_id
        assert chat.context.trace_id == root.context.trace_id
        a = chat.attributes or {}
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == "openrouter"
        assert (a["server.address"], a["server.port"]) == ("openrouter.ai", 443)
    first, second, third = (c.attributes or {} for c in chats)
    assert (first["error.type"], first["http.response.status_code"]) == ("server_error", 500)
    assert (second["error.type"], second["http.response.status_code"]) == (
        "model_unavailable", 404,
    )  # fmt: skip
    assert chats[0].status.status_code is StatusCode.ERROR
    assert chats[2].status.status_code is StatusCode.UNSET and "error.type" not in third
    assert third["gen_ai.request.model"] == HAIKU
    assert third["gen_ai.response.model"] == HAIKU
    assert third["gen_ai.response.id"] == out.attempts[-1].generation_id
    assert third["gen_ai.response.finish_reasons"] == ("stop",)
    assert third["gen_ai.usage.input_tokens"] == out.prompt_tokens
    assert third["gen_ai.usage.output_tokens"] == out.completion_tokens
    assert third["demiarch_flow.cost_usd"] == float(out.cost_usd)
    wait = only(sdk.named("wait "))
    assert wait.name == "wait backoff"
    assert wait.parent is not None and wait.parent.span_id == root.context.span_id
    assert (wait.attributes or {})["demiarch_flow.wait_s"] == 1.0
    # the wait lies between the two sonnet attempts and lasts its virtual second
    assert wait.end_time is not None and wait.start_time is not None
    assert wait.end_time - wait.start_time == 1_000_000_000
    assert chats[0].end_time <= wait.start_time and wait.end_time <= chats[1].start_time  # type: ignore[operator]


async def test_a_failed_run_marks_its_root_and_its_attempt_as_errors(
    sdk: Sdk, autojump_clock: object
) -> None:
    """A 401 is fatal: the chat span and the root are ERROR, error.type ``auth`` on the chat
    span and the run's own class on the root."""
    out = await traced_run(sdk, f"{SONNET}=401")
    assert out.status == "failed"
    root = only(sdk.named("invoke_workflow"))
    assert root.status.status_code is StatusCode.ERROR
    assert (root.attributes or {})["demiarch_flow.run.status"] == "failed"
    assert (root.attributes or {})["error.type"] == "auth"
    chat = only(sdk.named("chat "))
    assert chat.status.status_code is StatusCode.ERROR
    assert (chat.attributes or {})["error.type"] == "auth"
    assert (chat.attributes or {})["http.response.status_code"] == 401


async def test_a_streamed_attempt_carries_its_time_to_first_chunk(
    sdk: Sdk, autojump_clock: object
) -> None:
    """A stream whose first token comes after 3 s of keep-alives: the chat span says
    ``gen_ai.request.stream`` and a time to first chunk of about 3 s, and the histogram of
    time to first chunk has the point."""
    out = await traced_run(sdk, f"{SONNET}=slowfirst:3", stream=True)
    assert out.succeeded
    chat = only(sdk.named("chat "))
    a = chat.attributes or {}
    assert a["gen_ai.request.stream"] is True
    assert 3.0 <= a["gen_ai.response.time_to_first_chunk"] < 3.5
    (point,) = sdk.points("gen_ai.client.operation.time_to_first_chunk")
    assert point.count == 1 and 3.0 <= point.sum < 3.5


async def test_a_resumed_run_continues_the_same_trace(sdk: Sdk, autojump_clock: object) -> None:
    """A run fails (401) in one process and is resumed in another: the resumed
    invoke_workflow span is a child of the first, in the same trace, with resume_count 1."""
    fake, store = FakeOpenRouter(f"{SONNET}=401"), MemoryStore()
    first = sdk.tracer()
    env = make_env(fake, store=store, listeners=(first,), tracer=first)
    out = await run_workflow(WF, RunRequest("Hi"), env)
    assert out.status == "failed"
    second = sdk.tracer()  # another process: nothing of the first tracer's memory
    env = make_env(fake, store=store, listeners=(second,), tracer=second)
    resumed = await resume_run(out.run_id, env)
    assert resumed.outcome.succeeded
    roots = sorted(sdk.named("invoke_workflow"), key=lambda s: s.start_time or 0)
    assert len(roots) == 2
    original, again = roots
    assert again.context.trace_id == original.context.trace_id
    assert again.parent is not None and again.parent.span_id == original.context.span_id
    assert (again.attributes or {})["demiarch_flow.run.resume_count"] == 1
    assert {c.context.trace_id for c in sdk.named("chat ")} == {original.context.trace_id}


async def test_a_run_continues_the_trace_context_it_is_given(
    sdk: Sdk, autojump_clock: object
) -> None:
    """``RunRequest.traceparent`` (a queued job's submit): the root is its child."""
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    tracer = sdk.tracer()
    env = make_env(FakeOpenRouter(""), listeners=(tracer,), tracer=tracer)
    await run_workflow(WF, RunRequest("Hi", traceparent=parent), env)
    root = only(sdk.named("invoke_workflow"))
    assert f"{root.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert root.parent is not None and f"{root.parent.span_id:016x}" == "b7ad6b7169203331"


async def test_a_queued_run_is_a_child_of_its_submit(sdk: Sdk, autojump_clock: object) -> None:
    """The hook for workers: ``submitted()`` makes a ``submit`` span and gives its
    traceparent to the job; the run started with it is the submit's child, in its trace."""
    tracer = sdk.tracer()
    carried = tracer.submitted("run-1", "chat")
    assert carried is not None
    env = make_env(FakeOpenRouter(""), listeners=(tracer,), tracer=tracer)
    await run_workflow(WF, RunRequest("Hi", traceparent=carried), env)
    submit = only(sdk.named("submit"))
    assert submit.kind is SpanKind.PRODUCER
    assert (submit.attributes or {})["demiarch_flow.run.id"] == "run-1"
    root = only(sdk.named("invoke_workflow"))
    assert root.context.trace_id == submit.context.trace_id
    assert root.parent is not None and root.parent.span_id == submit.context.span_id
