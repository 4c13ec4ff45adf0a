"""The schema's lifecycle: Alembic revisions vs the models, adoption, upgrades and refusals."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData, inspect, text

from demiarch_flow.errors import SchemaMismatch, StoreUnavailable
from demiarch_flow.runner import RunRequest, run_workflow
from demiarch_flow.store import schema
from demiarch_flow.store.schema import (
    BASELINE,
    FIRST_RELEASE,
    HEAD,
    REVISIONS,
    alembic_config,
    read_state,
)
from demiarch_flow.store.sql import SqlStore, open_engine
from demiarch_flow.store.tables import Base
from demiarch_flow.testing import FakeOpenRouter, make_env

from .conftest import PG_URL, drop_everything, postgres_available
from .test_contract import WF

DATA = Path(__file__).parent / "data"


@pytest.fixture
def url(db_url: str) -> str:
    """An empty database on each engine (the shared ``db_url``)."""
    return db_url


def engine_of(url: str) -> Engine:
    return open_engine(url)


def migrate(url: str, target: str, *, down: bool = False) -> None:
    """Run Alembic itself (as a maintainer would) to ``target``."""
    engine = open_engine(url)
    try:
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(config, target)
    finally:
        engine.dispose()


def first_release(url: str) -> None:
    """Create the tables exactly as the first release did (its own DDL, no alembic_version)."""
    engine = open_engine(url)
    name = "sqlite" if engine.dialect.name == "sqlite" else "postgresql"
    lines = (DATA / f"first_release_{name}.sql").read_text("utf-8").splitlines()
    ddl = "\n".join(line for line in lines if not line.startswith("--"))
    with engine.begin() as conn:
        for statement in filter(None, (s.strip() for s in ddl.split(";"))):
            conn.exec_driver_sql(statement)
    engine.dispose()


def layout(url: str) -> dict[str, Any]:
    """Every table's columns, keys, indexes and checks, by name, as the database reports them."""
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            insp = inspect(conn)
            out: dict[str, Any] = {}
            for name in sorted(set(insp.get_table_names()) - {"alembic_version"}):
                pk = insp.get_pk_constraint(name)
                out[name] = {
                    "columns": [
                        (c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(name)
                    ],
                    "pk": (pk["name"], tuple(pk["constrained_columns"])),
                    "fks": sorted(
                        (f["name"], tuple(f["constrained_columns"]), f["referred_table"])
                        for f in insp.get_foreign_keys(name)
                    ),
                    "uniques": sorted(
                        (u["name"], tuple(u["column_names"]))
                        for u in insp.get_unique_constraints(name)
                    ),
                    "indexes": sorted(
                        (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                        for i in insp.get_indexes(name)
                    ),
                    "checks": sorted(
                        (c["name"], " ".join(c["sqltext"].split()))
                        for c in insp.get_check_constraints(name)
                    ),
                }
            return out
    finally:
        engine.dispose()


def wipe(url: str) -> None:
    engine = open_engine(url)
    with engine.begin() as conn:
        found = MetaData()
        found.reflect(conn)
        found.drop_all(conn)
    engine.dispose()


def revision_of(url: str) -> str | None:
    engine = open_engine(url)
    with engine.connect() as conn:
        state = read_state(conn)
    engine.dispose()
    return state.revision


async def one_run(url: str) -> dict[str, int]:
    store = SqlStore.open_sync(url)
    try:
        env = make_env(FakeOpenRouter(), store=store)
        out = await run_workflow(WF, RunRequest("kept across migrations"), env)
        assert out.status == "succeeded"
        return await store.count_rows()
    finally:
        store.close()


async def count_rows(url: str, tables: Iterable[str] = FIRST_RELEASE) -> dict[str, int]:
    """Rows per table (by default the first release's, which every revision has)."""
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            return {
                name: conn.execute(text(f"SELECT count(*) FROM {name}")).scalar_one()
                for name in tables
            }
    finally:
        engine.dispose()


# ---------------------------------------------------------------------- revisions vs models


def test_revisions_constant_lists_the_migrations() -> None:
    """schema.REVISIONS (read on every open without importing Alembic) is the script chain."""
    scripts = ScriptDirectory.from_config(alembic_config())
    chain = [s.revision for s in reversed(list(scripts.walk_revisions()))]
    assert tuple(chain) == REVISIONS
    assert scripts.get_current_head() == HEAD


def test_baseline_builds_exactly_the_first_release(url: str) -> None:
    """Revision 0001 builds the first release's tables, names of keys, indexes and checks
    included (compared with the DDL the first release ran)."""
    first_release(url)
    expected = layout(url)
    wipe(url)
    migrate(url, BASELINE)
    assert layout(url) == expected
    assert set(expected) == set(FIRST_RELEASE)


def test_models_and_migrations_never_drift(url: str) -> None:
    """A database created by the migrations is what the models describe: Alembic's
    comparison (as `alembic check`) finds nothing, and every name matches create_all's."""
    engine = open_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    from_models = layout(url)
    wipe(url)
    SqlStore.open_sync(url).close()
    assert revision_of(url) == HEAD
    assert layout(url) == from_models
    engine = open_engine(url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()


async def test_upgrade_downgrade_upgrade_keeps_rows(url: str) -> None:
    """head → 0001 → head with rows in every table: the rows survive both ways and the end
    state is the models' schema; base → head → base → head works on an empty database."""
    await one_run(url)
    counts = await count_rows(url)
    assert all(counts.values())
    # budget_reservations and rate_buckets hold live state of runs with limits only
    live = {"budget_reservations", "rate_buckets"}
    tables = {n: t for n, t in Base.metadata.tables.items() if n not in live}
    assert all((await count_rows(url, tables)).values())
    migrate(url, BASELINE, down=True)
    assert revision_of(url) == BASELINE
    assert await count_rows(url) == counts
    migrate(url, "head")
    assert revision_of(url) == HEAD
    assert await count_rows(url) == counts
    engine = open_engine(url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()
    wipe(url)
    migrate(url, "head")
    migrate(url, "base", down=True)
    assert layout(url) == {}
    migrate(url, "head")
    assert revision_of(url) == HEAD


# ---------------------------------------------------------------------- what opening does


async def test_first_release_sqlite_is_adopted_backed_up_and_upgraded(tmp_path: Path) -> None:
    """A first-release file (tables, no alembic_version) with rows: opened, it is copied to
    <file>.pre-0001.bak, stamped and upgraded, and keeps its rows."""
    db = tmp_path / "flow.db"
    url = f"sqlite:///{db}"
    first_release(url)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "INSERT INTO conversations VALUES ('c1', NULL, 'old', '2025-01-01 00:00:00',"
            " '2025-01-01 00:00:00')"
        )
    counts = await one_run(url)
    assert counts["conversations"] == 2
    assert revision_of(url) == HEAD
    backup = tmp_path / "flow.db.pre-0001.bak"
    with sqlite3.connect(backup) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert conn.execute("SELECT title FROM conversations").fetchall() == [("old",)]
    assert "alembic_version" not in names


async def test_behind_sqlite_is_backed_up_and_upgraded(tmp_path: Path) -> None:
    """A SQLite file at 0001 is copied to <file>.pre-0001.bak, then upgraded on open."""
    db = tmp_path / "flow.db"
    url = f"sqlite:///{db}"
    migrate(url, BASELINE)
    await one_run(url)
    assert revision_of(url) == HEAD
    backup = f"sqlite:///{tmp_path / 'flow.db.pre-0001.bak'}"
    assert revision_of(backup) == BASELINE


@pytest.mark.postgres
@pytest.mark.parametrize("start", ["first_release", BASELINE])
def test_behind_postgres_is_not_touched(start: str) -> None:
    """PostgreSQL behind head (or first-release, unversioned) is refused with exit 3 and the
    command to run, and left as it was; `db upgrade` (upgrade=True) then brings it to head."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    drop_everything()
    if start == BASELINE:
        migrate(PG_URL, BASELINE)
    else:
        first_release(PG_URL)
    before = layout(PG_URL)
    with pytest.raises(SchemaMismatch) as caught:
        SqlStore.open_sync(PG_URL)
    assert caught.value.exit_code == 3
    assert str(caught.value).startswith(f"database is at revision {BASELINE}")
    assert f"this release needs {HEAD}: run `demiarch-flow db upgrade --db " in str(caught.value)
    assert layout(PG_URL) == before
    assert revision_of(PG_URL) == (None if start == "first_release" else BASELINE)
    engine = open_engine(PG_URL)
    schema.prepare(engine, upgrade=True)
    engine.dispose()
    assert revision_of(PG_URL) == HEAD
    SqlStore.open_sync(PG_URL).close()
    drop_everything()


def test_ahead_of_head_is_refused(url: str) -> None:
    """A database written by a newer release (unknown revision) is refused, untouched."""
    SqlStore.open_sync(url).close()
    engine = open_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SchemaMismatch, match="revision 9999, which this release does not know"):
        SqlStore.open_sync(url)
    assert revision_of(url) == "9999"


def _version_rows(url: str) -> list[Any]:
    """The rows of alembic_version as stored (read_state would refuse a broken table)."""
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())
    finally:
        engine.dispose()


def _broken_version_table(url: str, statement: str) -> None:
    SqlStore.open_sync(url).close()
    engine = open_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(statement)
    engine.dispose()


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_revision_is_refused_as_what_it_is(url: str, tmp_path: Path, value: str) -> None:
    """A blank alembic_version value: exit 3 saying the row is empty (not an internal
    AssertionError after a backup), the database untouched."""
    _broken_version_table(url, f"UPDATE alembic_version SET version_num = '{value}'")
    with pytest.raises(SchemaMismatch, match="its alembic_version row is empty") as caught:
        SqlStore.open_sync(url)
    assert caught.value.exit_code == 3
    assert f"one of {', '.join(REVISIONS)}" in str(caught.value)
    assert _version_rows(url) == [value]
    assert list(tmp_path.glob("*.bak")) == []


def test_two_revision_rows_are_refused_as_two_rows(url: str) -> None:
    """Two alembic_version rows: exit 3 saying so, not "written by a newer demiarch-flow"."""
    _broken_version_table(url, f"INSERT INTO alembic_version VALUES ('{REVISIONS[-2]}')")
    with pytest.raises(SchemaMismatch) as caught:
        SqlStore.open_sync(url)
    message = str(caught.value)
    assert f"its alembic_version table holds 2 rows ({REVISIONS[-2]}, {HEAD})" in message
    assert "newer" not in message
    assert caught.value.exit_code == 3
    assert _version_rows(url) == [REVISIONS[-2], HEAD]


def test_an_emptied_version_table_beside_our_tables_is_refused(url: str, tmp_path: Path) -> None:
    """Tables of ours and an alembic_version without a row: their revision is unknown, so they
    are refused (exit 3), not adopted as the first release and migrated over."""
    _broken_version_table(url, "DELETE FROM alembic_version")
    with pytest.raises(SchemaMismatch, match="its alembic_version table has no row"):
        SqlStore.open_sync(url)
    assert _version_rows(url) == []
    assert list(tmp_path.glob("*.bak")) == []


@pytest.mark.parametrize(
    ("table", "column"), [("llm_usage", "cached_tokens"), ("run_events", "wait_s")]
)
def test_a_missing_column_is_refused_by_name(url: str, table: str, column: str) -> None:
    """A column dropped by hand: opening fails with exit 3 naming the table and column."""
    SqlStore.open_sync(url).close()
    engine = open_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
    engine.dispose()
    with pytest.raises(SchemaMismatch) as caught:
        SqlStore.open_sync(url)
    assert (caught.value.table, caught.value.column) == (table, column)
    assert f"table {table} has no column {column}" in str(caught.value)
    assert caught.value.exit_code == 3


def test_a_missing_table_of_a_first_release_database_is_refused(tmp_path: Path) -> None:
    """Unversioned tables without one of ours are not adopted (nor backed up)."""
    url = f"sqlite:///{tmp_path / 'flow.db'}"
    first_release(url)
    with sqlite3.connect(tmp_path / "flow.db") as conn:
        conn.execute("DROP TABLE run_events")
    with pytest.raises(SchemaMismatch, match="has no table run_events"):
        SqlStore.open_sync(url)
    assert revision_of(url) is None
    assert not (tmp_path / "flow.db.pre-0001.bak").exists()


def test_read_only_open_never_creates(url: str, tmp_path: Path) -> None:
    """create=False: a missing SQLite file (or an empty database) is exit 3, and nothing is
    created — no file, no folder, no table."""
    missing = tmp_path / "nested" / "none.db"
    with pytest.raises(StoreUnavailable, match=f"no database at {missing}"):
        SqlStore.open_sync(f"sqlite:///{missing}", create=False)
    assert not missing.parent.exists()
    engine = open_engine(url)
    with engine.connect():
        pass  # the empty database exists now (a SQLite file, or the PostgreSQL one)
    engine.dispose()
    with pytest.raises(SchemaMismatch, match="no demiarch-flow tables"):
        SqlStore.open_sync(url, create=False)
    assert layout(url) == {}


def test_upgrade_sql_renders_without_touching(url: str) -> None:
    """`db upgrade --sql` prints DDL for the database's revision and changes nothing; applied
    by hand, that SQL brings the database to head."""
    migrate(url, BASELINE)
    engine = open_engine(url)
    sql = schema.upgrade_sql(engine)
    assert revision_of(url) == BASELINE
    assert "CREATE UNIQUE INDEX ix_llm_usage_run_id ON llm_usage (run_id)" in sql
    assert f"version_num='{HEAD}'" in sql.replace(" ", "")
    if engine.dialect.name == "postgresql":
        assert "ALTER TABLE llm_usage DROP CONSTRAINT uq_llm_usage_generation_id" in sql
        with engine.begin() as conn:
            conn.exec_driver_sql(sql.replace("BEGIN;", "").replace("COMMIT;", ""))
        assert revision_of(url) == HEAD
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    else:
        assert "_alembic_tmp_llm_usage" in sql  # batch mode: the table is rebuilt
    engine.dispose()
