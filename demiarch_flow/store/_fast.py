"""The store's fixed statements, run on the DB-API cursor of the caller's transaction.

``Connection.execute`` redoes, on every call, work whose answer never changes for a fixed
statement: the cache lookup, an execution context, the parameter dict, the result object
(~36 µs a row; the cursor alone takes ~3). A :class:`Fixed` statement knows its SQL (its
parameter style and casts), the order of its parameters, the bind processor of each (the UTC
timestamps and the USD amounts of :mod:`.tables` included) and the values of its constant
binds, and then only fills the parameters and calls the cursor. So what is written is what
SQLAlchemy writes, in the same transaction.

Where that knowledge comes from depends on the transaction it runs in (its executor):

- :class:`SaTx`, a SQLAlchemy ``Connection`` (PostgreSQL, or any caller holding one): asked of
  SQLAlchemy once per dialect. A driver's error is mapped as ``Connection.execute`` maps it: the
  same :class:`sqlalchemy.exc.DBAPIError` subclass, with the connection invalidated when the
  driver says it is gone.
- :class:`LiteTx`, the store's own ``sqlite3`` connection: read from :mod:`._sqlite_sql`, which
  :mod:`._sqlite_gen` wrote from SQLAlchemy's compilation of the same statements (a test
  regenerates it and fails on any difference), with this module's bind processors (tested equal
  to SQLAlchemy's). A run on SQLite thus never imports SQLAlchemy. A driver error is the
  driver's own (``sqlite3.Error``), which the store maps as it maps SQLAlchemy's.

A statement SQLAlchemy would complete at run time is refused when it is compiled: defaults
it would compute, ``RETURNING``, expanding or literal binds. Callers pass every column.
"""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from ..pricing import NANO
from ._lite import _when

if TYPE_CHECKING:
    from sqlalchemy import Connection, Dialect, Table
    from sqlalchemy.exc import StatementError
    from sqlalchemy.sql import ClauseElement

T = TypeVar("T")
_Processor = Callable[[Any], Any] | None
Slot = tuple[str, bool, Any, _Processor]
"""A parameter: (name, constant?, the constant's processed value, its bind processor)."""


def sqlite_utc(value: datetime | None) -> str | None:
    """An aware time as the store binds it on SQLite: UTC, naive, SQLite's ``DATETIME`` text
    (``UTCDateTime.process_bind_param`` and the dialect's processor in one call)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetimes are not stored: pass a timezone-aware UTC time")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def sqlite_usd(value: Decimal | None) -> str | None:
    """An amount as the store binds it on SQLite: exact to the nano-dollar, as text."""
    return None if value is None else format(Decimal(value).quantize(NANO), "f")


def sqlite_float(value: Any) -> float | None:
    """A ``Float`` column's value, as SQLAlchemy binds it (``to_float``)."""
    return None if value is None else float(value)


BINDS: dict[str, Callable[[Any], Any]] = {
    "utc": sqlite_utc, "usd": sqlite_usd, "float": sqlite_float,
}  # fmt: skip
"""The bind processors :mod:`._sqlite_sql` names (every other SQLite parameter has none)."""
RESULTS: dict[str, Callable[[Any], Any]] = {"utc": _when}
"""The result processors it names (``UTCDateTime``'s: SQLite's text → aware UTC)."""


