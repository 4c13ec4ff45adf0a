"""Stores for the contract suite: SQLite file, PostgreSQL (skipped where absent), memory."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from demiarch_flow.store import MemoryStore
from demiarch_flow.store.sql import SqlStore, open_engine

#: The PostgreSQL database this test run owns: created (from the server's ``test`` database
#: connection) on first use and dropped when the run ends, so two runs at once never share tables.
#: ``DEMIARCH_FLOW_TEST_PG_DB`` names an existing database to use instead (then kept).
_GIVEN_DB = os.environ.get("DEMIARCH_FLOW_TEST_PG_DB")
PG_DB = _GIVEN_DB or f"dflow_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
PG_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{PG_DB}"
_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
_available: bool | None = None


def postgres_available() -> bool:
    """Whether the server answers; the run's own database is created the first time it does."""
    global _available
    if _available is None:
        _available = _create_own_database()
    return _available


def _create_own_database() -> bool:
    try:
        import psycopg

        with psycopg.connect(_ADMIN, connect_timeout=2, autocommit=True) as conn:
            if _GIVEN_DB is None:
                conn.execute(f'CREATE DATABASE "{PG_DB}"')
        return True
    except Exception:
        return False


def own_pg_database(prefix: str) -> Iterator[str]:
    """A PostgreSQL database of one test's own (``prefix`` + a random suffix), its URL yielded
    and the database dropped afterwards; the test is skipped where the server is absent. For a
    fixture: ``yield from own_pg_database("dflow_queue")``."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drop_own_database() -> None:
    """Drop the database this run created (nothing when it made none or was given one)."""
    if _GIVEN_DB is not None or not _available:
        return
    import psycopg

    with psycopg.connect(_ADMIN, connect_timeout=2, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')


def drop_everything(url: str = PG_URL) -> None:
    """Empty the test database: every table, ``alembic_version`` included, whatever revision
    (or foreign table) an earlier run left behind; on PostgreSQL the whole ``public`` schema,
    so the queue's functions and types go too."""
    from sqlalchemy import MetaData

    engine = open_engine(url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # the queue's schema (procrastinate) has functions and types beside its tables
                conn.exec_driver_sql("DROP SCHEMA public CASCADE")
                conn.exec_driver_sql("CREATE SCHEMA public")
                return
            found = MetaData()
            found.reflect(conn)
            found.drop_all(conn)
    finally:
        engine.dispose()


def fresh_postgres() -> SqlStore:
    """The test database emptied, then opened (so created at head, as a first start does)."""
    if not postgres_available():
        pytest.skip(f"PostgreSQL is not reachable on 127.0.0.1:5432 (database {PG_DB})")
    drop_everything()
    return SqlStore.open_sync(PG_URL)


def _open(kind: str, tmp_path: Path) -> Iterator[SqlStore]:
    url = f"sqlite:///{tmp_path / 'flow.db'}"
    if kind == "sqlite-lite":  # created, then reopened at head: written without SQLAlchemy
        SqlStore.open_sync(url).close()
        store = SqlStore.open_sync(url)
        assert store._engine is None
    else:
        store = fresh_postgres() if kind == "postgres" else SqlStore.open_sync(url)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture(
    params=["sqlite", "sqlite-lite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    """A fresh SQL store on each engine."""
    yield from _open(request.param, tmp_path)


@pytest.fixture(
    params=["sqlite", "sqlite-lite", pytest.param("postgres", marks=pytest.mark.postgres), "memory"]
)
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore | MemoryStore]:
    """Every implementation of the Store interface."""
    if request.param == "memory":
        yield MemoryStore()
    else:
        yield from _open(request.param, tmp_path)
