"""Stores for the contract suite: SQLite file, PostgreSQL (skipped where absent), memory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from demiarch_flow.store import MemoryStore
from demiarch_flow.store.sql import SqlStore, open_engine

#: The PostgreSQL database the tests use; ``DEMIARCH_FLOW_TEST_PG_DB`` names another database on
#: the same server, so that two checkouts can run their suites at once without sharing tables.
PG_DB = os.environ.get("DEMIARCH_FLOW_TEST_PG_DB", "test")
PG_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{PG_DB}"


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port=5432 user=postgres dbname={PG_DB}", connect_timeout=2
        ):
            return True
    except Exception:
        return False


def drop_everything(url: str = PG_URL) -> None:
    """Empty the test database: every table, ``alembic_version`` included, whatever revision
    (or foreign table) an earlier run left behind."""
    from sqlalchemy import MetaData

    engine = open_engine(url)
    try:
        with engine.begin() as conn:
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
    store = fresh_postgres() if kind == "postgres" else SqlStore.open_sync(url)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    """A fresh SQL store on each engine."""
    yield from _open(request.param, tmp_path)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "memory"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore | MemoryStore]:
    """Every implementation of the Store interface."""
    if request.param == "memory":
        yield MemoryStore()
    else:
        yield from _open(request.param, tmp_path)
