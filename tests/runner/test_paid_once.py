"""Paid once, kept always: the defects found at the seams of the paid attempt, one test each
(issue 16: 1 the cost look-up before the checkpoint, 2 the attempt insert not owner-fenced,
3 budget fallback reusing an attempt number, 4 an unknown cost counted as 0 USD, 7 a finished
run ended again, 10 an absurd ``usage.cost`` believed)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from demiarch_flow.errors import ErrorClass, RunTakenOver
from demiarch_flow.runner import FlowRecord, RunEnv, RunRequest, RunState, run_workflow
from demiarch_flow.runner.limiter import Limiter
from demiarch_flow.runner.resume import resume_run
from demiarch_flow.store import MemoryStore
from demiarch_flow.store.limits import SqlLedger
from demiarch_flow.store.sql import SqlStore
from demiarch_flow.testing import FakeOpenRouter, fixed_clock, make_env

from ..limits.helpers import with_limits
from .helpers import SONNET, default_workflow

T0 = datetime(2026, 1, 1, tzinfo=UTC)
_COST = re.compile(rb',\s*"cost":\s*[-+0-9.eE]+')


class Dying(MemoryStore):
    """A memory store that loses every write once ``dead`` (what a process killed with -9 left
    behind is exactly what was written before it died)."""

    dead = False

    async def checkpoint(self, *a: Any, **kw: Any) -> None:
        if not self.dead:
            await super().checkpoint(*a, **kw)

    async def attempt_ended(self, *a: Any, **kw: Any) -> None:
        if not self.dead:
            await super().attempt_ended(*a, **kw)

    async def finish_run(self, *a: Any, **kw: Any) -> None:
        if not self.dead:
            await super().finish_run(*a, **kw)

    async def book_billed(self, *a: Any, **kw: Any) -> None:
        if not self.dead:
            await super().book_billed(*a, **kw)

    async def save_reply(self, *a: Any, **kw: Any) -> str:
        if self.dead:
            return "lost"
        return await super().save_reply(*a, **kw)


class NoCostThenDie(httpx.AsyncBaseTransport):
    """The fake provider's streams without ``usage.cost``; the first ``GET /generation`` kills
    the process (``die``) — the window a look-up before the checkpoint left open."""

    def __init__(self, fake: FakeOpenRouter, die: Any = None) -> None:
        self.fake, self.die, self.lookups = fake, die, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/generation"):
            self.lookups += 1
            if self.die is not None:
                self.die()
                await trio.sleep_forever()
        response = await self.fake.handle_async_request(request)
        if response.headers.get("content-type") != "text/event-stream":
            return response
        return httpx.Response(200, headers=response.headers, stream=_Stripped(response))


class _Stripped(httpx.AsyncByteStream):
    """The fake's stream with ``usage.cost`` taken out of each frame (an iterator object, as
    the fake's own: httpx does not close a half-read async generator)."""

    def __init__(self, response: httpx.Response) -> None:
        self.inner: Any = response.stream

    def __aiter__(self) -> _Stripped:
        return self

    async def __anext__(self) -> bytes:
        return _COST.sub(b"", await self.inner.__anext__())

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_streamed_answer_is_durable_before_its_cost_is_looked_up(
    autojump_clock: object, tmp_path: Path
) -> None:
    """Defect 1: a stream without usage.cost, and the process dies during GET /generation:
    the resume stores the answer it had (looked up then) and asks nothing again."""
    fake, store = FakeOpenRouter(), Dying()
    no_file = tmp_path / "file"
    no_file.write_text("")  # a recovery folder that cannot be made: kill -9 writes none anyway

    def die() -> None:
        store.dead = True
        scope.cancel()

    provider = NoCostThenDie(fake, die)
    env = make_env(provider, store=store, now=fixed_clock(T0), recovery_dir=str(no_file / "x"))
    with trio.CancelScope() as scope:
        await run_workflow(default_workflow(), RunRequest("Hi", stream=True), env)
    (run_id,) = store.runs
    store.dead = False
    store.runs[run_id].update(status="running", owner="gone:1:1", heartbeat_at=T0)
    later = fixed_clock(T0 + timedelta(hours=1))
    resumed = await resume_run(run_id, make_env(NoCostThenDie(fake), store=store, now=later))
    assert resumed.outcome.status == "succeeded"
    assert len(fake.requests) == 1, "the answer was bought again"
    (reply,) = store.usage
    assert reply.cost_source == "provider"  # looked up by the resumed Persist
    assert reply.content == resumed.outcome.content


