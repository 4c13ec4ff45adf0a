"""One transaction that no other process can run at the same time, on SQLite and PostgreSQL.

SQLite (through pysqlite, which never begins a transaction before DDL and begins lazily before
DML) takes the database's write lock itself with ``BEGIN IMMEDIATE`` or ``BEGIN EXCLUSIVE``, and
the busy timeout makes other processes wait for it rather than fail. PostgreSQL runs a normal
transaction, optionally holding a transaction-level advisory lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

from sqlalchemy import Connection, Engine, text


@contextlib.contextmanager
def serialised(
    engine: Engine,
    *,
    sqlite_begin: Literal["IMMEDIATE", "EXCLUSIVE"] = "IMMEDIATE",
    advisory_lock: int | None = None,
) -> Iterator[Connection]:
    """A connection in a transaction serialised against every other process's (committed on
    leaving, rolled back on an error)."""
    with engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            with conn.begin():
                if advisory_lock is not None and conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_lock})
                yield conn
            return
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql(f"BEGIN {sqlite_begin}")
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(Exception):
                conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")