class _Compiled:
    """A statement's SQL for one dialect and how to turn named parameters into the driver's."""

    __slots__ = ("names", "results", "slots", "sql")

    def __init__(
        self,
        sql: str,
        names: list[str] | None,
        slots: Sequence[Slot],
        results: Sequence[_Processor],
    ) -> None:
        self.sql = sql
        self.names = names
        """``None`` for a positional parameter style, else the names in order."""
        self.slots = tuple(slots)
        self.results = tuple(results)
        """Each selected column's result processor."""

    @classmethod
    def generated(cls, entry: tuple[str, tuple[Any, ...], tuple[str | None, ...]]) -> _Compiled:
        """From an entry of :mod:`._sqlite_sql`: its SQL, its slots (name, constant?, value,
        processor's name) and its columns' result processors' names."""
        sql, slots, results = entry
        return cls(
            sql,
            None,
            [(n, fixed, value, BINDS[p] if p else None) for n, fixed, value, p in slots],
            [RESULTS[r] if r else None for r in results],
        )

    @classmethod
    def of(cls, statement: ClauseElement, dialect: Dialect, columns: Sequence[str] | None) -> Any:
        """Asked of SQLAlchemy (see :func:`describe`)."""
        sql, names, binds, result_types = describe(statement, dialect, columns)
        slots: list[Slot] = []
        for name, bind in binds:
            fast = getattr(bind.type, "fast_bind_processor", None)  # one call, not two
            process = (fast and fast(dialect)) or bind.type.dialect_impl(dialect).bind_processor(
                dialect
            )
            if bind.required:
                slots.append((name, False, None, process))
            else:  # a constant of the statement (``status = 'running'``): processed once
                value = bind.effective_value
                slots.append((name, True, process(value) if process else value, None))
        results = [t.dialect_impl(dialect).result_processor(dialect, None) for t in result_types]
        return cls(sql, names, slots, results)

    def args(self, params: Mapping[str, Any]) -> Any:
        """The driver's parameters: a tuple (positional styles) or a dict (named ones)."""
        values = [
            fixed_value if fixed else (process(params[name]) if process else params[name])
            for name, fixed, fixed_value, process in self.slots
        ]
        if self.names is None:
            return tuple(values)
        return dict(zip(self.names, values, strict=True))

    def row(self, row: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(p(v) if p else v for p, v in zip(self.results, row, strict=False))


def describe(
    statement: ClauseElement, dialect: Dialect, columns: Sequence[str] | None
) -> tuple[str, list[str] | None, list[tuple[str, Any]], list[Any]]:
    """SQLAlchemy's compilation of a fixed statement: its SQL, its parameters' names (``None``
    when positional), each parameter's name and bind in the driver's order, and the types of
    the columns it selects.

    Raises:
        ValueError: SQLAlchemy would complete it at run time (see the module doc).
    """
    from sqlalchemy.sql.compiler import SQLCompiler

    compiled = statement.compile(dialect=dialect, column_keys=columns)
    assert isinstance(compiled, SQLCompiler)
    runtime = (
        compiled.insert_prefetch or compiled.update_prefetch
        or getattr(compiled, "postfetch", None) or compiled.effective_returning
        or compiled.literal_execute_params or compiled.escaped_bind_names
    )  # fmt: skip
    if runtime:
        raise ValueError(f"not a fixed statement (SQLAlchemy completes it at run time): {compiled}")
    binds = {name: bind for bind, name in compiled.bind_names.items()}
    if any(b.expanding for b in binds.values()):
        raise ValueError(f"not a fixed statement (expanding bind): {compiled}")
    names = list(compiled.positiontup or ()) if compiled.positional else list(binds)
    selected = getattr(statement, "selected_columns", None)
    types = [c.type for c in selected] if selected is not None else []
    return (
        compiled.string,
        None if compiled.positional else names,
        [(n, binds[n]) for n in names],
        types,
    )


class Fixed:
    """A statement whose SQL never changes, run on the cursor of the caller's transaction.

    Args:
        statement: a name of :data:`~._statements.FIXED` (the store's own), or a Core
            ``insert``/``update``/``select`` with bind parameters.
        columns: for an ``insert`` given as a statement: every column it writes.
    """

    __slots__ = ("_by_dialect", "_columns", "_last", "_lite", "name", "statement")

    def __init__(self, statement: str | ClauseElement, columns: Sequence[str] | None = None):
        self.name = statement if isinstance(statement, str) else None
        self.statement = None if isinstance(statement, str) else statement
        self._columns = tuple(columns) if columns is not None else None
        self._by_dialect: weakref.WeakKeyDictionary[Dialect, _Compiled] = (
            weakref.WeakKeyDictionary()
        )
        self._last: tuple[Dialect | None, _Compiled | None] = (None, None)
        """The dialect asked last and its compiled form: a process has one (a weak dict's
        lookup costs more than the statement's parameters)."""
        self._lite: _Compiled | None = None
        """Its form on the store's own SQLite connection (:class:`LiteTx`)."""

    def spec(self, dialect: str) -> tuple[ClauseElement, Sequence[str] | None]:
        """The Core statement for ``dialect`` and the columns it writes (imports SQLAlchemy)."""
        if self.name is None:
            assert self.statement is not None
            return self.statement, self._columns
        from ._statements import FIXED

        return FIXED[self.name](dialect)

    def compiled(self, dialect: Dialect) -> _Compiled:
        last, found = self._last
        if last is dialect and found is not None:
            return found
        found = self._by_dialect.get(dialect)
        if found is None:
            found = self._by_dialect[dialect] = _Compiled.of(*self._for(dialect))
        self._last = (dialect, found)
        return found

    def _for(self, dialect: Dialect) -> tuple[ClauseElement, Dialect, Sequence[str] | None]:
        statement, columns = self.spec(dialect.name)
        return statement, dialect, columns

    def lite(self) -> _Compiled:
        """Its form on SQLite without SQLAlchemy: generated ahead of time for the store's own
        statements; another (a test's) is compiled by SQLAlchemy's SQLite dialect."""
        found = self._lite
        if found is None:
            from ._sqlite_sql import STATEMENTS

            entry = STATEMENTS.get(self.name) if self.name is not None else None
            if entry is not None:
                found = _Compiled.generated(entry)
            else:
                from ._sqlite_gen import sqlite_dialect

                found = self.compiled(sqlite_dialect())
            self._lite = found
        return found

    def _run(
        self, tx: Tx | Connection, params: Mapping[str, Any], fetch: Callable[[Any], T]
    ) -> tuple[_Compiled, T]:
        """Run it once on a new cursor; its compiled form and ``fetch(cursor)``."""
        tx = as_tx(tx)
        c = tx.compiled(self)
        args = c.args(params)
        cursor = tx.cursor()
        try:
            cursor.execute(c.sql, args)
            return c, fetch(cursor)
        except tx.errors as exc:
            raise tx.mapped(exc, c.sql, args) from exc
        finally:
            cursor.close()

    def execute(self, tx: Tx | Connection, params: Mapping[str, Any]) -> int:
        """Run it once; returns the driver's row count."""
        return self._run(tx, params, _rowcount)[1]

    def executemany(self, tx: Tx | Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run it once per row, in one driver call."""
        tx = as_tx(tx)
        if len(rows) == 1:
            self.execute(tx, rows[0])
            return
        c = tx.compiled(self)
        args = [c.args(r) for r in rows]
        cursor = tx.cursor()
        try:
            cursor.executemany(c.sql, args)
        except tx.errors as exc:
            raise tx.mapped(exc, c.sql, args) from exc
        finally:
            cursor.close()

    def rows(self, tx: Tx | Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every row, each column through its type's result processor."""
        c, found = self._run(tx, params, _fetchall)
        return [c.row(r) for r in found]

    def scalar(self, tx: Tx | Connection, params: Mapping[str, Any]) -> Any:
        """The first column of the first row (``None`` when there is none)."""
        c, row = self._run(tx, params, _fetchone)
        if row is None:
            return None
        process = c.results[0] if c.results else None
        return process(row[0]) if process else row[0]


def _rowcount(cursor: Any) -> int:
    return int(cursor.rowcount)


def _fetchall(cursor: Any) -> list[Any]:
    return list(cursor.fetchall())


def _fetchone(cursor: Any) -> Any:
    return cursor.fetchone()


class Tx:
    """What the store's statements run on: one transaction, on one connection (an executor).

    The store's operations take one and run :class:`Fixed` statements on it; the few that
    build a statement as they go (resumes, recovery) run it on :attr:`sa`."""

    __slots__ = ()
    errors: type[Exception] | tuple[type[Exception], ...]
    """The driver's errors (what :meth:`mapped` maps)."""

    @property
    def dialect_name(self) -> str:
        raise NotImplementedError

    @property
    def sa(self) -> Connection:
        """A SQLAlchemy connection in this same transaction (imports SQLAlchemy)."""
        raise NotImplementedError

    def execute(self, statement: Any, parameters: Any = None) -> Any:
        """A Core statement, run by SQLAlchemy on :attr:`sa` (as ``Connection.execute``)."""
        return self.sa.execute(statement, parameters)

    def compiled(self, fixed: Fixed) -> _Compiled:
        raise NotImplementedError

    def cursor(self) -> Any:
        """A new cursor of the driver's connection (the caller closes it)."""
        raise NotImplementedError

    def mapped(self, exc: Exception, sql: str, args: Any) -> Exception:
        raise NotImplementedError

    def driver_sql(self, sql: str) -> None:
        """Run a parameterless statement (``BEGIN IMMEDIATE``) on the connection's cursor."""
        cursor = self.cursor()
        try:
            cursor.execute(sql)
        except self.errors as exc:
            raise self.mapped(exc, sql, None) from exc
        finally:
            cursor.close()


class SaTx(Tx):
    """A SQLAlchemy connection's transaction (statements compiled by SQLAlchemy)."""

    __slots__ = ("conn", "errors")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.errors = conn.dialect.loaded_dbapi.Error

    @property
    def dialect_name(self) -> str:
        return self.conn.dialect.name

    @property
    def sa(self) -> Connection:
        return self.conn

    def compiled(self, fixed: Fixed) -> _Compiled:
        return fixed.compiled(self.conn.dialect)

    def cursor(self) -> Any:
        return self.conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]

    def mapped(self, exc: Exception, sql: str, args: Any) -> StatementError:
        """What ``Connection.execute`` raises for the driver's ``exc``; a connection the driver
        says is gone is invalidated first, so the pool never hands it out again."""
        from sqlalchemy.exc import DBAPIError

        conn = self.conn
        dialect = conn.dialect
        gone = dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)  # type: ignore[arg-type]
        if gone:
            conn.invalidate(exc)
        mapped: StatementError = DBAPIError.instance(
            sql, args, exc, dialect.loaded_dbapi.Error,
            hide_parameters=conn.engine.hide_parameters,
            connection_invalidated=bool(gone), dialect=dialect,
        )  # fmt: skip
        return mapped


