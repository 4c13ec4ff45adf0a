"""Replaying recorded runs under an edited workflow, in virtual time, through the real runner.

All runs share one trio ``MockClock`` timeline that starts at the first run's recorded start:
each run begins at its own recorded moment, so the models' behaviour is met when it happened,
and the shared state of the edited policy sees the runs together as the record saw them — one
budget and rate ledger for all (the database's, in the record), one cooldown registry per
recording process (``workflow_runs.owner``: a cooldown is shared by the runs of one process).
Each run writes to a store of its own in memory; nothing leaves the process.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import datetime, timedelta

import trio
import trio.testing

from ..definition import Workflow
from ..pricing import PriceTable
from ..runner import RunEnv, RunRequest, run_workflow
from ..runner.cooldown import CooldownRegistry
from ..runner.limiter import Limiter
from ..store import MemoryStore
from ._facts import RunFacts, recorded_facts, replayed_facts
from ._provider import Provider, ReplayClient, Unrecorded
from ._record import Record, RecordedRun
from ._report import Assumption, Report


def replay(
    wf: Workflow,
    record: Record,
    *,
    unrecorded: Unrecorded | None = None,
    prices: PriceTable | None = None,
    seed: int = 0,
) -> Report:
    """Replay every run of ``record`` under ``wf`` and compare it with what was recorded.

    Args:
        unrecorded: how a model the record never asked answers (``None``: like the recorded
            model with the closest price).
        seed: the seed of the jitter draws (``retry.jitter: full``).

    Raises:
        UsageError: ``unrecorded`` names a model the record never asked.
    """
    prices = prices or PriceTable.load()
    provider = Provider(record.runs, unrecorded, prices)
    replayed: dict[str, RunFacts] = {}
    if record.runs:
        trio.run(
            _replay_all, wf, record, provider, prices, seed, replayed,
            clock=trio.testing.MockClock(autojump_threshold=0),
        )  # fmt: skip
    pairs = [(recorded_facts(r), replayed[r.run_id]) for r in record.runs]
    assumptions = [
        Assumption(
            model,
            provider.assumed[model].describe()
            + (" (the closest price)" if unrecorded is None and how.kind == "like" else ""),
            len(provider.assumed_runs.get(model, ())),
        )
        for model, how in sorted(provider.assumed.items())
    ]
    return Report.of(pairs, assumptions, record.missing)


async def _replay_all(
    wf: Workflow,
    record: Record,
    provider: Provider,
    prices: PriceTable,
    seed: int,
    out: dict[str, RunFacts],
) -> None:
    origin = record.runs[0].started_at
    t0 = trio.current_time()

    def now() -> datetime:
        return origin + timedelta(seconds=trio.current_time() - t0)

    base = RunEnv(
        client=ReplayClient(provider, record.runs[0], now, prices),
        store=MemoryStore(),
        rng=random.Random(seed),
        now=now,
        prices=prices,
        limits=Limiter(),
    )
    cooldowns: dict[str | None, CooldownRegistry] = {}
    async with trio.open_nursery() as nursery:
        for run in record.runs:
            await trio.sleep_until(t0 + (run.started_at - origin).total_seconds())
            env = dataclasses.replace(
                base,
                client=ReplayClient(provider, run, now, prices),
                store=MemoryStore(),
                cooldowns=cooldowns.setdefault(run.owner, CooldownRegistry()),
            )
            nursery.start_soon(_one, wf, run, env, provider, out)


async def _one(
    wf: Workflow, run: RecordedRun, env: RunEnv, provider: Provider, out: dict[str, RunFacts]
) -> None:
    request = RunRequest(run.message, model=run.first_model, stream=run.stream)
    await run_workflow(wf, request, env, run_id=run.run_id)
    assert isinstance(env.store, MemoryStore)
    assumed = any(run.run_id in runs for runs in provider.assumed_runs.values())
    out[run.run_id] = replayed_facts(run.run_id, env.store, assumed=assumed)
