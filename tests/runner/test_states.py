"""Each state's handler alone, through demiarch_flow.testing.run_state: event and next state."""

from __future__ import annotations

import dataclasses

import pytest
import trio
from statemachine.exceptions import TransitionNotAllowed

from demiarch_flow.client.classify import Completion
from demiarch_flow.errors import ErrorClass, ProviderError
from demiarch_flow.runner import AttemptInfo, ErrorInfo, RunState, WaitSource
from demiarch_flow.store import MemoryStore
from demiarch_flow.testing import FakeOpenRouter, make_env, run_state, state_for

from .helpers import HAIKU, SONNET, default_workflow, edited

WF = default_workflow()


def _completion(model: str = SONNET) -> Completion:
    return Completion("hi", model, "gen-1", "stop", 10, 4, 14, 0, None)


def _err(cls: str, status: int | None = 500, retry_after: float | None = None) -> ErrorInfo:
    return ErrorInfo.of(
        ProviderError(cls, "x", model=SONNET, status=status, retry_after_s=retry_after)
    )


async def test_load_context_new_conversation_emits_loaded() -> None:
    """LoadContext: stores the user message and moves to Request."""
    env = make_env()
    step = await run_state(WF, state_for(WF, message="Hello"), env)
    assert (step.event, step.next_state) == ("loaded", "Request")
    assert step.state.request_messages == [{"role": "user", "content": "Hello"}]
    assert step.state.conversation_id is not None
    assert isinstance(env.store, MemoryStore)
    assert [m.content for m in env.store.messages] == ["Hello"]


async def test_load_context_unknown_conversation_emits_failed() -> None:
    """LoadContext: an unknown conversation id → failed → Failed."""
    step = await run_state(WF, state_for(WF, conversation_id="nope"), make_env())
    assert (step.event, step.next_state) == ("failed", "Failed")
    assert step.state.failure is not None
    assert step.state.failure.error_class is ErrorClass.UNKNOWN_CONVERSATION


@pytest.mark.parametrize(
    ("script", "event", "nxt"),
    [
        ("ok", "succeeded", "Persist"),
        ("500", "retryable", "Backoff"),
        ("429", "retryable", "Backoff"),
        ("reset", "retryable", "Backoff"),
        ("refused", "retryable", "Backoff"),
        ("404", "model_failed", "Fallback"),
        ("403", "model_failed", "Fallback"),
        ("400", "model_failed", "Fallback"),
        ("401", "fatal", "Failed"),
        ("402", "fatal", "Failed"),
    ],
)
async def test_request_outcomes(autojump_clock: object, script: str, event: str, nxt: str) -> None:
    """Request: each class of answer emits its event and leads to its state."""
    env = make_env(f"{SONNET}={script}")
    step = await run_state(WF, state_for(WF, "Request"), env)
    assert (step.event, step.next_state) == (event, nxt)
    assert (step.state.attempt, step.state.total_attempts) == (1, 1)
    assert step.state.entered_by == event
    assert next(r for r in step.records if r.kind != "delta").kind == "attempt"


async def test_request_records_the_attempt_before_it_is_sent(autojump_clock: object) -> None:
    """Request: the attempt row exists before the request leaves, and is completed after."""
    store = MemoryStore()
    seen: list[object] = []

    class Spy(FakeOpenRouter):
        async def handle_async_request(self, request):  # type: ignore[no-untyped-def]
            seen.append(dict(store.attempts))
            return await super().handle_async_request(request)

    env = make_env(Spy(), store=store)
    step = await run_state(WF, state_for(WF, "Request"), env)
    (before,) = seen
    ((key, started),) = before.items()  # type: ignore[attr-defined]
    assert key == (step.state.run_id, 1)
    assert started.ended_at is None
    ended = store.attempts[key]
    assert ended.generation_id is not None
    assert ended.generation_id == step.state.completion.generation_id  # type: ignore[union-attr]
    assert ended.status == 200


async def test_request_class_outside_both_lists_is_fatal(autojump_clock: object) -> None:
    """Request: a class in neither retry.when nor fallback.when is fatal."""
    wf = edited(
        **{
            "when: [rate_limited, timeout, server_error, network_error, stream_interrupted]": "when: [timeout]"
        }
    )
    step = await run_state(wf, state_for(wf, "Request"), make_env(f"{SONNET}=500"))
    assert (step.event, step.next_state) == ("fatal", "Failed")
    assert step.state.failure is not None
    assert step.state.failure.error_class is ErrorClass.SERVER_ERROR


