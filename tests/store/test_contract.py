"""The store contract, run against SQLite, PostgreSQL and the in-memory store."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import trio
from sqlalchemy import select

from demiarch_flow.definition import Workflow, parse_workflow
from demiarch_flow.runner import RunOutcome, RunRequest, run_workflow
from demiarch_flow.store import JournalEntry, MemoryStore, NewRun, Reply, RunEnd
from demiarch_flow.store.base import AttemptRow, BilledAttempt, Checkpoint, Definition
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
    run = await any_store.load_run(out.run_id)
    assert run is not None
    assert (run.status, run.error_class, run.current_state) == (
        "failed",
        "all_models_failed",
        "Failed",
    )
    events = await any_store.journal(out.run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [(e.from_state, e.event, e.to_state) for e in events] == [
        (t.from_state, t.event, t.to_state) for t in out.transitions
    ]
    assert events[-1].to_state == "Failed"
    assert await any_store.journal("no-such-run") == ()


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
    for out in (one, two):
        run = await any_store.load_run(out.run_id)
        assert run.reply is not None and run.reply.content == out.content
        assert [a.generation_id for a in run.attempts] == ["gen-sim-00000001"]


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


def test_both_stores_implement_every_method_of_the_interface() -> None:
    """MemoryStore and SqlStore provide every method of the Store protocol, as coroutines."""
    import inspect

    from demiarch_flow.store import Store

    names = [n for n, v in vars(Store).items() if inspect.iscoroutinefunction(v)]
    assert {"load_run", "list_runs", "journal", "checkpoint", "reopen_run"} <= set(names)
    for impl in (MemoryStore, SqlStore):
        for name in names:
            assert inspect.iscoroutinefunction(getattr(impl, name)), (impl.__name__, name)


# ---------------------------------------------------------------------- the run-life methods
# Driven directly through the interface and read back only through its read methods
# (``load_run``, ``list_runs``, ``journal``). A SQL store commits queued writes at its next
# durable write, so each test makes one before reading, as the runner does.

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class _State:
    """A checkpointed run state, as the store sees one."""

    text: str

    def to_json(self) -> str:
        return self.text


def _new_run(run_id: str, at: datetime = T0, owner: str | None = "host:1:0") -> NewRun:
    return NewRun(
        run_id=run_id, workflow="chat", workflow_sha256="a" * 64, conversation_id=None,
        create_with_id=f"conv-{run_id}", project_id=None, user_message_id=f"msg-{run_id}",
        content="hello", context_messages=10, at=at, title="hello", state="Start",
        state_json=_State('{"state": "Start"}'), definition="name: chat\n", owner=owner,
    )  # fmt: skip


def _entry(run_id: str, seq: int, src: str, event: str, dst: str, **kw: Any) -> JournalEntry:
    fields: dict[str, Any] = {"model": SONNET, "attempt": None, "error_class": None}
    fields |= {"wait_s": None, "at": T0 + timedelta(seconds=seq)} | kw
    return JournalEntry(run_id, seq, src, event, dst, **fields)


def _cp(run_id: str, state: str, *entries: JournalEntry) -> Checkpoint:
    return Checkpoint(run_id, state, SONNET, _State(f'{{"state": "{state}"}}'), entries)


async def test_load_run_reads_back_a_begun_run(any_store: Any) -> None:
    """load_run: the run as begun (state, first checkpoint, owner, definition); None if unknown."""
    assert await any_store.load_run("nobody") is None
    await any_store.begin_run(_new_run("r1"))
    await any_store.checkpoint(_cp("r1", "Start"), durable=True)
    run = await any_store.load_run("r1")
    assert run is not None
    assert (run.run_id, run.workflow, run.workflow_sha256, run.conversation_id) == (
        "r1", "chat", "a" * 64, "conv-r1",
    )  # fmt: skip
    assert (run.status, run.current_state, run.owner, run.resume_count) == (
        "running", "Start", "host:1:0", 0,
    )  # fmt: skip
    assert (run.started_at, run.heartbeat_at, run.finished_at) == (T0, T0, None)
    assert run.definition == "name: chat\n"
    assert run.state_json == '{"state": "Start"}'
    assert (run.attempts, run.reply, run.cost_usd) == ((), None, Decimal(0))


async def test_checkpoint_moves_the_run_and_appends_its_journal(any_store: Any) -> None:
    """checkpoint: the latest state wins; every entry lands in the journal, in order."""
    await any_store.begin_run(_new_run("r1"))
    await any_store.checkpoint(_cp("r1", "Request", _entry("r1", 1, "Start", "go", "Request")),
                               durable=False)  # fmt: skip
    second = _entry("r1", 2, "Request", "retry", "Request", wait_s=1.5, wait_source="backoff")
    await any_store.checkpoint(_cp("r1", "Backoff", second), durable=True)
    run = await any_store.load_run("r1")
    assert (run.current_state, run.model, run.state_json) == (
        "Backoff", SONNET, '{"state": "Backoff"}',
    )  # fmt: skip
    journal = await any_store.journal("r1")
    assert journal == (_entry("r1", 1, "Start", "go", "Request"), second)


async def test_attempts_are_recorded_before_and_completed_after(any_store: Any) -> None:
    """attempt_started makes the request (and the run) durable; attempt_ended completes it."""
    await any_store.begin_run(_new_run("r1"))
    started = AttemptRow("r1", 1, SONNET, T0)
    await any_store.attempt_started(started)
    run = await any_store.load_run("r1")
    assert run is not None  # the run's queued first write rode on the attempt
    assert run.attempts == (started,)
    ended = AttemptRow("r1", 1, SONNET, T0, T0 + timedelta(seconds=2), 500, "server_error",
                       "gen-1", 2000)  # fmt: skip
    await any_store.attempt_ended(ended)
    await any_store.attempt_started(AttemptRow("r1", 2, SONNET, T0 + timedelta(seconds=3)))
    run = await any_store.load_run("r1")
    assert run.attempts == (ended, AttemptRow("r1", 2, SONNET, T0 + timedelta(seconds=3)))


async def test_a_whole_answer_is_kept_on_its_open_attempt_until_it_ends(any_store: Any) -> None:
    """attempt_answered commits a stream's whole answer on its still-open attempt (a resume's
    ``answer_unkept``); ending the attempt with its answer returned clears the text and keeps
    the finish reason and answering model; a failure keeps its message."""
    await any_store.begin_run(_new_run("r1"))
    await any_store.attempt_started(AttemptRow("r1", 1, SONNET, T0))
    answered = AttemptRow(
        "r1", 1, SONNET, T0, status=200, generation_id="gen-1", latency_ms=40,
        partial_text="the whole answer", finish_reason="stop", response_model="acme/answerer",
    )  # fmt: skip
    await any_store.attempt_answered(answered)
    run = await any_store.load_run("r1")
    assert run is not None and run.attempts == (answered,)
    assert run.attempts[0].answer_unkept
    ended = AttemptRow(
        "r1", 1, SONNET, T0, T0 + timedelta(seconds=1), 200, None, "gen-1", 40,
        finish_reason="stop", response_model="acme/answerer",
    )  # fmt: skip
    await any_store.attempt_ended(ended)
    failed = AttemptRow(
        "r1", 2, SONNET, T0, T0, 503, "server_error", error_message="upstream said no (503)"
    )
    await any_store.attempt_started(AttemptRow("r1", 2, SONNET, T0))
    await any_store.attempt_ended(failed)
    await any_store.attempt_started(AttemptRow("r1", 3, SONNET, T0))
    run = await any_store.load_run("r1")
    assert run is not None and run.attempts[:2] == (ended, failed)
    assert not run.attempts[0].answer_unkept


async def test_book_billed_counts_once_per_generation(any_store: Any) -> None:
    """book_billed: the spend joins the run's cost, once per generation (and never the
    reply's own generation a second time)."""
    await any_store.begin_run(_new_run("r1"))
    await any_store.checkpoint(_cp("r1", "Start"), durable=True)
    billed = BilledAttempt("u1", "r1", "conv-r1", None, SONNET, "gen-lost", 10, 5,
                           Decimal("0.000100000"), "provider", 1, T0)  # fmt: skip
    await any_store.book_billed(billed)
    await any_store.book_billed(replace(billed, usage_id="u2"))
    reply = _reply("r1", "conv-r1", "gen-kept")
    await any_store.save_reply(reply, RunEnd("r1", "succeeded", "Done", SONNET, None, None, T0))
    await any_store.book_billed(replace(billed, usage_id="u3", generation_id="gen-kept"))
    run = await any_store.load_run("r1")
    assert run.cost_usd == Decimal("0.000100000") + reply.cost_usd
    assert run.reply is not None and run.reply.message_id == reply.message_id
    assert (await any_store.count_rows())["llm_usage"] == 2


