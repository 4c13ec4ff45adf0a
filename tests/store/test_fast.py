"""Fixed statements on the DB-API cursor write what SQLAlchemy writes and fail as it fails."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Connection, Table, bindparam, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError

from demiarch_flow.errors import PersistenceError
from demiarch_flow.store import _runs, sql
from demiarch_flow.store._fast import Fixed, driver_sql, inserting
from demiarch_flow.store.base import RunEnd
from demiarch_flow.store.sql import SqlStore
from demiarch_flow.store.tables import Conversation, LlmUsage, RunEvent, WorkflowRun

from .conftest import postgres_available

_CONV: Table = Conversation.__table__  # type: ignore[assignment]
_USAGE: Table = LlmUsage.__table__  # type: ignore[assignment]
_EVENT: Table = RunEvent.__table__  # type: ignore[assignment]
_RUN: Table = WorkflowRun.__table__  # type: ignore[assignment]
AT = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
PARIS = ZoneInfo("Europe/Paris")


def _raw(conn: Connection, table: Table, key: str, value: str) -> tuple[Any, ...]:
    """The row as the driver stores it (no SQLAlchemy type on the way out)."""
    row = conn.exec_driver_sql(
        f"SELECT * FROM {table.name} WHERE {key} = {'?' if conn.dialect.name == 'sqlite' else '%s'}",
        (value,),
    ).one()
    return tuple(row)


def _conv(conn: Connection, conv_id: str) -> None:
    conn.execute(
        insert(_CONV),
        {"id": conv_id, "project_id": None, "title": "", "created_at": AT, "updated_at": AT},
    )


def _usage(usage_id: str, conv_id: str) -> dict[str, Any]:
    return {
        "id": usage_id, "conversation_id": conv_id, "message_id": None, "run_id": "r",
        "project_id": None, "model": "m", "requested_model": "m", "generation_id": "g",
        "prompt_tokens": 10, "completion_tokens": None, "total_tokens": None,
        "cached_tokens": 0, "cost_usd": Decimal("0.1234567891"), "cost_source": "provider",
        "latency_ms": 5, "attempts": 1,
        "request_timestamp": AT.astimezone(PARIS),
        "outcome": "billed",
    }  # fmt: skip


def test_an_insert_writes_the_row_sqlalchemy_writes(sql_store: SqlStore) -> None:
    """Same stored values (UTC timestamp, USD amount rounded and, on SQLite, as text)."""
    fast = inserting(_USAGE)
    with sql_store.engine.begin() as conn:
        _conv(conn, "c")
        fast.execute(conn, _usage("u-fast", "c"))
        conn.execute(insert(_USAGE), _usage("u-core", "c"))
        by_fast = _raw(conn, _USAGE, "id", "u-fast")
        by_core = _raw(conn, _USAGE, "id", "u-core")
        read = conn.execute(select(_USAGE).where(_USAGE.c.id == "u-fast")).one()
    assert by_fast[1:] == by_core[1:]
    assert read.cost_usd == Decimal("0.123456789")
    assert read.request_timestamp == AT


def test_executemany_writes_every_row(sql_store: SqlStore) -> None:
    """Several rows of one statement in one driver call, as SQLAlchemy's executemany."""
    rows = [
        {"run_id": "r", "seq": seq, "from_state": "A", "event": "go", "to_state": "B",
         "model": None, "attempt": seq, "error_class": None, "wait_s": 0.5, "at": AT,
         "wait_source": None, "bucket": None}
        for seq in (1, 2, 3)
    ]  # fmt: skip
    with sql_store.engine.begin() as conn:
        conn.execute(
            insert(_RUN),
            {"id": "r", "workflow": "w", "workflow_sha256": "s", "conversation_id": None,
             "status": "running", "current_state": "A", "started_at": AT, "resume_count": 0},
        )  # fmt: skip
        inserting(_EVENT).executemany(conn, rows)
        back = conn.execute(select(_EVENT).order_by(_EVENT.c.seq)).all()
    assert [(e.seq, e.attempt, e.at, e.wait_s) for e in back] == [
        (1, 1, AT, 0.5), (2, 2, AT, 0.5), (3, 3, AT, 0.5)
    ]  # fmt: skip


