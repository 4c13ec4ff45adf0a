"""The world a run sees (:class:`RunEnv`, injected) and what one run carries (:class:`RunContext`).

``RunEnv`` is built once per process and shared by every run: the client, the store, the clock,
randomness and the price table are all passed in, so tests replace each one. ``RunContext`` is
the mutable working state of one run, owned by the runner and its handlers only.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import trio

from ..client import Attempt, Completion, OpenRouterClient
from ..definition import Workflow
from ..errors import FlowError, ProviderError
from ..pricing import PriceTable
from ..store.base import Store
from .cooldown import CooldownRegistry
from .records import FlowRecord, Listener


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class RunRequest:
    """One chat turn as asked for by the user."""

    message: str
    conversation_id: str | None = None
    model: str | None = None
    """Replaces the first model of the chain."""
    project_id: str | None = None


@dataclass(frozen=True)
class RunEnv:
    """The injected world of every run in this process."""

    client: OpenRouterClient
    store: Store
    rng: random.Random = field(default_factory=random.Random)
    now: Callable[[], datetime] = utc_now
    prices: PriceTable = field(default_factory=PriceTable.load)
    listeners: Sequence[Listener] = ()
    cooldowns: CooldownRegistry = field(default_factory=CooldownRegistry)
    """Shared by every run using this env (only consulted when the workflow has ``cooldown``)."""
    recovery_dir: str | None = None
    """Where Persist writes a reply it could not store (default: the data folder)."""
    persist_tries: int = 3


@dataclass(frozen=True, slots=True)
class AttemptSummary:
    """One attempt as reported in ``run --json``."""

    model: str
    outcome: str
    error_class: str | None
    status: int | None
    wait_s: float | None
    latency_ms: int


def model_chain(workflow: Workflow, override: str | None) -> tuple[str, ...]:
    """The chain for a run: ``override`` replaces the first model; no model appears twice."""
    if not override:
        return workflow.models
    return (override, *(m for m in workflow.models[1:] if m != override))


@dataclass
class RunContext:
    """The working state of one run."""

    workflow: Workflow
    env: RunEnv
    request: RunRequest
    run_id: str = field(default_factory=new_id)
    chain: tuple[str, ...] = ()
    model_index: int = 0
    attempt: int = 0
    """Attempts made on the current model."""
    retries: int = 0
    """Retries made on the current model (Backoff 'retry' events)."""
    total_attempts: int = 0
    conversation_id: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    last_error: ProviderError | None = None
    last_errors: dict[str, ProviderError] = field(default_factory=dict)
    fallback_reason: str | None = None
    completion: Completion | None = None
    last_attempt: Attempt | None = None
    saved_message_id: str | None = None
    cost_usd: Decimal | None = None
    cost_source: str | None = None
    failure: FlowError | None = None
    attempts: list[AttemptSummary] = field(default_factory=list)
    pending_wait_s: float | None = None
    state: str = ""
    user_message_at: datetime | None = None
    """When LoadContext stored the user's message (the reply is stored strictly after it)."""
    gave_up_because: str | None = None
    """Why Backoff last gave a model up: ``retries_exhausted`` or ``retry_after_too_long``."""
    failure_recorded: bool = False
    """The fail action has written the failure to the store."""

    def __post_init__(self) -> None:
        if not self.chain:
            self.chain = model_chain(self.workflow, self.request.model)
        self.conversation_id = self.request.conversation_id

    @property
    def model(self) -> str:
        """The model the next Request attempt asks for."""
        return self.chain[min(self.model_index, len(self.chain) - 1)]

    async def emit(self, kind: str, **fields: Any) -> FlowRecord:
        """Send a record to every listener (in order) and return it."""
        record = FlowRecord(
            kind,  # type: ignore[arg-type]
            self.run_id,
            trio.current_time(),
            self.env.now(),
            **fields,
        )
        for listener in self.env.listeners:
            await listener.on_record(record)
        return record
