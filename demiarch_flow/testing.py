"""Helpers for testing workflows — ours and our users' — without a network or real waiting.

* :class:`FakeOpenRouter` — an ``httpx`` transport that answers like OpenRouter from a fault
  script (see :mod:`demiarch_flow.faults`) and records every request it receives; it lives in
  :mod:`demiarch_flow.fake` (``simulate`` uses it too) and is re-exported here.
* :func:`make_env` — a :class:`~demiarch_flow.runner.RunEnv` around a fake provider and an
  in-memory store, with a seeded random source and a fixed wall clock.
* :func:`state_for` — a :class:`~demiarch_flow.runner.RunState` positioned at any state.
* :func:`run_state` — exactly one step of the engine's reduction from a run state: the event
  the handler emitted, the state the machine moved to, the wait, and the new run state.

Run tests under trio's ``MockClock(autojump_threshold=0)`` (pytest-trio's ``autojump_clock``
fixture) so every Backoff wait takes no real time, and read waited time from
``trio.current_time()``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import trio

from .definition import Workflow, machine_class
from .fake import FAKE_BASE_URL, FAKE_KEY, FakeOpenRouter, SeenRequest, fake_client
from .runner.context import RunEnv, RunRequest
from .runner.engine import advance, initial_state
from .runner.records import FlowRecord
from .runner.state import RunState
from .store.base import Store
from .store.memory import MemoryStore

__all__ = [
    "FAKE_BASE_URL",
    "FAKE_KEY",
    "FakeOpenRouter",
    "RecordingListener",
    "SeenRequest",
    "StepResult",
    "fixed_clock",
    "make_env",
    "run_state",
    "state_for",
]


class RecordingListener:
    """Keeps every record it is given (``records``), for assertions."""

    def __init__(self) -> None:
        self.records: list[FlowRecord] = []

    async def on_record(self, record: FlowRecord) -> None:
        self.records.append(record)

    def of_kind(self, kind: str) -> list[FlowRecord]:
        return [r for r in self.records if r.kind == kind]


def fixed_clock(at: datetime | None = None) -> Any:
    """A wall clock that always says ``at`` (default 2026-01-01 UTC)."""
    moment = at or datetime(2026, 1, 1, tzinfo=UTC)
    return lambda: moment


def make_env(
    provider: httpx.AsyncBaseTransport | str = "",
    *,
    store: Store | None = None,
    seed: int = 0,
    listeners: Sequence[Any] = (),
    **env: Any,
) -> RunEnv:
    """A :class:`RunEnv` with a fake provider (a script or a transport), an in-memory store,
    ``random.Random(seed)`` and a fixed wall clock."""
    transport = FakeOpenRouter(provider) if isinstance(provider, str) else provider
    return RunEnv(
        client=fake_client(transport),
        store=store if store is not None else MemoryStore(),
        rng=random.Random(seed),
        now=env.pop("now", fixed_clock()),
        listeners=tuple(listeners),
        **env,
    )


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step did: the event its handler emitted, where the machine went, how long the
    engine waited, the run state afterwards and the records reported."""

    event: str
    next_state: str | None
    """``None`` for a final state's action (it does not move)."""
    waited_s: float
    state: RunState
    records: tuple[FlowRecord, ...]


def state_for(
    workflow: Workflow, at: str | None = None, message: str = "Hello", **fields: Any
) -> RunState:
    """A run state positioned anywhere: ``at`` names the state (default: the initial one) and
    any :class:`RunState` field (``model_index``, ``retries``, ``last_error``, ``completion``,
    ``conversation_id`` …) can be given as a keyword."""
    state = initial_state(workflow, RunRequest(message, model=fields.pop("model", None)))
    return dataclasses.replace(state, state=at or workflow.initial, **fields)


async def run_state(workflow: Workflow, state: RunState, env: RunEnv) -> StepResult:
    """Run exactly one step of ``state`` — the engine's own reduction, not a copy of it: the
    handler, its records, its wait (free under ``MockClock``) and the machine's move.

    Raises:
        statemachine.exceptions.TransitionNotAllowed: the handler emitted an event the state
            has no transition for.
    """
    listener = RecordingListener()
    recorded = dataclasses.replace(env, listeners=(*env.listeners, listener))
    machine = machine_class(workflow)(start_value=state.state)
    started = trio.current_time()
    step, after, rec = await advance(machine, workflow, state, recorded)
    return StepResult(
        step.event,
        None if rec is None and not step.stay else after.state,
        trio.current_time() - started,
        after,
        tuple(listener.records),
    )
