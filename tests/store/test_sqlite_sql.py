"""A run on a SQLite file at head writes without SQLAlchemy: the statements SQLAlchemy compiles
for SQLite are generated ahead of time (and can never drift from it), the bind processors are
SQLAlchemy's, and the store writes the same rows and fails with the same errors either way."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Float

from demiarch_flow.errors import PersistenceError
from demiarch_flow.store import _sqlite_gen, _sqlite_sql
from demiarch_flow.store._fast import BINDS, RESULTS
from demiarch_flow.store.base import AttemptRow, BilledAttempt, RunEnd
from demiarch_flow.store.schema import HEAD
from demiarch_flow.store.sql import SqlStore, _Pending, _Writer, open_engine
from demiarch_flow.store.tables import USD, UTCDateTime

from .test_contract import _cp, _entry, _new_run, _reply

PARIS = ZoneInfo("Europe/Paris")


def test_the_generated_statements_are_what_sqlalchemy_compiles_now() -> None:
    """The committed module holds every fixed statement as SQLAlchemy compiles it today, and
    the head schema's tables and columns."""
    hint = f"{_sqlite_sql.__file__} is stale: run `{_sqlite_gen.COMMAND}` (then ruff format)"
    assert _sqlite_gen.entries() == _sqlite_sql.STATEMENTS, hint
    assert (HEAD, _sqlite_gen.layout()) == (_sqlite_sql.HEAD, _sqlite_sql.LAYOUT), hint
    assert _sqlite_gen.fresh() == _sqlite_sql.FRESH, hint


def _schema(path: Path) -> tuple[object, ...]:
    """Everything of a SQLite file's schema that a test can tell apart: ``sqlite_master``
    (SQLite's own objects and the indexes of constraints included; a table's constraints in
    :func:`~demiarch_flow.store._sqlite_gen.canonical` order, as Alembic keeps none), the
    stamped revision, the journal mode and the header's version fields."""
    conn = sqlite3.connect(path)
    try:
        return (
            [
                (kind, name, table, sql and _sqlite_gen.canonical(sql))
                for kind, name, table, sql in conn.execute(
                    "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
                )
            ],
            conn.execute("SELECT * FROM alembic_version").fetchall(),
            conn.execute("PRAGMA journal_mode").fetchall(),
            conn.execute("PRAGMA user_version").fetchall(),
            conn.execute("PRAGMA application_id").fetchall(),
            conn.execute("PRAGMA foreign_key_check").fetchall(),
        )
    finally:
        conn.close()


def test_a_new_file_is_created_as_alembic_creates_it(tmp_path: Path) -> None:
    """A new SQLite file, created from the generated DDL without SQLAlchemy or Alembic, has
    the very schema Alembic's migrations make (``sqlite_master`` compared row for row)."""
    from demiarch_flow.store.schema import prepare

    lite, alembic = tmp_path / "a" / "lite.db", tmp_path / "alembic.db"
    store = SqlStore.open_sync(f"sqlite:///{lite}")
    try:
        assert store._engine is None  # written through the writer's own connection
    finally:
        store.close()
    engine = open_engine(f"sqlite:///{alembic}")
    try:
        prepare(engine)
    finally:
        engine.dispose()
    assert _schema(lite) == _schema(alembic)
    assert len(_schema(lite)[0]) > len(_sqlite_sql.FRESH)  # autoindexes compared too


def test_a_file_with_anything_in_it_is_left_to_alembic(tmp_path: Path) -> None:
    """The fast creation only fills a file that holds nothing: one with a table of its own is
    left as it is (``prepare`` then adds our tables beside it), and a missing file is not
    created for a command that must not create one."""
    from demiarch_flow.store.sql import _create_fresh

    path = tmp_path / "theirs.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE theirs (x)")
    conn.close()
    assert _create_fresh(path) is False
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    conn.close()
    assert names == ["theirs"]
    assert _Writer.at_head(f"sqlite:///{tmp_path / 'missing.db'}") is None
    assert not (tmp_path / "missing.db").exists()
    store = SqlStore.open_sync(f"sqlite:///{path}")
    try:
        assert store._engine is not None  # created by prepare, through Alembic
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
    conn.close()


