"""The recovery file read back: its row format round-trips a reply, old rows stay importable,
and ``SqlStore.import_reply`` stores each run's reply once (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from demiarch_flow.definition import parse_workflow
from demiarch_flow.runner import RunOutcome, RunRequest, run_workflow
from demiarch_flow.runner.recovery import (
    BadLine,
    MalformedRow,
    parse_row,
    read_recovery,
    recovery_dir_for,
    recovery_file_for,
    recovery_path,
)
from demiarch_flow.store.sql import SqlStore
from demiarch_flow.store.tables import ChatMessage, LlmUsage, WorkflowRun
from demiarch_flow.testing import FakeOpenRouter, make_env

from ..conftest import DEFAULT_WORKFLOW

WF = parse_workflow(DEFAULT_WORKFLOW.read_text("utf-8"))
SONNET = "anthropic/claude-sonnet-4"
AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_the_recovery_file_of_a_database_url(tmp_path: Path) -> None:
    """Beside a SQLite file; in the data folder for an in-memory or a server database (the
    recovery module knows where the file lives, not the store)."""
    db = tmp_path / "sub" / "flow.db"
    assert recovery_dir_for(f"sqlite:///{db}") == str(db.parent.resolve())
    assert recovery_file_for(f"sqlite:///{db}") == db.parent.resolve() / "recovery.jsonl"
    for url in ("sqlite://", "sqlite:///:memory:", "postgresql+psycopg://u@h/db"):
        assert recovery_dir_for(url) is None
        assert recovery_file_for(url) == recovery_path(None)


async def fail_to_persist(
    store: SqlStore, folder: Path, monkeypatch: pytest.MonkeyPatch, message: str = "keep me"
) -> RunOutcome:
    """A run (one retry, project p1) whose reply cannot be stored: it lands in the recovery file."""
    import demiarch_flow.store.sql as sql

    def broken(*_: Any, **__: Any) -> str:
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    with monkeypatch.context() as patch:
        patch.setattr(sql, "_save_reply", broken)
        env = make_env(
            FakeOpenRouter(f"{SONNET}=500"),
            store=store,
            recovery_dir=str(folder),
        )
        out = await run_workflow(WF, RunRequest(message, project_id="p1"), env)
    assert out.status == "failed"
    assert out.error_class == "persistence"
    return out


async def test_a_recovered_reply_is_stored_as_persist_would_have(
    sql_store: SqlStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: object
) -> None:
    """Every field of the row reaches chat_messages and llm_usage; the run is succeeded in Done;
    importing again writes nothing."""
    out = await fail_to_persist(sql_store, tmp_path, monkeypatch)
    (entry,), bad = read_recovery(recovery_path(str(tmp_path)))
    assert bad == []
    assert entry.final_state == "Done"
    reply = entry.reply
    assert (reply.run_id, reply.project_id, reply.attempts) == (out.run_id, "p1", 2)

    assert await sql_store.missing_replies([(out.run_id, reply.conversation_id)]) == {out.run_id}
    assert await sql_store.import_reply(reply, entry.final_state) == "imported"
    assert await sql_store.missing_replies([(out.run_id, reply.conversation_id)]) == set()

    def read(session: Any) -> tuple[Any, Any, Any]:
        message = session.scalars(select(ChatMessage).where(ChatMessage.role == "assistant")).one()
        return (
            message,
            session.scalars(select(LlmUsage)).one(),
            session.get(WorkflowRun, out.run_id),
        )

    message, usage, run = await sql_store._read(read)
    assert (message.id, message.content, message.model, message.project_id) == (
        reply.message_id, reply.content, reply.model, "p1",
    )  # fmt: skip
    assert (message.created_at, message.token_count) == (reply.created_at, reply.completion_tokens)
    stored = {c: getattr(usage, c) for c in (
        "id", "message_id", "run_id", "project_id", "model", "requested_model", "generation_id",
        "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "cost_usd",
        "cost_source", "latency_ms", "attempts", "request_timestamp",
    )}  # fmt: skip
    assert stored == {
        "id": reply.usage_id, "message_id": reply.message_id, "run_id": out.run_id,
        "project_id": "p1", "model": reply.model, "requested_model": reply.requested_model,
        "generation_id": reply.generation_id, "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens, "total_tokens": reply.total_tokens,
        "cached_tokens": reply.cached_tokens, "cost_usd": reply.cost_usd,
        "cost_source": reply.cost_source, "latency_ms": reply.latency_ms, "attempts": 2,
        "request_timestamp": reply.request_timestamp,
    }  # fmt: skip
    assert (run.status, run.current_state, run.model, run.error_class) == (
        "succeeded", "Done", reply.model, None,
    )  # fmt: skip

    before = await sql_store.count_rows()
    assert await sql_store.import_reply(reply, entry.final_state) == "present"
    assert await sql_store.count_rows() == before


async def test_the_run_is_the_idempotency_key_not_the_generation(
    sql_store: SqlStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: object
) -> None:
    """Fresh ids and another generation id for a run that has its reply: still 'present'."""
    await fail_to_persist(sql_store, tmp_path, monkeypatch)
    (entry,), _ = read_recovery(recovery_path(str(tmp_path)))
    assert await sql_store.import_reply(entry.reply, "Done") == "imported"
    doc = json.loads(recovery_path(str(tmp_path)).read_text())
    doc.update(message_id=None, usage_id=None, generation_id="gen-other")
    again = parse_row(doc)
    assert again.reply.message_id != entry.reply.message_id
    assert await sql_store.import_reply(again.reply, "Done") == "present"
    assert (await sql_store.count_rows())["llm_usage"] == 1


async def test_a_gone_conversation_is_reported_not_written(sql_store: SqlStore) -> None:
    """A row whose conversation is not in the database: 'no_conversation', nothing written."""
    entry = parse_row(_old_row(conversation_id="c-gone"))
    assert await sql_store.missing_replies([(entry.reply.run_id, "c-gone")]) == set()
    assert await sql_store.import_reply(entry.reply, None) == "no_conversation"
    assert (await sql_store.count_rows())["chat_messages"] == 0


async def test_an_old_row_imports_with_defaults(
    sql_store: SqlStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: object
) -> None:
    """A row in the first format (no ids, totals, latency, attempts or final state): imported,
    the run succeeded in the state it was left in."""
    out = await fail_to_persist(sql_store, tmp_path, monkeypatch)
    assert out.conversation_id is not None
    entry = parse_row(_old_row(run_id=out.run_id, conversation_id=out.conversation_id))
    assert await sql_store.import_reply(entry.reply, entry.final_state) == "imported"

    def read(session: Any) -> tuple[Any, Any]:
        return session.scalars(select(LlmUsage)).one(), session.get(WorkflowRun, out.run_id)

    usage, run = await sql_store._read(read)
    assert (usage.total_tokens, usage.cached_tokens, usage.latency_ms, usage.attempts) == (
        14, 0, 0, 1,
    )  # fmt: skip
    assert (usage.cost_usd, usage.request_timestamp) == (Decimal("0.000090000"), AT)
    assert (run.status, run.current_state) == ("succeeded", "Failed")


def _old_row(**fields: Any) -> dict[str, Any]:
    """A row exactly as write_recovery wrote them before the format carried ids and totals."""
    return {
        "run_id": "r-old", "conversation_id": "c-old", "model": SONNET, "requested_model": SONNET,
        "generation_id": "gen-old", "content": "the answer", "prompt_tokens": 10,
        "completion_tokens": 4, "cost_usd": "0.00009", "cost_source": "provider",
        "at": AT.isoformat(), "error": "database error: disk I/O error",
    } | fields  # fmt: skip


def test_old_row_defaults() -> None:
    """Missing fields get defaults: generated ids, total = prompt + completion, 1 attempt."""
    entry = parse_row(_old_row(), 7)
    reply = entry.reply
    assert entry.line == 7
    assert entry.final_state is None
    assert len(reply.message_id) == len(reply.usage_id) == 36
    assert (reply.total_tokens, reply.cached_tokens, reply.attempts) == (14, 0, 1)
    assert reply.request_timestamp == reply.created_at == AT
    assert (reply.project_id, reply.cost_usd) == (None, Decimal("0.00009"))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"run_id": None}, "'run_id' is missing"),
        ({"content": 5}, "'content' must be a non-empty string"),
        ({"prompt_tokens": "ten"}, "'prompt_tokens' must be a whole number"),
        ({"attempts": True}, "'attempts' must be a whole number"),
        ({"cost_usd": "lots"}, "'cost_usd' is not a number"),
        ({"cost_usd": "NaN"}, "'cost_usd' is not a number"),
        ({"at": "yesterday"}, "'at' is not an ISO 8601 time"),
        ({"at": None}, "'created_at' is missing"),
        ({"project_id": 3}, "'project_id' must be a string or null"),
    ],
)
def test_bad_rows_are_refused(change: dict[str, Any], problem: str) -> None:
    """A row with a missing or mistyped field is refused with the field's name."""
    with pytest.raises(MalformedRow, match=problem):
        parse_row(_old_row(**change))


def test_read_recovery_reports_bad_lines_by_number(tmp_path: Path) -> None:
    """Blank lines are skipped; bad lines are reported with their number, the rest is read."""
    path = tmp_path / "recovery.jsonl"
    path.write_text(
        "\n".join([json.dumps(_old_row()), "", "{not json", "[1]", json.dumps(_old_row())]) + "\n"
    )
    good, bad = read_recovery(path)
    assert [g.line for g in good] == [1, 5]
    assert bad == [
        BadLine(3, "not JSON (Expecting property name enclosed in double quotes at column 2)"),
        BadLine(4, "not a JSON object"),
    ]
