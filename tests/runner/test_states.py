"""Each state's handler alone, through demiarch_flow.testing.run_state: event and next state."""

from __future__ import annotations

import pytest
import trio
from statemachine.exceptions import TransitionNotAllowed

from demiarch_flow.client.classify import Completion
from demiarch_flow.client.openrouter import Attempt
from demiarch_flow.errors import AllModelsFailed, ProviderError, UnknownConversation
from demiarch_flow.store import MemoryStore
from demiarch_flow.testing import FakeOpenRouter, context_for, make_env, run_state

from .helpers import HAIKU, SONNET, default_workflow, edited

WF = default_workflow()


def _completion(model: str = SONNET) -> Completion:
    return Completion("hi", model, "gen-1", "stop", 10, 4, 14, 0, None)


async def test_load_context_new_conversation_emits_loaded() -> None:
    """LoadContext: stores the user message and moves to Request."""
    env = make_env()
    ctx = context_for(WF, env, "Hello")
    step = await run_state(WF, "LoadContext", ctx)
    assert (step.event, step.next_state) == ("loaded", "Request")
    assert ctx.messages == [{"role": "user", "content": "Hello"}]
    assert isinstance(env.store, MemoryStore)
    assert [m.content for m in env.store.messages] == ["Hello"]


async def test_load_context_unknown_conversation_emits_failed() -> None:
    """LoadContext: an unknown conversation id → failed → Failed."""
    from demiarch_flow.runner import RunRequest

    ctx = context_for(WF, make_env(), request=RunRequest("Hi", conversation_id="nope"))
    step = await run_state(WF, "LoadContext", ctx)
    assert (step.event, step.next_state) == ("failed", "Failed")
    assert isinstance(ctx.failure, UnknownConversation)


@pytest.mark.parametrize(
    ("script", "event", "nxt"),
    [
        ("ok", "succeeded", "Persist"),
        ("500", "retryable", "Backoff"),
        ("429", "retryable", "Backoff"),
        ("reset", "retryable", "Backoff"),
        ("404", "model_failed", "Fallback"),
        ("403", "model_failed", "Fallback"),
        ("400", "model_failed", "Fallback"),
        ("401", "fatal", "Failed"),
        ("402", "fatal", "Failed"),
    ],
)
async def test_request_outcomes(autojump_clock: object, script: str, event: str, nxt: str) -> None:
    """Request: each class of answer emits its event and leads to its state."""
    ctx = context_for(WF, make_env(f"{SONNET}={script}"))
    step = await run_state(WF, "Request", ctx)
    assert (step.event, step.next_state) == (event, nxt)
    assert ctx.attempt == 1


async def test_request_class_outside_both_lists_is_fatal(autojump_clock: object) -> None:
    """Request: a class in neither retry.when nor fallback.when is fatal."""
    wf = edited(**{"when: [rate_limited, timeout, server_error, network_error]": "when: [timeout]"})
    ctx = context_for(wf, make_env(f"{SONNET}=500"))
    step = await run_state(wf, "Request", ctx)
    assert (step.event, step.next_state) == ("fatal", "Failed")


async def test_backoff_waits_schedule_then_emits_retry(autojump_clock: object) -> None:
    """Backoff: the third retry waits 4 s and emits retry → Request."""
    err = ProviderError("server_error", "x", model=SONNET, status=500)
    ctx = context_for(WF, make_env(), retries=2, last_error=err)
    step = await run_state(WF, "Backoff", ctx)
    assert (step.event, step.next_state) == ("retry", "Request")
    assert step.waited_s == 4.0
    assert ctx.retries == 3


async def test_backoff_exhausted_after_max_retries(autojump_clock: object) -> None:
    """Backoff: after max_retries it emits exhausted → Fallback, without waiting."""
    err = ProviderError("server_error", "x", model=SONNET, status=500)
    ctx = context_for(WF, make_env(), retries=3, last_error=err)
    step = await run_state(WF, "Backoff", ctx)
    assert (step.event, step.next_state) == ("exhausted", "Fallback")
    assert step.waited_s == 0.0


async def test_backoff_long_retry_after_is_exhausted(autojump_clock: object) -> None:
    """Backoff: a Retry-After above max_delay_s gives the model up at once."""
    err = ProviderError("rate_limited", "x", model=SONNET, status=429, retry_after_s=31)
    ctx = context_for(WF, make_env(), last_error=err)
    step = await run_state(WF, "Backoff", ctx)
    assert (step.event, step.waited_s) == ("exhausted", 0.0)


