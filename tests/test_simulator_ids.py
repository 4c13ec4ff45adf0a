"""Issue 9 #15: every answer of a fake provider has its own generation id, latency or not."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import trio

from demiarch_flow.runner import RunRequest, run_workflow
from demiarch_flow.store import MemoryStore
from demiarch_flow.testing import FAKE_BASE_URL, FakeOpenRouter, make_env

from .e2e.conftest import SimThread
from .runner.helpers import default_workflow

_BODY = {"model": "anthropic/claude-sonnet-4", "messages": [{"role": "user", "content": "x"}]}
_AUTH = {"Authorization": "Bearer sk-or-test"}


@pytest.fixture
def slow_simulator() -> Iterator[SimThread]:
    sim = SimThread("", latency_s=0.05)
    yield sim
    sim.stop()


async def _ask(http: httpx.AsyncClient, url: str, ids: list[str]) -> None:
    response = await http.post(f"{url}/chat/completions", json=_BODY, headers=_AUTH)
    ids.append(response.json()["id"])


async def test_simulator_with_latency_gives_concurrent_answers_distinct_ids(
    slow_simulator: SimThread,
) -> None:
    """40 requests in flight at once against a 50 ms simulator: 40 different ids."""
    ids: list[str] = []
    async with httpx.AsyncClient(timeout=10) as http, trio.open_nursery() as nursery:
        for _ in range(40):
            nursery.start_soon(_ask, http, slow_simulator.url, ids)
    assert len(ids) == 40
    assert len(set(ids)) == 40


async def test_two_fake_providers_never_share_an_id() -> None:
    """Ids are unique across fake providers (and so processes), not a per-instance counter."""
    ids: list[str] = []
    for _ in range(2):
        async with httpx.AsyncClient(transport=FakeOpenRouter()) as http:
            await _ask(http, FAKE_BASE_URL, ids)
    assert len(set(ids)) == 2


async def test_fake_provider_with_slow_answers_stores_every_reply(autojump_clock: object) -> None:
    """20 concurrent runs whose answers take 2 s each: 20 usage rows, 20 generation ids."""
    store = MemoryStore()
    env = make_env(FakeOpenRouter("*=slow:2*"), store=store)
    wf = default_workflow()
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(run_workflow, wf, RunRequest(f"m{i}"), env)
    assert len(store.usage) == 20
    assert len({row.generation_id for row in store.usage}) == 20