async def test_a_streamed_answer_is_checkpointed_before_any_look_up(
    autojump_clock: object,
) -> None:
    """Defect 1: the answer's checkpoint (durable, with the answer) is written before the first
    GET /generation, and a stream without usage.cost still ends with a provider cost."""
    fake, store = FakeOpenRouter(), MemoryStore()
    seen: list[bool] = []

    class Watch(NoCostThenDie):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/generation"):
                (run,) = store.runs.values()
                seen.append(RunState.from_json(run["state"].to_json()).completion is not None)
            return await super().handle_async_request(request)

    env = make_env(Watch(fake), store=store, now=fixed_clock(T0))
    out = await run_workflow(default_workflow(), RunRequest("Hi", stream=True), env)
    assert out.status == "succeeded"
    assert seen and all(seen)
    assert out.cost_source == "provider"


class TakeOverOnWait:
    """A listener that, when the run starts a Backoff wait, lets another process take it over
    (as ``runs resume`` elsewhere does after its owner froze past the stale limit)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def on_record(self, rec: FlowRecord) -> None:
        if rec.kind == "wait":
            self.store.runs[rec.run_id].update(owner="elsewhere:2:2", status="running")


async def test_an_owner_that_lost_its_run_sends_nothing(autojump_clock: object) -> None:
    """Defect 2: taken over during a Backoff wait, the old owner wakes and sends no request: its
    next attempt is refused (RunTakenOver) before anything leaves."""
    fake, store = FakeOpenRouter(f"{SONNET}=500"), MemoryStore()
    env = make_env(fake, store=store, now=fixed_clock(T0), owner="here:1:1",
                   listeners=(TakeOverOnWait(store),))  # fmt: skip
    with pytest.raises(RunTakenOver):
        await run_workflow(default_workflow(), RunRequest("Hi", stream=False), env)
    assert len(fake.requests) == 1
    (run,) = store.runs.values()
    assert run["owner"] == "elsewhere:2:2"
    assert len(store.attempts) == 1


async def test_an_owner_that_lost_its_run_sends_nothing_on_sqlite(
    autojump_clock: object, tmp_path: Path
) -> None:
    """Defect 2 on SQLite: the same, through the owner-fenced attempt insert."""
    store = await SqlStore.open(f"sqlite:///{tmp_path / 'flow.db'}")
    fake = FakeOpenRouter(f"{SONNET}=500")

    class SqlTakeOver:
        async def on_record(self, rec: FlowRecord) -> None:
            if rec.kind == "wait":
                with store.engine.begin() as conn:
                    conn.exec_driver_sql(
                        "UPDATE workflow_runs SET owner = 'elsewhere:2:2' WHERE id = ?",
                        (rec.run_id,),
                    )

    env = make_env(fake, store=store, now=fixed_clock(T0), owner="here:1:1",
                   listeners=(SqlTakeOver(),))  # fmt: skip
    try:
        with pytest.raises(RunTakenOver):
            await run_workflow(default_workflow(), RunRequest("Hi", stream=False), env)
        assert len(fake.requests) == 1
        with store.engine.begin() as conn:
            numbers = conn.exec_driver_sql("SELECT number FROM run_attempts").scalars().all()
        assert numbers == [1]
    finally:
        store.close()


async def test_budget_fallback_moves_on_to_the_next_model(
    autojump_clock: object, tmp_path: Path
) -> None:
    """Defect 3: `fallback.when: [budget_exceeded]` with the first model over budget: the next
    model is asked under a new attempt number (it reused the skipped one: UNIQUE failure)."""
    wf = with_limits("  budget: {per_run_usd: 0.0008}\n", fallback="budget_exceeded")
    store = await SqlStore.open(f"sqlite:///{tmp_path / 'flow.db'}")
    fake = FakeOpenRouter()
    env = make_env(fake, store=store, now=fixed_clock(T0), owner="here:1:1",
                   limits=Limiter(SqlLedger(store.engine)))  # fmt: skip
    try:
        out = await run_workflow(wf, RunRequest("Hi", stream=False), env)
        assert out.status == "succeeded", out.error
        assert fake.models_called[0] != SONNET
        run = await store.load_run(out.run_id)
        assert run is not None
        first = run.attempts[0]
        assert (first.number, first.error_class) == (1, ErrorClass.BUDGET_EXCEEDED)
        assert [a.number for a in run.attempts] == list(range(1, len(run.attempts) + 1))
    finally:
        store.close()


def _without_usage(body: dict[str, Any]) -> dict[str, Any]:
    body.pop("usage", None)
    return body


async def test_an_answer_of_unknown_cost_is_not_counted_as_free(
    autojump_clock: object, tmp_path: Path
) -> None:
    """Defect 4: no usage and no /generation record: each answer is booked at the price
    table's cost of estimated tokens (``estimated``), so a day budget refuses once it is
    spent instead of letting every run through at 0 USD."""
    wf = with_limits("  budget: {daily_usd: 0.002}\n")
    store = await SqlStore.open(f"sqlite:///{tmp_path / 'flow.db'}")

    class NoRecord(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.fake = FakeOpenRouter(edit_success=_without_usage)

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/generation"):
                return httpx.Response(404, json={"error": {"code": 404, "message": "no"}})
            return await self.fake.handle_async_request(request)

    provider = NoRecord()
    now = [T0]
    env = make_env(provider, store=store, now=lambda: now[0],
                   limits=Limiter(SqlLedger(store.engine)))  # fmt: skip
    try:
        outcomes = []
        for _ in range(8):  # each one after the last one's reservation has expired
            outcomes.append(await run_workflow(wf, RunRequest("Hi", stream=False), env))
            now[0] += timedelta(minutes=10)
        assert outcomes[0].succeeded, outcomes[0].error
        assert outcomes[-1].error_class == ErrorClass.BUDGET_EXCEEDED
        booked = [o for o in outcomes if o.succeeded]
        assert all(o.cost_source == "estimated" and o.cost_usd for o in booked)
        spent = sum((o.cost_usd or Decimal(0) for o in booked), Decimal(0))
        assert spent <= Decimal("0.002")
    finally:
        store.close()


async def test_an_absurd_provider_cost_is_not_believed(autojump_clock: object) -> None:
    """Defect 10: usage.cost 999,999 USD for a short answer is far above the price table's
    figure for its tokens: booked at the table's cost, with a warning."""

    def absurd(body: dict[str, Any]) -> dict[str, Any]:
        body["usage"]["cost"] = 999_999
        return body

    fake, store = FakeOpenRouter(edit_success=absurd), MemoryStore()
    env = make_env(fake, store=store, now=fixed_clock(T0))
    out = await run_workflow(default_workflow(), RunRequest("Hi", stream=False), env)
    (row,) = store.usage
    assert row.cost_source == "price_table"
    assert row.cost_usd < Decimal("0.01")
    assert out.cost_usd == row.cost_usd


