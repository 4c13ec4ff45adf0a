"""Streamed runs through the workflow: the policy decides, every billed generation is booked,
partial text is never the reply."""

from __future__ import annotations

from pathlib import Path

import trio
from sqlalchemy import text

from demiarch_flow.errors import ErrorClass
from demiarch_flow.runner import RunRequest, run_workflow
from demiarch_flow.store import MemoryStore
from demiarch_flow.store.sql import SqlStore
from demiarch_flow.testing import FakeOpenRouter, RecordingListener, make_env

from .helpers import HAIKU, SONNET, default_workflow, edited

WF = default_workflow()  # chat.yaml: streams, retries stream_interrupted


async def test_an_interrupted_stream_is_retried_and_booked_apart(
    tmp_path: Path, autojump_clock: object
) -> None:
    """cut after 3 chunks → stream_interrupted → Backoff → the retry's reply is saved; the
    interrupted attempt has its own llm_usage row (outcome 'interrupted', no message, cost
    from GET /generation) and its text stays in run_attempts, never in chat_messages."""
    store = SqlStore.open_sync(f"sqlite:///{tmp_path / 'flow.db'}")
    listener = RecordingListener()
    env = make_env(FakeOpenRouter(f"{SONNET}=cut:3"), store=store, listeners=[listener])
    out = await run_workflow(WF, RunRequest("héllo"), env)
    assert out.status == "succeeded"
    first, second = out.attempts
    assert first.error_class is ErrorClass.STREAM_INTERRUPTED and first.partial_chars
    assert second.outcome == "ok" and second.partial_chars is None
    assert [t.event for t in out.transitions][:3] == ["loaded", "retryable", "retry"]
    deltas = "".join(r.text or "" for r in listener.of_kind("delta"))
    assert deltas.endswith(out.content or "") and len(deltas) == first.partial_chars + len(
        out.content or ""
    )
    with store.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT outcome, message_id, cost_usd, cost_source FROM llm_usage ORDER BY outcome"
            )
        ).all()
        partial = conn.execute(
            text("SELECT partial_text, generation_id FROM run_attempts WHERE number = 1")
        ).one()
        messages = conn.execute(text("SELECT content FROM chat_messages")).scalars().all()
    assert [r.outcome for r in rows] == ["interrupted", "reply"]
    assert rows[0].message_id is None and rows[0].cost_source == "provider"
    assert partial.partial_text and len(partial.partial_text) == first.partial_chars
    assert partial.generation_id == first.generation_id
    assert partial.partial_text not in messages[1] or messages[1] == out.content
    stored = await store.load_run(out.run_id)
    assert stored is not None and stored.attempts[0].partial_text == partial.partial_text
    store.close()


async def test_stream_interrupted_in_fallback_when_moves_to_the_next_model(
    autojump_clock: object,
) -> None:
    """The user places stream_interrupted where they like: in fallback.when it leaves the
    model at once."""
    wf = edited(
        **{
            "network_error, stream_interrupted]": "network_error]",
            "when: [retries_exhausted,": "when: [stream_interrupted, retries_exhausted,",
        }
    )
    store = MemoryStore()
    env = make_env(f"{SONNET}=drop:2", store=store)
    out = await run_workflow(wf, RunRequest("hi"), env)
    assert out.status == "succeeded" and out.model == HAIKU
    assert [t.event for t in out.transitions][1:3] == ["model_failed", "next_model"]
    assert [b.outcome for b in store.billed] == ["interrupted"]


async def test_a_mid_stream_429_feeds_the_shared_cooldown(autojump_clock: object) -> None:
    """A rate-limit error chunk after tokens counts toward the model's cooldown like a 429."""
    wf = edited(
        **{
            "fallback:                  # what the Fallback state does": (
                "cooldown: {after_failures: 1, window_s: 60, cool_s: 45}\n"
                "fallback:                  # what the Fallback state does"
            )
        }
    )
    listener = RecordingListener()
    env = make_env(f"{SONNET}=ratecut:2", listeners=[listener])
    out = await run_workflow(wf, RunRequest("hi"), env)
    assert out.status == "succeeded"
    started = [r for r in listener.of_kind("cooldown") if r.event == "started"]
    assert started and started[0].model == SONNET
    assert started[0].error_class is ErrorClass.STREAM_INTERRUPTED


async def test_no_stream_override_makes_a_blocking_call(autojump_clock: object) -> None:
    """RunRequest(stream=False) (``run --no-stream``) overrides request.stream: no body asks
    for a stream, no delta is reported."""
    fake = FakeOpenRouter()
    listener = RecordingListener()
    env = make_env(fake, listeners=[listener])
    out = await run_workflow(WF, RunRequest("hi", stream=False), env)
    assert out.status == "succeeded"
    assert "stream" not in fake.requests[0].body
    assert listener.of_kind("delta") == []
    await run_workflow(WF, RunRequest("hi"), env)
    assert fake.requests[1].body["stream"] is True


async def test_cancelling_mid_stream_keeps_the_partial_text(autojump_clock: object) -> None:
    """A cancel (Ctrl-C) during a stream closes the connection at once and records the run
    cancelled, with the text received so far on its attempt."""
    fake = FakeOpenRouter(f"{SONNET}=stall:3")
    store = MemoryStore()
    env = make_env(fake, store=store)
    with trio.move_on_after(5):
        await run_workflow(WF, RunRequest("hi"), env)
    ((_, row),) = store.attempts.items()
    assert row.error_class == ErrorClass.CANCELLED
    assert row.partial_text and row.generation_id
    assert fake.closed_streams == 1
    (run,) = store.runs.values()
    assert run["status"] == "cancelled"
