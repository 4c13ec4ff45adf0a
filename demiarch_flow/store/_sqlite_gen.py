"""Writes :mod:`._sqlite_sql`: the store's fixed statements as SQLAlchemy compiles them for
SQLite, the head schema's tables and columns, and the DDL of a new SQLite database at head (as
Alembic's migrations leave it), so that a run on SQLite needs neither SQLAlchemy nor Alembic —
not even the first run on a new file.

Run ``python -m demiarch_flow.store._sqlite_gen`` after changing a statement of
:mod:`._statements`, a table of :mod:`.tables` or a migration; ``tests/store/test_sqlite_sql.py``
fails, naming that command, whenever the committed module differs from what this writes.
"""

from __future__ import annotations

import functools
import pprint
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import Dialect, Float, create_engine

from ._fast import describe
from ._statements import FIXED
from .tables import USD, UTCDateTime

TARGET = Path(__file__).with_name("_sqlite_sql.py")
COMMAND = "python -m demiarch_flow.store._sqlite_gen"


@functools.cache
def sqlite_dialect() -> Dialect:
    """The dialect of a SQLite engine as the store creates one (initialised by a connection,
    as the engine's is before its first statement)."""
    engine = create_engine("sqlite://")
    with engine.connect():
        pass
    return engine.dialect


def _kind(type_: Any, dialect: Dialect, *, result: bool) -> str | None:
    """The name of the processor :mod:`._fast` applies to a value of ``type_`` on SQLite."""
    if isinstance(type_, UTCDateTime):
        return "utc"
    if isinstance(type_, USD) and not result:
        return "usd"
    if type(type_) is Float and not result:
        return "float"
    impl = type_.dialect_impl(dialect)
    processor = impl.result_processor(dialect, None) if result else impl.bind_processor(dialect)
    if processor is not None:
        raise ValueError(f"no processor of ours for {type_!r} on SQLite: add one to _fast")
    return None


def entries() -> dict[str, tuple[str, tuple[Any, ...], tuple[str | None, ...]]]:
    """Every fixed statement's SQLite SQL, slots and result processors (by name)."""
    dialect = sqlite_dialect()
    out = {}
    for name, spec in sorted(FIXED.items()):
        statement, columns = spec("sqlite")
        sql, names, binds, types = describe(statement, dialect, columns)
        assert names is None, "SQLite's parameter style is positional"
        slots = []
        for bind_name, bind in binds:
            kind = _kind(bind.type, dialect, result=False)
            if bind.required:
                slots.append((bind_name, False, None, kind))
            else:
                value = bind.effective_value
                process = bind.type.dialect_impl(dialect).bind_processor(dialect)
                slots.append((bind_name, True, process(value) if process else value, None))
        out[name] = (sql, tuple(slots), tuple(_kind(t, dialect, result=True) for t in types))
    return out


def layout() -> dict[str, tuple[str, ...]]:
    """Every table of the head schema and its columns (what the schema check requires)."""
    from .schema import _head_layout

    return _head_layout()


def canonical(sql: str) -> str:
    """``sql`` with a ``CREATE TABLE``'s constraints in order of their text (each on its own
    line, after the columns, as Alembic renders them). Alembic's batch mode, which recreates a
    table on SQLite to change a constraint, writes that table's constraints in an order that
    changes from one process to the next; SQLite gives it no meaning."""
    start, end = sql.find("(\n"), sql.rfind("\n)")
    if not sql.startswith("CREATE TABLE ") or start < 0 or end < start:
        return sql
    items = sql[start + 2 : end].split(", \n")
    columns = [i for i in items if not i.startswith("\tCONSTRAINT ")]
    constraints = sorted(i for i in items if i.startswith("\tCONSTRAINT "))
    if items[: len(columns)] != columns:  # a constraint among the columns: not Alembic's form
        return sql
    return sql[: start + 2] + ", \n".join(columns + constraints) + sql[end:]


def fresh() -> tuple[str, ...]:
    """The ``CREATE`` statements of a new SQLite database at head: Alembic migrates an empty
    file to head, and its ``sqlite_master`` is read back (SQLite's own objects and the indexes
    a constraint makes are left to SQLite), tables first, each kind by name, and each table's
    constraints in :func:`canonical` order — the order in which Alembic's batch mode recreates
    indexes and writes constraints changes from one process to the next, and SQLite checks a
    foreign key's table when a row is written, not when the table is created. Executed on an
    empty file they make the same ``sqlite_master`` (up to that order of constraints, which
    Alembic does not keep either), as ``tests/store/test_sqlite_sql.py`` checks."""
    from .schema import prepare
    from .sql import open_engine

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fresh.db"
        engine = open_engine(f"sqlite:///{path}")
        try:
            prepare(engine)
        finally:
            engine.dispose()
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"
                " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
                " ORDER BY type <> 'table', type, name"
            ).fetchall()
        finally:
            conn.close()
    return tuple(canonical(sql) for (sql,) in rows)


def render() -> str:
    """The text of :mod:`._sqlite_sql`."""
    from .schema import HEAD

    return (
        f'"""Generated by ``{COMMAND}``: do not edit.\n\n'
        "The store's fixed statements as SQLAlchemy compiles them for SQLite (name → SQL,\n"
        "parameters as (name, constant?, constant's value, bind processor of ``_fast``), result\n"
        "processors), the tables and columns of the head schema, and the DDL of a new\n"
        "database at head (``FRESH``, in ``sqlite_master``'s order).\n"
        '"""\n\n'
        "from typing import Any\n\n"
        f"HEAD = {HEAD!r}\n\n"
        f"LAYOUT: dict[str, tuple[str, ...]] = {pprint.pformat(layout(), width=96)}\n\n"
        "STATEMENTS: dict[str, tuple[str, tuple[Any, ...], tuple[str | None, ...]]] = "
        f"{pprint.pformat(entries(), width=96)}\n\n"
        f"FRESH: tuple[str, ...] = {pprint.pformat(fresh(), width=96)}\n"
    )


def main() -> None:
    TARGET.write_text(render())
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