class CancelAfterSaved:
    """A listener that cancels the run the moment its reply is committed (SIGTERM there)."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()

    async def on_record(self, rec: FlowRecord) -> None:
        if rec.kind == "transition" and rec.event == "saved":
            self.scope.cancel()
            await trio.lowlevel.checkpoint()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_run_that_ended_is_never_ended_again(
    kind: str, autojump_clock: object, tmp_path: Path
) -> None:
    """Defect 7: cancelled right after Persist committed, the run stays succeeded (status,
    state and error untouched)."""
    store: Any = (
        MemoryStore() if kind == "memory" else await SqlStore.open(f"sqlite:///{tmp_path / 'f.db'}")
    )
    stop = CancelAfterSaved()
    env: RunEnv = make_env(FakeOpenRouter(), store=store, now=fixed_clock(T0),
                           owner="here:1:1", listeners=(stop,))  # fmt: skip
    try:
        with stop.scope:
            await run_workflow(default_workflow(), RunRequest("Hi", stream=False), env)
        assert stop.scope.cancelled_caught
        (run,) = await store.list_runs(status=None, since=None, limit=5)
        assert (run.status, run.current_state, run.error_class) == ("succeeded", "Done", None)
    finally:
        if kind == "sqlite":
            store.close()


# ---------------------------------------------------------------------- found by the property
# (tests/property/test_paid_once.py): each of these failed there before it was fixed.


async def test_an_interrupted_stream_is_spend_in_the_memory_ledger_too(
    autojump_clock: object,
) -> None:
    """A stream cut after its first tokens is billed: the in-memory ledger (which reads no
    llm_usage) counts it as spend, as the SQL ledger does — it released it as unbilled."""
    from demiarch_flow.store.limits import BudgetWindow, MemoryLedger

    ledger, store = MemoryLedger(), MemoryStore()
    env = make_env(f"{SONNET}=cut:2", store=store, now=fixed_clock(T0),
                   limits=Limiter(ledger))  # fmt: skip
    wf = with_limits("  budget: {daily_usd: 1000}\n")
    out = await run_workflow(wf, RunRequest("Hi", stream=True), env)
    assert out.succeeded, out.error
    (interrupted,) = store.billed
    assert interrupted.outcome == "interrupted" and interrupted.cost_usd > 0
    (reply,) = store.usage
    (use,) = await ledger.window_use([BudgetWindow("day", Decimal(1000), T0)], T0)
    assert use.spent_usd == interrupted.cost_usd + reply.cost_usd
    assert use.reserved_usd == 0


class CancelAtFirstDelta:
    def __init__(self) -> None:
        self.scope = trio.CancelScope()

    async def on_record(self, rec: FlowRecord) -> None:
        if rec.kind == "delta":
            self.scope.cancel()
            await trio.lowlevel.checkpoint()


async def test_a_stream_cancelled_at_its_first_token_names_its_generation(
    autojump_clock: object,
) -> None:
    """Ctrl-C at the first delta: the attempt row names the generation (from the response's
    ``X-Generation-Id``, reported before any text), so a resume books what it cost — it was
    recorded with no generation, and the billed stream was never booked."""
    fake, store = FakeOpenRouter(), MemoryStore()
    stop = CancelAtFirstDelta()
    env = make_env(fake, store=store, now=fixed_clock(T0), owner="here:1:1", listeners=(stop,))
    with stop.scope:
        await run_workflow(default_workflow(), RunRequest("Hi", stream=True), env)
    assert stop.scope.cancelled_caught
    (run,) = await store.list_runs(status=None, since=None, limit=5)
    (attempt,) = run.attempts
    assert attempt.error_class == ErrorClass.CANCELLED
    assert attempt.generation_id is not None
    later = make_env(fake, store=store, now=fixed_clock(T0 + timedelta(minutes=5)))
    resumed = await resume_run(run.run_id, later)
    assert resumed.outcome.succeeded
    booked = {b.generation_id: b.outcome for b in store.billed}
    assert booked == {attempt.generation_id: "billed"}


class Journal:
    """The order of the writes a run makes (store and ledger), with what each carried."""

    def __init__(self) -> None:
        self.writes: list[str] = []


class WatchedStore(MemoryStore):
    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    async def checkpoint(self, checkpoint: Any, *, durable: bool) -> None:
        if durable and checkpoint.state.completion is not None:
            self.journal.writes.append("answer durable")
        await super().checkpoint(checkpoint, durable=durable)


async def test_the_first_commit_after_an_answer_carries_it(autojump_clock: object) -> None:
    """The budget reservation of an attempt that brought an answer is settled only once the
    answer is durable, at the cost its reply is stored with: settled at once, a process
    killed before the answer's checkpoint (after the settle committed) lost the answer and the
    resume bought it again; and the memory ledger booked the estimate while llm_usage booked
    the looked-up cost."""
    from demiarch_flow.store.limits import BudgetWindow, MemoryLedger

    journal = Journal()

    class WatchedLedger(MemoryLedger):
        async def settle(self, *a: Any, **kw: Any) -> None:
            journal.writes.append("settled")
            await super().settle(*a, **kw)

    ledger, store = WatchedLedger(), WatchedStore(journal)
    provider = NoCostThenDie(FakeOpenRouter())  # no usage.cost: Persist looks it up
    env = make_env(provider, store=store, now=fixed_clock(T0), limits=Limiter(ledger))
    wf = with_limits("  budget: {daily_usd: 1000}\n")
    out = await run_workflow(wf, RunRequest("Hi", stream=True), env)
    assert out.succeeded, out.error
    assert journal.writes.count("settled") == 1
    assert journal.writes.index("answer durable") < journal.writes.index("settled")
    (reply,) = store.usage
    assert (reply.cost_source, provider.lookups) == ("provider", 2)
    (use,) = await ledger.window_use([BudgetWindow("day", Decimal(1000), T0)], T0)
    assert (use.spent_usd, use.reserved_usd) == (reply.cost_usd, 0)


async def test_a_stream_broken_before_its_first_token_is_booked(autojump_clock: object) -> None:
    """A stream that began (a generation was named) and broke before any text may have been
    billed for its prompt: its cost is looked up and booked (it was released as unbilled and
    never booked)."""
    fake, store = FakeOpenRouter(f"{SONNET}=cut:0"), MemoryStore()
    env = make_env(fake, store=store, now=fixed_clock(T0))
    out = await run_workflow(default_workflow(), RunRequest("Hi", stream=True), env)
    assert out.succeeded, out.error
    (broken,) = store.billed
    assert broken.outcome == "interrupted" and broken.cost_usd > 0
    assert broken.cost_source == "provider"
    first = out.attempts[0]
    assert broken.generation_id == first.generation_id is not None


async def test_ctrl_c_in_persist_stores_the_answer_and_keeps_its_spend(
    autojump_clock: object, tmp_path: Path
) -> None:
    """Ctrl-C as the run enters Persist (the answer durable in its checkpoint, not stored):
    the answer is stored at once, so its spend is in the books — the cancelled run's
    reservations went with it, and the day window said 0 USD spent until a resume."""
    from demiarch_flow.store.limits import BudgetWindow

    class CtrlCInPersist:
        def __init__(self) -> None:
            self.scope = trio.CancelScope()

        async def on_record(self, rec: FlowRecord) -> None:
            if rec.kind == "transition" and rec.event == "succeeded":
                self.scope.cancel()
                await trio.lowlevel.checkpoint()

    wf = with_limits("  budget: {daily_usd: 1000}\n")
    store = await SqlStore.open(f"sqlite:///{tmp_path / 'flow.db'}")
    stop = CtrlCInPersist()
    ledger = SqlLedger(store.engine)
    env = make_env(FakeOpenRouter(), store=store, now=fixed_clock(T0), owner="here:1:1",
                   listeners=(stop,), limits=Limiter(ledger))  # fmt: skip
    try:
        with stop.scope:
            await run_workflow(wf, RunRequest("Hi", stream=True), env)
        assert stop.scope.cancelled_caught
        (run,) = await store.list_runs(status=None, since=None, limit=5)
        assert run.status == "succeeded"
        (use,) = await ledger.window_use([BudgetWindow("day", Decimal(1000), T0)], T0)
        assert use.spent_usd == run.cost_usd and use.spent_usd > 0
        assert use.reserved_usd == 0
    finally:
        store.close()
