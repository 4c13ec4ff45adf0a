"""A job's run on the trio side (``queue.take``): started once, continued as ``runs resume``
continues it, never asked again once ended, never taken from a live owner."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from demiarch_flow.errors import PersistenceError
from demiarch_flow.queue.submit import Submission
from demiarch_flow.queue.take import NotSubmitted, RunBusy, take_run
from demiarch_flow.store import MemoryStore
from demiarch_flow.store.base import NewRun
from demiarch_flow.testing import FakeOpenRouter, fixed_clock, make_env

from .helpers import SONNET, default_workflow

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WF = default_workflow()


class Definitions:
    """The one workflow every job names (the SQL store keeps them in workflow_definitions),
    and what a run id left in the memory store (the SQL one asks one query: see
    tests/e2e/test_workers_e2e.py)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def get(self, sub: Submission) -> Any:
        return WF

    async def seen(self, run_id: str) -> str:
        if run_id in self.store.runs:
            return "begun"
        paid = [r for r in (*self.store.usage, *self.store.billed) if r.run_id == run_id]
        return "deleted" if paid else "new"


def job(run_id: str = "11111111-1111-4111-8111-111111111111") -> Submission:
    return Submission(run_id, WF.name, WF.sha256, "Hi")


async def take(fake: FakeOpenRouter, store: MemoryStore, sub: Submission, **kw: Any) -> Any:
    env = make_env(fake, store=store, now=kw.pop("now", fixed_clock(T0)), **kw)
    return await take_run(sub, env, Definitions(store), stale_after_s=30)  # type: ignore[arg-type]


async def test_a_job_starts_its_run_once_and_a_second_delivery_sends_nothing(
    autojump_clock: object,
) -> None:
    """First delivery: the run starts under the submitted id. Again: it has ended, nothing is
    sent, the same outcome is reported."""
    fake, store = FakeOpenRouter(""), MemoryStore()
    first = await take(fake, store, job())
    assert (first.action, first.outcome.status, first.outcome.run_id) == (
        "ran",
        "succeeded",
        job().run_id,
    )
    again = await take(fake, store, job())
    assert (again.action, again.outcome.status, again.outcome.content) == (
        "ended", "succeeded", first.outcome.content,
    )  # fmt: skip
    assert len(fake.models_called) == 1


async def test_a_failed_workflow_is_a_result_not_retried(autojump_clock: object) -> None:
    """A run that failed as its workflow says (401) is reported as failed on every delivery;
    nothing is asked again."""
    fake, store = FakeOpenRouter(f"{SONNET}=401"), MemoryStore()
    first = await take(fake, store, job())
    assert first.outcome.status == "failed"
    again = await take(fake, store, job())
    assert (again.action, again.outcome.status) == ("ended", "failed")
    assert len(fake.models_called) == 1


async def test_a_run_a_live_process_owns_is_not_taken(autojump_clock: object) -> None:
    """Running under another process whose heartbeat is fresh: RunBusy (retried later)."""
    fake, store = FakeOpenRouter("*=500*"), MemoryStore()
    await take(fake, store, job())  # no reply: every model failed
    store.runs[job().run_id].update(
        status="running", owner="elsewhere:1:1", heartbeat_at=T0 - timedelta(seconds=1)
    )
    with pytest.raises(RunBusy):
        await take(fake, store, job())


async def test_a_run_whose_owner_is_gone_is_resumed(autojump_clock: object) -> None:
    """Running under a process that stopped beating (another host, heartbeat past the limit):
    resumed here under the same run id."""
    fake, store = FakeOpenRouter("*=500*"), MemoryStore()
    await take(fake, store, job())  # no reply: every model failed
    store.runs[job().run_id].update(
        status="running", owner="elsewhere:1:1", heartbeat_at=T0 - timedelta(seconds=60),
        finished_at=None,
    )  # fmt: skip
    fake.cursor = FakeOpenRouter("").cursor
    resumed = await take(fake, store, job())
    assert (resumed.action, resumed.outcome.status) == ("resumed", "succeeded")


async def test_a_run_deleted_after_it_paid_is_not_started_again(autojump_clock: object) -> None:
    """Its row deleted by hand while its job was back in the queue: the job fails with that
    said, and nothing is asked again (it would have started afresh and paid twice)."""
    fake, store = FakeOpenRouter(""), MemoryStore()
    await take(fake, store, job())
    del store.runs[job().run_id]
    with pytest.raises(NotSubmitted, match="was deleted from workflow_runs after it had begun"):
        await take(fake, store, job())
    assert len(fake.models_called) == 1


async def test_a_run_the_database_failed_is_retried_not_reported(autojump_clock: object) -> None:
    """The database failing under the run (its row could not even be written) is not the run's
    result: the job raises PersistenceError and is retried."""

    class Down(MemoryStore):
        async def begin_run(self, run: NewRun) -> Any:
            raise PersistenceError("database down")

    with pytest.raises(PersistenceError, match="database down"):
        await take(FakeOpenRouter(""), Down(), job())


async def test_runs_beat_at_the_interval_a_worker_asks(autojump_clock: object) -> None:
    """A worker with --stall-after 2 beats every 0.5 s (not every 5 s): a live worker's runs
    never look stale to the worker the queue gives a redelivered job to."""
    import trio

    from demiarch_flow.runner.owner import keep_alive

    beats: list[float] = []

    class Beating:
        async def heartbeat(self, owner: str, at: datetime) -> None:
            beats.append(trio.current_time())

    with trio.move_on_after(2.1):
        await keep_alive(Beating(), "host:1:1", fixed_clock(T0), 0.5)  # type: ignore[arg-type]
    assert len(beats) == 4


async def test_a_job_asking_is_answered_when_the_one_reading_for_it_is_cancelled() -> None:
    """Two jobs ask at once; the one that took both ids to read is cancelled before its thread
    starts (every worker thread busy): the read still runs, and the other job gets its answer
    — its id is never left off the list unanswered."""
    import trio.testing

    from demiarch_flow.queue.take import Workflows

    class Answering(Workflows):
        def _seen(self, run_ids: list[str]) -> dict[str, Any]:
            return dict.fromkeys(run_ids, "new")

    workflows = Answering(store=None)  # type: ignore[arg-type]
    limiter = trio.to_thread.current_default_thread_limiter()
    holders = [object() for _ in range(int(limiter.total_tokens))]
    for holder in holders:  # the process's worker threads are all busy (commits, reads)
        limiter.acquire_on_behalf_of_nowait(holder)
    results: dict[str, str] = {}
    scopes: dict[object, tuple[str, trio.CancelScope]] = {}

    async def ask(name: str) -> None:
        with trio.CancelScope() as scope:
            scopes[trio.lowlevel.current_task()] = (name, scope)
            results[name] = await workflows.seen(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, "X")
        nursery.start_soon(ask, "Y")
        await trio.testing.wait_all_tasks_blocked()
        reader = workflows._reading.statistics().owner
        cancelled, scope = scopes[reader]
        assert [a.run_id for a in workflows._asked] == []  # both ids taken by the reader
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        for holder in holders:
            limiter.release_on_behalf_of(holder)
    other = "Y" if cancelled == "X" else "X"
    assert results[other] == "new"
