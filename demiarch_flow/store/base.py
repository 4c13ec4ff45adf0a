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
from enum import IntEnum
from typing import Literal, Protocol

from .._frozen import quick

RunStatus = Literal["running", "succeeded", "failed", "cancelled"]
ImportResult = Literal["imported", "present", "no_conversation"]


@quick
@dataclass(frozen=True)
class StoredMessage:
    id: str
    conversation_id: str
    role: str
    content: str
    model: str | None
    created_at: datetime
    run_id: str | None = None
    token_count: int | None = None


@quick
@dataclass(frozen=True)
class NewRun:
    """Everything the run's first state writes at once: the run row and the user's message."""

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
    state: str
    """The state the run row says it is in (the workflow's initial state; the store knows no
    state names)."""
    state_json: JsonState | None = None
    """The run's first checkpoint."""
    definition: str = ""
    """The workflow file's text, stored once per ``workflow_sha256``."""
    owner: str | None = None
    """The process running it (``host:pid:start``), for telling a live run from a stale one."""
    resumed: bool = False
    """The first state runs again for a resumed run: what it stored before is read back."""
    first_attempt: AttemptRow | None = None
    """The run's next request, recorded in the same transaction (it rides on this commit
    instead of costing one of its own before the request is sent)."""


@quick
@dataclass(frozen=True)
class BeganRun:
    conversation_id: str
    history: tuple[StoredMessage, ...]
    """Earlier messages (the new one not counted), oldest first."""
    user_message_at: datetime | None = None
    """When the user's message was stored (the reply is stored strictly after it)."""
    first_attempt: int | None = None
    """The number the store gave ``NewRun.first_attempt`` (``None``: none was recorded)."""


@quick
@dataclass(frozen=True)
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
    prompt_tokens: int | None
    """``None``: the provider gave no believable count (stored as NULL)."""
    completion_tokens: int | None
    total_tokens: int | None
    cached_tokens: int
    cost_usd: Decimal
    cost_source: str
    latency_ms: int
    attempts: int
    request_timestamp: datetime
    created_at: datetime


@quick
@dataclass(frozen=True)
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
    wait_source: str | None = None
    """Why it waited: ``backoff``, ``retry_after`` or ``cooldown``."""
    bucket: str | None = None
    """The rate bucket a ``throttled`` row waited for (its key in ``limits.rate``)."""


@quick
@dataclass(frozen=True)
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
    partial_text: str | None = None
    """A streamed attempt that broke or was cancelled: the text it had received; with
    ``finish_reason`` (an answer delivered, its attempt not ended), the whole answer."""
    finish_reason: str | None = None
    """The answer's ``finish_reason`` (a stream's is committed as soon as it arrives)."""
    response_model: str | None = None
    """The model that answered, as the response named it."""
    error_message: str | None = None
    """A failed attempt: what went wrong."""

    @property
    def answer_unkept(self) -> bool:
        """An answer was delivered whole (its text is ``partial_text``) but its attempt never
        returned it: the process died, or was cancelled, while the stream's usage chunk was
        still awaited. A resume stores it as the reply instead of asking again."""
        return (
            self.finish_reason is not None
            and self.partial_text is not None
            and (self.ended_at is None or self.error_class == "cancelled")
        )


class JsonState(Protocol):
    """A run state as the store sees it: something that turns itself into JSON text. The store
    serialises only the checkpoint it actually writes (the latest of a run), off the event loop."""

    def to_json(self) -> str: ...


@quick
@dataclass(frozen=True)
class Checkpoint:
    """Where a run stands, as the store keeps it: the run state and the journal rows of the
    transitions that led there."""

    run_id: str
    current_state: str
    model: str | None
    state: JsonState
    entries: tuple[JournalEntry, ...] = ()
    owner: str | None = None
    """The process writing it: the write is refused (:class:`~demiarch_flow.errors.RunTakenOver`)
    when the run has another owner now. ``None``: written whoever owns the run."""


