"""The run journal is committed before every Backoff wait and when a run ends, riding on commits
that happen anyway (the first attempt record, the reply), shared between concurrent runs."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from sqlalchemy import func, select

from demiarch_flow.definition import parse_workflow
from demiarch_flow.runner import FlowRecord, RunRequest, run_workflow
from demiarch_flow.store import MemoryStore
from demiarch_flow.store.sql import SqlStore
from demiarch_flow.store.tables import RunEvent
from demiarch_flow.testing import FakeOpenRouter, make_env

from ..conftest import DEFAULT_WORKFLOW

WF = parse_workflow(DEFAULT_WORKFLOW.read_text("utf-8"))
SONNET = "anthropic/claude-sonnet-4"
HAIKU = "anthropic/claude-3.5-haiku"


def committed_events(store: SqlStore, run_id: str | None = None) -> int:
    """``run_events`` rows another connection can see (bypasses the store's write queue)."""
    query = select(func.count()).select_from(RunEvent)
    if run_id is not None:
        query = query.where(RunEvent.run_id == run_id)
    with store.engine.connect() as conn:
        return conn.execute(query).scalar_one()


class Probe:
    """Listens after the journal: at each wait, how many transitions were emitted and how many
    of them another connection sees."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.transitions = 0
        self.at_waits: list[tuple[int, int]] = []

    async def on_record(self, record: FlowRecord) -> None:
        if record.kind == "transition":
            self.transitions += 1
        elif record.kind == "wait":
            self.at_waits.append((self.transitions, committed_events(self.store, record.run_id)))


async def test_transitions_are_committed_before_each_wait(
    sql_store: SqlStore, autojump_clock: object
) -> None:
    """Three waits and a fallback: at each wait every transition so far is in the database."""
    probe = Probe(sql_store)
    fake = FakeOpenRouter(f"{SONNET}=500,500,500,500;{HAIKU}=500,ok")
    env = make_env(fake, store=sql_store, listeners=[probe])
    out = await run_workflow(WF, RunRequest("hi"), env)
    assert out.status == "succeeded"
    assert len(probe.at_waits) == 4
    assert all(emitted == seen for emitted, seen in probe.at_waits), probe.at_waits
    assert probe.at_waits[-1][0] > probe.at_waits[0][0]


async def test_the_journal_is_committed_when_a_run_ends(
    sql_store: SqlStore, autojump_clock: object
) -> None:
    """Succeeded, failed and cancelled runs: their whole journal is committed on return."""
    env = make_env(
        FakeOpenRouter(f"{SONNET}=401;*=slow:60"),
        store=sql_store,
    )
    failed = await run_workflow(WF, RunRequest("fails"), env)
    assert failed.status == "failed"
    assert committed_events(sql_store, failed.run_id) == len(failed.transitions)

    ok = await run_workflow(WF, RunRequest("ok", model=HAIKU, stream=False), env)
    assert ok.status == "succeeded"
    assert committed_events(sql_store, ok.run_id) == len(ok.transitions) == 3

    with trio.move_on_after(5):
        await run_workflow(WF, RunRequest("cancelled", model="openai/gpt-4o"), env)
    with sql_store.engine.connect() as conn:
        run_ids = set(conn.execute(select(RunEvent.run_id).distinct()).scalars())
    (cancelled,) = run_ids - {failed.run_id, ok.run_id}
    assert committed_events(sql_store, cancelled) == 1  # LoadContext --loaded--> Request


async def test_a_run_without_waits_costs_three_commits(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, autojump_clock: object
) -> None:
    """The run, its message, its first checkpoint and its attempt record in one commit before
    the request; the paid-for answer checkpointed as it arrives (a crash before Persist must
    not pay for it again); the reply, the run's end, its last checkpoint and journal rows in
    the third; none left for close; concurrent runs share their commits (group commit)."""
    store = SqlStore.open_sync(f"sqlite:///{tmp_path / 'flow.db'}")
    commits: list[int] = []
    real = store._commit

    def counting(batch: list[Any]) -> None:
        commits.append(len(batch))
        real(batch)

    monkeypatch.setattr(store, "_commit", counting)
    env = make_env(FakeOpenRouter(), store=store)
    out = await run_workflow(WF, RunRequest("hi", stream=False), env)
    assert out.status == "succeeded"
    assert len(commits) == 3
    assert committed_events(store, out.run_id) == 3

    commits.clear()  # a stream adds one: its generation id, as soon as the first chunk names it
    out = await run_workflow(WF, RunRequest("hi", stream=True), env)
    assert len(commits) == 4
    assert (await store.load_run(out.run_id)).attempts[0].generation_id  # type: ignore[union-attr]

    commits.clear()
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(run_workflow, WF, RunRequest(f"m{i}", stream=False), env)
    assert len(commits) < 20 * 3
    assert committed_events(store) == 22 * 3
    commits.clear()
    store.close()
    assert commits == []


async def test_memory_store_keeps_the_journal() -> None:
    """The in-memory store gets the same journal rows (everything it holds is 'durable')."""
    store = MemoryStore()
    env = make_env(store=store)
    out = await run_workflow(WF, RunRequest("hi"), env)
    assert len(store.events) == len(out.transitions) == 3
