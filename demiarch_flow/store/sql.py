"""The SQLAlchemy store: SQLite (default) or PostgreSQL, used from trio through worker threads.

SQLAlchemy's async engine is asyncio-only, so the sync engine runs in ``trio.to_thread``. Writes
go through one writer at a time per process (a ``trio.Lock``): with SQLite in WAL mode and a busy
timeout that removes "database is locked" under load, and with PostgreSQL it keeps one process
from hogging the pool. Every public method maps SQLAlchemy errors to
:class:`~demiarch_flow.errors.PersistenceError` (or :class:`StoreUnavailable` when opening).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import trio
from sqlalchemy import Engine, create_engine, event, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from ..errors import PersistenceError, StoreUnavailable, UnknownConversation, redact
from .base import BeganRun, JournalEntry, NewRun, Reply, RunEnd, StoredMessage
from .tables import Base, ChatMessage, Conversation, LlmUsage, RunEvent, WorkflowRun

T = TypeVar("T")
_TICK = timedelta(microseconds=1)


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return redact(url)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def open_engine(url: str) -> Engine:
    """Create the engine for ``url`` with our settings (not yet connected).

    Raises:
        StoreUnavailable: the URL is malformed or names a driver that is not installed.
    """
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
            if database and database != ":memory:" and not database.startswith("file:"):
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            memory = database in ("", ":memory:")
            engine = create_engine(
                parsed,
                connect_args={"check_same_thread": False, "timeout": 30},
                poolclass=StaticPool if memory else None,
            )
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return create_engine(parsed, pool_size=10, max_overflow=20, pool_pre_ping=True)
    except (ArgumentError, ImportError, OSError) as exc:
        raise StoreUnavailable(
            f"cannot open database {safe_url(url)}: {redact(str(exc))}"
            " (for PostgreSQL install the extra: pip install 'demiarch-flow[postgres]')"
        ) from None


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    id: str
    title: str
    updated_at: datetime
    messages: int


@dataclass(frozen=True, slots=True)
class UsageRow:
    key: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal


class SqlStore:
    """The :class:`~demiarch_flow.store.base.Store` over a SQLAlchemy engine.

    Use :meth:`open` (creates the schema idempotently) rather than the constructor.
    """

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._write_lock = trio.Lock()
        self._limiter = trio.CapacityLimiter(4)

    @classmethod
    def open_sync(cls, url: str) -> SqlStore:
        """Open the database and create missing tables (blocking; call from a thread or sync code).

        Raises:
            StoreUnavailable: the database cannot be reached or written.
        """
        engine = open_engine(url)
        try:
            Base.metadata.create_all(engine)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StoreUnavailable(f"cannot open database {safe_url(url)}: {_short(exc)}") from None
        return cls(engine, url)

    @classmethod
    async def open(cls, url: str) -> SqlStore:
        """:meth:`open_sync` from trio."""
        return await trio.to_thread.run_sync(cls.open_sync, url)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def recovery_dir(self) -> str | None:
        """The folder of a SQLite database file (recovery files go beside it)."""
        parsed = make_url(self.url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            return str(Path(str(parsed.database)).expanduser().resolve().parent)
        return None

    # ------------------------------------------------------------------ plumbing

    async def _write(self, fn: Callable[[Session], T]) -> T:
        async with self._write_lock:
            return await trio.to_thread.run_sync(
                functools.partial(self._in_transaction, fn), limiter=self._limiter
            )

    async def _read(self, fn: Callable[[Session], T]) -> T:
        return await trio.to_thread.run_sync(
            functools.partial(self._in_transaction, fn), limiter=self._limiter
        )

    def _in_transaction(self, fn: Callable[[Session], T]) -> T:
        try:
            with self._sessions.begin() as session:
                return fn(session)
        except (UnknownConversation, PersistenceError):
            raise
        except SQLAlchemyError as exc:
            raise PersistenceError(f"database error: {_short(exc)}") from None

    # ------------------------------------------------------------------ the Store interface

    async def begin_run(self, run: NewRun) -> BeganRun:
        try:
            return await self._write(functools.partial(_begin_run, run=run))
        except UnknownConversation:
            # Still record the run (without a conversation), so its failure is auditable.
            await self._write(functools.partial(_add_run, run=run, conversation_id=None))
            raise

    async def append_events(self, entries: tuple[JournalEntry, ...]) -> None:
        def write(session: Session) -> None:
            session.add_all(
                RunEvent(
                    run_id=e.run_id, seq=e.seq, from_state=e.from_state, event=e.event,
                    to_state=e.to_state, model=e.model, attempt=e.attempt,
                    error_class=e.error_class, wait_s=e.wait_s, at=e.at,
                )
                for e in entries
            )  # fmt: skip

        await self._write(write)

    async def save_reply(self, reply: Reply, end: RunEnd) -> str:
        try:
            return await self._write(functools.partial(_save_reply, reply=reply, end=end))
        except PersistenceError:
            if reply.generation_id is None:
                raise
            # A concurrent writer may have stored the same generation first (unique key).
            existing = await self._read(
                functools.partial(_message_of_generation, generation_id=reply.generation_id)
            )
            if existing is None:
                raise
            return existing

    async def finish_run(self, end: RunEnd) -> None:
        await self._write(functools.partial(_finish, end=end))

    # ------------------------------------------------------------------ reports

    async def conversations(self, limit: int) -> list[ConversationSummary]:
        def read(session: Session) -> list[ConversationSummary]:
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

    async def run_journal(self, run_id: str) -> tuple[WorkflowRun | None, list[RunEvent]]:
        def read(session: Session) -> tuple[WorkflowRun | None, list[RunEvent]]:
            run = session.get(WorkflowRun, run_id)
            events = session.scalars(
                select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.seq)
            ).all()
            return run, list(events)

        return await self._read(read)

    async def usage(self, since: datetime | None, by: str) -> list[UsageRow]:
        """Calls, tokens and spend grouped by model, day or conversation (summed exactly)."""

        def read(session: Session) -> list[UsageRow]:
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
                acc = groups.setdefault(key, [0, 0, 0, Decimal(0)])
                acc[0] += 1
                acc[1] += row.prompt_tokens
                acc[2] += row.completion_tokens
                acc[3] += row.cost_usd
            return [
                UsageRow(k, int(v[0]), int(v[1]), int(v[2]), Decimal(v[3]))
                for k, v in sorted(groups.items())
            ]

        return await self._read(read)

    async def count_rows(self) -> dict[str, int]:
        """Rows per table (for tests and ``demo``)."""

        def read(session: Session) -> dict[str, int]:
            return {
                t.__tablename__: session.scalar(select(func.count()).select_from(t)) or 0
                for t in (Conversation, ChatMessage, LlmUsage, WorkflowRun, RunEvent)
            }

        return await self._read(read)


# ---------------------------------------------------------------------- transactions


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__)[:300]


def _stored(m: ChatMessage) -> StoredMessage:
    return StoredMessage(
        m.id, m.conversation_id, m.role, m.content, m.model, m.created_at, m.run_id, m.token_count
    )


def _after_last(session: Session, conversation_id: str, at: datetime) -> datetime:
    """``at``, nudged past the conversation's latest message so order is always strict."""
    latest = session.scalar(
        select(func.max(ChatMessage.created_at)).where(
            ChatMessage.conversation_id == conversation_id
        )
    )
    if isinstance(latest, datetime) and at <= latest:
        return latest + _TICK
    return at