async def test_backoff_waits_schedule_then_emits_retry(autojump_clock: object) -> None:
    """Backoff: the third retry waits 4 s (the engine sleeps it) and emits retry → Request."""
    state = state_for(WF, "Backoff", retries=2, last_error=_err("server_error"))
    step = await run_state(WF, state, make_env())
    assert (step.event, step.next_state) == ("retry", "Request")
    assert step.waited_s == 4.0
    assert step.state.retries == 3
    assert step.state.wait is None  # journaled on the transition, then cleared
    (wait,) = [r for r in step.records if r.kind == "wait"]
    assert (wait.wait_s, wait.wait_source) == (4.0, WaitSource.BACKOFF)
    (moved,) = [r for r in step.records if r.kind == "transition"]
    assert (moved.wait_s, moved.wait_source) == (4.0, WaitSource.BACKOFF)


async def test_backoff_honours_retry_after_with_its_source(autojump_clock: object) -> None:
    """Backoff: a Retry-After is waited instead of the schedule, and says so as a typed source."""
    state = state_for(WF, "Backoff", last_error=_err("rate_limited", 429, 2.5))
    step = await run_state(WF, state, make_env())
    assert (step.event, step.waited_s) == ("retry", 2.5)
    (wait,) = [r for r in step.records if r.kind == "wait"]
    assert wait.wait_source is WaitSource.RETRY_AFTER


async def test_backoff_checkpoints_before_it_waits(autojump_clock: object) -> None:
    """Backoff: where the run stands is durable before the engine sleeps."""
    store = MemoryStore()
    env = make_env(store=store)
    state = state_for(WF, "Backoff", last_error=_err("server_error"))
    seen: list[str | None] = []

    async def watch() -> None:
        await trio.sleep(0.5)
        seen.append(store.runs[state.run_id]["state"].to_json())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await run_state(WF, state, env)
    (during,) = seen
    assert during is not None
    assert RunState.from_json(during).wait is not None


async def test_backoff_exhausted_after_max_retries(autojump_clock: object) -> None:
    """Backoff: after max_retries it emits exhausted → Fallback, without waiting."""
    state = state_for(WF, "Backoff", retries=3, last_error=_err("server_error"))
    step = await run_state(WF, state, make_env())
    assert (step.event, step.next_state) == ("exhausted", "Fallback")
    assert step.waited_s == 0.0


async def test_backoff_long_retry_after_is_exhausted(autojump_clock: object) -> None:
    """Backoff: a Retry-After above max_delay_s gives the model up at once."""
    state = state_for(WF, "Backoff", last_error=_err("rate_limited", 429, 31))
    step = await run_state(WF, state, make_env())
    assert (step.event, step.waited_s) == ("exhausted", 0.0)