async def test_processes_booking_one_lost_attempt_at_once_book_it_once(sql_store: Any) -> None:
    """Two resumes of one run book its lost attempt before either takes the run: from four
    stores (four processes' worth of connections) at once, one llm_usage row."""
    await sql_store.begin_run(_new_run("r1"))
    await sql_store.checkpoint(_cp("r1", "Start"), durable=True)
    others = [await SqlStore.open(sql_store.url) for _ in range(3)]
    billed = BilledAttempt("u0", "r1", "conv-r1", None, SONNET, "gen-lost", 10, 5,
                           Decimal("0.000100000"), "provider", 1, T0)  # fmt: skip
    try:
        for round_ in range(5):
            async with trio.open_nursery() as nursery:
                for i, store in enumerate([sql_store, *others]):
                    nursery.start_soon(
                        store.book_billed, replace(billed, usage_id=f"u{round_}-{i}")
                    )
    finally:
        for store in others:
            store.close()
    assert (await sql_store.count_rows())["llm_usage"] == 1


async def test_heartbeat_touches_only_the_owners_running_runs(any_store: Any) -> None:
    """heartbeat: every running run of the owner, no other owner's, no finished run."""
    for run_id, owner in (("mine", "a"), ("done", "a"), ("theirs", "b")):
        await any_store.begin_run(_new_run(run_id, owner=owner))
    end = RunEnd("done", "failed", "Failed", None, "server_error", "boom", T0)
    await any_store.finish_run(end, _cp("done", "Failed"))
    later = T0 + timedelta(minutes=5)
    await any_store.heartbeat("a", later)
    beats = {r: (await any_store.load_run(r)).heartbeat_at for r in ("mine", "done", "theirs")}
    assert beats == {"mine": later, "done": T0, "theirs": T0}