def test_update_counts_rows_and_keeps_its_constants(sql_store: SqlStore) -> None:
    """A constant of the statement (``status = 'running'``) is bound; the row count is the
    driver's; a scalar comes back through the column's type."""
    touch = Fixed(
        update(_CONV)
        .where(_CONV.c.id == bindparam("b_id"), _CONV.c.title == "")
        .values(updated_at=bindparam("b_at"))
    )
    later = AT + timedelta(days=1)
    with sql_store.engine.begin() as conn:
        _conv(conn, "c")
        assert touch.execute(conn, {"b_id": "c", "b_at": later}) == 1
        assert touch.execute(conn, {"b_id": "nobody", "b_at": later}) == 0
        updated = Fixed(select(_CONV.c.updated_at).where(_CONV.c.id == bindparam("b_id")))
        assert updated.scalar(conn, {"b_id": "c"}) == later
        assert updated.scalar(conn, {"b_id": "nobody"}) is None


def test_a_statement_sqlalchemy_would_complete_is_refused() -> None:
    """A column left to its Python default would be filled by SQLAlchemy at run time: refused
    when compiled, not silently written as NULL."""
    from sqlalchemy import create_engine

    dialect = create_engine("sqlite://").dialect
    partial = Fixed(insert(_USAGE), [c.key for c in _USAGE.c if c.key != "outcome"])
    with pytest.raises(ValueError, match="run time"):
        partial.compiled(dialect)
    for statement in (
        sql._INS_USAGE,
        sql._REPLY_OF_RUN,
        _runs._CHECKPOINT_OWNED,
        *sql._ENDS.values(),
    ):
        statement.compiled(dialect)  # the store's own compile


def test_a_constraint_violation_raises_sqlalchemys_error(sql_store: SqlStore) -> None:
    """The driver's error is mapped to the same ``sqlalchemy.exc`` class ``execute`` raises,
    and the transaction still rolls back."""
    with pytest.raises(IntegrityError), sql_store.engine.begin() as conn:
        _conv(conn, "c")
        inserting(_CONV).execute(
            conn,
            {"id": "c", "project_id": None, "title": "", "created_at": AT, "updated_at": AT},
        )
    with sql_store.engine.connect() as conn:
        assert conn.execute(select(_CONV.c.id)).all() == []


async def test_the_store_maps_a_cursor_error_to_persistence_error(sql_store: SqlStore) -> None:
    """Through the store's group commit a violation (one row, or one of an executemany) is a
    PersistenceError, as it was through ``Connection.execute``; nothing of it is written."""
    from .test_contract import _cp, _entry, _new_run, _reply

    await sql_store.begin_run(_new_run("r1"))
    bad = _reply("r1", "no-such-conversation", "g")  # a foreign key the database refuses
    end = RunEnd("r1", "succeeded", "Done", "m", None, None, AT, owner="host:1:0")
    with pytest.raises(PersistenceError):
        await sql_store.save_reply(bad, end)
    entry = _entry("r1", 1, "Start", "go", "Next")
    twice = replace(_cp("r1", "Next", entry, entry), owner="host:1:0")  # one key twice
    with pytest.raises(PersistenceError):
        await sql_store.checkpoint(twice, durable=True)
    run = await sql_store.load_run("r1")
    assert run is not None
    assert (run.status, run.current_state, run.reply) == ("running", "Start", None)
    assert await sql_store.journal("r1") == ()


def test_sqlite_begin_immediate_waits_then_fails_as_operational_error(tmp_path: Any) -> None:
    """``BEGIN IMMEDIATE`` on the cursor: another writer's lock is an OperationalError."""
    store = SqlStore.open_sync(f"sqlite:///{tmp_path / 'f.db'}")
    other = SqlStore.open_sync(f"sqlite:///{tmp_path / 'f.db'}")
    try:
        with store.engine.connect() as holder:
            held = holder.connection.dbapi_connection
            assert held is not None
            held.execute("BEGIN IMMEDIATE")  # type: ignore[attr-defined]
            with other.engine.connect() as conn:
                conn.connection.dbapi_connection.execute("PRAGMA busy_timeout=0")  # type: ignore[union-attr]
                with pytest.raises(OperationalError, match="locked"), conn.begin():
                    driver_sql(conn, "BEGIN IMMEDIATE")
            held.execute("ROLLBACK")  # type: ignore[attr-defined]
    finally:
        store.close()
        other.close()


@pytest.mark.postgres
def test_a_lost_postgres_connection_is_invalidated() -> None:
    """A connection the server dropped is invalidated (not handed out again by the pool)."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable")
    from .conftest import fresh_postgres

    store = fresh_postgres()
    try:
        with store.engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with store.engine.connect() as killer:
                killer.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            with pytest.raises(OperationalError) as caught:
                _runs._HEARTBEAT.execute(conn, {"b_owner": "x", "b_at": AT})
            assert caught.value.connection_invalidated
            assert conn.invalidated
        with store.engine.connect() as conn:  # the pool hands out a live one
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    finally:
        store.close()
