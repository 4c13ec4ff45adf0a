"""The schema's lifecycle: which revision a database is at, and bringing it to this release's.

Alembic owns the schema; its revisions ship inside the package (``migrations/``). Opening a
database (:func:`prepare`) decides what to do before a single request is sent:

* no tables of ours: created at :data:`HEAD`;
* the first release's tables without ``alembic_version``: adopted (their columns checked, then
  stamped at :data:`BASELINE`), and from there as "behind";
* behind head: SQLite is copied to ``<file>.pre-<revision>.bak`` and upgraded; PostgreSQL is
  not touched (its owner runs ``demiarch-flow db upgrade``, or applies ``--sql``);
* ahead of head (written by a newer release), or a table or column missing:
  :class:`~demiarch_flow.errors.SchemaMismatch`, naming the revision or the table and column;
* ``alembic_version`` holding a blank value, several rows, or no row beside our tables: the
  same, saying so (the revision is unknown, and guessing one would migrate the wrong tables).

Read-only commands pass ``read_only``: they never create, back up or upgrade, so they work on a
file they cannot write, and a database that needs any of that is refused with what to run.

Creating and upgrading are serialised between processes (SQLite: ``BEGIN EXCLUSIVE``;
PostgreSQL: a transaction-level advisory lock) and the revision is read again once the lock is
held, so many processes opening a new database at once create it exactly once. At head, which
is every open but the first, this reads one row and the column lists and never imports Alembic.
A new SQLite file does not come here at all: the store creates it from the DDL these migrations
leave, generated ahead of time (``_sqlite_sql.FRESH``, see ``sql._create_fresh``).
"""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO

from sqlalchemy import Connection, Engine, inspect, text

from ..errors import SchemaMismatch
from ._tx import serialised
from .tables import Base

if TYPE_CHECKING:
    from alembic.config import Config

REVISIONS: tuple[str, ...] = ("0001", "0002", "0003", "0004", "0005", "0006", "0007")
"""Every revision in ``migrations/versions``, oldest first (a test keeps the two in step)."""
BASELINE = REVISIONS[0]
"""The revision that the first release's tables are (it had no ``alembic_version``)."""
HEAD = REVISIONS[-1]
"""The revision this release reads and writes."""
MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_KEY = 0x64656D6961726368  # "demiarch": the advisory lock every demiarch-flow process takes

Status = Literal["empty", "unversioned", "behind", "head", "ahead"]


@dataclass(frozen=True, slots=True)
class SchemaState:
    """What a database holds, as read without changing it."""

    backend: str
    """SQLAlchemy's dialect name: ``sqlite`` or ``postgresql``."""
    revision: str | None
    """The row of ``alembic_version``; ``None`` when that table is missing or empty."""
    tables: frozenset[str]
    """Which of our tables exist."""

    @property
    def status(self) -> Status:
        if self.revision is None:
            return "unversioned" if self.tables else "empty"
        if self.revision == HEAD:
            return "head"
        return "behind" if self.revision in REVISIONS else "ahead"

    def to_json(self) -> dict[str, object]:
        """The answer of ``db current --json``."""
        return {
            "revision": self.revision,
            "head": HEAD,
            "is_head": self.status == "head",
            "status": self.status,
            "backend": self.backend,
        }


def read_state(conn: Connection) -> SchemaState:
    """The revision and tables of the database behind ``conn`` (reads only).

    Raises:
        SchemaMismatch: ``alembic_version`` holds no single revision — a blank value, several
            rows, or no row beside tables of ours — so what the tables are cannot be known.
    """
    names = set(inspect(conn).get_table_names())
    ours = frozenset(names & set(Base.metadata.tables))
    revision: str | None = None
    if "alembic_version" in names:
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        revision = _one_revision(list(rows), ours, _where(conn.engine))
    return SchemaState(conn.dialect.name, revision, ours)


