"""``db upgrade`` and ``db current``: the schema's revision, for people and for scripts.

SQLite databases are upgraded when opened by a command that writes (after a backup); PostgreSQL
ones only here, so that whoever owns the server decides when its schema changes (``--sql``
prints the DDL instead). ``db current`` and ``--sql`` only read: they open the database
read-only, and ``--sql`` for a SQLite file that does not exist yet prints the DDL that would
create it, without creating anything.
"""

from __future__ import annotations

import argparse
import json

from sqlalchemy import Engine

from ..paths import database_url
from ..store.schema import HEAD, SchemaState, fresh_sql, prepare, read_state, upgrade_sql
from ..store.sql import open_engine, opening, safe_url
from ._common import missing_sqlite_file


def cmd_db_current(args: argparse.Namespace) -> int:
    """The database's revision, whether it is this release's head, and the backend."""
    url = database_url(args.db)
    engine = open_engine(url, read_only=True)
    queue: dict[str, object] | None = None
    try:
        with opening(url), engine.connect() as conn:
            state = read_state(conn)
            if _has_queue(state.backend):
                from ..queue.schema import read_queue_state

                queue = read_queue_state(conn).to_json()
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({**state.to_json(), "queue": queue}))
    else:
        print(f"{safe_url(url)} ({state.backend}): {_describe(state)}")
        if queue is not None:
            print(f"queue (procrastinate {queue['procrastinate']}): {_describe_queue(queue)}")
    return 0


def _has_queue(backend: str) -> bool:
    """The queue lives on PostgreSQL, with procrastinate installed."""
    import importlib.util

    return backend == "postgresql" and importlib.util.find_spec("procrastinate") is not None


def _describe_queue(queue: dict[str, object]) -> str:
    if not queue["installed"]:
        return "not installed yet (`db upgrade` or the first `worker`/`submit` installs it)"
    if queue["pending"]:
        return f"{queue['pending']} migration(s) to apply (run `db upgrade`)"
    return f"current (last migration {queue['migration']})"


def _upgrade_queue(engine: Engine) -> dict[str, object] | None:
    """``db upgrade`` on PostgreSQL: procrastinate's schema too (installed, or its new
    migrations applied; see :mod:`demiarch_flow.queue.schema`); ``None`` where there is none."""
    if not _has_queue(engine.dialect.name):
        return None
    from ..queue.schema import read_queue_state, upgrade_queue

    before = upgrade_queue(engine)
    with engine.connect() as conn:
        after = read_queue_state(conn)
    action = "created" if not before.installed else "upgraded" if before.pending else "none"
    return {"action": action, "applied": len(before.pending) if before.installed else 0,
            **after.to_json()}  # fmt: skip


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Create, adopt or upgrade the database to head; with ``--sql`` print the SQL instead."""
    url = database_url(args.db)
    if args.sql:
        return _print_sql(url)
    engine = open_engine(url)
    try:
        with opening(url):
            before = prepare(engine, create=True, upgrade=True)
            queue = _upgrade_queue(engine)
    finally:
        engine.dispose()
    if args.json:
        action = {"head": "none", "empty": "created"}.get(before.status, "upgraded")
        print(json.dumps({"database": safe_url(url), "backend": before.backend,
                          "action": action, "from_revision": before.revision,
                          "revision": HEAD, "queue": queue}))  # fmt: skip
        return 0
    if before.status == "head":
        print(f"{safe_url(url)} is already at revision {HEAD}")
    elif before.status == "empty":
        print(f"{safe_url(url)}: created at revision {HEAD}")
    else:
        print(f"{safe_url(url)}: upgraded from revision {before.revision or 'none'} to {HEAD}")
    if queue is not None and queue["action"] != "none":
        print(f"queue (procrastinate {queue['procrastinate']}): {queue['action']}")
    return 0


def _print_sql(url: str) -> int:
    """``db upgrade --sql``: what upgrading would run, read-only (a new SQLite file: its DDL)."""
    if missing_sqlite_file(url):
        sql = fresh_sql("sqlite")
    else:
        engine = open_engine(url, read_only=True)
        try:
            with opening(url):
                sql = upgrade_sql(engine)
                if _has_queue(engine.dialect.name):
                    from ..queue.schema import queue_sql, read_queue_state

                    with engine.connect() as conn:
                        queue = queue_sql(read_queue_state(conn))
                    sql = "\n".join(part for part in (sql, queue) if part)
        finally:
            engine.dispose()
    if sql:
        print(sql, end="" if sql.endswith("\n") else "\n")
    else:
        print(f"-- already at revision {HEAD}: nothing to run")
    return 0


def _describe(state: SchemaState) -> str:
    status = state.status
    if status == "head":
        return f"revision {state.revision} (head)"
    if status == "empty":
        return f"no tables yet (this release creates revision {HEAD} on first use)"
    if status == "unversioned":
        return f"first-release tables, no revision (this release needs {HEAD}: run `db upgrade`)"
    if status == "behind":
        return f"revision {state.revision}, behind head {HEAD} (run `db upgrade`)"
    return f"revision {state.revision}, unknown to this release (head {HEAD}): a newer release?"
