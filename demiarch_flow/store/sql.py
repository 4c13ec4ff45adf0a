"""The SQLAlchemy store: SQLite (default) or PostgreSQL, used from trio through worker threads.

SQLAlchemy's async engine is asyncio-only, so the sync engine runs in ``trio.to_thread``. Writes
go through one writer at a time per process (a ``trio.Lock``): with SQLite in WAL mode and a busy
timeout that removes "database is locked" under load, and with PostgreSQL it keeps one process
from hogging the pool. Every public method maps database errors (SQLAlchemy's, or the driver's
on SQLite's own connection) to :class:`~demiarch_flow.errors.PersistenceError` (or
:class:`StoreUnavailable` when opening). Opening checks the schema first
(:mod:`demiarch_flow.store.schema`): it creates, adopts or upgrades it, or refuses to run.

A SQLite file already at this release's revision — what every run after the first finds — is
checked with ``sqlite3`` and written through the store's own ``sqlite3`` connection, with the
statements :mod:`._sqlite_sql` holds (:class:`_Writer`, :mod:`._fast`): SQLAlchemy is imported
only when a report, a budget, a resume or a recovery needs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ..errors import (
    PersistenceError,
    RunTakenOver,
    StoreUnavailable,
    UnknownConversation,
    redact,
)
from . import _runs
from ._fast import Fixed, LiteTx, SaTx, Tx
from ._lite import read_only_connect, sqlite_path
from .base import (
    AttemptRow,
    BeganRun,
    BilledAttempt,
    Checkpoint,
    ConversationSummary,
    Definition,
    ImportResult,
    JournalEntry,
    NewRun,
    Reply,
    RunEnd,
    RunStatus,
    StoredMessage,
    StoredRun,
    UsageRow,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.orm import Session, sessionmaker

    from .tables import ChatMessage

T = TypeVar("T")
_TICK = timedelta(microseconds=1)
#: How long after its run's commit a request recorded with it may leave without proving
#: ownership again: well under the stale limit (30 s without a heartbeat) that a take-over needs.
OWNED_FOR_SURE_S = 10.0
CONNECT_TIMEOUT_S = 10
"""How long connecting to a database server may take unless the URL says otherwise: a host
that accepts the connection and never answers would otherwise hang the command for ever."""


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return redact(url)


#: How long a new connection waits for another process's lock (busy timeout, WAL switch).
_SQLITE_WAIT_S = 30.0

log = logging.getLogger("demiarch_flow")


#: ``?synchronous=`` of a SQLite URL → the PRAGMA's value. ``normal`` (the default): in WAL
#: mode a commit survives the process's crash but not a power loss or an OS crash (the WAL is
#: synced only at checkpoints); ``full``: every commit is synced to disk before it returns.
SQLITE_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any, *, synchronous: str = "NORMAL") -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={int(_SQLITE_WAIT_S * 1000)}")
    # Switching a new file to WAL takes an exclusive lock, and SQLite answers "database is
    # locked" at once (no busy wait) while another process holds one — as when many
    # processes create the same database together. Wait for it here instead.
    deadline = time.monotonic() + _SQLITE_WAIT_S
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA synchronous={synchronous}")
    cur.close()


def _sqlite_read_only_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """No WAL switch, no ``synchronous``: a read-only connection changes nothing, not even
    the journal mode; ``query_only`` makes any write a bug that fails loudly."""
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={int(_SQLITE_WAIT_S * 1000)}")
    cur.execute("PRAGMA query_only=ON")
    cur.close()


def open_engine(url: str, *, create: bool = True, read_only: bool = False) -> Engine:
    """Create the engine for ``url`` with our settings (not yet connected).

    Args:
        url: a SQLAlchemy database URL.
        create: ``False`` for commands that must not create a database: a SQLite file that
            does not exist is an error instead of being created (with its folder).
        read_only: for commands that only read: implies ``create=False``, and a SQLite file
            is opened read-only (see :func:`~demiarch_flow.store._lite.read_only_connect`), so that it can be read
            where it cannot be written. A ``file:`` URI is used as given.

    Raises:
        StoreUnavailable: the URL is malformed, names a driver that is not installed, or (with
            ``create=False``) a SQLite file that does not exist.
    """
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError
    from sqlalchemy.pool import StaticPool

    create = create and not read_only
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreUnavailable(
            f"{redact(url)!r} is not a database URL; use e.g. sqlite:///path/to/file.db or"
            " postgresql+psycopg://user@host/dbname"
        ) from None
    try:
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            if create and database not in ("", ":memory:") and not database.startswith("file:"):
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            memory = database in ("", ":memory:")
            synchronous = _synchronous(parsed.query.get("synchronous", "normal"))
            parsed = parsed.difference_update_query(["synchronous"])
            path: Path | None = None
            if not create and not memory and not database.startswith("file:"):
                path = Path(database).expanduser()
                if not path.exists():
                    raise StoreUnavailable(
                        f"no database at {path} (nothing has been run against it yet;"
                        " pass --db or set DEMIARCH_FLOW_DB to read another one)"
                    )
            if read_only and path is not None:
                engine = create_engine(parsed, creator=functools.partial(read_only_connect, path))
                event.listen(engine, "connect", _sqlite_read_only_pragmas)
                return engine
            engine = create_engine(
                parsed,
                connect_args={"check_same_thread": False, "timeout": 30},
                poolclass=StaticPool if memory else None,
            )
            event.listen(
                engine,
                "connect",
                _sqlite_read_only_pragmas
                if read_only
                else functools.partial(_sqlite_pragmas, synchronous=synchronous),
            )
            return engine
        timeout = (
            {} if "connect_timeout" in parsed.query else {"connect_timeout": CONNECT_TIMEOUT_S}
        )
        return create_engine(
            parsed, pool_size=10, max_overflow=20, pool_pre_ping=True, connect_args=timeout
        )
    except (ArgumentError, ImportError, OSError) as exc:
        raise StoreUnavailable(
            f"cannot open database {safe_url(url)}: {redact(str(exc))}"
            " (for PostgreSQL install the extra: pip install 'demiarch-flow[postgres]')"
        ) from None


def _synchronous(value: Any) -> str:
    """The ``synchronous`` PRAGMA a SQLite URL's ``?synchronous=`` asks for."""
    found = SQLITE_SYNCHRONOUS.get(str(value).lower()) if isinstance(value, str) else None
    if found is None:
        raise StoreUnavailable(
            f"the database URL's synchronous={value!r} is not one of"
            f" {', '.join(SQLITE_SYNCHRONOUS)} (normal survives a crash of the process,"
            " full also a power loss, at the cost of a disk sync per commit)"
        )
    return found


