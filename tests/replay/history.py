"""Recorded histories for the replay tests: workflows really run through the runner against the
one fake provider (a fault script), into a real database, on a virtual clock that says when."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import trio
from trio.testing import MockClock

from demiarch_flow.definition import Workflow
from demiarch_flow.fake import FakeOpenRouter, fake_client
from demiarch_flow.pricing import PriceTable
from demiarch_flow.runner import RunEnv, RunRequest, run_workflow
from demiarch_flow.store.sql import SqlStore

from ..property.harness import _inline_threads

WEEK = datetime(2026, 11, 23, tzinfo=UTC)
"""Monday of the recorded week."""


def record(
    db_url: str,
    wf: Workflow,
    script: str,
    starts_s: Sequence[float],
    *,
    prices: PriceTable | None = None,
    owner: str | None = None,
    model: str | None = None,
    stream: bool | None = None,
) -> list[str]:
    """Run ``wf`` once per entry of ``starts_s`` (seconds after :data:`WEEK`, one after the
    other) against ``script``, into ``db_url``, each asking ``model`` first and streaming as
    ``stream`` says (``run --model``, ``--stream``); the run ids, in order."""

    async def main() -> list[str]:
        store = await SqlStore.open(db_url)
        fake = FakeOpenRouter(script)
        t0 = trio.current_time()

        def now() -> datetime:
            return WEEK + timedelta(seconds=trio.current_time() - t0)

        env = RunEnv(
            client=fake_client(fake), store=store, rng=random.Random(0), now=now,
            prices=prices or PriceTable.load(), owner=owner,
        )  # fmt: skip
        ids = []
        try:
            for i, start in enumerate(starts_s):
                await trio.sleep_until(t0 + start)
                asked = RunRequest(f"question {i}: what is 2 + {i}?", model=model, stream=stream)
                outcome = await run_workflow(wf, asked, env)
                ids.append(outcome.run_id)
        finally:
            store.close()
        return ids

    with _inline_threads():
        return trio.run(main, clock=MockClock(autojump_threshold=0))