def _begin_run(session: Session, run: NewRun) -> BeganRun:
    created = run.conversation_id is None
    conv_id = run.create_with_id if created else run.conversation_id
    assert conv_id is not None
    if created:
        session.add(
            Conversation(
                id=conv_id, project_id=run.project_id, title=run.title,
                created_at=run.at, updated_at=run.at,
            )
        )  # fmt: skip
        session.flush()
        history: list[StoredMessage] = []
        at = run.at
    else:
        conv = session.get(Conversation, conv_id)
        if conv is None:
            raise UnknownConversation(conv_id)
        history = []
        if run.context_messages > 0:
            rows = session.scalars(
                select(ChatMessage)
                .where(ChatMessage.conversation_id == conv_id)
                .order_by(ChatMessage.created_at.desc())
                .limit(run.context_messages)
            ).all()
            history = [_stored(m) for m in reversed(rows)]
        at = _after_last(session, conv_id, run.at)
        conv.updated_at = at
    session.add(
        ChatMessage(
            id=run.user_message_id, conversation_id=conv_id, project_id=run.project_id,
            role="user", content=run.content, run_id=run.run_id, created_at=at,
        )
    )  # fmt: skip
    _add_run(session, run, conv_id)
    return BeganRun(conv_id, created, tuple(history))


def _add_run(session: Session, run: NewRun, conversation_id: str | None) -> None:
    session.add(
        WorkflowRun(
            id=run.run_id, workflow=run.workflow, workflow_sha256=run.workflow_sha256,
            conversation_id=conversation_id, status="running", current_state="LoadContext",
            started_at=run.at,
        )
    )  # fmt: skip


def _message_of_generation(session: Session, generation_id: str) -> str | None:
    return session.scalar(
        select(LlmUsage.message_id).where(LlmUsage.generation_id == generation_id)
    )


def _save_reply(session: Session, reply: Reply, end: RunEnd) -> str:
    if reply.generation_id is not None:
        existing = _message_of_generation(session, reply.generation_id)
        if existing is not None:
            _finish(session, end)
            return existing
    at = _after_last(session, reply.conversation_id, reply.created_at)
    session.add(
        ChatMessage(
            id=reply.message_id, conversation_id=reply.conversation_id,
            project_id=reply.project_id, role="assistant", content=reply.content,
            model=reply.model, token_count=reply.completion_tokens, run_id=reply.run_id,
            created_at=at,
        )
    )  # fmt: skip
    session.flush()
    session.add(
        LlmUsage(
            id=reply.usage_id, conversation_id=reply.conversation_id, message_id=reply.message_id,
            run_id=reply.run_id, project_id=reply.project_id, model=reply.model,
            requested_model=reply.requested_model, generation_id=reply.generation_id,
            prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
            total_tokens=reply.total_tokens, cached_tokens=reply.cached_tokens,
            cost_usd=reply.cost_usd, cost_source=reply.cost_source,
            latency_ms=reply.latency_ms, attempts=reply.attempts,
            request_timestamp=reply.request_timestamp,
        )
    )  # fmt: skip
    session.execute(
        update(Conversation).where(Conversation.id == reply.conversation_id).values(updated_at=at)
    )
    _finish(session, end)
    try:
        session.flush()
    except IntegrityError as exc:
        raise PersistenceError(f"database refused the reply: {_short(exc)}") from None
    return reply.message_id


def _finish(session: Session, end: RunEnd) -> None:
    session.execute(
        update(WorkflowRun)
        .where(WorkflowRun.id == end.run_id)
        .values(
            status=end.status, current_state=end.current_state, model=end.model,
            error_class=end.error_class, error_message=end.error_message,
            finished_at=end.finished_at,
        )
    )  # fmt: skip