@dataclass(frozen=True, slots=True)
class StoredReply:
    """The reply a run saved: its message and usage row."""

    message_id: str
    content: str
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: Decimal
    cost_source: str


@dataclass(frozen=True, slots=True)
class StoredRun:
    """Everything known about one run: its row, its checkpoint, its attempts and its reply."""

    run_id: str
    workflow: str
    workflow_sha256: str
    definition: str | None
    """The workflow text it started with (``None`` for runs of the first release)."""
    conversation_id: str | None
    status: RunStatus
    current_state: str | None
    model: str | None
    error_class: str | None
    error_message: str | None
    started_at: datetime
    finished_at: datetime | None
    state_json: str | None
    owner: str | None
    heartbeat_at: datetime | None
    resume_count: int
    attempts: tuple[AttemptRow, ...]
    reply: StoredReply | None
    cost_usd: Decimal
    """Everything booked in ``llm_usage`` for this run (the reply and billed lost attempts)."""


@dataclass(frozen=True, slots=True)
class Definition:
    """A workflow's text as runs keep it: once per ``sha256`` in ``workflow_definitions``."""

    name: str
    sha256: str
    text: str


@dataclass(frozen=True, slots=True)
class BilledAttempt:
    """A generation that was billed but whose answer never reached the database (found when a
    run is resumed): booked in ``llm_usage`` with no message, so spend is never lost."""

    usage_id: str
    run_id: str
    conversation_id: str
    project_id: str | None
    model: str
    generation_id: str
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: Decimal
    cost_source: str
    attempt: int
    at: datetime
    outcome: Literal["billed", "interrupted"] = "billed"
    """``interrupted``: a streamed attempt that broke after its first token, booked at once."""


@quick
@dataclass(frozen=True)
class RunEnd:
    run_id: str
    status: RunStatus
    current_state: str
    model: str | None
    error_class: str | None
    error_message: str | None
    finished_at: datetime
    owner: str | None = None
    """As :attr:`Checkpoint.owner`: only the run's owner may end it."""


