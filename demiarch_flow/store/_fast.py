"""The store's fixed statements, compiled once by SQLAlchemy and run on the DB-API cursor.

``Connection.execute`` redoes, on every call, work whose answer never changes for a fixed
statement: the cache lookup, an execution context, the parameter dict, the result object
(~36 µs a row; the cursor alone takes ~3). A :class:`Fixed` statement asks SQLAlchemy once per
dialect for the SQL (its parameter style and casts), the order of its parameters, the bind
processor of each (the UTC timestamps and the USD amounts of :mod:`.tables` included) and the
values of its constant binds, and then only fills the parameters and calls the cursor of the
connection the caller's transaction already holds. So what is written is what SQLAlchemy
writes, in the same transaction.

A statement SQLAlchemy would complete at run time is refused when it is compiled: defaults
it would compute, ``RETURNING``, expanding or literal binds. Callers pass every column.

A driver's error is mapped as ``Connection.execute`` maps it: the same
:class:`sqlalchemy.exc.DBAPIError` subclass, with the connection invalidated when the driver
says it is gone, so the store's callers map it to their own errors unchanged.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Dialect, Table, insert
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

_Processor = Callable[[Any], Any] | None


class _Compiled:
    """A statement's SQL for one dialect and how to turn named parameters into the driver's."""

    __slots__ = ("names", "result", "slots", "sql")

    def __init__(self, statement: ClauseElement, dialect: Dialect, columns: Sequence[str] | None):
        compiled = statement.compile(dialect=dialect, column_keys=columns)
        assert isinstance(compiled, SQLCompiler)
        runtime = (
            compiled.insert_prefetch or compiled.update_prefetch
            or getattr(compiled, "postfetch", None) or compiled.effective_returning
            or compiled.literal_execute_params or compiled.escaped_bind_names
        )  # fmt: skip
        if runtime:
            raise ValueError(
                f"not a fixed statement (SQLAlchemy completes it at run time): {compiled}"
            )
        binds = {name: bind for bind, name in compiled.bind_names.items()}
        if any(b.expanding for b in binds.values()):
            raise ValueError(f"not a fixed statement (expanding bind): {compiled}")
        names = list(compiled.positiontup or ()) if compiled.positional else list(binds)
        slots: list[tuple[str, bool, Any, _Processor]] = []
        for name in names:
            bind = binds[name]
            fast = getattr(bind.type, "fast_bind_processor", None)  # one call, not two
            process = (fast and fast(dialect)) or bind.type.dialect_impl(dialect).bind_processor(
                dialect
            )
            if bind.required:
                slots.append((name, False, None, process))
            else:  # a constant of the statement (``status = 'running'``): processed once
                value = bind.effective_value
                slots.append((name, True, process(value) if process else value, None))
        self.sql = compiled.string
        self.names = None if compiled.positional else names
        self.slots = tuple(slots)
        columns_out = getattr(statement, "selected_columns", None)
        self.result: _Processor = None
        if columns_out is not None and len(columns_out):
            column_type = next(iter(columns_out)).type
            self.result = column_type.dialect_impl(dialect).result_processor(dialect, None)

    def args(self, params: Mapping[str, Any]) -> Any:
        """The driver's parameters: a tuple (positional styles) or a dict (named ones)."""
        values = [
            fixed_value if fixed else (process(params[name]) if process else params[name])
            for name, fixed, fixed_value, process in self.slots
        ]
        if self.names is None:
            return tuple(values)
        return dict(zip(self.names, values, strict=True))


class Fixed:
    """A statement whose SQL never changes, run on the cursor of the caller's connection.

    Args:
        statement: a Core ``insert``/``update``/``select`` with bind parameters.
        columns: for an ``insert``: every column it writes (the keys each row must have).
    """

    __slots__ = ("_by_dialect", "_columns", "_last", "statement")

    def __init__(self, statement: ClauseElement, columns: Sequence[str] | None = None) -> None:
        self.statement = statement
        self._columns = tuple(columns) if columns is not None else None
        self._by_dialect: weakref.WeakKeyDictionary[Dialect, _Compiled] = (
            weakref.WeakKeyDictionary()
        )
        self._last: tuple[Dialect | None, _Compiled | None] = (None, None)
        """The dialect asked last and its compiled form: a process has one (a weak dict's
        lookup costs more than the statement's parameters)."""

    def compiled(self, dialect: Dialect) -> _Compiled:
        last, found = self._last
        if last is dialect and found is not None:
            return found
        found = self._by_dialect.get(dialect)
        if found is None:
            found = self._by_dialect[dialect] = _Compiled(self.statement, dialect, self._columns)
        self._last = (dialect, found)
        return found

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Run it once; returns the driver's row count."""
        c = self.compiled(conn.dialect)
        args = c.args(params)
        cursor = _cursor(conn)
        try:
            cursor.execute(c.sql, args)
            return int(cursor.rowcount)
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _mapped(conn, exc, c.sql, args) from exc
        finally:
            cursor.close()

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run it once per row, in one driver call."""
        if len(rows) == 1:
            self.execute(conn, rows[0])
            return
        c = self.compiled(conn.dialect)
        args = [c.args(r) for r in rows]
        cursor = _cursor(conn)
        try:
            cursor.executemany(c.sql, args)
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _mapped(conn, exc, c.sql, args) from exc
        finally:
            cursor.close()

    def scalar(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """The first column of the first row (``None`` when there is none)."""
        c = self.compiled(conn.dialect)
        args = c.args(params)
        cursor = _cursor(conn)
        try:
            cursor.execute(c.sql, args)
            row = cursor.fetchone()
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _mapped(conn, exc, c.sql, args) from exc
        finally:
            cursor.close()
        if row is None:
            return None
        return c.result(row[0]) if c.result else row[0]


def driver_sql(conn: Connection, sql: str) -> None:
    """Run a parameterless statement (``BEGIN IMMEDIATE``) on the connection's cursor."""
    cursor = _cursor(conn)
    try:
        cursor.execute(sql)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _mapped(conn, exc, sql, None) from exc
    finally:
        cursor.close()


def _cursor(conn: Connection) -> Any:
    """A new cursor of the DB-API connection the caller's transaction holds (the callers
    close it, and map a driver error in its use as :func:`_mapped` says: inline, a context
    manager costs more than a row's parameters)."""
    return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]


def _mapped(conn: Connection, exc: Any, sql: str, args: Any) -> StatementError:
    """What ``Connection.execute`` raises for the driver's ``exc``; a connection the driver
    says is gone is invalidated first, so the pool never hands it out again."""
    dialect = conn.dialect
    gone = dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
    if gone:
        conn.invalidate(exc)
    mapped: StatementError = DBAPIError.instance(
        sql, args, exc, dialect.loaded_dbapi.Error, hide_parameters=conn.engine.hide_parameters,
        connection_invalidated=bool(gone), dialect=dialect,
    )  # fmt: skip
    return mapped


def inserting(table: Table) -> Fixed:
    """``INSERT`` of one whole row of ``table``: every column's key in each row given."""
    return Fixed(insert(table), [c.key for c in table.c])
