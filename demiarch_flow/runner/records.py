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
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal, Protocol

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


@dataclass(frozen=True, slots=True)
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
    """A ``delta``'s piece of text."""
    partial_chars: int | None = None
    """An ``attempt`` whose stream broke: the characters received (shown, never saved)."""
    cause: ErrorClass | None = None
    """A ``stream_interrupted`` attempt: what broke the stream."""
    first_token_ms: int | None = None
    """A streamed ``attempt``: from sending until the first token."""


class Listener(Protocol):
    """Receives every record of a run, in order. May await (the journal writes)."""

    async def on_record(self, record: FlowRecord) -> None: ...