async def test_fallback_moves_to_next_model_and_resets_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fallback: next_model → Request, retry counter reset, a warning logged."""
    err = ProviderError("server_error", "down", model=SONNET, status=503)
    ctx = context_for(
        WF, make_env(), retries=3, attempt=4, last_error=err, last_errors={SONNET: err}
    )
    with caplog.at_level("WARNING", logger="demiarch_flow"):
        step = await run_state(WF, "Fallback", ctx)
    assert (step.event, step.next_state) == ("next_model", "Request")
    assert (ctx.model, ctx.retries, ctx.attempt) == (HAIKU, 0, 0)
    assert f"falling back from {SONNET} to {HAIKU}" in caplog.text


async def test_fallback_exhausted_at_end_of_chain() -> None:
    """Fallback: on the last model it emits exhausted → Failed with all-models-failed."""
    err = ProviderError("server_error", "down", model="openai/gpt-4o", status=503)
    ctx = context_for(
        WF, make_env(), model_index=2, last_error=err, last_errors={"openai/gpt-4o": err}
    )
    step = await run_state(WF, "Fallback", ctx)
    assert (step.event, step.next_state) == ("exhausted", "Failed")
    assert isinstance(ctx.failure, AllModelsFailed)


def _answered(env: object) -> object:
    """A context positioned at Persist: conversation c1, one successful attempt."""
    return context_for(
        WF,
        env,  # type: ignore[arg-type]
        conversation_id="c1",
        completion=_completion(),
        last_attempt=Attempt(SONNET, _completion(), None, 12, 200),
    )


async def test_persist_saves_and_emits_saved() -> None:
    """Persist: stores the reply and moves to Done."""
    env = make_env()
    ctx = _answered(env)
    step = await run_state(WF, "Persist", ctx)  # type: ignore[arg-type]
    assert (step.event, step.next_state) == ("saved", "Done")
    assert isinstance(env.store, MemoryStore)
    assert env.store.usage[0].cost_source == "price_table"


async def test_persist_failure_emits_failed_and_writes_recovery(tmp_path: object) -> None:
    """Persist: a store that keeps failing → failed → Failed, and the reply is in the recovery file."""
    from pathlib import Path

    from demiarch_flow.errors import PersistenceError

    class Broken(MemoryStore):
        calls = 0

        async def save_reply(self, reply: object, end: object) -> str:
            Broken.calls += 1
            raise PersistenceError("disk full")

    env = make_env(store=Broken(), recovery_dir=str(tmp_path))
    ctx = _answered(env)
    step = await run_state(WF, "Persist", ctx)  # type: ignore[arg-type]
    assert (step.event, step.next_state) == ("failed", "Failed")
    assert Broken.calls == 3
    assert isinstance(ctx.failure, PersistenceError)
    recovery = Path(str(tmp_path)) / "recovery.jsonl"
    assert ctx.failure.recovery_file == str(recovery)
    assert '"content": "hi"' in recovery.read_text()


async def test_fail_records_the_failure() -> None:
    """Failed: the run is marked failed with the error class."""
    env = make_env()
    assert isinstance(env.store, MemoryStore)
    err = ProviderError("auth", "bad key", model=SONNET, status=401)
    ctx = context_for(WF, env, failure=err)
    step = await run_state(WF, "Failed", ctx)
    assert step.next_state is None
    assert env.store.runs[ctx.run_id]["status"] == "failed"
    assert env.store.runs[ctx.run_id]["error_class"] == "auth"


async def test_foreign_event_raises() -> None:
    """A handler that emits an event its state has no transition for is a surfaced error."""
    from demiarch_flow.definition import machine_class

    machine = machine_class(WF)(start_value="Persist")
    with pytest.raises(TransitionNotAllowed):
        machine.send("retry")


async def test_cancellation_records_the_run_as_cancelled(autojump_clock: object) -> None:
    """An outer move_on_after during a Backoff wait ends the run recorded as cancelled."""
    from demiarch_flow.runner import JournalListener, RunRequest, run_workflow

    store = MemoryStore()
    env = make_env(
        FakeOpenRouter(f"{SONNET}=500*"), store=store, listeners=[JournalListener(store)]
    )
    with trio.move_on_after(2.5) as scope:
        await run_workflow(WF, RunRequest("Hi"), env)
    assert scope.cancelled_caught
    (run,) = store.runs.values()
    assert run["status"] == "cancelled"
    assert run["current_state"] == "Backoff"
    assert [m.role for m in store.messages] == ["user"]
    assert store.usage == []
    assert [e.event for e in store.events] == ["loaded", "retryable", "retry", "retryable"]


async def test_failure_without_fail_action_is_still_recorded(autojump_clock: object) -> None:
    """A workflow whose fatal path ends in a plain final state still marks the run failed."""
    from demiarch_flow.runner import RunRequest, run_workflow

    wf = edited(
        **{
            "fatal: Failed}": "fatal: Stop}",
            "  Done:        {final: true}": "  Done:        {final: true}\n  Stop:        {final: true}",
        }
    )
    env = make_env(f"{SONNET}=401")
    assert isinstance(env.store, MemoryStore)
    out = await run_workflow(wf, RunRequest("hi"), env)
    assert (out.status, out.final_state) == ("failed", "Stop")
    (run,) = env.store.runs.values()
    assert (run["status"], run["error_class"]) == ("failed", "auth")


async def test_unexpected_error_marks_the_run_failed(autojump_clock: object) -> None:
    """A bug inside a handler surfaces, and the run is not left 'running'."""
    from demiarch_flow.runner import RunRequest, run_workflow

    class Exploding(MemoryStore):
        async def save_reply(self, reply: object, end: object) -> str:
            raise RuntimeError("boom")

    store = Exploding()
    with pytest.raises(RuntimeError, match="boom"):
        await run_workflow(WF, RunRequest("hi"), make_env(store=store))
    (run,) = store.runs.values()
    assert (run["status"], run["error_class"]) == ("failed", "internal")
    assert run["error_message"] == "RuntimeError: boom"
