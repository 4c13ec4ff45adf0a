"""The database schema (SQLAlchemy 2.x typed declarative models). Table and column names are a
contract: Demiarch's history and spend reports read them.

Alembic owns the schema: the revisions in ``migrations/versions`` must build exactly these
models (a test compares them), and constraint names follow a fixed naming convention so that a
migration can name what it alters. Two column types smooth over SQLite: timestamps are stored as
UTC and always come back timezone-aware, and USD amounts are exact ``Decimal`` (``NUMERIC(20,9)``
on PostgreSQL, a decimal string on SQLite, which has no exact numeric type).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..pricing import NANO
from .base import Held as Held  # where budgets' code, which needs no SQLAlchemy, finds it

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on every engine."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: pass a timezone-aware UTC time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @staticmethod
    def fast_bind_processor(dialect: Dialect) -> Callable[[datetime | None], Any] | None:
        """For the store's fixed statements (:mod:`._fast`) on SQLite: ``process_bind_param``
        and SQLite's ``DATETIME`` storage format in one call, the same text (a test checks it
        against SQLAlchemy's pair); ``None`` elsewhere (SQLAlchemy's processors are used)."""
        if dialect.name != "sqlite":
            return None
        from ._fast import sqlite_utc

        return sqlite_utc


class USD(TypeDecorator[Decimal]):
    """An exact amount of US dollars with nano-dollar (1e-9) resolution."""

    impl = Numeric(20, 9)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(32))
        return dialect.type_descriptor(Numeric(20, 9, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        exact = Decimal(value).quantize(NANO)
        return format(exact, "f") if dialect.name == "sqlite" else exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(str(value)).quantize(NANO)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str | None] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ChatMessage(Base):
    __tablename__ = "chat_messages"
    __table_args__ = (
        CheckConstraint("role IN ('system', 'user', 'assistant')", name="role"),
        Index(None, "conversation_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    project_id: Mapped[str | None] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(200))
    token_count: Mapped[int | None] = mapped_column(Integer)
    run_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class LlmUsage(Base):
    __tablename__ = "llm_usage"
    __table_args__ = (
        CheckConstraint(
            "cost_source IN ('provider', 'price_table', 'estimated', 'unknown')",
            name="cost_source",
        ),
        CheckConstraint("outcome IN ('reply', 'billed', 'interrupted')", name="outcome"),
        Index(
            "uq_llm_usage_reply_run_id",
            "run_id",
            unique=True,
            sqlite_where=text("outcome = 'reply'"),
            postgresql_where=text("outcome = 'reply'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    message_id: Mapped[str | None] = mapped_column(ForeignKey("chat_messages.id"))
    """``None`` for a generation that was billed but produced no stored reply."""
    run_id: Mapped[str | None] = mapped_column(String(36), index=True)
    """At most one ``reply`` row per run (a partial unique index): a second save keeps the first."""
    project_id: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    requested_model: Mapped[str] = mapped_column(String(200))
    generation_id: Mapped[str | None] = mapped_column(String(200), index=True)
    """Not unique: caching proxies and some servers reuse a response id across runs."""
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    """``None``: the provider gave no count, or one past belief (never stored as 0)."""
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int | None] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(USD)
    cost_source: Mapped[str] = mapped_column(String(16))
    """``provider`` (``usage.cost``), ``price_table`` (its token counts priced), ``estimated``
    (token counts estimated from the text, priced) or ``unknown`` (0 USD counted)."""
    latency_ms: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer)
    request_timestamp: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    outcome: Mapped[str] = mapped_column(String(16), default="reply", server_default="reply")
    """``reply``: the run's answer; ``billed``: a lost attempt booked on resume;
    ``interrupted``: a stream that broke after it was billed."""


class WorkflowRun(Base):
    __tablename__ = "workflow_runs"
    __table_args__ = (
        CheckConstraint("status IN ('running', 'succeeded', 'failed', 'cancelled')", name="status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    workflow: Mapped[str] = mapped_column(String(64))
    workflow_sha256: Mapped[str] = mapped_column(String(64))
    conversation_id: Mapped[str | None] = mapped_column(ForeignKey("conversations.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    current_state: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(200))
    error_class: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    state_json: Mapped[str | None] = mapped_column(Text)
    """The run's last checkpoint (``RunState.to_json``)."""
    owner: Mapped[str | None] = mapped_column(String(200))
    """``host:pid:start`` of the process running it."""
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resume_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class WorkflowDefinition(Base):
    """Each workflow text a run started with, once per SHA-256 (a run is resumed under it)."""

    __tablename__ = "workflow_definitions"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RunEvent(Base):
    __tablename__ = "run_events"

    run_id: Mapped[str] = mapped_column(ForeignKey("workflow_runs.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    from_state: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(32))
    to_state: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(200))
    attempt: Mapped[int | None] = mapped_column(Integer)
    error_class: Mapped[str | None] = mapped_column(String(32))
    wait_s: Mapped[float | None] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    wait_source: Mapped[str | None] = mapped_column(String(16))
    """Why the run waited before this transition: backoff, retry_after, cooldown or throttle."""
    bucket: Mapped[str | None] = mapped_column(String(200))
    """The rate bucket a ``throttled`` row waited for."""


class RunAttempt(Base):
    """Every request a run sent (or was about to send): written before it leaves."""

    __tablename__ = "run_attempts"

    run_id: Mapped[str] = mapped_column(ForeignKey("workflow_runs.id"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    model: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[int | None] = mapped_column(Integer)
    error_class: Mapped[str | None] = mapped_column(String(32))
    generation_id: Mapped[str | None] = mapped_column(String(200), index=True)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    partial_text: Mapped[str | None] = mapped_column(Text)
    """What a streamed attempt had received when it broke or was cancelled; with
    ``finish_reason`` and no reply for the run, the whole answer (see ``finish_reason``)."""
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    """The answer's ``finish_reason``: committed the moment a stream delivers it, with the text
    in ``partial_text``, so that a process that dies (or is cancelled) while the stream's usage
    chunk is still awaited leaves an answer the resume stores instead of buying again."""
    response_model: Mapped[str | None] = mapped_column(String(200))
    """The model that answered (the response's ``model``; may differ from ``model``)."""
    error_message: Mapped[str | None] = mapped_column(Text)
    """A failed attempt: what went wrong, as the run reported it (the provider's own words
    included)."""


class BudgetReservation(Base):
    """The worst-case cost of an attempt in flight, held until its real cost is booked.

    Written in a serialised transaction, so that spent + reserved + a new estimate never
    passes a budget, whatever the number of processes. Replaced by the real cost when the
    attempt ends (and deleted once the run has ended: its cost is in ``llm_usage`` then), or
    deleted when nothing was billed; one left by a dead process expires at ``expires_at``, and
    so does the worst case of an attempt that may have been billed but has no ``llm_usage``
    row (``settled`` 2).
    """

    __tablename__ = "budget_reservations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(36), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(200))
    amount_usd: Mapped[Decimal] = mapped_column(USD)
    settled: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """0: the worst-case estimate; 1: the attempt's real cost; 2: the worst case of an attempt
    that may have been billed without a figure (a timeout), kept past its run's end and
    counted in the windows it fell in until it expires."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class RateBucketRow(Base):
    """A shared rate bucket's GCRA state, on the database's clock (seconds since the epoch)."""

    __tablename__ = "rate_buckets"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    tat: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    """Theoretical arrival time of the next request."""
    tat_tokens: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    """When the tokens of the requests so far have drained (``tpm``)."""
    paused_until: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    """No request before this (a 429's Retry-After)."""
