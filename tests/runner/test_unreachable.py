"""The endpoint itself cannot be reached (offline, a name that does not resolve, a refusal):
the first model's retries, then a clear failure — not a walk down the model chain, every model
of which sits behind the same host (issue 18: 30 s and 12 attempts over 3 models offline)."""

from __future__ import annotations

import httpx
import pytest
import trio

from demiarch_flow.client import ApiKey, OpenRouterClient
from demiarch_flow.errors import ErrorClass
from demiarch_flow.runner import RunRequest, run_workflow
from demiarch_flow.testing import FakeOpenRouter, make_env

from .helpers import SONNET, default_workflow


class Offline(httpx.AsyncBaseTransport):
    def __init__(self, exc: type[httpx.TransportError]) -> None:
        self.exc, self.calls = exc, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        raise self.exc("[Errno -3] Temporary failure in name resolution", request=request)


@pytest.mark.parametrize(
    ("exc", "unreachable"),
    [(httpx.ConnectError, True), (httpx.ConnectTimeout, True), (httpx.PoolTimeout, False)],
)
async def test_no_connection_to_the_host_is_the_endpoints_failure(
    exc: type[httpx.TransportError], unreachable: bool
) -> None:
    """A connect error or timeout names the host and is marked unreachable; no connection free
    in this process's own pool is not the host's fault."""
    async with httpx.AsyncClient(transport=Offline(exc)) as http:
        client = OpenRouterClient(http, ApiKey("sk-or-test", "test"))
        payload = client.build_payload(SONNET, [{"role": "user", "content": "Hi"}])
        attempt = await client.complete(payload, timeout_s=5)
    assert attempt.unsent and attempt.error is not None
    assert attempt.error.unreachable is unreachable
    assert ("cannot reach openrouter.ai — are you offline?" in str(attempt.error)) is unreachable


async def test_an_unreachable_endpoint_fails_fast_without_walking_the_chain(
    autojump_clock: object,
) -> None:
    """The bundled policy offline: the first model's retries (1 + 2 + 4 s), then the run fails
    as network_error naming the host; no other model is asked."""
    fake = FakeOpenRouter("*=refused*")
    env = make_env(fake)
    start = trio.current_time()
    out = await run_workflow(default_workflow(), RunRequest("Hi", stream=False), env)
    assert out.status == "failed"
    assert out.error_class == ErrorClass.NETWORK_ERROR
    assert "cannot reach" in str(out.error) and "are you offline?" in str(out.error)
    assert {a.model for a in out.attempts} == {SONNET} and len(out.attempts) == 4
    assert trio.current_time() - start <= 8
    assert [r.model for r in fake.requests] == [SONNET] * 4
