"""The store interface the runner writes through, and the values that cross it.

The runner sees only this small async interface; :class:`~demiarch_flow.store.sql.SqlStore`
(SQLite or PostgreSQL through SQLAlchemy, in worker threads) and
:class:`~demiarch_flow.store.memory.MemoryStore` (for ``simulate`` and tests) implement it, and
one contract test suite runs against each.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal, Protocol

RunStatus = Literal["running", "succeeded", "failed", "cancelled"]


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: str
    conversation_id: str
    role: str
    content: str
    model: str | None
    created_at: datetime
    run_id: str | None = None
    token_count: int | None = None


@dataclass(frozen=True, slots=True)
class NewRun:
    """Everything LoadContext writes at once: the run row and the user's message."""

    run_id: str
    workflow: str
    workflow_sha256: str
    conversation_id: str | None
    """``None``: start a new conversation."""
    create_with_id: str
    """The id a new conversation gets (unused when continuing one)."""
    project_id: str | None
    user_message_id: str
    content: str
    context_messages: int
    """How many earlier messages to return as history."""
    at: datetime
    title: str
    state: str = "LoadContext"
    """The state the run row says it is in (the workflow's initial state)."""


@dataclass(frozen=True, slots=True)
class BeganRun:
    conversation_id: str
    created: bool
    history: tuple[StoredMessage, ...]
    """Earlier messages (the new one not counted), oldest first."""
    user_message_at: datetime | None = None
    """When the user's message was stored (the reply is stored strictly after it)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """What Persist writes in one transaction: the assistant message and its usage row."""

    run_id: str
    conversation_id: str
    project_id: str | None
    message_id: str
    usage_id: str
    content: str
    model: str
    requested_model: str
    generation_id: str | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    cost_usd: Decimal
    cost_source: str
    latency_ms: int
    attempts: int
    request_timestamp: datetime
    created_at: datetime


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One row of ``run_events``: a transition of the machine."""

    run_id: str
    seq: int
    from_state: str
    event: str
    to_state: str
    model: str | None
    attempt: int | None
    error_class: str | None
    wait_s: float | None
    at: datetime


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One row of ``run_attempts``: a request that was (about to be) sent.

    Written before the request leaves, so that after a crash every request that may have been
    billed is known; completed when the answer (or its failure) is known.
    """

    run_id: str
    number: int
    """1-based over the whole run."""
    model: str
    started_at: datetime
    ended_at: datetime | None = None
    status: int | None = None
    error_class: str | None = None
    generation_id: str | None = None
    latency_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a run stands, as the store keeps it: the run state's JSON and the journal rows
    of the transitions that led there."""

    run_id: str
    current_state: str
    model: str | None
    state_json: str
    entries: tuple[JournalEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class RunEnd:
    run_id: str
    status: RunStatus
    current_state: str
    model: str | None
    error_class: str | None
    error_message: str | None
    finished_at: datetime


class Store(Protocol):
    """What the runner needs from a database. All methods are safe to call from trio."""

    async def begin_run(self, run: NewRun) -> BeganRun:
        """Create the conversation if new, store the user message and the run row, and
        return the history. Raises ``UnknownConversation`` or ``PersistenceError``."""

    async def checkpoint(self, checkpoint: Checkpoint, *, durable: bool) -> None:
        """Record where a run stands and append its journal rows. ``durable=False`` may queue
        them for the next commit; ``durable=True`` returns once they (and everything queued
        before) are committed."""

    async def attempt_started(self, attempt: AttemptRow) -> None:
        """Record that a request is about to be sent; returns once that (and everything
        queued before, the run's checkpoints included) is committed."""

    async def attempt_ended(self, attempt: AttemptRow) -> None:
        """Complete an attempt's row (may be queued for the next commit)."""

    async def save_reply(self, reply: Reply, end: RunEnd) -> str:
        """Store message + usage and mark the run succeeded, in one transaction; idempotent
        on ``generation_id``. Returns the id of the stored assistant message."""

    async def finish_run(self, end: RunEnd) -> None:
        """Mark the run failed or cancelled (nothing else is written)."""