def _one_revision(rows: list[str | None], ours: frozenset[str], where: str) -> str | None:
    """The revision ``alembic_version`` names, or why it names none.

    Alembic keeps one row per branch head and demiarch-flow has one branch, so anything but a
    single non-blank row was written by hand or by a failed tool. Guessing would be worse than
    stopping: a blank row read as "no revision" adopted the tables as the first release and
    migrated them again (an AssertionError inside Alembic, after a backup), and two rows read as
    one unknown revision blamed a newer release.
    """
    known = ", ".join(REVISIONS)
    advice = (
        " Restore the database from a backup (an automatic upgrade of SQLite leaves"
        " <file>.pre-<revision>.bak beside it), or correct alembic_version by hand; nothing"
        " was changed"
    )
    if len(rows) > 1:
        shown = ", ".join(_shown(row) for row in sorted(rows, key=str))
        raise SchemaMismatch(
            f"database {where}: its alembic_version table holds {len(rows)} rows ({shown}),"
            " where demiarch-flow keeps exactly one, the revision its tables are at (one of"
            f" {known}).{advice}",
            head=HEAD,
            table="alembic_version",
        )
    if rows and (rows[0] is None or not rows[0].strip()):
        raise SchemaMismatch(
            f"database {where}: its alembic_version row is empty ({_shown(rows[0])}), so the"
            f" revision its tables are at is unknown (demiarch-flow writes one of {known}"
            f" there).{advice}",
            head=HEAD,
            table="alembic_version",
        )
    if not rows and ours:
        raise SchemaMismatch(
            f"database {where}: its alembic_version table has no row, but tables of"
            f" demiarch-flow exist ({', '.join(sorted(ours))}), so their revision is unknown"
            f" (demiarch-flow writes one of {known} there).{advice}",
            head=HEAD,
            table="alembic_version",
        )
    return rows[0] if rows else None


def _shown(value: str | None) -> str:
    """A stored revision for a message: NULL, a blank one quoted, a long one cut."""
    if value is None:
        return "NULL"
    text = value if value.strip() and value.isprintable() else repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


#: The first release's tables and columns: what an unversioned database must hold to be
#: adopted at :data:`BASELINE` (later revisions add to it; the models describe :data:`HEAD`).
FIRST_RELEASE: Mapping[str, tuple[str, ...]] = {
    "conversations": ("id", "project_id", "title", "created_at", "updated_at"),
    "chat_messages": (
        "id", "conversation_id", "project_id", "role", "content", "model", "token_count",
        "run_id", "created_at",
    ),
    "llm_usage": (
        "id", "conversation_id", "message_id", "run_id", "project_id", "model",
        "requested_model", "generation_id", "prompt_tokens", "completion_tokens",
        "total_tokens", "cached_tokens", "cost_usd", "cost_source", "latency_ms", "attempts",
        "request_timestamp",
    ),
    "workflow_runs": (
        "id", "workflow", "workflow_sha256", "conversation_id", "status", "current_state",
        "model", "error_class", "error_message", "started_at", "finished_at",
    ),
    "run_events": (
        "run_id", "seq", "from_state", "event", "to_state", "model", "attempt", "error_class",
        "wait_s", "at",
    ),
}  # fmt: skip


def _head_layout() -> dict[str, tuple[str, ...]]:
    return {t.name: tuple(c.name for c in t.columns) for t in Base.metadata.sorted_tables}


def check_layout(
    conn: Connection, where: str, expected: Mapping[str, tuple[str, ...]] | None = None
) -> None:
    """Every table and column of ``expected`` (default: the models, i.e. head) exists.

    A column dropped by hand would otherwise surface only after a paid request (the reply
    cannot be stored) or not at all (journal rows silently lost); comparing the lists costs
    one catalogue read per table.

    Raises:
        SchemaMismatch: naming the first missing table, or table and column.
    """
    inspector = inspect(conn)
    present = set(inspector.get_table_names())
    for name, columns in (expected or _head_layout()).items():
        if name not in present:
            raise SchemaMismatch(
                f"database {where} has no table {name}, which this release needs;"
                " restore it from a backup or point --db at another database",
                head=HEAD,
                table=name,
            )
        have = {column["name"] for column in inspector.get_columns(name)}
        for column in columns:
            if column not in have:
                raise SchemaMismatch(
                    f"database {where}: table {name} has no column {column},"
                    " which this release needs; nothing was sent. Restore the column (or the"
                    " database from a backup), or point --db at another database",
                    head=HEAD,
                    table=name,
                    column=column,
                )


def prepare(
    engine: Engine, *, create: bool = True, upgrade: bool = False, read_only: bool = False
) -> SchemaState:
    """Make the database usable by this release, or say why it is not (see the module doc).

    Args:
        engine: the database, as made by :func:`~demiarch_flow.store.sql.open_engine`.
        create: create an empty database at head; commands that must not create one pass
            ``False``.
        upgrade: upgrade PostgreSQL too (``db upgrade``). SQLite is always upgraded, after a
            backup of the file, unless ``read_only``.
        read_only: never write: anything but a database at head is refused (read-only
            commands, which may be given a file they cannot write).

    Returns:
        The state found before any change.

    Raises:
        SchemaMismatch: the database is ahead of this release, behind it on PostgreSQL without
            ``upgrade`` (or anywhere when ``read_only``), empty without ``create``, its
            ``alembic_version`` is broken, or a table or column is missing.
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached or written.
    """
    where = _where(engine)
    with engine.connect() as conn:
        state = read_state(conn)
        if state.status == "head":
            check_layout(conn, where)
            return state
    if read_only:
        create = upgrade = False
    else:
        upgrade = upgrade or engine.dialect.name == "sqlite"
    _refuse(state, where, create=create, upgrade=upgrade, read_only=read_only)
    with serialised(engine, sqlite_begin="EXCLUSIVE", advisory_lock=_LOCK_KEY) as conn:
        found = read_state(conn)  # another process may have got there while we waited
        if found.status != "head":
            _refuse(found, where, create=create, upgrade=upgrade)
            if found.status == "unversioned":
                check_layout(conn, where, FIRST_RELEASE)
            if found.status in ("unversioned", "behind"):
                _backup_sqlite(engine, found.revision or BASELINE)
            _migrate(conn, found)
        check_layout(conn, where)
    return state


