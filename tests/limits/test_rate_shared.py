"""Shared rate buckets through one SQL ledger (SQLite, PostgreSQL) as several processes use it:
a bucket follows its rule, and no sliding 60 s holds more sends than ``rpm``."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

from demiarch_flow.definition.limits import RateBucket
from demiarch_flow.runner import RunRequest, run_workflow
from demiarch_flow.runner.limiter import Limiter, rule_of
from demiarch_flow.store import MemoryStore
from demiarch_flow.store.base import Checkpoint
from demiarch_flow.store.limits import (
    BudgetWindow,
    MemoryLedger,
    Reservation,
    SqlLedger,
    WindowUse,
    bucket_row,
)
from demiarch_flow.store.sql import SqlStore, open_engine
from demiarch_flow.testing import FakeOpenRouter, make_env

from ..store.conftest import PG_URL, drop_everything, postgres_available
from .helpers import with_limits

T = TypeVar("T")


def busiest_window(times: list[float], window_s: float = 60.0, grace_s: float = 1e-6) -> int:
    """The most sends in any trailing ``window_s`` (as the provider's SlidingWindowLimit
    counts: a send exactly one window after another is in the next window)."""
    times = sorted(times)
    best, first = 0, 0
    for last, t in enumerate(times):
        while times[first] <= t - window_s + grace_s:
            first += 1
        best = max(best, last - first + 1)
    return best


class InlineLedger(SqlLedger):
    """The SQL ledger with its transactions run in trio's thread: time under MockClock then
    moves only when a task sleeps, so interleavings are the same on every run."""

    async def _run(self, fn: Callable[[Any], T]) -> T:
        return self._serialised(fn)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (RateBucket("*", rpm=0.01), RateBucket("*", rpm=600)),
        (RateBucket("*", tpm=0.01), RateBucket("*", tpm=600_000)),
    ],
)
@pytest.mark.parametrize("where", ["memory", "sqlite", "postgresql"])
async def test_a_changed_rule_does_not_inherit_the_old_schedule(
    where: str, old: RateBucket, new: RateBucket, tmp_path: Path, autojump_clock: Any
) -> None:
    """A bucket pushed days ahead by a mistaken rule (rpm or tpm 0.01) does not make the
    corrected rule wait: the schedule belongs to the rule, in both ledgers."""
    if where == "postgresql":
        if not postgres_available():
            pytest.skip("no PostgreSQL server")
        drop_everything()
    url = PG_URL if where == "postgresql" else f"sqlite:///{tmp_path / 'flow.db'}"
    store = None
    if where == "memory":
        ledger: Any = MemoryLedger()
    else:
        store = await SqlStore.open(url)
        ledger = SqlLedger(store.engine, clock=lambda: 1e6 + autojump_clock.current_time())
    try:
        for _ in range(41):
            await ledger.take([rule_of(old)], 1_000)
        wait, _ = await ledger.take([rule_of(old)], 1_000)
        assert wait > 86_400
        wait, blocking = await ledger.take([rule_of(new)], 1_000)
        assert (wait, blocking) == (0.0, None)
    finally:
        if store is not None:
            store.close()


def test_row_names_fit_the_key_column_and_tell_rules_apart() -> None:
    """A row is named by key and rule, within the 200 characters of rate_buckets.key, even
    for a 200-character key; its record of sends is another row."""
    long = "m" * 200
    names = {
        bucket_row(rule_of(RateBucket(k, rpm=r)), sends)
        for k in ("*", long)
        for r in (60, 61)
        for sends in (False, True)
    }
    assert len(names) == 8 and max(len(n) for n in names) <= 200
    assert bucket_row(rule_of(RateBucket("*", rpm=600))) == "* 0.1/0.0/-"


class LaggyStore(MemoryStore):
    """A store whose durable writes take a while (another process holds the database)."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng

    async def checkpoint(self, checkpoint: Checkpoint, *, durable: bool) -> None:
        if durable:
            await trio.sleep(self.rng.uniform(0.0, 0.4))
        await super().checkpoint(checkpoint, durable=durable)


class LaggyLedger(InlineLedger):
    """A ledger whose budget reservation waits for the database a varying while."""

    def __init__(self, *args: Any, rng: random.Random, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rng = rng

    async def reserve(
        self, reservation: Reservation, windows: Sequence[BudgetWindow]
    ) -> WindowUse | None:
        await trio.sleep(self.rng.uniform(0.0, 0.3))
        return await super().reserve(reservation, windows)


async def test_four_processes_never_send_more_than_rpm_in_any_60_s(
    db_url: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Four processes, each with its own engine and ledger on one database, run a batch under
    `rpm: 60` while their database writes take varying times (the throttle's journal row, the
    budget reservation): the provider never sees more than 60 requests in any sliding 60 s."""
    SqlStore.open_sync(db_url).close()
    wf = with_limits('  budget: {daily_usd: 1000}\n  rate:\n    "*": {rpm: 60}\n')
    provider = FakeOpenRouter(rpm=60)

    def clock() -> float:
        return 1_700_000_000.0 + autojump_clock.current_time()

    async def process(p: int) -> None:
        engine = open_engine(db_url)
        rng = random.Random(p)
        ledger = LaggyLedger(engine, clock=clock, rng=rng)
        env = make_env(provider, store=LaggyStore(rng), limits=Limiter(ledger), seed=p)
        limiter = trio.CapacityLimiter(4)

        async def one(i: int) -> None:
            async with limiter:
                await run_workflow(wf, RunRequest(f"p{p} line {i}"), env)

        try:
            async with trio.open_nursery() as nursery:
                for i in range(40):
                    nursery.start_soon(one, i)
        finally:
            engine.dispose()

    async with trio.open_nursery() as nursery:
        for p in range(4):
            nursery.start_soon(process, p)
    times = provider.request_times()
    assert len(times) == 160
    assert busiest_window(times) <= 60
    assert provider.rate is not None and provider.rate.refused == 0


async def test_burst_never_puts_more_than_rpm_in_a_window(autojump_clock: Any) -> None:
    """`rpm: 60, burst: 5` lets five go back to back, yet a busy bucket never sends more than
    60 in any sliding 60 s (plain GCRA would let 64 through)."""
    wf = with_limits('  rate:\n    "*": {rpm: 60, burst: 5}\n')
    provider = FakeOpenRouter(rpm=60)
    env = make_env(provider)
    limiter = trio.CapacityLimiter(10)

    async def one(i: int) -> None:
        async with limiter:
            await run_workflow(wf, RunRequest(f"line {i}"), env)

    async with trio.open_nursery() as nursery:
        for i in range(130):
            nursery.start_soon(one, i)
    times = provider.request_times()
    assert len(times) == 130
    assert times[:5] == [times[0]] * 5
    assert busiest_window(times) <= 60
    assert provider.rate is not None and provider.rate.refused == 0


def test_takers_on_separate_connections_get_distinct_slots(db_url: str) -> None:
    """Eight threads, each with its own engine (as processes would), take 40 slots of an
    rpm-60 bucket at one instant: the slots are 0, 1, …, 39 s away, each once."""
    SqlStore.open_sync(db_url).close()
    rule = rule_of(RateBucket("*", rpm=60))
    waits: list[float] = []
    lock = threading.Lock()

    def taker() -> None:
        engine = open_engine(db_url)
        ledger = SqlLedger(engine, clock=lambda: 5_000.0)
        try:
            for _ in range(5):
                wait, _ = trio.run(ledger.take, [rule], 0)
                with lock:
                    waits.append(wait)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=taker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(round(w, 9) for w in waits) == [float(i) for i in range(40)]