async def test_reopen_run_makes_a_finished_run_running_again(any_store: Any) -> None:
    """reopen_run: running under the new owner, one more resume, the error cleared, the
    resume's journal row appended."""
    await any_store.begin_run(_new_run("r1"))
    first = _entry("r1", 1, "Start", "go", "Request")
    await any_store.finish_run(
        RunEnd("r1", "cancelled", "Request", SONNET, "cancelled", "Ctrl-C", T0),
        _cp("r1", "Request", first),
    )
    later = T0 + timedelta(hours=1)
    resume = _entry("r1", 2, "Request", "resumed", "Request")
    await any_store.reopen_run(_cp("r1", "Request", resume), "host:2:0", later)
    run = await any_store.load_run("r1")
    assert (run.status, run.owner, run.heartbeat_at, run.resume_count) == (
        "running", "host:2:0", later, 1,
    )  # fmt: skip
    assert (run.error_class, run.error_message, run.finished_at) == (None, None, None)
    assert await any_store.journal("r1") == (first, resume)


async def test_reopen_run_under_an_edited_definition_records_it(any_store: Any) -> None:
    """reopen_run with a definition (``runs resume --workflow FILE``): the run goes on under
    it — its name and sha256 on the run, its text kept — and the first definition stays kept."""
    await any_store.begin_run(_new_run("r1"))
    await any_store.finish_run(
        RunEnd("r1", "failed", "Failed", None, "server_error", "boom", T0), _cp("r1", "Failed")
    )
    edited = Definition("chat-edited", "b" * 64, "name: chat-edited\n")
    taken = await any_store.reopen_run(
        _cp("r1", "Request"), "host:2:0", T0 + timedelta(hours=1), definition=edited
    )
    assert taken
    run = await any_store.load_run("r1")
    assert (run.workflow, run.workflow_sha256, run.definition) == (
        "chat-edited", "b" * 64, "name: chat-edited\n",
    )  # fmt: skip
    await any_store.begin_run(_new_run("r2"))
    await any_store.checkpoint(_cp("r2", "Start"), durable=True)
    assert (await any_store.load_run("r2")).definition == "name: chat\n"