def upgrade_sql(engine: Engine) -> str:
    """The SQL that ``db upgrade`` would run on this database, for a DBA to review and apply.

    Raises:
        SchemaMismatch: the database is ahead of this release, its ``alembic_version`` is
            broken, or a first-release database lacks a column.
    """
    where = _where(engine)
    with engine.connect() as conn:
        state = read_state(conn)
        _refuse(state, where, create=True, upgrade=True)
        if state.status == "unversioned":
            check_layout(conn, where, FIRST_RELEASE)
    if state.status == "head":
        return ""
    return _render_sql(engine.dialect.name, state)


def fresh_sql(dialect: str) -> str:
    """The SQL that creates a new database at :data:`HEAD`, rendered without connecting.

    ``db upgrade --sql`` for a SQLite file that does not exist yet: a DBA reviews the DDL
    before anything, the file included, is created.
    """
    return _render_sql(dialect, SchemaState(dialect, None, frozenset()))


def _render_sql(dialect: str, state: SchemaState) -> str:
    """Alembic's offline rendering of what :func:`prepare` would run from ``state``."""
    from alembic import command

    out = io.StringIO()
    config = alembic_config(output=out)
    config.attributes["dialect"] = dialect
    if state.status == "empty":
        command.upgrade(config, HEAD, sql=True)
    else:
        if state.status == "unversioned":
            command.stamp(config, BASELINE, sql=True)
        command.upgrade(config, f"{state.revision or BASELINE}:{HEAD}", sql=True)
    return out.getvalue()


def alembic_config(*, output: TextIO | None = None) -> Config:
    """Alembic's configuration, pointing at the migrations inside the installed package (no
    ``alembic.ini`` is needed). Online callers put their connection in
    ``config.attributes["connection"]``; offline ones the dialect name in ``["dialect"]``."""
    from alembic.config import Config

    config = Config(output_buffer=output)
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    return config


def _migrate(conn: Connection, state: SchemaState) -> None:
    """Stamp an adopted first-release database at the baseline, then upgrade to head."""
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = conn
    if state.status == "unversioned":
        command.stamp(config, BASELINE)
    command.upgrade(config, HEAD)


def _refuse(
    state: SchemaState, where: str, *, create: bool, upgrade: bool, read_only: bool = False
) -> None:
    status = state.status
    if status == "ahead":
        raise SchemaMismatch(
            f"database {where} is at revision {state.revision}, which this release does not"
            f" know (it needs {HEAD}): it was written by a newer demiarch-flow. Upgrade"
            " demiarch-flow, or point --db at another database",
            revision=state.revision,
            head=HEAD,
        )
    if status == "empty" and not create:
        raise SchemaMismatch(
            f"no demiarch-flow tables in database {where} (nothing has been run against it)",
            head=HEAD,
        )
    if status in ("behind", "unversioned") and not upgrade:
        revision = state.revision or f"{BASELINE} (first release, unversioned)"
        only_reads = " (this command only reads the database, so it never upgrades it)"
        raise SchemaMismatch(
            f"database is at revision {revision}, this release needs {HEAD}"
            f"{only_reads if read_only else ''}: run `demiarch-flow db upgrade --db {where}`"
            " (or `--sql` to print the SQL for a DBA)",
            revision=state.revision,
            head=HEAD,
        )


def _backup_sqlite(engine: Engine, revision: str) -> Path | None:
    """Copy a SQLite file to ``<file>.pre-<revision>.bak`` before upgrading it.

    The copy goes through SQLite's backup API on a separate connection, so it includes what
    is still in the WAL and sees the last committed state (the caller holds the write lock
    and has not written yet). Other backends, and in-memory SQLite, are not copied.
    """
    database = engine.url.database or ""
    if engine.dialect.name != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:"):
        return None
    path = Path(database).expanduser()
    target = path.with_name(f"{path.name}.pre-{revision}.bak")
    source = sqlite3.connect(path)
    try:
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)
        finally:
            copy.close()
    finally:
        source.close()
    return target


def _where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
