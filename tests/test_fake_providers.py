"""The fake providers' own behaviour, beside the runs that use them: faults that act on the
connection, and a test's edit of a success body."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from demiarch_flow.testing import FAKE_BASE_URL, FakeOpenRouter

from .e2e.conftest import SimThread

_BODY = {"model": "anthropic/claude-sonnet-4", "messages": [{"role": "user", "content": "x"}]}
_AUTH = {"Authorization": "Bearer sk-or-test"}


async def test_refused_is_a_connect_error_in_the_fake() -> None:
    """``refused`` in FakeOpenRouter: httpx.ConnectError, as when nothing listens; the script
    moves on."""
    fake = FakeOpenRouter("*=refused")
    async with httpx.AsyncClient(transport=fake) as http:
        with pytest.raises(httpx.ConnectError):
            await http.post(f"{FAKE_BASE_URL}/chat/completions", json=_BODY)
        answer = await http.post(f"{FAKE_BASE_URL}/chat/completions", json=_BODY)
    assert answer.status_code == 200


@pytest.fixture
def refusing_simulator() -> Iterator[SimThread]:
    sim = SimThread("*=refused")
    yield sim
    sim.stop()


async def test_refused_drops_the_accepted_connection(refusing_simulator: SimThread) -> None:
    """``refused`` over real HTTP: the connection is already accepted, so it is dropped
    without an answer (a transport error, as ``reset``); the next request is answered."""
    url = f"{refusing_simulator.url}/chat/completions"
    async with httpx.AsyncClient(timeout=10) as http:
        with pytest.raises(httpx.TransportError):
            await http.post(url, json=_BODY, headers=_AUTH)
        answer = await http.post(url, json=_BODY, headers=_AUTH)
    assert answer.status_code == 200
    assert refusing_simulator.sim.models_seen == [_BODY["model"]] * 2


async def test_an_edited_success_body_is_the_rendered_one_with_the_named_fields() -> None:
    """edit_success changes only what it names; the X-Generation-Id header and the
    GET /generation record follow the edited id and answering model."""
    haiku = "anthropic/claude-3.5-haiku"
    plain = FakeOpenRouter()
    edited = FakeOpenRouter(edit_success=lambda b: {**b, "id": "gen-edited", "model": haiku})
    url = f"{FAKE_BASE_URL}/chat/completions"
    async with httpx.AsyncClient(transport=plain) as http:
        before = (await http.post(url, json=_BODY)).json()
    async with httpx.AsyncClient(transport=edited) as http:
        answer = await http.post(url, json=_BODY)
        lookups = [await http.get(f"{FAKE_BASE_URL}/generation?id=gen-edited") for _ in "12"]
    after = answer.json()
    assert answer.headers["X-Generation-Id"] == "gen-edited"
    assert (after["id"], after["model"]) == ("gen-edited", haiku)
    assert after.keys() == before.keys()
    assert {k for k in after if after[k] != before[k] and k != "created"} == {"id", "model"}
    assert [r.status_code for r in lookups] == [404, 200]  # late, as OpenRouter's
    assert lookups[1].json()["data"]["id"] == "gen-edited"
    assert lookups[1].json()["data"]["model"] == haiku


async def test_rpm_refuses_past_the_limit_in_any_60_s(autojump_clock: object) -> None:
    """``FakeOpenRouter(rpm=2)``: a third request within 60 s is a 429 whose Retry-After is the
    time until the first one leaves the window; it is not counted as a request; once the window
    has moved on, requests are answered again."""
    import trio

    fake = FakeOpenRouter(rpm=2)
    url = f"{FAKE_BASE_URL}/chat/completions"
    async with httpx.AsyncClient(transport=fake) as http:
        first = await http.post(url, json=_BODY)
        await trio.sleep(10)
        second = await http.post(url, json=_BODY)
        refused = await http.post(url, json=_BODY)
        await trio.sleep(float(refused.headers["Retry-After"]))
        again = await http.post(url, json=_BODY)
    assert [first.status_code, second.status_code, again.status_code] == [200, 200, 200]
    assert refused.status_code == 429
    assert float(refused.headers["Retry-After"]) == 50.0
    assert refused.json()["error"]["metadata"] == {"error_type": "rate_limit_exceeded"}
    assert fake.request_times() == [0.0, 10.0, 60.0]
    assert fake.rate is not None and fake.rate.refused == 1