async def test_only_the_runs_owner_may_write_it(any_store: Any) -> None:
    """A checkpoint or an end written by a process that no longer owns the run (another one
    resumed it while this one was paused) is refused with RunTakenOver and changes nothing;
    the owner's own writes, and unowned ones, go through."""
    from demiarch_flow.errors import RunTakenOver

    await any_store.begin_run(_new_run("r1", owner="host:1:0"))
    await any_store.checkpoint(_cp("r1", "Start"), durable=True)
    later = T0 + timedelta(hours=1)
    await any_store.reopen_run(_cp("r1", "Request"), "host:2:0", later)  # taken over
    zombie = replace(_cp("r1", "Persist", _entry("r1", 9, "Request", "x", "Persist")),
                                 owner="host:1:0")  # fmt: skip
    with pytest.raises(RunTakenOver):
        await any_store.checkpoint(zombie, durable=True)
    end = RunEnd("r1", "failed", "Failed", None, "persistence", "x", later, "host:1:0")
    with pytest.raises(RunTakenOver):
        await any_store.finish_run(end)
    with pytest.raises(RunTakenOver):
        await any_store.save_reply(_reply("r1", "conv-r1", "gen-z"), end)
    run = await any_store.load_run("r1")
    assert (run.status, run.current_state, run.owner, run.reply) == (
        "running", "Request", "host:2:0", None,
    )  # fmt: skip
    assert [e.seq for e in await any_store.journal("r1")] == []
    mine = replace(_cp("r1", "Persist"), owner="host:2:0")
    await any_store.checkpoint(mine, durable=True)
    await any_store.finish_run(replace(end, owner="host:2:0"))
    assert (await any_store.load_run("r1")).status == "failed"


async def test_list_runs_newest_first_with_filters(any_store: Any) -> None:
    """list_runs: newest first, filtered by status and start time, limited, no definition."""
    for i in range(4):
        await any_store.begin_run(_new_run(f"r{i}", at=T0 + timedelta(minutes=i)))
    await any_store.finish_run(
        RunEnd("r1", "failed", "Failed", None, "server_error", "boom", T0), _cp("r1", "Failed")
    )
    listed = await any_store.list_runs(status=None, since=None, limit=10)
    assert [r.run_id for r in listed] == ["r3", "r2", "r1", "r0"]
    assert all(r.definition is None for r in listed)
    assert [r.run_id for r in await any_store.list_runs(status="failed", since=None, limit=10)] == [
        "r1"
    ]
    since = T0 + timedelta(minutes=2)
    assert [r.run_id for r in await any_store.list_runs(status=None, since=since, limit=10)] == [
        "r3", "r2",
    ]  # fmt: skip
    assert [r.run_id for r in await any_store.list_runs(status="running", since=None, limit=2)] == [
        "r3", "r2",
    ]  # fmt: skip
