"""The queue's tables: procrastinate's schema, installed and upgraded with ours.

procrastinate ships its full schema (``schema.sql``) and one SQL file per change since
(``sql/migrations/<version>_<n>_<what>.sql``), and keeps no record of which it has; the way it
documents is to apply the new migration files, in order, on upgrade. demiarch-flow does that
for its users, beside its own Alembic chain (not inside it: procrastinate's releases, not ours,
decide when its schema changes): ``queue_migrations`` names every migration file the database
already has. Installing the full schema records every file the installed procrastinate ships;
``db upgrade`` later applies the files a newer procrastinate brings that are not recorded, in
their order, and records them, in the transaction that installs them.

Creating is serialised between processes with an advisory lock (a key of its own, next to the
one :mod:`demiarch_flow.store.schema` takes), and re-read once it is held, so eight workers
started at once on a new database install it exactly once. A database with migrations not yet
applied is refused by the commands that use the queue, with what to run, before any request.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sqlalchemy import Connection, Engine, inspect, text

from ..errors import SchemaMismatch
from ..store._tx import serialised
from ..store.sql import safe_url

TABLE = "queue_migrations"
_LOCK_KEY = 0x64656D6961726369  # the store's key + 1: the queue's schema has its own lock


def shipped() -> list[str]:
    """The names of procrastinate's migration files, oldest first (their names sort by the
    version they came with)."""
    folder = Path(str(resources.files("procrastinate.sql") / "migrations"))
    return sorted(p.name for p in folder.glob("*.sql"))


def _schema_sql() -> str:
    return (resources.files("procrastinate.sql") / "schema.sql").read_text("utf-8")


@dataclass(frozen=True, slots=True)
class QueueState:
    """What a PostgreSQL database holds of the queue, read without changing it."""

    installed: bool
    applied: tuple[str, ...]
    pending: tuple[str, ...]
    """Migration files of the installed procrastinate the database does not have yet."""

    @property
    def current(self) -> bool:
        return self.installed and not self.pending

    def to_json(self) -> dict[str, object]:
        """The ``queue`` object of ``db current --json``."""
        try:
            version: str | None = importlib.metadata.version("procrastinate")
        except importlib.metadata.PackageNotFoundError:
            version = None
        return {
            "installed": self.installed,
            "procrastinate": version,
            "migration": self.applied[-1] if self.applied else None,
            "pending": len(self.pending),
            "is_current": self.current,
        }


def read_queue_state(conn: Connection) -> QueueState:
    """The queue's schema behind ``conn`` (PostgreSQL; reads only)."""
    names = set(inspect(conn).get_table_names())
    if "procrastinate_jobs" not in names:
        return QueueState(False, (), tuple(shipped()))
    applied: tuple[str, ...] = ()
    if TABLE in names:
        rows = conn.execute(text(f"SELECT name FROM {TABLE} ORDER BY name")).scalars().all()
        applied = tuple(rows)
    done = set(applied)
    return QueueState(True, applied, tuple(m for m in shipped() if m not in done))


def upgrade_queue(engine: Engine, *, create_only: bool = False) -> QueueState:
    """Install the queue's schema, or apply the migrations it lacks; returns the state before.

    Args:
        create_only: install on a database that has no queue yet, but apply no migration to
            one that has (what a worker or ``submit`` may do on its own; upgrading is
            ``db upgrade``'s).

    Raises:
        SchemaMismatch: with ``create_only``, the queue is there but behind.
    """
    with serialised(engine, advisory_lock=_LOCK_KEY) as conn:
        before = read_queue_state(conn)
        raw = conn.connection.driver_connection
        assert raw is not None
        if not before.installed:
            # procrastinate's own SQL, run as it ships (no parameters: '%' stays as written)
            raw.execute(_schema_sql())
            _create_table(conn)
            _record(conn, shipped())
        elif before.pending:
            if create_only:
                raise _behind(engine, before)
            _create_table(conn)
            for name in before.pending:
                sql = (resources.files("procrastinate.sql") / "migrations" / name).read_text(
                    "utf-8"
                )
                raw.execute(sql)
            _record(conn, before.pending)
    return before


def queue_sql(state: QueueState) -> str:
    """What :func:`upgrade_queue` would run on a database in ``state``, for ``db upgrade
    --sql`` (empty when the queue is current)."""
    if state.current:
        return ""
    names = shipped() if not state.installed else list(state.pending)
    parts = ["-- the queue's schema (procrastinate)"]
    if not state.installed:
        parts.append(_schema_sql())
    else:
        for name in names:
            parts.append(f"-- {name}")
            parts.append(
                (resources.files("procrastinate.sql") / "migrations" / name).read_text("utf-8")
            )
    parts.append(
        f"CREATE TABLE IF NOT EXISTS {TABLE} (name VARCHAR(200) PRIMARY KEY,"
        " applied_at TIMESTAMPTZ NOT NULL DEFAULT now());"
    )
    parts.extend(
        f"INSERT INTO {TABLE} (name) VALUES ('{n}') ON CONFLICT DO NOTHING;" for n in names
    )
    return "\n".join(parts) + "\n"


def check_queue(engine: Engine) -> None:
    """Before a command uses the queue: install it on a database that has none (as a first
    start creates our tables), refuse one that is behind.

    Raises:
        SchemaMismatch: migrations are pending (exit 3: run ``db upgrade``).
    """
    with engine.connect() as conn:
        state = read_queue_state(conn)
    if state.current:
        return
    upgrade_queue(engine, create_only=True)


def _behind(engine: Engine, state: QueueState) -> SchemaMismatch:
    return SchemaMismatch(
        f"database {safe_url(engine.url.render_as_string(hide_password=False))}: the queue's"
        f" schema lacks {len(state.pending)} migration(s) of the installed procrastinate"
        f" (first: {state.pending[0]}); run `demiarch-flow db upgrade` — nothing was sent"
    )


def _create_table(conn: Connection) -> None:
    conn.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (name VARCHAR(200) PRIMARY KEY,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
    )


def _record(conn: Connection, names: list[str] | tuple[str, ...]) -> None:
    if names:
        conn.execute(
            text(f"INSERT INTO {TABLE} (name) VALUES (:name) ON CONFLICT DO NOTHING"),
            [{"name": n} for n in names],
        )
