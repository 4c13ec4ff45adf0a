"""The world every run sees (:class:`RunEnv`, injected) and what a user asks for (:class:`RunRequest`).

``RunEnv`` is built once per process and shared by every run: the client, the store, the clock,
randomness and the price table are all passed in, so tests replace each one. What one run
carries is its :class:`~demiarch_flow.runner.state.RunState`, a frozen value.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..client import OpenRouterClient
from ..definition import Workflow
from ..pricing import PriceTable
from ..store.base import Store
from .cooldown import CooldownRegistry
from .limiter import Limiter
from .records import Listener, RunTracer


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """A random (version 4) UUID in its canonical text: what ``str(uuid.uuid4())`` gives,
    made from the same 16 bytes of ``os.urandom`` with the same version and variant bits,
    without building a ``UUID`` object (a run makes five ids; each cost as much as a copy of
    the run state)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # variant RFC 4122
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class RunRequest:
    """One chat turn as asked for by the user."""

    message: str
    conversation_id: str | None = None
    model: str | None = None
    """Replaces the first model of the chain."""
    project_id: str | None = None
    stream: bool | None = None
    """Stream the reply (``None``: as the workflow's ``request.stream`` says)."""
    traceparent: str | None = None
    """A W3C ``traceparent`` the run's trace continues (a queued job's submit); ``None``: the
    caller's current OpenTelemetry context, if tracing is on."""


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
    owner: str | None = None
    """This process as the owner of the runs it starts (``host:pid:start``); ``None`` for
    runs nobody will resume (``simulate``, tests)."""
    limits: Limiter = field(default_factory=Limiter)
    """Budgets and rate buckets (only consulted when the workflow has ``limits``): in this
    process by default; ``Limiter(SqlLedger(engine))`` shares them through the database."""
    tracer: RunTracer | None = None
    """Opens each run's trace (:mod:`demiarch_flow.telemetry`); ``None``: no tracing, and
    nothing of OpenTelemetry is imported."""


def model_chain(workflow: Workflow, override: str | None) -> tuple[str, ...]:
    """The chain for a run: ``override`` replaces the first model; no model appears twice."""
    if not override:
        return workflow.models
    return (override, *(m for m in workflow.models[1:] if m != override))
