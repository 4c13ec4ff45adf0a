"""Helpers for testing workflows — ours and our users' — without a network or real waiting.

* :class:`FakeOpenRouter` — an ``httpx`` transport that answers like OpenRouter from a fault
  script (see :mod:`demiarch_flow.faults`) and records every request it receives.
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
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import trio

from .answers import Frame, GenerationLog, generation_record, stream_plan, wants_stream
from .client import ApiKey, OpenRouterClient
from .definition import Workflow, machine_class
from .faults import (
    STREAMED,
    FaultCursor,
    FaultScript,
    blocking_kind,
    models_listing,
    new_generation_id,
    render,
    stream_break,
)
from .pricing import PriceTable
from .runner.context import RunEnv, RunRequest
from .runner.engine import advance, initial_state
from .runner.records import FlowRecord
from .runner.state import RunState
from .store.base import Store
from .store.memory import MemoryStore

FAKE_BASE_URL = "https://openrouter.test/api/v1"
FAKE_KEY = "sk-or-test-0000000000000000"


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """A request the fake received: the model asked for, the headers, the JSON body, the time."""

    model: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


class FakeOpenRouter(httpx.AsyncBaseTransport):
    """An OpenRouter stand-in as an httpx transport, scripted per model.

    Args:
        script: a fault script text or a parsed :class:`FaultScript` (empty: always ``ok``).
        prices: the price table used for ``usage.cost`` in success bodies.
        read_size: a streamed body is handed to the client in reads of this many bytes (small
            values cut multi-byte characters in two, as a network does); 0: one read a frame.
    """

    def __init__(
        self,
        script: str | FaultScript = "",
        prices: PriceTable | None = None,
        *,
        read_size: int = 0,
    ) -> None:
        parsed = FaultScript.parse(script) if isinstance(script, str) else script
        self.cursor = FaultCursor(parsed)
        self.prices = prices or PriceTable.load()
        self.requests: list[SeenRequest] = []
        self.generations = GenerationLog()
        self.read_size = read_size
        self.closed_streams = 0
        """Streams the client closed before their end (Ctrl-C, a clock)."""

    @property
    def models_called(self) -> list[str]:
        """The model of every chat request, in order."""
        return [r.model for r in self.requests]

    def request_times(self) -> list[float]:
        return [r.at for r in self.requests]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path.endswith("/models"):
            return httpx.Response(200, json=models_listing(self.prices))
        if request.method == "GET" and path.endswith("/generation"):
            found = self.generations.lookup(request.url.params.get("id", ""))
            if found is None:
                return httpx.Response(404, json={"error": {"code": 404, "message": "Not found"}})
            return httpx.Response(200, json=found)
        body = json.loads(await request.aread() or b"{}")
        model = str(body.get("model", ""))
        self.requests.append(SeenRequest(model, dict(request.headers), body, trio.current_time()))
        generation_id = new_generation_id()
        fault = self.cursor.next(model)
        messages = body.get("messages", [])
        if wants_stream(body) and fault.kind in STREAMED:
            if fault.kind == "slow":
                await trio.sleep(fault.delay_s)
            plan = stream_plan(
                model, messages, self.prices, generation_id, datetime.now(UTC),
                stream_break(fault), fault.count if fault.kind == "chunks" else None,
            )  # fmt: skip
            self.generations.add(
                generation_id,
                generation_record(model, messages, self.prices, generation_id, plan.text),
            )
            return httpx.Response(
                200,
                headers={"Content-Type": "text/event-stream", "X-Generation-Id": generation_id},
                stream=_Played(self, plan.frames, request),
            )
        fault = dataclasses.replace(fault, kind=blocking_kind(fault))
        if fault.kind == "reset":
            raise httpx.ReadError("Connection reset by peer", request=request)
        if fault.kind == "hang":
            await trio.sleep_forever()
        if fault.kind == "slow":
            await trio.sleep(fault.delay_s)
        out = render(
            fault, model, body.get("messages", []), self.prices, generation_id,
            datetime.now(UTC),
        )  # fmt: skip
        return httpx.Response(out.status, headers=out.headers, content=out.body)


class _Played(httpx.AsyncByteStream):
    """A stream plan played as an httpx response body (trio's clock for its pauses).

    An iterator object rather than an async generator: httpx iterates a body without
    ``aclosing``, and a generator left half-read would be finalised by the garbage collector.
    """

    def __init__(self, fake: FakeOpenRouter, frames: list[Frame], request: httpx.Request) -> None:
        self._fake = fake
        self._request = request
        self._size = fake.read_size
        self._frames = iter(frames)
        self._pending: list[bytes] = []
        self._finished = False

    def __aiter__(self) -> _Played:
        return self

    async def __anext__(self) -> bytes:
        while not self._pending:
            frame = next(self._frames, None)
            if frame is None:
                self._finished = True
                raise StopAsyncIteration
            if frame.kind == "data":
                data, size = frame.data, self._size
                self._pending = (
                    [data[i : i + size] for i in range(0, len(data), size)] if size else [data]
                )
            elif frame.kind == "sleep":
                await trio.sleep(frame.seconds)
            elif frame.kind == "reset":
                raise httpx.ReadError("Connection reset by peer", request=self._request)
            else:
                await trio.sleep_forever()
        return self._pending.pop(0)

    async def aclose(self) -> None:
        if not self._finished:
            self._fake.closed_streams += 1


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
    http = httpx.AsyncClient(transport=transport)
    client = OpenRouterClient(http, ApiKey(FAKE_KEY, "test"), base_url=FAKE_BASE_URL)
    return RunEnv(
        client=client,
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
        None if rec is None else after.state,
        trio.current_time() - started,
        after,
        tuple(listener.records),
    )
