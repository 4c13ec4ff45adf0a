"""Read-only reports on a SQLite file with the standard library's driver alone.

``history``, ``usage`` and ``runs list`` are what a user types most, and each used to pay for
importing SQLAlchemy (about 0.3 s of CPU, more than the whole report) and trio before reading a
few rows. On the common case — a plain ``sqlite:///path`` URL, a file at this release's revision
— they read here instead, with the same queries, into the same records as
:class:`~demiarch_flow.store.sql.SqlStore` (a contract test holds the two equal on one
database). Anything else is not for this path and raises :class:`NotLite` (never a message for
the user): another URL form or backend, a missing file, a revision other than head, a broken
``alembic_version``, a table or column a query needs that is missing, any driver error; the
caller then opens :class:`SqlStore`, which reads it or says exactly what is wrong. So this
module adds no second set of checks or messages, only a second way to read the happy case.

``budget`` reads its windows' books here too (:meth:`LiteReader.window_books`), as
:class:`~demiarch_flow.store.limits.SqlLedger` reads them, without the expired reservations
that ledger drops before it reads (a report writes nothing: it leaves them out instead).

It also holds :func:`read_only_connect`, the read-only connection both paths use.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from ..errors import UnknownConversation
from ..pricing import NANO
from .base import (
    AttemptRow,
    ConversationSummary,
    RunStatus,
    StoredMessage,
    StoredReply,
    StoredRun,
    UsageRow,
)

T = TypeVar("T")

SQLITE_WAIT_S = 30.0
"""How long a connection waits for another process's lock (SQLite's busy timeout)."""

_MIGRATIONS = Path(__file__).parent / "migrations" / "versions"
_ATTEMPT_FIELDS = tuple(f.name for f in dataclasses.fields(AttemptRow))
"""An attempt row's fields are its table's columns (``*_at`` ones timestamps): read by name, so
a column added to both is read here too."""
_CHUNK = 500
"""Ids per ``IN (…)`` list (SQLite's limit on bound parameters is far above it)."""


class NotLite(Exception):
    """This database is not read here: open :class:`~demiarch_flow.store.sql.SqlStore`."""


def head_revision() -> str:
    """This release's schema revision, read off the names of the shipped migrations
    (``v0006_….py``) so that the SQLAlchemy schema module need not be imported; a test holds it
    equal to :data:`demiarch_flow.store.schema.HEAD`."""
    names = sorted(p.name[1:5] for p in _MIGRATIONS.glob("v[0-9][0-9][0-9][0-9]_*.py"))
    if not names:
        raise NotLite("no migrations shipped")
    return names[-1]


def sqlite_path(url: str) -> Path | None:
    """The file of a plain ``sqlite:///path`` URL (``sqlite+pysqlite`` too), or ``None`` for
    anything SQLAlchemy should parse: another backend, memory, a ``file:`` URI, a query string,
    percent-escapes, credentials."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix):
            database = url[len(prefix) :]
            if not database or database == ":memory:" or database.startswith("file:"):
                return None
            if any(c in database for c in "?%#@"):
                return None
            return Path(database).expanduser()
    return None


def _wal_mode(path: Path) -> bool:
    """Whether the SQLite file's header says WAL mode (bytes 18 and 19 are 2)."""
    try:
        with path.open("rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return header.startswith(b"SQLite format 3\0") and header[18:20] == b"\x02\x02"


def read_only_connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` read-only (``mode=ro``): nothing is created, upgraded or written.

    A WAL database is normally read through its ``-shm`` index, which a reader must be able to
    create: in a folder the user cannot write (or a read-only file system) that fails with
    "attempt to write a readonly database", and where it succeeds on a file the user cannot
    write it leaves ``-wal``/``-shm`` files behind with the file's read-only mode, which then
    break the owner's next write. So a WAL file with no ``-wal`` beside it — every committed
    change is in the file itself — is opened ``immutable``: no lock, no side file. A writer
    appends to a ``-wal`` and changes the file only when it checkpoints, so a read can be
    torn only by a writer that starts, writes and checkpoints within this short read. With a
    ``-wal`` present (a writer at work, or one that died) the shared index is needed to see its
    changes, and ``mode=ro`` reads through it; a rollback-journal file is read with locks.
    """
    settled = _wal_mode(path) and not Path(f"{path}-wal").exists()
    conn = sqlite3.connect(
        f"{path.absolute().as_uri()}?mode=ro{'&immutable=1' if settled else ''}",
        uri=True,
        check_same_thread=False,
        timeout=SQLITE_WAIT_S,
    )
    if settled:
        return conn
    try:
        conn.execute("PRAGMA schema_version").close()  # the first read opens the -wal index
    except sqlite3.OperationalError as exc:
        conn.close()
        if not Path(f"{path}-wal").exists():
            raise
        raise sqlite3.OperationalError(
            f"{exc}: recent changes wait in {path.name}-wal, and reading them needs"
            f" {path.name}-shm, which cannot be created in its folder; run a command that writes"
            " (e.g. `demiarch-flow db upgrade`) once as a user who can write the folder"
        ) from None
    return conn


def _when(text: str | None) -> datetime | None:
    """A timestamp as SQLAlchemy stores it on SQLite (naive UTC text) → aware UTC."""
    if text is None:
        return None
    at = datetime.fromisoformat(text)
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _at(text: str | None) -> datetime:
    at = _when(text)
    if at is None:
        raise NotLite("a required timestamp is NULL")
    return at


def _stamp(at: datetime) -> str:
    """An aware time as SQLAlchemy binds it on SQLite, so text comparison orders like time."""
    naive = at.astimezone(UTC).replace(tzinfo=None)
    return f"{naive:%Y-%m-%d %H:%M:%S}.{naive.microsecond:06d}"


def _usd(value: Any) -> Decimal:
    """An amount as the store keeps it on SQLite (text), exact to the nano-dollar."""
    return Decimal(0) if value is None else Decimal(str(value)).quantize(NANO)


def _chunks(ids: Sequence[T]) -> list[Sequence[T]]:
    return [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class LiteReader:
    """The report queries of :class:`~demiarch_flow.store.sql.SqlStore`, blocking, on one
    read-only connection. Every method raises :class:`NotLite` on a driver error.

    Use :meth:`open`; it checks the revision before anything is read.
    """

    def __init__(self, conn: sqlite3.Connection, url: str) -> None:
        self._conn = conn
        self.url = url

    @classmethod
    def open(cls, url: str) -> LiteReader:
        """Open ``url`` read-only if it is a plain SQLite file at this release's revision.

        Raises:
            NotLite: it is anything else (see the module doc).
        """
        path = sqlite_path(url)
        if path is None or not path.is_file():
            raise NotLite(url)
        try:
            conn = read_only_connect(path)
        except sqlite3.Error as exc:
            raise NotLite(str(exc)) from None
        conn.execute(f"PRAGMA busy_timeout={int(SQLITE_WAIT_S * 1000)}")
        conn.execute("PRAGMA query_only=ON")
        reader = cls(conn, url)
        try:
            found = reader._rows("SELECT version_num FROM alembic_version")
        except NotLite:
            reader.close()
            raise
        if found != [(head_revision(),)]:
            reader.close()
            raise NotLite("not at this release's revision")
        return reader

    def close(self) -> None:
        self._conn.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise NotLite(str(exc)) from None

    # ------------------------------------------------------------------ reports

    def conversations(self, limit: int) -> list[ConversationSummary]:
        rows = self._rows(
            "SELECT c.id, c.title, c.updated_at, n.n FROM conversations AS c LEFT OUTER JOIN"
            " (SELECT conversation_id, count(*) AS n FROM chat_messages"
            " GROUP BY conversation_id) AS n ON n.conversation_id = c.id"
            " ORDER BY c.updated_at DESC LIMIT ?",
            (limit,),
        )
        return [ConversationSummary(i, t, _at(u), n or 0) for i, t, u, n in rows]

    def messages(self, conversation_id: str, limit: int) -> list[StoredMessage]:
        if not self._rows("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)):
            raise UnknownConversation(conversation_id)
        rows = self._rows(
            "SELECT id, conversation_id, role, content, model, created_at, run_id, token_count"
            " FROM chat_messages WHERE conversation_id = ? ORDER BY created_at DESC LIMIT ?",
            (conversation_id, limit),
        )
        return [
            StoredMessage(i, c, r, text, m, _at(at), run, n)
            for i, c, r, text, m, at, run, n in reversed(rows)
        ]

    def usage(self, since: datetime | None, by: str) -> list[UsageRow]:
        """As :meth:`SqlStore.usage`: grouped and summed here, exactly (SQLite keeps amounts
        as text, and SUM would make them floats)."""
        sql = (
            "SELECT request_timestamp, conversation_id, model, prompt_tokens,"
            " completion_tokens, cost_usd, outcome FROM llm_usage"
        )
        params: tuple[Any, ...] = ()
        if since is not None:
            sql, params = f"{sql} WHERE request_timestamp >= ?", (_stamp(since),)
        groups: dict[str, list[Any]] = {}
        for at, conversation, model, prompt, completion, cost, outcome in self._rows(sql, params):
            key = (
                _at(at).date().isoformat()
                if by == "day"
                else conversation
                if by == "conversation"
                else model
            )
            acc = groups.setdefault(key, [0, 0, 0, Decimal(0), 0, Decimal(0)])
            acc[0] += 1
            acc[1] += prompt or 0
            acc[2] += completion or 0
            acc[3] += _usd(cost)
            if outcome == "interrupted":
                acc[4] += 1
                acc[5] += _usd(cost)
        return [UsageRow(k, *v) for k, v in sorted(groups.items())]

    def list_runs(
        self, *, status: RunStatus | None, since: datetime | None, limit: int
    ) -> list[StoredRun]:
        """As :meth:`SqlStore.list_runs` (:func:`demiarch_flow.store._runs.load_runs`)."""
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if since is not None:
            where.append("started_at >= ?")
            params.append(_stamp(since))
        rows = self._rows(
            "SELECT id, workflow, workflow_sha256, conversation_id, status, current_state, model,"
            " error_class, error_message, started_at, finished_at, state_json, owner,"
            " heartbeat_at, resume_count FROM workflow_runs"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY started_at DESC LIMIT ?",
            (*params, limit),
        )
        ids = [r[0] for r in rows]
        attempts: dict[str, list[AttemptRow]] = {}
        replies: dict[str, StoredReply] = {}
        costs: dict[str, Decimal] = {}
        for chunk in _chunks(ids):
            marks = _marks(len(chunk))
            for a in self._rows(
                f"SELECT {', '.join(_ATTEMPT_FIELDS)} FROM run_attempts"
                f" WHERE run_id IN ({marks}) ORDER BY number",
                chunk,
            ):
                row = dict(zip(_ATTEMPT_FIELDS, a, strict=True))
                row.update({k: _when(row[k]) for k in _ATTEMPT_FIELDS if k.endswith("_at")})
                attempts.setdefault(row["run_id"], []).append(AttemptRow(**row))
            for u in self._rows(
                "SELECT u.run_id, u.message_id, m.content, u.model, u.prompt_tokens,"
                " u.completion_tokens, u.cost_usd, u.cost_source FROM llm_usage AS u"
                " JOIN chat_messages AS m ON m.id = u.message_id"
                f" WHERE u.run_id IN ({marks}) AND u.outcome = 'reply'",
                chunk,
            ):
                replies[u[0]] = StoredReply(u[1], u[2], u[3], u[4], u[5], _usd(u[6]), u[7])
            for run, cost in self._rows(
                f"SELECT run_id, cost_usd FROM llm_usage WHERE run_id IN ({marks})", chunk
            ):
                costs[run] = costs.get(run, Decimal(0)) + _usd(cost)
        return [
            StoredRun(
                run_id=r[0], workflow=r[1], workflow_sha256=r[2], definition=None,
                conversation_id=r[3], status=r[4], current_state=r[5], model=r[6],
                error_class=r[7], error_message=r[8], started_at=_at(r[9]),
                finished_at=_when(r[10]), state_json=r[11], owner=r[12],
                heartbeat_at=_when(r[13]), resume_count=r[14] or 0,
                attempts=tuple(attempts.get(r[0], ())), reply=replies.get(r[0]),
                cost_usd=costs.get(r[0], Decimal(0)),
            )
            for r in rows
        ]  # fmt: skip

    def window_books(
        self, starts: Sequence[datetime], now: datetime
    ) -> list[tuple[Decimal, Decimal]]:
        """The spend and reservations of the budget windows that began at ``starts``, as :meth:`SqlLedger.window_use` counts them for a day or a month window
        (``store/limits.py``: ``_use`` after ``_clean``), in one read transaction.

        Spent: every ``llm_usage`` cost since the window began. Reserved: the reservations
        ``_clean`` would keep at ``now`` — not expired, and not gone with a run that has ended
        (unless unbooked) — that count in this window: all of those in flight or settled, and
        the unbooked ones made since it began. Sums are exact (amounts are text on SQLite).
        """
        kept = (
            "expires_at >= ? AND NOT (settled != 2 AND run_id IN"
            " (SELECT id FROM workflow_runs WHERE status != 'running'))"
        )
        books = []
        self._rows("BEGIN")  # one snapshot for every window (a read lock, never a write)
        try:
            for since in starts:
                at = _stamp(since)
                spent = self._rows(
                    "SELECT cost_usd FROM llm_usage WHERE request_timestamp >= ?", (at,)
                )
                reserved = self._rows(
                    f"SELECT amount_usd FROM budget_reservations WHERE {kept}"
                    " AND (settled != 2 OR created_at >= ?)",
                    (_stamp(now), at),
                )
                books.append(
                    (
                        sum((_usd(c) for (c,) in spent), _usd(0)),
                        sum((_usd(a) for (a,) in reserved), _usd(0)),
                    )
                )
        finally:
            self._conn.rollback()
        return books

    def missing_replies(self, runs: Sequence[tuple[str, str]]) -> set[str]:
        """As :meth:`SqlStore.missing_replies`."""
        replied: set[str | None] = set()
        conversations: set[str] = set()
        for chunk in _chunks(runs):
            run_ids = [r for r, _ in chunk]
            replied.update(
                r
                for (r,) in self._rows(
                    f"SELECT run_id FROM chat_messages WHERE run_id IN ({_marks(len(run_ids))})"
                    " AND role = 'assistant'",
                    run_ids,
                )
            )
            wanted = sorted({c for _, c in chunk})
            conversations.update(
                c
                for (c,) in self._rows(
                    f"SELECT id FROM conversations WHERE id IN ({_marks(len(wanted))})", wanted
                )
            )
        return {r for r, c in runs if r not in replied and c in conversations}
