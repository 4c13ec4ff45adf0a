"""Replaying recorded runs under an edited workflow, in virtual time, through the real runner.

All runs share one trio ``MockClock`` timeline that starts at the first run's recorded start:
each run begins at its own recorded moment, so the models' behaviour is met when it happened,
and the shared state of the edited policy sees the runs together as the record saw them — one
budget and rate ledger for all (the database's, in the record), one cooldown registry per
recording process (``workflow_runs.owner``: a cooldown is shared by the runs of one process).
Each run writes to a store of its own in memory; nothing leaves the process.

When the edited file has neither ``limits`` nor ``cooldown``, no run's replay can change
another's (each meets the record, which only it consumes of its own, and draws its jitter from
a generator of its own), so large replays are split over one process per core: the same
report, sooner.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import random
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta

import trio
import trio.testing

from ..definition import Workflow, parse_workflow
from ..pricing import PriceTable
from ..runner import RunEnv, RunRequest, run_workflow
from ..runner.cooldown import CooldownRegistry
from ..runner.limiter import Limiter
from ..store import MemoryStore
from ._facts import RunFacts, recorded_facts, replayed_facts
from ._provider import Provider, ReplayClient, Unrecorded
from ._record import Record, RecordedRun
from ._report import Assumption, Report

PARALLEL_FROM = 2_000
"""Fewer runs than this are replayed in this process (starting workers costs more than it
saves)."""


def replay(
    wf: Workflow,
    record: Record,
    *,
    unrecorded: Unrecorded | None = None,
    prices: PriceTable | None = None,
    seed: int = 0,
    workers: int | None = None,
) -> Report:
    """Replay every run of ``record`` under ``wf`` and compare it with what was recorded.

    Args:
        unrecorded: how a model the record never asked answers (``None``: like the recorded
            model with the closest price).
        seed: the seed of the jitter draws (``retry.jitter: full``); each run draws from its
            own generator, seeded with ``seed`` and its id.
        workers: processes to split independent runs over (``None``: one per core from
            :data:`PARALLEL_FROM` runs; runs that share a budget, a rate bucket or a cooldown
            are always replayed together, in this process).

    Raises:
        UsageError: ``unrecorded`` names a model the record never asked.
    """
    prices = prices or PriceTable.load()
    provider = Provider(record.runs, unrecorded, prices)
    n = _workers(wf, len(record.runs)) if workers is None else workers
    if n > 1 and independent(wf) and wf.text:
        replayed = _in_processes(wf, record, provider, unrecorded, prices, seed, n)
    else:
        replayed = _in_order(wf, record.runs, record, provider, prices, seed)
    pairs = [(recorded_facts(r), replayed[r.run_id]) for r in record.runs]
    assumptions = [
        Assumption(
            model,
            how.describe()
            + (" (the closest price)" if unrecorded is None and how.kind == "like" else ""),
            len(provider.assumed_runs.get(model, ())),
        )
        for model, how in sorted(provider.assumed.items())
    ]
    return Report.of(pairs, assumptions, record.missing)


def independent(wf: Workflow) -> bool:
    """Whether no run's replay can change another's under ``wf`` (no shared limits or
    cooldown)."""
    return wf.limits is None and wf.cooldown is None


def _workers(wf: Workflow, runs: int) -> int:
    if runs < PARALLEL_FROM:
        return 1
    return min(os.cpu_count() or 1, 8)


def _in_order(
    wf: Workflow,
    runs: Sequence[RecordedRun],
    record: Record,
    provider: Provider,
    prices: PriceTable,
    seed: int,
) -> dict[str, RunFacts]:
    """Replay ``runs`` (some or all of ``record``'s) together on one virtual timeline."""
    out: dict[str, RunFacts] = {}
    if runs:
        trio.run(
            _replay_all, wf, runs, record.runs[0].started_at, provider, prices, seed, out,
            clock=trio.testing.MockClock(autojump_threshold=0),
        )  # fmt: skip
    return out


_Share = tuple[dict[str, RunFacts], dict[str, Unrecorded], dict[str, set[str]]]
_Job = tuple[str, str, Record, Unrecorded | None, PriceTable, int, int, int, int]


def _share(job: _Job) -> _Share:
    """A worker's share: every ``n``-th run from the ``k``-th, against the whole record."""
    text, source, record, unrecorded, prices, seed, k, n, log_level = job
    logging.getLogger("demiarch_flow").setLevel(log_level)  # as quiet as the command
    wf = parse_workflow(text, source)
    provider = Provider(record.runs, unrecorded, prices)
    facts = _in_order(wf, record.runs[k::n], record, provider, prices, seed)
    return facts, provider.assumed, provider.assumed_runs


_JOBS: list[_Job] = []
"""The jobs of forked workers, which inherit them: ten thousand runs are not pickled twice."""


def start_method() -> str:
    """``fork`` where it exists and this process has no other thread (whose locks a fork would
    copy, held); else ``spawn`` (the record is then pickled to each worker)."""
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return "fork"
    return "spawn"


def _forked_share(k: int) -> _Share:
    return _share(_JOBS[k])


def _in_processes(
    wf: Workflow,
    record: Record,
    provider: Provider,
    unrecorded: Unrecorded | None,
    prices: PriceTable,
    seed: int,
    n: int,
) -> dict[str, RunFacts]:
    """Replay every ``n``-th run in each of ``n`` new processes; merge what they found."""
    level = logging.getLogger("demiarch_flow").getEffectiveLevel()
    jobs = [(wf.text, wf.source, record, unrecorded, prices, seed, k, n, level) for k in range(n)]
    global _JOBS
    _JOBS = jobs
    method = start_method()
    try:
        with multiprocessing.get_context(method).Pool(n) as pool:
            if method == "fork":  # the workers have the jobs already: send their numbers only
                shares = pool.map(_forked_share, range(n))
            else:
                shares = pool.map(_share, jobs)
    finally:
        _JOBS = []
    out: dict[str, RunFacts] = {}
    for facts, assumed, assumed_runs in shares:
        out.update(facts)
        provider.assumed.update(assumed)
        for model, runs in assumed_runs.items():
            provider.assumed_runs.setdefault(model, set()).update(runs)
    return out


async def _replay_all(
    wf: Workflow,
    runs: Sequence[RecordedRun],
    origin: datetime,
    provider: Provider,
    prices: PriceTable,
    seed: int,
    out: dict[str, RunFacts],
) -> None:
    t0 = trio.current_time()
    now = _RecordedWall(origin, t0)
    base = RunEnv(
        client=ReplayClient(provider, runs[0], now),
        store=MemoryStore(),
        now=now,
        prices=prices,
        limits=Limiter(),
    )
    cooldowns: dict[str | None, CooldownRegistry] = {}
    async with trio.open_nursery() as nursery:
        for run in runs:
            await trio.sleep_until(t0 + (run.started_at - origin).total_seconds())
            env = dataclasses.replace(
                base,
                client=ReplayClient(provider, run, now),
                store=MemoryStore(),
                rng=random.Random(f"{seed}/{run.run_id}"),
                cooldowns=cooldowns.setdefault(run.owner, CooldownRegistry()),
            )
            nursery.start_soon(_one, wf, run, env, provider, out)


class _RecordedWall:
    """``now()`` of the replay: the recorded wall time of this moment of the virtual timeline
    (``origin`` at trio's ``t0``), worked out once per instant — a run asks it a dozen times."""

    def __init__(self, origin: datetime, t0: float) -> None:
        self.origin, self.t0 = origin, t0
        self.at, self.wall = t0, origin

    def __call__(self) -> datetime:
        t = trio.current_time()
        if t != self.at:
            self.at, self.wall = t, self.origin + timedelta(seconds=t - self.t0)
        return self.wall


async def _one(
    wf: Workflow, run: RecordedRun, env: RunEnv, provider: Provider, out: dict[str, RunFacts]
) -> None:
    request = RunRequest(run.message, model=run.first_model, stream=run.stream)
    await run_workflow(wf, request, env, run_id=run.run_id)
    assert isinstance(env.store, MemoryStore)
    assumed = any(run.run_id in runs for runs in provider.assumed_runs.values())
    out[run.run_id] = replayed_facts(run.run_id, env.store, assumed=assumed)