class Store(Protocol):
    """What the runner needs from a database. All methods are safe to call from trio."""

    async def begin_run(self, run: NewRun) -> BeganRun:
        """Create the conversation if new, store the user message and the run row, and
        return the history. Raises ``UnknownConversation`` or ``PersistenceError``."""

    async def checkpoint(self, checkpoint: Checkpoint, *, durable: bool) -> None:
        """Record where a run stands and append its journal rows. ``durable=False`` may queue
        them for the next commit; ``durable=True`` returns once they (and everything queued
        before) are committed."""

    async def attempt_started(self, attempt: AttemptRow, owner: str | None = None) -> int:
        """Record that a request is about to be sent; returns its number once that (and
        everything queued before, the run's checkpoints included) is committed.

        The store allocates the number: one more than any the run has (``attempt.number`` is
        ignored), so two writers can never collide on one. With ``owner``, only while the run
        is ``running`` under that owner — else :class:`~demiarch_flow.errors.RunTakenOver` and
        nothing is written, so a process that lost its run sends nothing. The next request
        recorded already (``NewRun.first_attempt``, with the run) costs nothing more.
        """

    async def attempt_unsent(self, run_id: str, why: str, at: datetime) -> None:
        """The next request recorded ahead with the run (``NewRun.first_attempt``) is not sent
        after all (a cooling model, a budget): close it as ``why``, so a resume does not take
        it for a lost one. Nothing when there is no such record."""

    async def attempt_ended(self, attempt: AttemptRow) -> None:
        """Complete an attempt's row (may be queued for the next commit); an attempt that was
        never recorded is ignored."""

    async def attempt_progress(self, attempt: AttemptRow) -> None:
        """Record an attempt's generation id while it is still streaming; returns once it is
        committed (a crash mid-stream still leaves the only handle on what it cost)."""

    async def attempt_answered(self, attempt: AttemptRow) -> None:
        """Record that a stream delivered its answer whole (``finish_reason``, the text in
        ``partial_text``, ``response_model``, ``generation_id``, ``status``, ``latency_ms``),
        while the attempt still waits for its usage chunk; returns once it is committed. The
        attempt stays open (``ended_at``): see :attr:`AttemptRow.answer_unkept`."""

    async def save_reply(
        self, reply: Reply, end: RunEnd, checkpoint: Checkpoint | None = None
    ) -> str:
        """Store message + usage and mark the run succeeded (with its last checkpoint, if
        given), in one transaction; a run stores at most one reply (a second save returns the
        first's message id). Returns the id of the stored assistant message."""

    async def finish_run(self, end: RunEnd, checkpoint: Checkpoint | None = None) -> None:
        """Mark the run failed or cancelled (with its last checkpoint, if given), committing
        whatever the store had queued. A run that has ended already is never ended again
        (nothing is written): only ``reopen_run`` (a resume) or ``import_reply`` (its paid
        answer found in the recovery file) changes an end."""

    async def heartbeat(self, owner: str, at: datetime) -> None:
        """Say that every running run of ``owner`` is alive at ``at``."""

    async def reopen_run(
        self,
        checkpoint: Checkpoint,
        owner: str | None,
        at: datetime,
        *,
        expect: tuple[RunStatus, str | None] | None = None,
        definition: Definition | None = None,
    ) -> bool:
        """Mark a run running again under ``owner`` (one more resume), with its new checkpoint
        and the journal row of the resume, in one transaction. With ``expect`` (the status and
        owner the caller saw), only if the run still has them: two processes resuming the same
        run cannot both take it. With ``definition`` (resumed under an edited workflow), the
        run goes on under it: its text is kept and its name and sha256 recorded on the run.
        Returns whether the run was reopened."""

    async def book_billed(self, billed: BilledAttempt) -> None:
        """Book a billed attempt that has no reply (idempotent per run and generation)."""

    async def import_reply(self, reply: Reply, final_state: str | None) -> ImportResult:
        """Store a reply read back from the recovery file, unless its run has one: the run is
        marked succeeded (in ``final_state``, if known). ``no_conversation``: nothing written."""

    async def load_run(self, run_id: str) -> StoredRun | None:
        """The run with its checkpoint, attempts and reply; ``None`` if there is none."""

    async def list_runs(
        self, *, status: RunStatus | None, since: datetime | None, limit: int
    ) -> list[StoredRun]:
        """The latest runs first (attempts and reply included; ``definition`` left out)."""

    async def journal(self, run_id: str) -> tuple[JournalEntry, ...]:
        """The run's transitions in order (``seq`` 1, 2, …); empty for an unknown run."""

    async def count_rows(self) -> dict[str, int]:
        """Rows per table, named as in the SQL schema (``conversations``, ``chat_messages``,
        ``llm_usage``, ``workflow_runs``, ``run_events``): what ``demo`` and tests check."""


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """A line of ``history``: a conversation, newest first."""

    id: str
    title: str
    updated_at: datetime
    messages: int


@dataclass(frozen=True, slots=True)
class UsageRow:
    """A line of ``usage``: calls, tokens and spend of one model, day or conversation."""

    key: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    interrupted_calls: int = 0
    interrupted_usd: Decimal = Decimal(0)
    """Of ``cost_usd``: streams that broke after their first token (billed, no reply)."""


class Held(IntEnum):
    """``budget_reservations.settled``: what a reservation stands for now."""

    HELD = 0
    """The attempt's worst case while it is in flight."""
    SETTLED = 1
    """The attempt's real cost (goes with its run: ``llm_usage`` then holds it)."""
    UNBOOKED = 2
    """The worst case of an attempt that may have been billed without a figure, kept past its
    run's end (see ``Ledger.settle``)."""
