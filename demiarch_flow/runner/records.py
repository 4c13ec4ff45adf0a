"""What the runner tells its listeners: frozen records, one per thing that happened.

Hooks, not prints: the CLI's live progress, the run journal and a batch progress bar are all
just listeners. ``kind`` says what the record is about:

* ``transition`` — the machine moved (from_state --event--> to_state);
* ``attempt`` — a Request attempt ended (status, error class, latency);
* ``wait`` — the runner is about to sleep ``wait_s`` seconds before retry ``attempt``
  (``wait_source`` says why);
* ``fallback`` — the chain moves from ``model`` to ``next_model``;
* ``cooldown`` — ``model`` starts cooling for ``wait_s`` seconds (``event="started"``), or a
  Request skipped it because it is cooling (``event="skipped"``);
* ``delta`` — a piece of a streamed reply arrived (``text``); it is not the reply until the
  attempt ends ``ok`` (an ``attempt`` record with ``partial_chars`` says it was not);
* ``finished`` — the run reached a final state (``status`` says how it ended).

A :class:`RunTracer` (``RunEnv.tracer``, optional) is told once when a run starts in this
process (:class:`RunStart`) and answers the trace context to keep with the run, so a resumed
run continues the same trace; it hears the rest as a listener.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Literal, Protocol

from .._frozen import quick
from ..errors import ErrorClass

RecordKind = Literal["transition", "attempt", "wait", "fallback", "cooldown", "finished", "delta"]


class WaitSource(StrEnum):
    """Why the runner sleeps."""

    BACKOFF = "backoff"
    """The retry schedule (``initial_delay_s · backoff_rate^(n−1)``, maybe jittered)."""
    RETRY_AFTER = "retry_after"
    """The server's ``Retry-After`` / ``retry-after-ms``."""
    COOLDOWN = "cooldown"
    """The shared cooldown of the last model of the chain."""
    THROTTLE = "throttle"
    """A rate bucket of ``limits.rate``: the next slot of the bucket is not yet due."""


@quick
@dataclass(frozen=True)
class FlowRecord:
    kind: RecordKind
    run_id: str
    monotonic: float
    """trio's clock (virtual under MockClock), seconds."""
    wall: datetime
    """The injected wall clock, timezone-aware UTC."""
    from_state: str | None = None
    event: str | None = None
    to_state: str | None = None
    model: str | None = None
    attempt: int | None = None
    """Attempt number on the current model, 1-based."""
    error_class: ErrorClass | None = None
    status: int | None = None
    wait_s: float | None = None
    wait_source: WaitSource | None = None
    latency_ms: int | None = None
    next_model: str | None = None
    message: str | None = None
    """Human-readable detail (never parsed: every fact a renderer needs has a typed field)."""
    run_status: str | None = None
    text: str | None = None
    """A ``delta``'s piece of text; an ``attempt`` that was answered: the answer."""
    partial_chars: int | None = None
    """An ``attempt`` whose stream broke: the characters received (shown, never saved)."""
    cause: ErrorClass | None = None
    """A ``stream_interrupted`` attempt: what broke the stream."""
    first_token_ms: int | None = None
    """A streamed ``attempt``: from sending until the first token."""
    response_model: str | None = None
    """An ``attempt`` that was answered: the model that answered (may differ from ``model``)."""
    response_id: str | None = None
    """An ``attempt``: the generation id the provider gave it."""
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: Decimal | None = None
    """An ``attempt``: what its answer (or broken stream) said it cost; ``finished``: the
    reply's cost as stored."""
    streamed: bool | None = None
    """An ``attempt``: the answer came as an event stream."""
    conversation_id: str | None = None
    """``finished``: the conversation the run belongs to."""
    attempts: int | None = None
    """``finished``: requests sent by the run, over all its resumes."""


@dataclass(frozen=True, slots=True)
class RunStart:
    """A run starting (or resuming) in this process, as a :class:`RunTracer` is told it."""

    run_id: str
    workflow: str
    workflow_sha256: str
    conversation_id: str | None
    resume_count: int
    message: str | None
    """The user's message (exported only when message content capture is asked for)."""
    trace: str | None
    """The W3C ``traceparent`` kept with the run: on a new run, the parent it was asked to
    continue (a job's submit), if any; on a resumed run, the one its tracer answered first."""
    monotonic: float
    wall: datetime


class RunTracer(Protocol):
    """Opens a run's trace; the engine keeps the answer in the run's state (its JSON)."""

    def start_run(self, start: RunStart) -> str | None:
        """Begin the run's root span; return the ``traceparent`` to keep with the run."""
        ...


class Listener(Protocol):
    """Receives every record of a run, in order. May await (the journal writes)."""

    async def on_record(self, record: FlowRecord) -> None: ...
