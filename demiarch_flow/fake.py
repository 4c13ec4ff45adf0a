"""A fake OpenRouter as an httpx transport, played from a fault script.

Not a test helper only: ``demiarch-flow simulate`` runs a workflow against it in virtual time,
so it lives outside :mod:`demiarch_flow.testing` (which re-exports it for users' tests) and the
command line never imports the test helpers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import trio

from .client import ApiKey, OpenRouterClient
from .faults import (
    FaultCursor,
    FaultScript,
    GenerationLedger,
    models_listing,
    new_generation_id,
    render,
)
from .pricing import PriceTable

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
    """

    def __init__(self, script: str | FaultScript = "", prices: PriceTable | None = None) -> None:
        parsed = FaultScript.parse(script) if isinstance(script, str) else script
        self.cursor = FaultCursor(parsed)
        self.prices = prices or PriceTable.load()
        self.requests: list[SeenRequest] = []
        self.ledger = GenerationLedger()
        """What ``GET /generation`` answers: the generations this fake billed."""

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
            found = self.ledger.answer(request.url.params.get("id", ""))
            return httpx.Response(found.status, headers=found.headers, content=found.body)
        body = json.loads(await request.aread() or b"{}")
        model = str(body.get("model", ""))
        self.requests.append(SeenRequest(model, dict(request.headers), body, trio.current_time()))
        generation_id = new_generation_id()
        fault = self.cursor.next(model)
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
        self.ledger.note(generation_id, out)
        return httpx.Response(out.status, headers=out.headers, content=out.body)


def fake_client(transport: httpx.AsyncBaseTransport) -> OpenRouterClient:
    """An :class:`OpenRouterClient` that talks to ``transport`` with a fake key and base URL."""
    http = httpx.AsyncClient(transport=transport)
    return OpenRouterClient(http, ApiKey(FAKE_KEY, "test"), base_url=FAKE_BASE_URL)