class LiteTx(Tx):
    """A transaction on the store's own ``sqlite3`` connection (statements generated ahead of
    time; the driver's errors as they are).

    Args:
        conn: the connection, in the transaction.
        sa: makes (once) a SQLAlchemy connection over ``conn``, for :attr:`sa`.
    """

    __slots__ = ("_sa", "conn")
    errors = sqlite3.Error

    def __init__(self, conn: sqlite3.Connection, sa: Callable[[], Connection]) -> None:
        self.conn = conn
        self._sa = sa

    @property
    def dialect_name(self) -> str:
        return "sqlite"

    @property
    def sa(self) -> Connection:
        return self._sa()

    def compiled(self, fixed: Fixed) -> _Compiled:
        found = fixed._lite
        return found if found is not None else fixed.lite()

    def cursor(self) -> sqlite3.Cursor:
        return self.conn.cursor()

    def mapped(self, exc: Exception, sql: str, args: Any) -> Exception:
        raise exc  # as it is: the store maps ``sqlite3.Error`` itself


def as_tx(conn: Tx | Connection) -> Tx:
    """The executor of ``conn``: itself, or a SQLAlchemy connection's."""
    return conn if isinstance(conn, Tx) else SaTx(conn)


def sa_of(conn: Tx | Connection) -> Connection:
    """A SQLAlchemy connection in ``conn``'s transaction."""
    return conn.sa if isinstance(conn, Tx) else conn


def driver_sql(conn: Tx | Connection, sql: str) -> None:
    """Run a parameterless statement (``BEGIN IMMEDIATE``) on the connection's cursor."""
    as_tx(conn).driver_sql(sql)


def inserting(table: Table) -> Fixed:
    """``INSERT`` of one whole row of ``table``: every column's key in each row given."""
    from sqlalchemy import insert

    return Fixed(insert(table), [c.key for c in table.c])
