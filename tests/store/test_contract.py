"""The store contract, run against SQLite, PostgreSQL and the in-memory store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import trio
from sqlalchemy import select

from demiarch_flow.definition import Workflow, parse_workflow
from demiarch_flow.runner import RunOutcome, RunRequest, run_workflow
from demiarch_flow.store import MemoryStore, Reply, RunEnd
from demiarch_flow.store.sql import SqlStore
from demiarch_flow.store.tables import ChatMessage, LlmUsage, WorkflowRun
from demiarch_flow.testing import FakeOpenRouter, make_env

from ..conftest import DEFAULT_WORKFLOW

SONNET = "anthropic/claude-sonnet-4"
WF = parse_workflow(DEFAULT_WORKFLOW.read_text("utf-8"))


def ticking_clock() -> Any:
    """A wall clock that advances one second per call (distinct, ordered timestamps)."""
    state = {"t": datetime(2026, 3, 1, tzinfo=UTC)}

    def now() -> datetime:
        state["t"] += timedelta(seconds=1)
        return state["t"]

    return now


async def _run(
    store: Any,
    fake: FakeOpenRouter,
    message: str,
    wf: Workflow = WF,
    conversation: str | None = None,
) -> RunOutcome:
    env = make_env(fake, store=store, now=ticking_clock())
    return await run_workflow(wf, RunRequest(message, conversation_id=conversation), env)


async def test_success_writes_exactly_the_expected_rows(
    any_store: Any, autojump_clock: object
) -> None:
    """User + assistant message, one usage row, one run row and its journal — nothing more."""
    out = await _run(any_store, FakeOpenRouter(), "Hello")
    assert out.status == "succeeded"
    assert await any_store.count_rows() == {
        "conversations": 1,
        "chat_messages": 2,
        "llm_usage": 1,
        "workflow_runs": 1,
        "run_events": len(out.transitions),
    }
    assert [t.event for t in out.transitions] == ["loaded", "succeeded", "saved"]


async def test_failure_writes_user_message_failed_run_and_journal(
    any_store: Any, autojump_clock: object
) -> None:
    """All models failing: the user message, a failed run row and its journal, nothing else."""
    fake = FakeOpenRouter(";".join(f"{m}=404" for m in WF.models))
    out = await _run(any_store, fake, "Hello")
    assert out.status == "failed"
    counts = await any_store.count_rows()
    assert counts == {
        "conversations": 1,
        "chat_messages": 1,
        "llm_usage": 0,
        "workflow_runs": 1,
        "run_events": len(out.transitions),
    }
    if isinstance(any_store, SqlStore):
        run, events = await any_store.run_journal(out.run_id)
        assert run is not None
        assert (run.status, run.error_class, run.current_state) == (
            "failed",
            "all_models_failed",
            "Failed",
        )
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[-1].to_state == "Failed"
    else:
        assert any_store.runs[out.run_id]["status"] == "failed"


async def test_second_turn_carries_the_first_as_context(
    any_store: Any, autojump_clock: object
) -> None:
    """Turn 2 sends turn 1's user and assistant messages, in order, then the new message."""
    fake = FakeOpenRouter()
    first = await _run(any_store, fake, "first question")
    second = await _run(any_store, fake, "second question", conversation=first.conversation_id)
    assert second.conversation_id == first.conversation_id
    sent = fake.requests[-1].body["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "first question"),
        ("assistant", first.content),
        ("user", "second question"),
    ]


async def test_context_messages_limits_history(any_store: Any, autojump_clock: object) -> None:
    """context_messages: 2 sends only the two messages before the new one."""
    wf = parse_workflow(
        DEFAULT_WORKFLOW.read_text("utf-8").replace("context_messages: 50", "context_messages: 2")
    )
    fake = FakeOpenRouter()
    one = await _run(any_store, fake, "m1", wf)
    two = await _run(any_store, fake, "m2", wf, one.conversation_id)
    await _run(any_store, fake, "m3", wf, one.conversation_id)
    sent = fake.requests[-1].body["messages"]
    assert [m["content"] for m in sent] == ["m2", two.content, "m3"]