def test_an_empty_file_is_created_at_head_too(tmp_path: Path) -> None:
    """A file that exists but holds nothing (made by ``touch``, or by another process that
    has not written yet) is created here as a missing one is."""
    path = tmp_path / "empty.db"
    path.touch()
    store = SqlStore.open_sync(f"sqlite:///{path}")
    try:
        assert store._engine is None
    finally:
        store.close()
    assert _schema(path)[1] == [(HEAD,)]


UTC_VALUES = [
    datetime(2026, 12, 3, 14, 6, 38, 123456, tzinfo=UTC),
    datetime(2026, 1, 1, tzinfo=UTC),
    datetime(2026, 3, 29, 2, 30, 0, 1, tzinfo=PARIS),  # the hour DST skips
    datetime(2026, 10, 25, 2, 30, tzinfo=PARIS).replace(fold=1),  # the hour it repeats
    datetime(2026, 6, 1, 0, 0, 0, 999999, tzinfo=timezone(timedelta(hours=-11, minutes=-30))),
    datetime(1, 1, 2, 0, 0, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    None,
]
USD_VALUES = [
    Decimal("0.123456789"), Decimal("0.1234567891"), Decimal("0.0000000005"), Decimal("-1.5"),
    Decimal("12345678901.000000001"), Decimal("1E-7"), Decimal("1E+3"), Decimal(0), 7, None,
]  # fmt: skip


def _sa(type_: Any, *, result: bool = False) -> Any:
    dialect = _sqlite_gen.sqlite_dialect()
    impl = type_.dialect_impl(dialect)
    return impl.result_processor(dialect, None) if result else impl.bind_processor(dialect)


@pytest.mark.parametrize("value", UTC_VALUES)
def test_the_utc_processors_are_sqlalchemys(value: datetime | None) -> None:
    """A timestamp is written as SQLAlchemy writes it and read back as it reads it."""
    written = BINDS["utc"](value)
    assert written == _sa(UTCDateTime())(value)
    assert RESULTS["utc"](written) == _sa(UTCDateTime(), result=True)(written)


def test_a_naive_time_is_refused_as_sqlalchemy_refuses_it() -> None:
    with pytest.raises(ValueError, match="naive"):
        BINDS["utc"](datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        _sa(UTCDateTime())(datetime(2026, 1, 1))


@pytest.mark.parametrize("value", USD_VALUES)
def test_the_usd_processor_is_sqlalchemys(value: Any) -> None:
    assert BINDS["usd"](value) == _sa(USD())(value)


@pytest.mark.parametrize("value", [0, 1, 0.5, 1e300, -2.25, Decimal("0.1"), None])
def test_the_float_processor_is_sqlalchemys(value: Any) -> None:
    assert BINDS["float"](value) == _sa(Float())(value)


# ---------------------------------------------------------------------- the store, both ways


def _engine_store(url: str) -> SqlStore:
    """The store on SQLAlchemy's engine (its writer on one of the engine's connections)."""
    store = SqlStore(open_engine(url), url)
    store._writer.open()
    return store


def _lite_store(url: str) -> SqlStore:
    """The store as a run opens a file at head: its own sqlite3 connection, no engine."""
    store = SqlStore.open_sync(url)
    assert store._engine is None
    return store


def _fresh(tmp_path: Path, name: str) -> str:
    url = f"sqlite:///{tmp_path / name}"
    SqlStore.open_sync(url).close()  # created at head
    return url


def _dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, as stored (text as the driver returns it)."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"'), key=repr) for t in tables}


async def _script(store: SqlStore) -> None:
    """A run's every write (and a continued conversation, a failed run, a billed attempt)."""
    t0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
    first = dataclasses.replace(_new_run("r1"), first_attempt=AttemptRow("r1", 0, "m", t0))
    await store.begin_run(first)
    await store.attempt_progress(AttemptRow("r1", 1, "m", t0, generation_id="g1"))
    await store.checkpoint(_cp("r1", "Request", _entry("r1", 1, "Start", "go", "Request")), durable=True)  # fmt: skip
    await store.attempt_answered(
        AttemptRow("r1", 1, "m", t0, status=200, generation_id="g1", latency_ms=9,
                   partial_text="ans", finish_reason="stop", response_model="m")
    )  # fmt: skip
    await store.attempt_ended(
        AttemptRow("r1", 1, "m", t0, t0 + timedelta(seconds=1), 200, None, "g1", 9)
    )
    await store.heartbeat("host:1:0", t0.astimezone(PARIS))
    reply = dataclasses.replace(_reply("r1", "conv-r1", "g1"), message_id="m1", usage_id="u1")
    end = RunEnd("r1", "succeeded", "Done", "m", None, None, t0, owner="host:1:0")
    cp = dataclasses.replace(_cp("r1", "Done", _entry("r1", 2, "Request", "ok", "Done")), owner="host:1:0")  # fmt: skip
    await store.save_reply(reply, end, cp)
    again = dataclasses.replace(_new_run("r2"), conversation_id="conv-r1", at=t0)
    began = await store.begin_run(again)
    assert sorted(m.content for m in began.history) == ["answer", "hello"]
    number = await store.attempt_started(AttemptRow("r2", 0, "m", t0), owner="host:1:0")
    await store.book_billed(
        BilledAttempt("u2", "r2", "conv-r1", None, "m", "g2", 3, None, Decimal("0.1234567891"),
                      "estimated", number, t0)
    )  # fmt: skip
    await store.finish_run(RunEnd("r2", "failed", "Failed", "m", "timeout", "slow", t0))


async def test_a_run_writes_the_same_rows_without_sqlalchemy(tmp_path: Path) -> None:
    """Every row the store writes through its own connection and the generated statements is
    the row it writes through SQLAlchemy's engine, byte for byte."""
    urls = {"engine": _fresh(tmp_path, "engine.db"), "lite": _fresh(tmp_path, "lite.db")}
    for kind, url in urls.items():
        store = _engine_store(url) if kind == "engine" else _lite_store(url)
        try:
            await _script(store)
        finally:
            store.close()
    dumps = {kind: _dump(url) for kind, url in urls.items()}
    assert dumps["lite"]["run_events"] and dumps["lite"]["llm_usage"]
    assert dumps["lite"] == dumps["engine"]


@pytest.mark.parametrize("kind", ["engine", "lite"])
async def test_a_resume_on_the_lite_store_runs_sqlalchemy_in_the_same_transaction(
    tmp_path: Path, kind: str
) -> None:
    """A statement built as it goes (a reopen) runs in the writer's transaction on the store's
    own connection, and commits with the group."""
    url = _fresh(tmp_path, "f.db")
    store = _engine_store(url) if kind == "engine" else _lite_store(url)
    try:
        await store.begin_run(_new_run("r1"))
        at = datetime(2026, 3, 2, tzinfo=UTC)
        await store.finish_run(RunEnd("r1", "failed", "Start", "m", "timeout", "x", at))
        assert await store.reopen_run(_cp("r1", "Start"), "host:2:0", at)
        run = await store.load_run("r1")
        assert run is not None and (run.status, run.owner, run.resume_count) == (
            "running", "host:2:0", 1
        )  # fmt: skip
    finally:
        store.close()


# ---------------------------------------------------------------------- errors, both ways


async def _error_of(store: SqlStore, action: str) -> str:
    try:
        if action == "integrity":  # a foreign key the database refuses
            await store.begin_run(_new_run("r1"))
            end = RunEnd("r1", "succeeded", "Done", "m", None, None, datetime.now(UTC))
            await store.save_reply(_reply("r1", "no-such-conversation", "g"), end)
        elif action == "missing table":
            await store.begin_run(_new_run("r1"))
            with sqlite3.connect(store.url.removeprefix("sqlite:///")) as other:
                other.execute("DROP TABLE run_events")
            entry = _entry("r1", 1, "Start", "go", "Next")
            await store.checkpoint(_cp("r1", "Next", entry), durable=True)
        elif action == "locked":
            await store.begin_run(_new_run("r1"))
            holder = sqlite3.connect(store.url.removeprefix("sqlite:///"), isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            try:
                await store.heartbeat("host:1:0", datetime.now(UTC))
            finally:
                holder.execute("ROLLBACK")
                holder.close()
    except PersistenceError as exc:
        return str(exc)
    raise AssertionError(f"{action}: no PersistenceError")


@pytest.mark.parametrize("action", ["integrity", "missing table", "locked"])
async def test_a_driver_error_is_the_same_persistence_error_either_way(
    tmp_path: Path, action: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver's error reaches the caller as the PersistenceError it was through
    SQLAlchemy, with the same message."""
    from demiarch_flow.store import sql

    monkeypatch.setattr(sql, "_SQLITE_WAIT_S", 0.05)  # another process's lock: a short wait
    messages = {}
    for kind in ("engine", "lite"):
        url = _fresh(tmp_path, f"{kind}.db")
        store = _engine_store(url) if kind == "engine" else _lite_store(url)
        try:
            messages[kind] = await _error_of(store, action)
        finally:
            store.close()
    assert messages["lite"] == messages["engine"]
    assert {"integrity": "FOREIGN KEY", "missing table": "no such table", "locked": "locked"}[
        action
    ] in messages["lite"]


def test_a_disk_error_maps_as_sqlalchemys_does() -> None:
    """A disk I/O error the driver raises is the PersistenceError SQLAlchemy's wrapping of it
    was."""
    from sqlalchemy.exc import OperationalError

    raw = sqlite3.OperationalError("disk I/O error")
    outcomes = []
    for error in (raw, OperationalError("UPDATE x", (), raw)):
        pending = _Pending(lambda tx: None)
        pending.settle(error=error)
        with pytest.raises(PersistenceError) as caught:
            pending.result()
        outcomes.append(str(caught.value))
    assert outcomes[0] == outcomes[1] == "database error: disk I/O error"


# ---------------------------------------------------------------------- what takes the old path


def _writer_for(url: str) -> bool:
    writer = _Writer.at_head(url)
    if writer is not None:
        writer.close()
    return writer is not None


def test_only_a_plain_file_at_head_with_every_column_is_opened_without_sqlalchemy(
    tmp_path: Path,
) -> None:
    """Anything else (no file, another revision, a dropped column, a URL SQLAlchemy must
    parse) is left to the schema check, which creates, upgrades or refuses it as before."""
    url = _fresh(tmp_path, "f.db")
    path = tmp_path / "f.db"
    assert _writer_for(url)
    assert not _writer_for(f"sqlite:///{tmp_path / 'none.db'}")
    assert not _writer_for(f"{url}?synchronous=full")
    assert not _writer_for("sqlite://")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0001'")
    assert not _writer_for(url)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (HEAD,))
        conn.execute("ALTER TABLE run_attempts DROP COLUMN error_message")
    assert not _writer_for(url)
    with pytest.raises(Exception, match="error_message"):
        SqlStore.open_sync(url)  # the schema check's own message


@pytest.mark.parametrize("fails", [False, True])
async def test_sqlalchemy_joins_the_transaction_it_is_first_needed_in(
    tmp_path: Path, fails: bool
) -> None:
    """The SQLAlchemy connection made over the writer's own, in the middle of a transaction
    (a resume's first statement built as it goes), keeps what the transaction wrote before it
    and commits or rolls back with it."""
    from sqlalchemy import text

    url = _fresh(tmp_path, "f.db")
    with sqlite3.connect(tmp_path / "f.db") as conn:
        conn.execute("CREATE TABLE probe (x INTEGER)")
    store = _lite_store(url)

    def op(tx: Any) -> None:
        tx.driver_sql("INSERT INTO probe VALUES (1)")
        tx.execute(text("INSERT INTO probe VALUES (2)"))
        if fails:
            tx.driver_sql("INSERT INTO nowhere VALUES (3)")

    try:
        if fails:
            with pytest.raises(PersistenceError, match="nowhere"):
                await store._write(op)
        else:
            await store._write(op)
        await store._write(lambda tx: tx.driver_sql("INSERT INTO probe VALUES (4)"))
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "f.db") as conn:
        found = [x for (x,) in conn.execute("SELECT x FROM probe ORDER BY x")]
    assert found == ([4] if fails else [1, 2, 4])