async def test_fallback_moves_to_next_model_and_resets_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fallback: next_model → Request, retry counter reset, a warning logged."""
    err = _err("server_error", 503)
    state = state_for(
        WF, "Fallback", retries=3, attempt=4, last_error=err, last_errors=((SONNET, err),),
        entered_by="exhausted",
    )  # fmt: skip
    with caplog.at_level("WARNING", logger="demiarch_flow"):
        step = await run_state(WF, state, make_env())
    assert (step.event, step.next_state) == ("next_model", "Request")
    assert (step.state.model, step.state.retries, step.state.attempt) == (HAIKU, 0, 0)
    assert f"falling back from {SONNET} to {HAIKU}" in caplog.text


async def test_fallback_reason_comes_from_the_event_that_entered_it() -> None:
    """Fallback: entered by Backoff's exhausted, the reason is retries_exhausted; entered by
    Request's model_failed, it is the last error's class — no side channel between handlers."""
    wf = edited(**{"when: [retries_exhausted, model_unavailable": "when: [model_unavailable"})
    err = _err("server_error", 503)
    base = state_for(wf, "Fallback", last_error=err, last_errors=((SONNET, err),))
    gave_up = await run_state(wf, dataclasses.replace(base, entered_by="exhausted"), make_env())
    assert gave_up.event == "exhausted"  # retries_exhausted is no longer in fallback.when
    missing = dataclasses.replace(
        base, entered_by="model_failed", last_error=_err("model_unavailable", 404)
    )
    moved = await run_state(wf, missing, make_env())
    assert moved.event == "next_model"


async def test_fallback_exhausted_at_end_of_chain() -> None:
    """Fallback: on the last model it emits exhausted → Failed with all-models-failed."""
    err = _err("server_error", 503)
    state = state_for(
        WF, "Fallback", model_index=2, last_error=err, last_errors=(("openai/gpt-4o", err),),
        entered_by="exhausted",
    )  # fmt: skip
    step = await run_state(WF, state, make_env())
    assert (step.event, step.next_state) == ("exhausted", "Failed")
    assert step.state.failure is not None
    assert step.state.failure.error_class is ErrorClass.ALL_MODELS_FAILED


def _answered(**fields: object) -> RunState:
    """A run state positioned at Persist: conversation c1, one successful attempt."""
    return state_for(
        WF,
        "Persist",
        conversation_id="c1",
        completion=_completion(),
        total_attempts=1,
        attempts=(AttemptInfo(1, SONNET, "ok", None, 200, None, 12, "gen-1"),),
        **fields,
    )


async def test_persist_saves_and_emits_saved() -> None:
    """Persist: stores the reply and moves to Done."""
    env = make_env()
    step = await run_state(WF, _answered(), env)
    assert (step.event, step.next_state) == ("saved", "Done")
    assert isinstance(env.store, MemoryStore)
    assert env.store.usage[0].cost_source == "price_table"
    assert step.state.saved_message_id == env.store.usage[0].message_id


async def test_persist_failure_emits_failed_and_writes_recovery(tmp_path: object) -> None:
    """Persist: a store that keeps failing → failed → Failed, and the reply is in the recovery file."""
    from pathlib import Path

    from demiarch_flow.errors import PersistenceError

    class Broken(MemoryStore):
        calls = 0

        async def save_reply(self, reply: object, end: object, checkpoint: object = None) -> str:
            Broken.calls += 1
            raise PersistenceError("disk full")

    env = make_env(store=Broken(), recovery_dir=str(tmp_path))
    step = await run_state(WF, _answered(), env)
    assert (step.event, step.next_state) == ("failed", "Failed")
    assert Broken.calls == 3
    failure = step.state.failure
    assert failure is not None
    assert failure.error_class is ErrorClass.PERSISTENCE
    recovery = Path(str(tmp_path)) / "recovery.jsonl"
    assert str(recovery) in failure.message
    assert '"content": "hi"' in recovery.read_text()


async def test_fail_records_the_failure() -> None:
    """Failed: the run is marked failed with the error class."""
    env = make_env()
    assert isinstance(env.store, MemoryStore)
    state = state_for(WF, "Failed", failure=_err("auth", 401))
    step = await run_state(WF, state, env)
    assert step.next_state is None
    assert env.store.runs[state.run_id]["status"] == "failed"
    assert env.store.runs[state.run_id]["error_class"] == "auth"


async def test_run_state_round_trips_through_json() -> None:
    """A run state positioned anywhere survives its checkpoint text unchanged."""
    state = _answered(
        last_error=_err("rate_limited", 429, 2.0),
        last_errors=((SONNET, _err("rate_limited", 429, 2.0)),),
        failure=_err("server_error"),
        resume_count=2,
        seq=5,
    )
    assert RunState.from_json(state.to_json()) == state


async def test_foreign_event_raises() -> None:
    """A handler that emits an event its state has no transition for is a surfaced error."""
    from demiarch_flow.definition import machine_class

    machine = machine_class(WF)(start_value="Persist")
    with pytest.raises(TransitionNotAllowed):
        machine.send("retry")


async def test_cancellation_records_the_run_as_cancelled(autojump_clock: object) -> None:
    """An outer move_on_after during a Backoff wait ends the run recorded as cancelled."""
    from demiarch_flow.runner import RunRequest, run_workflow

    store = MemoryStore()
    env = make_env(FakeOpenRouter(f"{SONNET}=500*"), store=store)
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
        async def save_reply(self, reply: object, end: object, checkpoint: object = None) -> str:
            raise RuntimeError("boom")

    store = Exploding()
    with pytest.raises(RuntimeError, match="boom"):
        await run_workflow(WF, RunRequest("hi"), make_env(store=store))
    (run,) = store.runs.values()
    assert (run["status"], run["error_class"]) == ("failed", "internal")
    assert run["error_message"] == "RuntimeError: boom"