async def test_system_prompt_goes_first(any_store: Any, autojump_clock: object) -> None:
    """A workflow-level system prompt leads the request messages (and is not stored)."""
    wf = parse_workflow(
        DEFAULT_WORKFLOW.read_text("utf-8").replace("models:", "system: Be brief.\nmodels:", 1)
    )
    fake = FakeOpenRouter()
    await _run(any_store, fake, "hi", wf)
    assert fake.requests[0].body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


async def test_unknown_conversation_fails_without_a_request(
    any_store: Any, autojump_clock: object
) -> None:
    """An explicit conversation id that does not exist: a failed run row, no request, no message."""
    fake = FakeOpenRouter()
    out = await _run(any_store, fake, "hi", conversation="00000000-0000-0000-0000-000000000000")
    assert out.status == "failed"
    assert out.error_class == "unknown_conversation"
    assert fake.requests == []
    counts = await any_store.count_rows()
    assert (counts["chat_messages"], counts["workflow_runs"], counts["conversations"]) == (0, 1, 0)


def _reply(run_id: str, conv: str, gen: str | None, cost: str = "0.000123456") -> Reply:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    import uuid

    return Reply(
        run_id=run_id, conversation_id=conv, project_id=None, message_id=str(uuid.uuid4()),
        usage_id=str(uuid.uuid4()), content="answer", model=SONNET, requested_model=SONNET,
        generation_id=gen, prompt_tokens=10, completion_tokens=4, total_tokens=14,
        cached_tokens=0, cost_usd=Decimal(cost), cost_source="provider", latency_ms=5,
        attempts=1, request_timestamp=now, created_at=now,
    )  # fmt: skip


async def _status(store: Any, run_id: str) -> str:
    run = await store.load_run(run_id)
    assert run is not None
    return str(run.status)


async def test_persist_is_idempotent_per_run(any_store: Any, autojump_clock: object) -> None:
    """A second reply for the same run stores nothing, returns the first reply's message id
    and leaves the run finished (whatever its generation id)."""
    fake = FakeOpenRouter(";".join(f"{m}=404" for m in WF.models))
    out = await _run(any_store, fake, "hello")  # a failed run: its user message, no reply
    assert out.conversation_id is not None
    end = RunEnd(
        out.run_id, "succeeded", "Done", SONNET, None, None, datetime(2026, 3, 1, tzinfo=UTC)
    )
    first = await any_store.save_reply(_reply(out.run_id, out.conversation_id, "gen-a"), end)
    second = await any_store.save_reply(_reply(out.run_id, out.conversation_id, "gen-b"), end)
    again = await any_store.save_reply(_reply(out.run_id, out.conversation_id, None), end)
    assert first == second == again
    counts = await any_store.count_rows()
    assert (counts["chat_messages"], counts["llm_usage"]) == (2, 1)
    assert await _status(any_store, out.run_id) == "succeeded"


