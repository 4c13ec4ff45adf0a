"""Stores for the contract suite: SQLite file, PostgreSQL (skipped where absent), memory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from demiarch_flow.store import MemoryStore
from demiarch_flow.store.sql import SqlStore

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


def fresh_postgres() -> SqlStore:
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (database test)")
    from demiarch_flow.store.tables import Base

    store = SqlStore.open_sync(PG_URL)
    Base.metadata.drop_all(store.engine)
    Base.metadata.create_all(store.engine)
    return store


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