@contextlib.contextmanager
def opening(url: str) -> Iterator[None]:
    """Map a database error while opening ``url`` to :class:`StoreUnavailable` (exit 3)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"cannot open database {safe_url(url)}: {_short(exc)}") from None


class SqlStore:
    """The :class:`~demiarch_flow.store.base.Store` over a SQLAlchemy engine.

    Use :meth:`open` (which checks, creates or upgrades the schema) rather than the
    constructor. Opened on a SQLite file at this release's revision, it writes through its own
    ``sqlite3`` connection (:class:`_Writer`) and creates the engine only when something needs
    it (a report, budgets, a resume): a run then never imports SQLAlchemy.
    """

    def __init__(self, engine: Engine | None, url: str, *, writer: _Writer | None = None) -> None:
        self._engine = engine
        self.url = url
        self._engine_lock = threading.Lock()
        self._sessions_made: sessionmaker[Session] | None = None
        self._write_lock = trio.Lock()
        self._limiter = trio.CapacityLimiter(4)
        self._queue: list[_Pending] = []
        self._checkpoints: dict[str, tuple[_CheckpointOp, _Pending]] = {}
        """The queued checkpoint of each run, merged in place: the latest state and every
        journal row since the last commit (three moves between commits cost one UPDATE)."""
        self._definitions: set[str] = set()
        """Workflow texts known to be stored (by SHA-256)."""
        self._recorded: dict[str, tuple[int, float]] = {}
        """Run → the number of its next request, committed with the run (``attempt_started``
        then has nothing to do), and when (trio's clock)."""
        self._writer = writer if writer is not None else _Writer(engine)
        """SQLite's one write connection, kept open between commits (see :class:`_Writer`)."""
        self._inline = False
        """A commit on trio's own thread is under way: it must not wait for a lock."""
        self.commits = 0
        """Write transactions committed so far (``bench/run.py`` prints them per run): one
        integer addition a commit, counted where the store commits — SQLite's commits run on
        the driver's connection, so SQLAlchemy's ``commit`` event no longer sees them."""

    @classmethod
    def open_sync(cls, url: str, *, create: bool = True, read_only: bool = False) -> SqlStore:
        """Open the database and bring its schema to this release's (blocking; call from a
        thread or sync code). See :func:`~demiarch_flow.store.schema.prepare`.

        Args:
            url: the database URL.
            create: ``False`` for commands that must not create one: a database that does not
                exist (or has no tables) is an error rather than created.
            read_only: for commands that only read (``history``, ``usage``, ``runs list``,
                ``runs show``): implies ``create=False``; SQLite is opened read-only and never
                backed up or upgraded, so a file the user cannot write can still be read, and
                one that needs an upgrade is refused saying so.

        Raises:
            StoreUnavailable: the database cannot be reached or written, does not exist
                (``create=False``), or its schema does not fit
                (:class:`~demiarch_flow.errors.SchemaMismatch`).
        """
        create = create and not read_only
        if not read_only:
            writer = _Writer.at_head(url, create=create)
            if writer is not None:
                return cls(None, url, writer=writer)
        engine = open_engine(url, create=create, read_only=read_only)
        try:
            from .schema import prepare

            with opening(url):
                prepare(engine, create=create, read_only=read_only)
            store = cls(engine, url)
            if not read_only:
                with opening(url):
                    store._writer.open()  # so that the first commit may run inline too
        except BaseException:
            engine.dispose()
            raise
        return store

    @classmethod
    async def open(cls, url: str, *, create: bool = True, read_only: bool = False) -> SqlStore:
        """:meth:`open_sync` from trio. Cancelling abandons the worker thread, so Ctrl-C is
        not held up by a server that never answers (the thread ends with the process)."""
        return await trio.to_thread.run_sync(
            functools.partial(cls.open_sync, url, create=create, read_only=read_only),
            abandon_on_cancel=True,
        )

    def close(self) -> None:
        """Write queued journal rows, then release the connections."""
        try:
            self.flush_sync()
        finally:
            self._writer.dispose()
            if self._engine is not None:
                self._engine.dispose()

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (created at first use on a store that writes without it)."""
        engine = self._engine
        if engine is None:
            with self._engine_lock:
                engine = self._engine
                if engine is None:
                    engine = self._engine = open_engine(self.url)
        return engine

    @property
    def _sessions(self) -> sessionmaker[Session]:
        made = self._sessions_made
        if made is None:
            from sqlalchemy.orm import sessionmaker

            made = self._sessions_made = sessionmaker(self.engine, expire_on_commit=False)
        return made

    # ------------------------------------------------------------------ plumbing

    async def _write(self, op: Callable[[Tx], T]) -> T:
        """Run ``op`` in the next group commit: whoever holds the writer lock runs every queued
        write (checkpoints and journal rows included) in one transaction and one thread hop."""
        pending = _Pending(op)
        self._queue.append(pending)
        # The lock's ``acquire`` yields to trio's scheduler even when the lock is free: that
        # trip is what lets the other runs' writes of the moment join this commit (taken
        # without it, a stream's generation id and its answer each commit alone).
        async with self._write_lock:
            await self._group_commit(pending)
        return pending.result()  # type: ignore[no-any-return]

    async def _group_commit(self, pending: _Pending) -> None:
        """Under the write lock: commit the queue, ``pending`` in it (unless another holder
        of the lock committed it already)."""
        if pending.done:
            return
        batch = self._take_queue()
        if self._writer.inline:
            self._inline = True
            try:
                self._commit(batch)
            finally:
                self._inline = False
        if not pending.done:  # not inline, or it would have waited, or it failed
            # Shielded: cancelled before the thread starts, the batch — other tasks' writes
            # too, taken off the queue — would be dropped, and those tasks told it was
            # written. Once started, the thread cannot be cancelled anyway.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._commit, batch, limiter=self._limiter)
        if self._writer.checkpoint_due():
            if self._writer.checkpointer.too_big:
                # the passive checkpoints did not keep up (see _copy_wal): the WAL is started
                # over here, under the write lock, which no other write of ours can hold up
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._writer.restart_wal, limiter=self._limiter)
            else:
                self._writer.request_checkpoint()  # in its own thread: no run waits for it

    def _take_queue(self) -> list[_Pending]:
        """Everything queued, in order (a run's checkpoint sits where it was first queued)."""
        self._checkpoints = {}
        batch, self._queue = self._queue, []
        return batch

    def _commit(self, batch: list[_Pending]) -> None:
        """All of ``batch`` in one transaction; if any fails, each alone, so one bad write
        cannot take the others down with it.

        Inline (on trio's thread, ``self._inline``) only if the write lock is free at once and
        the transaction succeeds: otherwise nothing is settled, and the caller commits the batch
        from a worker thread, which waits for another process's lock (the busy timeout)."""
        inline = self._inline
        try:
            with self._writing(wait=not inline) as conn:
                values = [p.op(conn) for p in batch]
        except _Busy:
            return
        except Exception as exc:
            if inline:  # rolled back: the worker thread redoes it, group first, then each alone
                return
            if len(batch) == 1:
                batch[0].settle(error=exc)
                return
            for p in batch:
                try:
                    with self._writing() as conn:
                        p.settle(value=p.op(conn))
                except Exception as exc:
                    p.settle(error=exc)
            return
        for p, value in zip(batch, values, strict=True):
            p.settle(value=value)

    @contextlib.contextmanager
    def _writing(self, *, wait: bool = True) -> Iterator[Tx]:
        """A write transaction. On SQLite it takes the write lock at its start (``BEGIN
        IMMEDIATE``): a deferred one that reads first and writes later cannot wait for another
        process's write lock in WAL mode and fails at once with "database is locked". SQLite
        writes on the store's one kept connection (:class:`_Writer`); PostgreSQL checks one out
        of the pool (pinged first: a server may have dropped an idle one)."""
        if not self._writer.sqlite:
            with self.engine.begin() as conn:
                yield SaTx(conn)
            self.commits += 1
            return
        with self._writer.transaction(wait=wait) as tx:
            yield tx
        self.commits += 1

    async def _read_conn(self, fn: Callable[[Connection], T]) -> T:
        """``fn`` on a connection in a read transaction (after committing the queue)."""

        def in_conn(session: Session) -> T:
            return fn(session.connection())

        return await self._read(in_conn)

    async def _read(self, fn: Callable[[Session], T]) -> T:
        if self._queue:  # read your own writes: commit the queue first
            await self._write(_nothing)
        return await trio.to_thread.run_sync(
            functools.partial(self._in_session, fn), limiter=self._limiter
        )

    def _in_session(self, fn: Callable[[Session], T]) -> T:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with self._sessions.begin() as session:
                return fn(session)
        except (UnknownConversation, PersistenceError):
            raise
        except SQLAlchemyError as exc:
            raise PersistenceError(f"database error: {_short(exc)}") from None

    def flush_sync(self) -> None:
        """Write any queued journal rows now (blocking); a failure is logged, not raised."""
        batch = self._take_queue()
        if batch:
            self._commit(batch)
            for p in batch:
                if p.error is not None:
                    log.warning("could not write queued journal rows: %s", _short(p.error))

    # ------------------------------------------------------------------ the Store interface

    async def begin_run(self, run: NewRun) -> BeganRun:
        """Store the run, its definition, the user's message and the first attempt record, in
        one transaction that has committed when this returns."""
        define = run.workflow_sha256 not in self._definitions and bool(run.definition)
        try:
            began = await self._write(functools.partial(_begin_run, run=run, define=define))
        except UnknownConversation:
            # Still record the run (without a conversation), so its failure is auditable.
            await self._write(functools.partial(_add_run, run=run, conversation_id=None))
            raise
        self._definitions.add(run.workflow_sha256)
        if began.first_attempt is not None:
            self._recorded[run.run_id] = (began.first_attempt, trio.current_time())
        return began

    async def checkpoint(self, checkpoint: Checkpoint, *, durable: bool) -> None:
        queued = self._checkpoints.get(checkpoint.run_id)
        if queued is not None:
            op, pending = queued
            op.merge(checkpoint)
        else:
            op = _CheckpointOp(checkpoint)
            pending = _Pending(op)
            self._checkpoints[checkpoint.run_id] = (op, pending)
            self._queue.append(pending)
        if durable or len(self._queue) > 256:
            await self._write(_nothing)
            if durable:  # the run's own write may have failed where the others did not
                pending.result()

    async def attempt_started(self, attempt: AttemptRow, owner: str | None = None) -> int:
        ahead = self._recorded.pop(attempt.run_id, None)
        if ahead is not None and trio.current_time() - ahead[1] < OWNED_FOR_SURE_S:
            # Committed with the run moments ago, by its owner: nobody can have taken it over
            # since (that needs a heartbeat older than the stale limit), so it may leave now.
            return ahead[0]
        if ahead is not None:  # long ago (a throttle wait): prove ownership before sending
            await self._write(functools.partial(_fence_reused, attempt=attempt, owner=owner))
            return ahead[0]
        number: int = await self._write(
            functools.partial(_runs.insert_attempt, attempt=attempt, owner=owner)
        )
        return number

    async def attempt_unsent(self, run_id: str, why: str, at: datetime) -> None:
        ahead = self._recorded.pop(run_id, None)
        if ahead is not None:
            row = AttemptRow(run_id, ahead[0], "", at, at, None, why)
            self._queue.append(_Pending(functools.partial(_runs.end_attempt, attempt=row)))

    async def attempt_ended(self, attempt: AttemptRow) -> None:
        self._queue.append(_Pending(functools.partial(_runs.end_attempt, attempt=attempt)))

    async def attempt_progress(self, attempt: AttemptRow) -> None:
        await self._write(functools.partial(_runs.attempt_progress, attempt=attempt))

    async def attempt_answered(self, attempt: AttemptRow) -> None:
        await self._write(functools.partial(_runs.attempt_answered, attempt=attempt))

    async def heartbeat(self, owner: str, at: datetime) -> None:
        await self._write(functools.partial(_runs.heartbeat, owner=owner, at=at))

    async def reopen_run(
        self,
        checkpoint: Checkpoint,
        owner: str | None,
        at: datetime,
        *,
        expect: tuple[RunStatus, str | None] | None = None,
        definition: Definition | None = None,
    ) -> bool:
        return await self._write(
            functools.partial(
                _runs.reopen, cp=checkpoint, owner=owner, at=at, expect=expect,
                definition=definition,
            )
        )  # fmt: skip

    async def book_billed(self, billed: BilledAttempt) -> None:
        await self._write(functools.partial(_runs.book_billed, billed=billed))

    async def load_run(self, run_id: str) -> StoredRun | None:
        runs = await self._read_conn(
            functools.partial(_runs.load_runs, run_id=run_id, with_definition=True)
        )
        return runs[0] if runs else None

    async def list_runs(
        self, *, status: RunStatus | None, since: datetime | None, limit: int
    ) -> list[StoredRun]:
        return await self._read_conn(
            functools.partial(_runs.load_runs, status=status, since=since, limit=limit)
        )

    async def journal(self, run_id: str) -> tuple[JournalEntry, ...]:
        return await self._read_conn(functools.partial(_runs.load_journal, run_id=run_id))

    async def save_reply(
        self, reply: Reply, end: RunEnd, checkpoint: Checkpoint | None = None
    ) -> str:
        return await self._write(
            functools.partial(_save_reply, reply=reply, end=end, cp=checkpoint)
        )

    async def finish_run(self, end: RunEnd, checkpoint: Checkpoint | None = None) -> None:
        await self._write(functools.partial(_finish, end=end, cp=checkpoint))

    # ------------------------------------------------------------------ recovery (``recover``)

    async def import_reply(self, reply: Reply, final_state: str | None) -> ImportResult:
        """Store a reply read back from a recovery file, unless its run already has one.

        A run stores at most one assistant reply, so that is the idempotency key (not the
        generation id). The run is marked succeeded, in ``final_state`` (``None``: it keeps its
        current state). Returns ``"imported"``, ``"present"`` (nothing written) or
        ``"no_conversation"`` (the conversation is gone; nothing written).
        """
        return await self._write(
            functools.partial(_import_reply, reply=reply, final_state=final_state)
        )

    async def missing_replies(self, runs: Sequence[tuple[str, str]]) -> set[str]:
        """Of ``(run_id, conversation_id)`` pairs, the runs :meth:`import_reply` would import:
        no assistant reply yet, and the conversation still exists."""

        def read(session: Session) -> set[str]:
            from sqlalchemy import select

            from .tables import ChatMessage, Conversation

            replied: set[str | None] = set()
            conversations: set[str] = set()
            for start in range(0, len(runs), 500):
                chunk = runs[start : start + 500]
                replied.update(
                    session.scalars(
                        select(ChatMessage.run_id).where(
                            ChatMessage.run_id.in_([r for r, _ in chunk]),
                            ChatMessage.role == "assistant",
                        )
                    ).all()
                )
                conversations.update(
                    session.scalars(
                        select(Conversation.id).where(Conversation.id.in_({c for _, c in chunk}))
                    ).all()
                )
            return {r for r, c in runs if r not in replied and c in conversations}

        return await self._read(read)

    # ------------------------------------------------------------------ reports

    async def conversations(self, limit: int) -> list[ConversationSummary]:
        def read(session: Session) -> list[ConversationSummary]:
            from sqlalchemy import func, select

            from .tables import ChatMessage, Conversation

            counts = (
                select(ChatMessage.conversation_id, func.count().label("n"))
                .group_by(ChatMessage.conversation_id)
                .subquery()
            )
            rows = session.execute(
                select(Conversation, counts.c.n)
                .join(counts, counts.c.conversation_id == Conversation.id, isouter=True)
                .order_by(Conversation.updated_at.desc())
                .limit(limit)
            ).all()
            return [ConversationSummary(c.id, c.title, c.updated_at, n or 0) for c, n in rows]

        return await self._read(read)

    async def messages(self, conversation_id: str, limit: int) -> list[StoredMessage]:
        def read(session: Session) -> list[StoredMessage]:
            from sqlalchemy import select

            from .tables import ChatMessage, Conversation

            if session.get(Conversation, conversation_id) is None:
                raise UnknownConversation(conversation_id)
            rows = session.scalars(
                select(ChatMessage)
                .where(ChatMessage.conversation_id == conversation_id)
                .order_by(ChatMessage.created_at.desc())
                .limit(limit)
            ).all()
            return [_stored(m) for m in reversed(rows)]

        return await self._read(read)

    async def usage(self, since: datetime | None, by: str) -> list[UsageRow]:
        """Calls, tokens and spend grouped by model, day or conversation (summed exactly)."""

        def read(session: Session) -> list[UsageRow]:
            from sqlalchemy import select

            from .tables import LlmUsage

            query = select(LlmUsage)
            if since is not None:
                query = query.where(LlmUsage.request_timestamp >= since)
            groups: dict[str, list[int | Decimal]] = {}
            for row in session.scalars(query):
                if by == "day":
                    key = row.request_timestamp.date().isoformat()
                elif by == "conversation":
                    key = row.conversation_id
                else:
                    key = row.model
                acc = groups.setdefault(key, [0, 0, 0, Decimal(0), 0, Decimal(0)])
                acc[0] += 1
                acc[1] += row.prompt_tokens or 0  # NULL: a count the provider never gave
                acc[2] += row.completion_tokens or 0
                acc[3] += row.cost_usd
                if row.outcome == "interrupted":
                    acc[4] += 1
                    acc[5] += row.cost_usd
            return [
                UsageRow(k, int(v[0]), int(v[1]), int(v[2]), Decimal(v[3]), int(v[4]),
                         Decimal(v[5]))
                for k, v in sorted(groups.items())
            ]  # fmt: skip

        return await self._read(read)

    async def count_rows(self) -> dict[str, int]:
        """Rows per table (for tests and ``demo``)."""

        def read(session: Session) -> dict[str, int]:
            from sqlalchemy import func, select

            from .tables import ChatMessage, Conversation, LlmUsage, RunEvent, WorkflowRun

            return {
                t.__tablename__: session.scalar(select(func.count()).select_from(t)) or 0
                for t in (Conversation, ChatMessage, LlmUsage, WorkflowRun, RunEvent)
            }

        return await self._read(read)


# ---------------------------------------------------------------------- transactions


class _Busy(Exception):
    """Another process holds SQLite's write lock: an inline commit would have to wait."""


#: Inline commits between two WAL checkpoints (run by a :class:`_Checkpointer`).
CHECKPOINT_EVERY = 200

#: WAL pages (4 KiB each) past which the writer starts the WAL over itself (SQLite's own
#: automatic checkpoint starts at 1,000 pages); see :func:`_copy_wal`.
WAL_RESTART_PAGES = 1000


class _Writer:
    """SQLite's write connection, opened once and kept: a commit then costs its statements and
    the ``COMMIT``, not a pool checkout, a reset and a rollback on return as well.

    It also says whether a commit may run inline, on trio's own thread, instead of paying a
    hop to a worker thread and back: only when the file is in WAL mode with
    ``synchronous=NORMAL``. Such a commit appends the transaction's pages to the WAL, in the
    OS's cache, with no ``fsync``, and never waits for a reader: it takes microseconds. What
    could make it long is kept off trio's thread: another process's write lock (the inline
    ``BEGIN IMMEDIATE`` gives up at once, with a busy timeout of 0, and the same batch is
    committed from a worker thread, which waits for the lock), and the WAL checkpoint (copying
    the WAL into the file and syncing both; automatic checkpoints are off on this connection,
    and one runs every :data:`CHECKPOINT_EVERY` inline commits in a :class:`_Checkpointer`'s
    thread, on a connection of its own, while commits go on).
    ``synchronous=FULL`` syncs the WAL at every commit, and PostgreSQL's commit is a round
    trip: those commit from a worker thread, as before.

    Opened by :meth:`at_head` on a SQLite file at this release's revision, it is a ``sqlite3``
    connection of its own, set up as :func:`open_engine`'s are (busy timeout, WAL,
    foreign keys, ``synchronous``), and SQLAlchemy is not imported unless a statement built
    as it goes (a resume, a recovery) needs a SQLAlchemy connection in the same transaction
    (:attr:`~._fast.Tx.sa`, made once over this connection). Otherwise it is the driver's
    connection of one of the engine's. The store's statements run on it as a
    :class:`~._fast.LiteTx` either way.
    """

    __slots__ = (
        "__weakref__", "_conn", "_engine", "_path", "_sa", "_since_checkpoint", "_tx",
        "checkpointer", "inline",
    )  # fmt: skip

    def __init__(self, engine: Engine | None, path: Path | None = None) -> None:
        self._engine = engine
        self._path = path
        """The file this writer opens itself (no engine)."""
        self._conn: sqlite3.Connection | None = None
        self._sa: Connection | None = None
        """A SQLAlchemy connection over ``_conn`` (the engine's own, or made at first need)."""
        self._tx: LiteTx | None = None
        self.inline = False
        """Known once the connection is open (``open_sync`` opens it; a store built directly
        on an engine opens it at its first commit, which then runs in a thread)."""
        self._since_checkpoint = 0
        self.checkpointer = _Checkpointer()
        # a writer dropped without close() (a store forgotten) ends its checkpointer's thread
        weakref.finalize(self, self.checkpointer.stop, 0.0)
        if engine is not None and engine.dialect.name == "sqlite":
            from sqlalchemy import event

            # A store dropped without close() (a process dying, in tests) must not leave its
            # connection checked out: the pool would warn when the collector finds it.
            event.listen(engine, "engine_disposed", _Writer._disposed(weakref.ref(self)))

    @classmethod
    def at_head(cls, url: str, *, create: bool = False) -> _Writer | None:
        """The writer of ``url`` if it is a plain SQLite file (``sqlite:///path``) at this
        release's revision, with every table and column of it; ``None`` for anything else —
        another URL, a missing file, another revision, a missing column, any driver error —
        which :func:`~demiarch_flow.store.schema.prepare` then creates, upgrades or refuses
        with its own message, as it checks (here without SQLAlchemy) the common case.

        With ``create``, a file that does not exist yet, or holds nothing at all, is first
        created at head here too (:func:`_create_fresh`), without SQLAlchemy or Alembic: the
        first command on a new database (a ``batch`` on a fresh folder) then starts as fast as
        the next. Every other case (behind, unversioned, broken, foreign tables) is left to
        ``prepare``."""
        path = sqlite_path(url)
        if path is None or "~" in url:
            return None  # (SQLAlchemy opens ``~`` as written, not as the home folder)
        if not path.is_file():
            if not create:
                return None
            _create_fresh(path)
            return cls._checked(path)
        writer = cls._checked(path)
        if writer is None and create and _create_fresh(path):
            writer = cls._checked(path)
        return writer

    @classmethod
    def _checked(cls, path: Path) -> _Writer | None:
        """The writer of ``path`` if its schema is at head (see :meth:`at_head`)."""
        if not path.is_file():
            return None
        writer = cls(None, path)
        try:
            cur = writer._connection().cursor()
            try:
                from ._sqlite_sql import HEAD, LAYOUT

                if cur.execute("SELECT version_num FROM alembic_version").fetchall() != [(HEAD,)]:
                    raise LookupError(HEAD)
                for table, columns in LAYOUT.items():
                    have = {r[1] for r in cur.execute(f'PRAGMA table_info("{table}")')}
                    if not have.issuperset(columns):
                        raise LookupError(table)
            finally:
                cur.close()
        except (sqlite3.Error, LookupError):
            writer.close()
            return None
        return writer

    @property
    def sqlite(self) -> bool:
        """Whether the database is SQLite (else there is no kept connection)."""
        return self._engine is None or self._engine.dialect.name == "sqlite"

    @staticmethod
    def _disposed(writer: weakref.ref[_Writer]) -> Callable[[Engine], None]:
        def close(_engine: Engine) -> None:
            found = writer()
            if found is not None:
                found.dispose(timeout_s=0)

        return close

    def open(self) -> None:
        """Open the connection now (SQLite; nothing for another database)."""
        if self.sqlite:
            self._connection()

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None or (self._sa is not None and (self._sa.closed or self._sa.invalidated)):
            if self._engine is None:
                assert self._path is not None
                conn = sqlite3.connect(self._path, check_same_thread=False, timeout=_SQLITE_WAIT_S)
                try:
                    _sqlite_pragmas(conn, None)
                except BaseException:
                    conn.close()
                    raise
            else:
                self._sa = self._engine.connect()
                conn = self._sa.connection.dbapi_connection  # type: ignore[assignment]
                assert conn is not None
            cur = conn.cursor()
            try:
                mode = cur.execute("PRAGMA journal_mode").fetchone()[0]
                synchronous = cur.execute("PRAGMA synchronous").fetchone()[0]
                self.inline = str(mode).lower() == "wal" and synchronous == 1  # NORMAL
                if self.inline:
                    cur.execute("PRAGMA busy_timeout=0")
                    cur.execute("PRAGMA wal_autocheckpoint=0")
            finally:
                cur.close()
            self._conn = conn
            self._tx = LiteTx(conn, self._sa_connection)
            weakref.finalize(self, (self._sa or conn).close)
        return conn

    def _sa_connection(self) -> Connection:
        """A SQLAlchemy connection in the writer's transaction: the engine's own, or one made
        (once) over the writer's ``sqlite3`` connection, which SQLAlchemy never resets (the
        writer commits and rolls back itself)."""
        sa = self._sa
        if sa is None:
            from sqlalchemy import create_engine
            from sqlalchemy.pool import StaticPool

            conn = _WriterOwnsRollback(self._conn)
            engine = create_engine(
                "sqlite://", creator=lambda: conn, poolclass=StaticPool, pool_reset_on_return=None
            )
            sa = self._sa = engine.connect()
        return sa

    @contextlib.contextmanager
    def transaction(self, *, wait: bool) -> Iterator[LiteTx]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` on the kept connection; without ``wait``,
        :class:`_Busy` at once if another process holds the write lock. After a failure the
        connection is closed, and the next transaction opens another."""
        conn = self._connection()
        tx = self._tx
        assert tx is not None
        self._begin(tx, wait)  # _Busy: nothing began, the connection stays
        try:
            yield tx
            # Committed on the driver's connection: the statements ran on its cursor, and
            # SQLAlchemy's transaction object (its events, its reset) would cost more than
            # they do; one that a Core ``execute`` in the block began is committed through it.
            sa = self._sa
            if sa is not None and sa.in_transaction():
                sa.commit()
            else:
                conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            self.close()
            raise
        self._since_checkpoint += 1

    def _begin(self, tx: LiteTx, wait: bool) -> None:
        if not self.inline:
            tx.driver_sql("BEGIN IMMEDIATE")
            return
        if not wait:
            try:
                tx.driver_sql("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise _Busy from None
                raise
            return
        tx.driver_sql(f"PRAGMA busy_timeout={int(_SQLITE_WAIT_S * 1000)}")
        try:
            tx.driver_sql("BEGIN IMMEDIATE")
        finally:
            tx.driver_sql("PRAGMA busy_timeout=0")

    def checkpoint_due(self) -> bool:
        return self.inline and self._since_checkpoint >= CHECKPOINT_EVERY

    def restart_wal(self) -> None:
        """Copy the whole WAL into the file and have the next write start it over (``RESTART``),
        on the writer's own connection, under the store's write lock (run from a worker thread:
        it syncs the file). It waits at most 100 ms for another process's readers, holding every
        write off meanwhile; if one still holds an old snapshot, the WAL cannot start over, and
        the next try waits until the WAL has grown by another :data:`WAL_RESTART_PAGES` (so a
        long reader costs one such wait per 4 MB written, not one per checkpoint). A failure is
        logged, never raised: the commit that asked is done."""
        self._since_checkpoint = 0
        checkpointer = self.checkpointer
        checkpointer.too_big = False
        failed = "WAL could not be started over: %s"
        try:
            conn = self._connection()
            conn.execute("PRAGMA busy_timeout=100")
            try:
                busy, pages, _copied = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            finally:
                conn.execute("PRAGMA busy_timeout=0")  # the inline writer never waits
        except Exception as exc:
            log.warning(failed, _short(exc))
            return
        if busy:
            checkpointer.restart_at = pages + WAL_RESTART_PAGES
            log.warning(
                failed, f"another connection holds a read transaction ({pages} pages in the WAL)"
            )
        else:
            checkpointer.restart_at = WAL_RESTART_PAGES

    def request_checkpoint(self) -> None:
        """Have the WAL copied into the database file soon, by the checkpointer's thread; a
        failure to ask is logged, not raised (the commit that asked is done, and the WAL keeps
        every commit until a later request)."""
        self._since_checkpoint = 0
        try:
            row = self._connection().execute("PRAGMA database_list").fetchone()
            if row is not None and row[2]:  # (seq, name, file); "" for a database in memory
                self.checkpointer.request(row[2])
        except Exception as exc:
            log.warning("could not start the WAL checkpoint: %s", _short(exc))

    def dispose(self, timeout_s: float = 1.0) -> None:
        """Close for good: the connection, and the checkpointer's thread (waiting that long for
        the checkpoint in hand). :meth:`close` alone is for a failed transaction: the next one
        opens another connection, and checkpoints go on."""
        self.close()
        self.checkpointer.stop(timeout_s)

    def close(self) -> None:
        conn, self._conn, self._tx = self._conn, None, None
        sa, self._sa = self._sa, None
        with contextlib.suppress(Exception):
            if sa is not None:
                if self._engine is not None and self.inline:
                    # the engine's connection carries the writer's pragmas (no busy timeout, no
                    # automatic checkpoint): dropped, not handed to the pool's other users
                    sa.invalidate()
                sa.close()
                if self._engine is None:
                    sa.engine.dispose()  # the one made over ``conn``
        if conn is not None and self._engine is None:
            with contextlib.suppress(Exception):
                conn.close()


class _Checkpointer:
    """SQLite's WAL checkpoint, off every run's path.

    A checkpoint copies the WAL into the database file and syncs it: about 10 ms on this
    project's disk, every :data:`CHECKPOINT_EVERY` commits. Awaited by the commit that made it
    due, under the store's write lock, it was one sequential run in seventy and the whole p99
    (14.8 ms against 2.1 ms without it). So it runs in a thread of its own, on a connection of
    its own (:func:`_copy_wal`). Requests that come while one runs make one more. A failure is
    logged, not raised: the WAL keeps the commits, and the next one retries. The thread is a
    daemon, started at the first request (again in a forked child, which does not inherit it),
    and :meth:`stop` ends it after the checkpoint in hand (the writer's finalizer too).
    """

    __slots__ = ("_due", "_path", "_pid", "_stopping", "_thread", "restart_at", "too_big")

    def __init__(self) -> None:
        self.too_big = False
        """The last checkpoint left the WAL past :attr:`restart_at` pages: the writer is to
        start it over (:meth:`_Writer.restart_wal`)."""
        self.restart_at = WAL_RESTART_PAGES
        self._due = threading.Event()
        self._path = ""
        self._pid = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    def request(self, path: str) -> None:
        self._path = path
        thread = self._thread
        if thread is None or self._pid != os.getpid() or not thread.is_alive():
            self._pid, self._stopping = os.getpid(), False
            thread = self._thread = threading.Thread(
                target=self._serve, name="demiarch-flow WAL checkpoint", daemon=True
            )
            thread.start()
        self._due.set()

    def stop(self, timeout_s: float = 1.0) -> None:
        """End the thread once the checkpoint in hand (if any) is done, waiting that long."""
        thread = self._thread
        if thread is None or self._pid != os.getpid():
            return
        self._stopping = True
        self._due.set()
        if thread is not threading.current_thread():  # a finalizer may run on this thread
            thread.join(timeout_s)

    def _serve(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._due.wait()
                self._due.clear()
                if self._stopping:
                    return
                try:
                    if conn is None:
                        conn = sqlite3.connect(
                            self._path, timeout=_SQLITE_WAIT_S, isolation_level=None
                        )
                    self.too_big = _copy_wal(conn) > self.restart_at
                except Exception as exc:  # never kill the thread: the next request retries
                    log.warning("WAL checkpoint failed: %s", _short(exc))
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                    conn = None
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()


def _copy_wal(conn: sqlite3.Connection) -> int:
    """Copy the WAL into the database file, waiting for nobody; the pages in the WAL.

    ``PASSIVE`` never waits for readers or writers, and the writer's connection goes on
    appending meanwhile. But SQLite starts the WAL over only at a write transaction that began
    with every frame copied, so under a steady stream of commits (a batch, a worker) the frames
    written during a passive checkpoint keep it from ever starting over, and the WAL grew
    without end (74 MB after 6,000 commits of 3 KB rows). Once it is past the bound, the
    writer starts it over itself, under its write lock (:meth:`_Writer.restart_wal`): a
    ``RESTART`` from this thread raced the writer's own commits and often left it growing.
    """
    _busy, pages, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(pages)


def _create_fresh(path: Path) -> bool:
    """Create the tables of head in the SQLite file ``path`` (made, with its folder, if
    missing) when it holds nothing at all: the DDL Alembic's migrations leave, generated ahead
    of time (:data:`~._sqlite_sql.FRESH`), and ``alembic_version`` stamped at head. Whether
    it created them.

    Serialised as :func:`~demiarch_flow.store.schema.prepare` serialises creating (``BEGIN
    EXCLUSIVE``, the schema read again under the lock), so that many processes opening a new
    file at once create it exactly once; SQLite's DDL is transactional, so a failure leaves the
    file empty. Any error is ``False`` (never raised): ``prepare`` then opens the file and
    says what is wrong, or finds it created by another process."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=_SQLITE_WAIT_S, isolation_level=None)
    except (OSError, sqlite3.Error):
        return False
    try:
        _sqlite_pragmas(conn, None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            if conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is not None:
                conn.execute("ROLLBACK")
                return False
            from ._sqlite_sql import FRESH, HEAD

            for statement in FRESH:
                conn.execute(statement)
            conn.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (HEAD,))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return True


class _WriterOwnsRollback:
    """The writer's ``sqlite3`` connection as the SQLAlchemy engine made over it sees it: the
    same connection, but its ``rollback`` does nothing. That engine is made in the middle of
    a transaction, and SQLAlchemy rolls a new engine's first connection back once it has read
    the server's settings: that would drop the writes the transaction made before it (and end
    the ``BEGIN IMMEDIATE``). The writer rolls back the connection itself on any failure."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        object.__setattr__(self, "_conn", conn)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._conn, name, value)

    def rollback(self) -> None:
        """Nothing: see the class doc."""


def _database_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the database's (the driver's, or SQLAlchemy's if it is loaded)."""
    if isinstance(exc, sqlite3.Error):
        return True
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    return sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.SQLAlchemyError)


class _CheckpointOp:
    """A queued checkpoint write; later checkpoints of the same run merge into it."""

    __slots__ = ("cp",)

    def __init__(self, cp: Checkpoint) -> None:
        self.cp = cp

    def merge(self, later: Checkpoint) -> None:
        self.cp = dataclasses.replace(later, entries=(*self.cp.entries, *later.entries))

    def __call__(self, tx: Tx) -> None:
        _runs.checkpoint(tx, self.cp)


class _Pending:
    """One queued write and, once committed, its outcome."""

    __slots__ = ("done", "error", "op", "value")

    def __init__(self, op: Callable[[Tx], Any]) -> None:
        self.op = op
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None

    def settle(self, *, value: Any = None, error: BaseException | None = None) -> None:
        self.done, self.value, self.error = True, value, error

    def result(self) -> Any:
        if self.error is None:
            return self.value
        if isinstance(self.error, UnknownConversation | PersistenceError):
            raise self.error
        if _database_error(self.error):
            raise PersistenceError(f"database error: {_short(self.error)}") from None
        raise self.error


def _nothing(tx: Tx) -> None:
    return None


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__)[:300]


def _stored(m: ChatMessage) -> StoredMessage:
    return StoredMessage(
        m.id, m.conversation_id, m.role, m.content, m.model, m.created_at, m.run_id, m.token_count
    )


# The statements every run writes, by name (:mod:`._statements`), run on the DB-API cursor
# (:mod:`._fast`): built and compiled once, or generated ahead of time for SQLite.
_INS_CONV = Fixed("insert_conversation")
_INS_MSG = Fixed("insert_message")
_INS_RUN = Fixed("insert_run")
_INS_USAGE = Fixed("insert_usage")
_CONV_EXISTS = Fixed("conversation_exists")
_HISTORY = Fixed("history")
_TOUCH_CONV = Fixed("touch_conversation")
_ENDS = {
    (fenced, again): Fixed(f"end{'_owned' if fenced else ''}{'_again' if again else ''}")
    for fenced in (False, True)
    for again in (False, True)
}
"""The run's end: (owner-fenced, even if it ended already) → statement (see ``_finish``)."""
_ENDS_WITH_STATE = {
    fenced: Fixed(f"end{'_owned' if fenced else ''}_with_state") for fenced in (False, True)
}
"""The run's end with its last checkpoint's JSON, even if it ended already: owner-fenced →
statement."""
_REPLY_OF_RUN = Fixed("reply_of_run")
_OWNER_OF_RUN = Fixed("owner_of_run")


def _begin_run(tx: Tx, run: NewRun, define: bool = False) -> BeganRun:
    if define:
        _runs.store_definition(tx, run.workflow_sha256, run.workflow, run.definition, run.at)
    if run.resumed:
        began = _began_already(tx, run)
        if began is not None:
            if run.first_attempt is not None:
                began = dataclasses.replace(
                    began, first_attempt=_runs.insert_attempt(tx, run.first_attempt, run.owner)
                )
            return began
    created = run.conversation_id is None
    conv_id = run.create_with_id if created else run.conversation_id
    assert conv_id is not None
    at = run.at
    history: list[StoredMessage] = []
    if created:
        _INS_CONV.execute(
            tx,
            {"id": conv_id, "project_id": run.project_id, "title": run.title,
             "created_at": at, "updated_at": at},
        )  # fmt: skip
    else:
        if _CONV_EXISTS.scalar(tx, {"b_id": conv_id}) is None:
            raise UnknownConversation(conv_id)
        rows = _HISTORY.rows(tx, {"b_id": conv_id, "b_limit": max(run.context_messages, 1)})
        if rows and at <= rows[0][5]:  # created_at
            at = rows[0][5] + _TICK  # keep the conversation strictly ordered
        if run.context_messages > 0:
            history = [StoredMessage(*r) for r in reversed(rows)]
        _TOUCH_CONV.execute(tx, {"b_id": conv_id, "b_at": at})
    _INS_MSG.execute(
        tx,
        {"id": run.user_message_id, "conversation_id": conv_id, "project_id": run.project_id,
         "role": "user", "content": run.content, "model": None, "token_count": None,
         "run_id": run.run_id, "created_at": at},
    )  # fmt: skip
    _add_run(tx, run, conv_id)
    first = None
    if run.first_attempt is not None:  # after the run row it refers to
        first = _runs.insert_attempt(tx, run.first_attempt, new_run=True)
    return BeganRun(conv_id, tuple(history), at, first)


def _add_run(tx: Tx, run: NewRun, conversation_id: str | None) -> None:
    _INS_RUN.execute(
        tx,
        {"id": run.run_id, "workflow": run.workflow, "workflow_sha256": run.workflow_sha256,
         "conversation_id": conversation_id, "status": "running",
         "current_state": run.state, "model": None, "error_class": None,
         "error_message": None, "started_at": run.at, "finished_at": None,
         "state_json": run.state_json.to_json() if run.state_json else None,
         "owner": run.owner, "heartbeat_at": run.at if run.owner else None,
         "resume_count": 0},
    )  # fmt: skip


def _began_already(tx: Tx, run: NewRun) -> BeganRun | None:
    """A resumed LoadContext: the run's message is stored already; read back what it got."""
    from sqlalchemy import select

    from ._statements import MSG as _MSG

    user = tx.sa.execute(
        select(_MSG.c.conversation_id, _MSG.c.created_at).where(
            _MSG.c.run_id == run.run_id, _MSG.c.role == "user"
        )
    ).first()
    if user is None:
        return None
    conv_id, at = user
    history: list[StoredMessage] = []
    if run.context_messages > 0:
        rows = tx.sa.execute(
            select(_MSG.c.id, _MSG.c.conversation_id, _MSG.c.role, _MSG.c.content,
                   _MSG.c.model, _MSG.c.created_at, _MSG.c.run_id, _MSG.c.token_count)
            .where(_MSG.c.conversation_id == conv_id, _MSG.c.created_at < at)
            .order_by(_MSG.c.created_at.desc())
            .limit(run.context_messages)
        ).all()  # fmt: skip
        history = [StoredMessage(*r) for r in reversed(rows)]
    return BeganRun(conv_id, tuple(history), at)


def _save_reply(tx: Tx, reply: Reply, end: RunEnd, cp: Checkpoint | None) -> str:
    """The reply, its usage and the run's end (with its last checkpoint), once per run: a run
    saved already keeps its first reply (whatever generation ids the endpoint reuses)."""
    existing = _REPLY_OF_RUN.scalar(tx, {"b_run": reply.run_id})
    if existing is not None:
        _finish(tx, end, cp)
        return str(existing)
    _INS_MSG.execute(
        tx,
        {"id": reply.message_id, "conversation_id": reply.conversation_id,
         "project_id": reply.project_id, "role": "assistant", "content": reply.content,
         "model": reply.model, "token_count": reply.completion_tokens, "run_id": reply.run_id,
         "created_at": reply.created_at},
    )  # fmt: skip
    _INS_USAGE.execute(
        tx,
        {"id": reply.usage_id, "conversation_id": reply.conversation_id,
         "message_id": reply.message_id, "run_id": reply.run_id,
         "project_id": reply.project_id, "model": reply.model,
         "requested_model": reply.requested_model, "generation_id": reply.generation_id,
         "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
         "total_tokens": reply.total_tokens, "cached_tokens": reply.cached_tokens,
         "cost_usd": reply.cost_usd, "cost_source": reply.cost_source,
         "latency_ms": reply.latency_ms, "attempts": reply.attempts,
         "request_timestamp": reply.request_timestamp, "outcome": "reply"},
    )  # fmt: skip
    _TOUCH_CONV.execute(tx, {"b_id": reply.conversation_id, "b_at": reply.created_at})
    _finish(tx, end, cp, again=True)  # the run's answer is stored: that is how it ended
    return reply.message_id


def _import_reply(tx: Tx, reply: Reply, final_state: str | None) -> ImportResult:
    from ._statements import ASSISTANT_OF_RUN, RUN_STATE

    if tx.sa.execute(ASSISTANT_OF_RUN, {"b_run": reply.run_id}).first() is not None:
        return "present"
    if _CONV_EXISTS.scalar(tx, {"b_id": reply.conversation_id}) is None:
        return "no_conversation"
    state = final_state or tx.sa.execute(RUN_STATE, {"b_id": reply.run_id}).scalar() or ""
    end = RunEnd(reply.run_id, "succeeded", state, reply.model, None, None, reply.request_timestamp)
    _save_reply(tx, reply, end, None)
    return "imported"


def _finish(tx: Tx, end: RunEnd, cp: Checkpoint | None = None, *, again: bool = False) -> None:
    """End the run: only a running one (an end is never overwritten — a SIGTERM just after
    Persist committed once marked a succeeded run cancelled), unless ``again`` (an import of
    the run's paid answer, which is the truth about it). Owner-fenced when ``end.owner``."""
    fenced = end.owner is not None
    params = {
        "b_id": end.run_id, "b_status": end.status, "b_state": end.current_state,
        "b_model": end.model, "b_class": end.error_class, "b_message": end.error_message,
        "b_at": end.finished_at, **({"b_owner": end.owner} if fenced else {}),
    }  # fmt: skip
    if cp is not None and again and (cp.run_id, cp.owner) == (end.run_id, end.owner):
        # The checkpoint and the end update the same row under the same condition (its
        # owner): one UPDATE, the end's columns over the checkpoint's, as two would leave it.
        done = _ENDS_WITH_STATE[fenced].execute(tx, {**params, "b_json": cp.state.to_json()})
        if cp.entries:
            _runs.append_events(tx, cp.entries)
    else:
        if cp is not None:
            _runs.checkpoint(tx, cp)
        done = _ENDS[fenced, again].execute(tx, params)
    if fenced and done != 1:
        owner = _OWNER_OF_RUN.scalar(tx, {"b_id": end.run_id})
        if owner != end.owner:
            raise RunTakenOver(end.run_id)


def _fence_reused(tx: Tx, attempt: AttemptRow, owner: str | None) -> None:
    """Prove ownership for a request recorded ahead a while ago (see ``attempt_started``)."""
    if owner is not None:
        _runs.prove_owner(tx, attempt.run_id, owner, attempt.started_at)