async def test_same_generation_id_on_two_runs_stores_both_replies(
    any_store: Any, autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint that reuses a response id for another run (as caching proxies do): both
    runs succeed and each keeps its assistant message and usage row."""
    import demiarch_flow.fake

    monkeypatch.setattr(demiarch_flow.fake, "new_generation_id", lambda: "gen-sim-00000001")
    one = await _run(any_store, FakeOpenRouter(), "first")
    two = await _run(any_store, FakeOpenRouter(), "second")
    assert (one.status, two.status) == ("succeeded", "succeeded")
    counts = await any_store.count_rows()
    assert (counts["chat_messages"], counts["llm_usage"]) == (4, 2)
    if isinstance(any_store, SqlStore):
        with any_store.engine.connect() as conn:
            rows = conn.execute(select(LlmUsage.run_id, LlmUsage.generation_id)).all()
            replies = conn.execute(
                select(ChatMessage.run_id).where(ChatMessage.role == "assistant")
            ).all()
        assert sorted(rows) == sorted(
            [(one.run_id, "gen-sim-00000001"), (two.run_id, "gen-sim-00000001")]
        )
        assert sorted(r.run_id for r in replies) == sorted([one.run_id, two.run_id])
    else:
        assert [r.generation_id for r in any_store.usage] == ["gen-sim-00000001"] * 2
        assert {m.run_id for m in any_store.messages if m.role == "assistant"} == {
            one.run_id,
            two.run_id,
        }


async def test_cost_is_stored_exactly(sql_store: SqlStore, autojump_clock: object) -> None:
    """A nano-dollar amount round-trips exactly as Decimal."""
    out = await _run(sql_store, FakeOpenRouter(";".join(f"{m}=404" for m in WF.models)), "hi")
    assert out.conversation_id is not None
    end = RunEnd(
        out.run_id, "succeeded", "Done", SONNET, None, None, datetime(2026, 3, 1, tzinfo=UTC)
    )
    await sql_store.save_reply(_reply(out.run_id, out.conversation_id, "gen-c", "0.000000001"), end)
    with sql_store.engine.connect() as conn:
        from sqlalchemy.orm import Session

        session = Session(conn)
        costs = sorted(session.scalars(select(LlmUsage.cost_usd)).all())
    assert Decimal("0.000000001") in costs
    assert all(isinstance(c, Decimal) for c in costs)


async def test_timestamps_are_timezone_aware_utc(
    sql_store: SqlStore, autojump_clock: object
) -> None:
    """Every timestamp read back is aware and in UTC."""
    await _run(sql_store, FakeOpenRouter(), "hello")
    from sqlalchemy.orm import Session

    with Session(sql_store.engine) as session:
        stamps = list(session.scalars(select(ChatMessage.created_at)))
        stamps += list(session.scalars(select(WorkflowRun.started_at)))
        stamps += list(session.scalars(select(LlmUsage.request_timestamp)))
    assert stamps
    assert all(s.tzinfo is not None and s.utcoffset() == timedelta(0) for s in stamps)


async def test_role_check_constraint(sql_store: SqlStore, autojump_clock: object) -> None:
    """The database itself refuses a role outside system|user|assistant."""
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import Session

    out = await _run(sql_store, FakeOpenRouter(), "hello")
    with Session(sql_store.engine) as session, pytest.raises(IntegrityError):
        session.add(
            ChatMessage(
                id="x",
                conversation_id=out.conversation_id,
                role="robot",
                content="x",
                created_at=datetime.now(UTC),
            )
        )
        session.commit()


async def test_200_concurrent_runs(sql_store: SqlStore, autojump_clock: object) -> None:
    """200 runs at once on one database: every row present, no lock errors."""
    fake = FakeOpenRouter(f"{SONNET}=500,ok,500,ok")
    env = make_env(fake, store=sql_store, now=ticking_clock())
    outcomes: list[RunOutcome] = []

    async def one(i: int) -> None:
        outcomes.append(await run_workflow(WF, RunRequest(f"message {i}"), env))

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(one, i)
    assert [o.status for o in outcomes].count("succeeded") == 200
    counts = await sql_store.count_rows()
    assert counts["conversations"] == 200
    assert counts["chat_messages"] == 400
    assert counts["llm_usage"] == 200
    assert counts["workflow_runs"] == 200
    assert counts["run_events"] == sum(len(o.transitions) for o in outcomes)


async def test_schema_creation_is_idempotent(tmp_path: Any) -> None:
    """Opening the same database twice keeps its rows."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    store = SqlStore.open_sync(url)
    await _run(store, FakeOpenRouter(), "kept")
    store.close()
    again = SqlStore.open_sync(url)
    assert (await again.count_rows())["chat_messages"] == 2
    again.close()


def test_memory_store_is_a_store() -> None:
    """MemoryStore provides every method of the interface."""
    from demiarch_flow.store import Store

    for name in (
        "begin_run",
        "checkpoint",
        "attempt_started",
        "attempt_ended",
        "save_reply",
        "finish_run",
    ):
        assert callable(getattr(MemoryStore(), name))
        assert hasattr(Store, name)
