"""Revision 0006: estimated costs, and token counts stored as NULL when unknown."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from demiarch_flow.store.base import BilledAttempt
from demiarch_flow.store.schema import HEAD
from demiarch_flow.store.sql import SqlStore, open_engine
from demiarch_flow.store.tables import ChatMessage, Conversation, LlmUsage, WorkflowRun

from .test_schema import migrate, revision_of

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
_USAGE = LlmUsage.__table__
_ROW = (
    _USAGE.c.id, _USAGE.c.prompt_tokens, _USAGE.c.completion_tokens, _USAGE.c.total_tokens,
    _USAGE.c.cost_usd, _USAGE.c.cost_source, _USAGE.c.outcome, _USAGE.c.message_id,
)  # fmt: skip


@pytest.fixture
def url(db_url: str) -> str:
    """An empty database on each engine (the shared ``db_url``)."""
    return db_url


def usage_row(id: str, run_id: str, **values: Any) -> dict[str, Any]:
    return {
        "id": id, "conversation_id": "c1", "message_id": None, "run_id": run_id,
        "project_id": None, "model": "acme/fast", "requested_model": "acme/fast",
        "generation_id": f"gen-{id}", "prompt_tokens": 10, "completion_tokens": 20,
        "total_tokens": 30, "cached_tokens": 0, "cost_usd": Decimal("0.000001"),
        "cost_source": "price_table", "latency_ms": 5, "attempts": 1,
        "request_timestamp": AT, "outcome": "reply",
    } | values  # fmt: skip


def write(url: str, table: Any, *rows: dict[str, Any]) -> None:
    engine = open_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(table), list(rows))
    finally:
        engine.dispose()


def usage_rows(url: str) -> list[tuple[Any, ...]]:
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(select(*_ROW).order_by(_USAGE.c.id))]
    finally:
        engine.dispose()


def run_row(run_id: str) -> dict[str, Any]:
    return {
        "id": run_id, "workflow": "wf", "workflow_sha256": "0" * 64, "conversation_id": "c1",
        "status": "succeeded", "current_state": "done", "model": "acme/fast",
        "started_at": AT, "finished_at": AT, "resume_count": 0,
    }  # fmt: skip


def at_0005_with_rows(url: str) -> list[tuple[Any, ...]]:
    """A database at 0005 holding a run's reply and a billed attempt (written as 0005 did,
    unknown counts as 0); returns its usage rows."""
    migrate(url, "0005")
    write(url, Conversation.__table__, {"id": "c1", "project_id": None, "title": "old",
                                        "created_at": AT, "updated_at": AT})  # fmt: skip
    write(url, ChatMessage.__table__, {
        "id": "m1", "conversation_id": "c1", "project_id": None, "role": "assistant",
        "content": "the answer", "model": "acme/fast", "token_count": 20, "run_id": "r1",
        "created_at": AT,
    })  # fmt: skip
    write(url, WorkflowRun.__table__, run_row("r1"))
    write(
        url,
        _USAGE,
        usage_row("u1", "r1", message_id="m1"),
        usage_row("u2", "r1", prompt_tokens=0, completion_tokens=0, total_tokens=0,
                  cost_usd=Decimal(0), cost_source="unknown", outcome="billed"),
    )  # fmt: skip
    rows = usage_rows(url)
    assert len(rows) == 2
    return rows


async def test_a_0005_database_upgrades_keeping_rows_then_takes_estimates(url: str) -> None:
    """0005 → head keeps every usage row as it was (old zeros stay zeros); afterwards a billed
    attempt with no counts is booked with NULL tokens and cost source 'estimated', a reply
    with NULL counts loads as None, and the usage report sums the counts that are known."""
    before = at_0005_with_rows(url)
    migrate(url, "head")
    assert revision_of(url) == HEAD
    assert usage_rows(url) == before
    store = SqlStore.open_sync(url)
    try:
        await store.book_billed(
            BilledAttempt(
                usage_id="u3", run_id="r1", conversation_id="c1", project_id=None,
                model="acme/fast", generation_id="gen-u3", prompt_tokens=None,
                completion_tokens=None, cost_usd=Decimal("0.000004"), cost_source="estimated",
                attempt=2, at=AT, outcome="interrupted",
            )
        )  # fmt: skip
        write(url, ChatMessage.__table__, {
            "id": "m2", "conversation_id": "c1", "project_id": None, "role": "assistant",
            "content": "another", "model": "acme/fast", "token_count": None, "run_id": "r2",
            "created_at": AT,
        })  # fmt: skip
        write(url, WorkflowRun.__table__, run_row("r2"))
        write(url, _USAGE, usage_row("u4", "r2", message_id="m2", prompt_tokens=7,
                                     completion_tokens=None, total_tokens=None,
                                     cost_source="estimated"))  # fmt: skip
        assert usage_rows(url)[2:] == [
            ("u3", None, None, None, Decimal("0.000004"), "estimated", "interrupted", None),
            ("u4", 7, None, None, Decimal("0.000001"), "estimated", "reply", "m2"),
        ]
        run = await store.load_run("r2")
        assert run is not None and run.reply is not None
        assert (run.reply.prompt_tokens, run.reply.completion_tokens) == (7, None)
        assert run.reply.cost_source == "estimated"
        [report] = await store.usage(None, "model")
        assert (report.calls, report.prompt_tokens, report.completion_tokens) == (4, 17, 20)
        assert report.cost_usd == Decimal("0.000006")
        assert (report.interrupted_calls, report.interrupted_usd) == (1, Decimal("0.000004"))
    finally:
        store.close()


def test_head_still_refuses_a_cost_source_it_does_not_know(url: str) -> None:
    """The widened check is still a check: only the four sources are accepted."""
    at_0005_with_rows(url)
    migrate(url, "head")
    with pytest.raises(IntegrityError):
        write(url, _USAGE, usage_row("u9", "r1", cost_source="guessed", outcome="billed"))


def test_downgrade_to_0005_turns_unknowns_back_into_zeros(url: str) -> None:
    """head → 0005: NULL counts become 0 (a total the sum of the known parts), 'estimated'
    becomes 'price_table', other rows are untouched, and 0005's check is back."""
    before = at_0005_with_rows(url)
    migrate(url, "head")
    write(
        url,
        _USAGE,
        usage_row("u3", "r1", prompt_tokens=None, completion_tokens=None, total_tokens=None,
                  cost_source="estimated", outcome="billed"),
        usage_row("u4", "r1", prompt_tokens=7, completion_tokens=None, total_tokens=None,
                  cost_source="estimated", outcome="billed"),
    )  # fmt: skip
    migrate(url, "0005", down=True)
    assert revision_of(url) == "0005"
    one = Decimal("0.000001")
    assert usage_rows(url) == [
        *before,
        ("u3", 0, 0, 0, one, "price_table", "billed", None),
        ("u4", 7, 0, 7, one, "price_table", "billed", None),
    ]
    with pytest.raises(IntegrityError):
        write(url, _USAGE, usage_row("u5", "r1", cost_source="estimated", outcome="billed"))
    with pytest.raises(IntegrityError):
        write(url, _USAGE, usage_row("u6", "r1", prompt_tokens=None, outcome="billed"))
