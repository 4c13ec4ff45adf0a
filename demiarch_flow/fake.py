"""A fake OpenRouter as an httpx transport, played from a fault script.

Not a test helper only: ``demiarch-flow simulate`` runs a workflow against it in virtual time,
so it lives outside :mod:`demiarch_flow.testing` (which re-exports it for users' tests) and the
command line never imports the test helpers. It answers from the same renderer as the bundled
HTTP simulator (:mod:`demiarch_flow.answers`, :mod:`demiarch_flow.faults`): blocking bodies,
streams with their faults, and ``GET /generation``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import trio

from .answers import Frame, GenerationLog, generation_record, stream_plan, wants_stream
from .client import ApiKey, OpenRouterClient
from .faults import (
    STREAMED,
    FaultCursor,
    FaultScript,
    blocking_kind,
    models_listing,
    new_generation_id,
    over_rpm,
    render,
    stream_break,
)
from .pricing import PriceTable
from .simrate import SlidingWindowLimit

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
        edit_success: a test's change to each success body the fake renders (blocking answers;
            a stream is played as rendered): the body is still the one renderer's, only the
            fields the edit names differ — an absurd ``usage``, another answering ``model``.
            The ``X-Generation-Id`` header and ``GET /generation`` follow the edited ``id``,
            ``model`` and content.
        rpm: a provider-side limit, as the bundled simulator's: a chat request past ``rpm``
            in any 60 s of trio's clock gets a 429 with ``Retry-After`` and is not counted in
            :attr:`requests` (``rate.refused`` counts it).
    """

    def __init__(
        self,
        script: str | FaultScript = "",
        prices: PriceTable | None = None,
        *,
        read_size: int = 0,
        edit_success: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        rpm: int | None = None,
    ) -> None:
        parsed = FaultScript.parse(script) if isinstance(script, str) else script
        self.cursor = FaultCursor(parsed)
        self.prices = prices or PriceTable.load()
        self.requests: list[SeenRequest] = []
        self.generations = GenerationLog()
        self.read_size = read_size
        self.edit_success = edit_success
        self.rate = SlidingWindowLimit(rpm) if rpm else None
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
        if self.rate is not None and (wait := self.rate.admit(trio.current_time())) is not None:
            refused = over_rpm(wait)
            return httpx.Response(refused.status, headers=refused.headers, content=refused.body)
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
        if fault.kind == "refused":  # still in self.requests: the attempt used a script item
            raise httpx.ConnectError("Connection refused", request=request)
        if fault.kind == "hang":
            await trio.sleep_forever()
        if fault.kind == "slow":
            await trio.sleep(fault.delay_s)
        out = render(
            fault, model, body.get("messages", []), self.prices, generation_id,
            datetime.now(UTC),
        )  # fmt: skip
        if out.headers.get("X-Generation-Id") == generation_id:  # billed: OpenRouter keeps it
            answer = json.loads(out.body)
            if self.edit_success is not None:
                answer = self.edit_success(answer)
                generation_id = str(answer["id"])
                headers = {**out.headers, "X-Generation-Id": generation_id}
                out = dataclasses.replace(out, headers=headers, body=json.dumps(answer).encode())
            content = answer["choices"][0]["message"]["content"]
            answering = str(answer.get("model") or model)
            self.generations.add(
                generation_id,
                generation_record(answering, messages, self.prices, generation_id, content),
            )
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


def fake_client(transport: httpx.AsyncBaseTransport) -> OpenRouterClient:
    """An :class:`OpenRouterClient` that talks to ``transport`` with a fake key and base URL."""
    http = httpx.AsyncClient(transport=transport)
    return OpenRouterClient(http, ApiKey(FAKE_KEY, "test"), base_url=FAKE_BASE_URL)
