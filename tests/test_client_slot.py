"""The in-flight cap of the client: a free place is taken at once, a full cap waits; the
place is given back however the request ends (answer, error, timeout, cancellation)."""

from __future__ import annotations

import httpx
import trio

from demiarch_flow.client import ApiKey, OpenRouterClient

OK = {"choices": [{"message": {"content": "hi"}}]}


class Gate:
    """A transport that holds every request until released, counting those inside at once."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.seen = 0
        self.release = trio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen += 1
        self.inside += 1
        self.most = max(self.most, self.inside)
        try:
            await self.release.wait()
        finally:
            self.inside -= 1
        return httpx.Response(200, json=OK)


def client(transport: object, limiter: trio.CapacityLimiter) -> OpenRouterClient:
    http = httpx.AsyncClient(transport=transport)  # type: ignore[arg-type]
    return OpenRouterClient(
        http, ApiKey("sk-or-test", "test"), base_url="http://x/api/v1", limiter=limiter
    )


async def test_a_full_cap_waits_and_every_place_comes_back(autojump_clock: object) -> None:
    gate = Gate()
    limiter = trio.CapacityLimiter(2)
    c = client(gate, limiter)
    done: list[str] = []

    async def ask() -> None:
        attempt = await c.complete({"model": "m", "messages": []}, timeout_s=60)
        assert attempt.completion is not None
        done.append(attempt.completion.content)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(ask)
        await trio.sleep(1)
        assert (gate.inside, limiter.borrowed_tokens) == (2, 2)  # three wait for a place
        gate.release.set()
    assert done == ["hi"] * 5
    assert gate.most == 2
    assert limiter.borrowed_tokens == 0


async def test_a_timeout_or_cancellation_gives_the_place_back(autojump_clock: object) -> None:
    gate = Gate()
    limiter = trio.CapacityLimiter(1)
    c = client(gate, limiter)
    timed_out = await c.complete({"model": "m", "messages": []}, timeout_s=5)
    assert timed_out.error is not None
    assert timed_out.error.error_class == "timeout"
    assert limiter.borrowed_tokens == 0
    with trio.move_on_after(5):  # cancelled while in the request
        await c.complete({"model": "m", "messages": []}, timeout_s=60)
    assert limiter.borrowed_tokens == 0
    assert gate.seen == 2
    with trio.CancelScope() as scope:  # cancelled before it starts: nothing is sent
        scope.cancel()
        await c.complete({"model": "m", "messages": []}, timeout_s=60)
    assert limiter.borrowed_tokens == 0
    assert gate.seen == 2
    assert gate.most == 1
