"""``db upgrade`` and ``db current``: the schema's revision, for people and for scripts.

SQLite databases are upgraded when opened (after a backup); PostgreSQL ones only here, so that
whoever owns the server decides when its schema changes (``--sql`` prints the DDL instead).
"""

from __future__ import annotations

import argparse
import json

from ..paths import database_url
from ..store.schema import HEAD, SchemaState, prepare, read_state, upgrade_sql
from ..store.sql import open_engine, opening, safe_url


def cmd_db_current(args: argparse.Namespace) -> int:
    """The database's revision, whether it is this release's head, and the backend."""
    url = database_url(args.db)
    engine = open_engine(url, create=False)
    try:
        with opening(url), engine.connect() as conn:
            state = read_state(conn)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(state.to_json()))
    else:
        print(f"{safe_url(url)} ({state.backend}): {_describe(state)}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Create, adopt or upgrade the database to head; with ``--sql`` print the SQL instead."""
    url = database_url(args.db)
    engine = open_engine(url, create=not args.sql)
    try:
        with opening(url):
            if args.sql:
                sql = upgrade_sql(engine)
                print(sql if sql else f"-- already at revision {HEAD}: nothing to run", end="")
                if not sql:
                    print()
                return 0
            before = prepare(engine, create=True, upgrade=True)
    finally:
        engine.dispose()
    if before.status == "head":
        print(f"{safe_url(url)} is already at revision {HEAD}")
    elif before.status == "empty":
        print(f"{safe_url(url)}: created at revision {HEAD}")
    else:
        print(f"{safe_url(url)}: upgraded from revision {before.revision or 'none'} to {HEAD}")
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
