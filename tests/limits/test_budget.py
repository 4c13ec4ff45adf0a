"""Budgets: the worst case is reserved before each attempt, the truth settled after it, and no
window is ever overshot — in one process (memory) and through the database (SQLite, PostgreSQL)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio

from demiarch_flow.errors import ErrorClass, UsageError
from demiarch_flow.pricing import Price, PriceTable
from demiarch_flow.runner import FlowRecord, RunRequest, run_workflow
from demiarch_flow.runner.budget import (
    budget_windows,
    estimate_tokens,
    price_problems,
    worst_case_usd,
)
from demiarch_flow.runner.limiter import Limiter
from demiarch_flow.runner.state import Message
from demiarch_flow.store.limits import BudgetWindow, Reservation, SqlLedger
from demiarch_flow.store.sql import SqlStore
from demiarch_flow.testing import FakeOpenRouter, make_env

from .helpers import GPT4O, HAIKU, SONNET, with_limits

PRICES = PriceTable.load()


def _worst(wf, model: str, message: str) -> Decimal:  # type: ignore[no-untyped-def]
    messages = [Message("system", wf.system)] if wf.system else []
    tokens = estimate_tokens([*messages, Message("user", message)])
    usd = worst_case_usd(PRICES, model, tokens, wf.request.max_tokens)
    assert usd is not None
    return usd


def test_token_estimate_over_counts() -> None:
    """Bytes / 2 rounded up, plus 4 per message and 3 for the reply: English text of 400
    characters (about 100 real tokens) counts as over 200."""
    text = "word " * 80
    assert estimate_tokens([Message("user", text)]) >= 200
    assert estimate_tokens([Message("user", "日本語")]) >= 3 + 4 + 5


def test_worst_case_uses_max_tokens_else_the_models_largest_completion() -> None:
    """prompt tokens × prompt price + (max_tokens, else the table's cap) × completion price."""
    assert worst_case_usd(PRICES, SONNET, 1000, 100) == Decimal("0.004500000")
    assert worst_case_usd(PRICES, SONNET, 1000, None) == Decimal("0.963000000")
    assert worst_case_usd(PRICES, "x/unknown", 1000, 100) is None


def test_a_budget_without_a_price_is_refused_up_front() -> None:
    """No price (or no completion cap without max_tokens) → a clear problem per model."""
    wf = with_limits("  budget: {daily_usd: 5}\n", max_tokens=None)
    table = PriceTable({SONNET: Price(Decimal(3), Decimal(15))})
    problems = price_problems(wf, table)
    assert any(SONNET in p and "max_tokens" in p for p in problems)
    assert any(HAIKU in p and "no price" in p for p in problems)
    assert price_problems(with_limits('  rate:\n    "*": {rpm: 1}\n'), table) == []


def test_validate_says_so_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`validate` of a workflow whose budget covers a model without a price exits 2."""
    from demiarch_flow.cli.main import main

    wf = with_limits("  budget: {daily_usd: 5}\n")
    path = tmp_path / "w.yaml"
    path.write_text(wf.text.replace(GPT4O, "acme/no-price-model"), "utf-8")
    assert main(["validate", str(path)]) == 2
    assert "acme/no-price-model: no price is known" in capsys.readouterr().err


def test_windows_are_the_utc_day_and_month() -> None:
    policy = with_limits("  budget: {per_run_usd: 1, daily_usd: 2, monthly_usd: 3}\n").limits
    assert policy is not None
    windows = budget_windows(policy.budget, datetime(2026, 3, 14, 23, 59, tzinfo=UTC))
    assert [(w.name, w.since) for w in windows] == [
        ("run", None),
        ("day", datetime(2026, 3, 14, tzinfo=UTC)),
        ("month", datetime(2026, 3, 1, tzinfo=UTC)),
    ]


async def test_over_budget_is_fatal_and_sends_nothing() -> None:
    """A per-run budget below the worst case: `budget_exceeded`, the message names the window,
    the spend, the reservations, the limit and the estimate, and no request leaves."""
    wf = with_limits("  budget: {per_run_usd: 0.0001}\n")
    fake = FakeOpenRouter()
    outcome = await run_workflow(wf, RunRequest("hi"), make_env(fake))
    assert outcome.status == "failed"
    assert outcome.error_class == ErrorClass.BUDGET_EXCEEDED
    text = str(outcome.error)
    assert "run budget" in text and "limit 0.0001" in text and "worst case" in text
    assert fake.requests == []


async def test_fallback_on_budget_exceeded_tries_the_cheaper_model() -> None:
    """With budget_exceeded in fallback.when, the next (cheaper) model is tried against the
    same budget."""
    wf = with_limits("  budget: {per_run_usd: 0.001}\n", fallback="budget_exceeded")
    assert _worst(wf, SONNET, "hi") > Decimal("0.001") > _worst(wf, HAIKU, "hi")
    fake = FakeOpenRouter()
    outcome = await run_workflow(wf, RunRequest("hi"), make_env(fake))
    assert outcome.succeeded and outcome.model == HAIKU
    assert fake.models_called == [HAIKU]


async def test_an_error_that_was_not_billed_releases_its_reservation() -> None:
    """A per-run budget with room for one attempt: a 500 (not billed) frees it for the retry."""
    wf = with_limits("  budget: {per_run_usd: 0.002}\n")
    assert 2 * _worst(wf, SONNET, "hi") > Decimal("0.002")
    fake = FakeOpenRouter(f"{SONNET}=500")
    outcome = await run_workflow(wf, RunRequest("hi"), make_env(fake))
    assert outcome.succeeded and fake.models_called == [SONNET, SONNET]


async def test_200_concurrent_runs_never_overshoot_the_daily_budget() -> None:
    """A daily budget that fits 50 worst cases: the spend stays within it, every other run
    fails with budget_exceeded and sent nothing (memory ledger, one process)."""
    # max_tokens as long as the fake's answers: the real cost comes close to the worst case
    wf = with_limits("  budget: {daily_usd: 1}\n", max_tokens=14)
    worst = _worst(wf, SONNET, "line 100")
    limit = worst * 50
    wf = with_limits(f"  budget: {{daily_usd: {limit}}}\n", max_tokens=14)
    fake = FakeOpenRouter()
    env = make_env(fake)
    outcomes: list = []  # type: ignore[type-arg]
    async with trio.open_nursery() as nursery:
        for i in range(200):

            async def one(i: int = i) -> None:
                outcomes.append(await run_workflow(wf, RunRequest(f"line {i + 100}"), env))

            nursery.start_soon(one)
    ok = [o for o in outcomes if o.succeeded]
    failed = [o for o in outcomes if not o.succeeded]
    assert len(ok) >= 50 and failed
    assert all(o.error_class == ErrorClass.BUDGET_EXCEEDED for o in failed)
    assert len(fake.requests) == len(ok)
    assert sum(o.cost_usd for o in ok) <= limit


async def _sql_env(url: str, fake: FakeOpenRouter, now: list[datetime]):  # type: ignore[no-untyped-def]
    store = await SqlStore.open(url)
    env = make_env(fake, store=store, now=lambda: now[0], limits=Limiter(SqlLedger(store.engine)))
    return store, env


async def test_a_new_day_starts_at_zero(db_url: str) -> None:
    """The daily window is the sum of llm_usage since UTC midnight (injected clock): a budget
    spent on one day refuses there, and the next day starts at zero."""
    now = [datetime(2026, 1, 1, 23, 0, tzinfo=UTC)]
    wf = with_limits("  budget: {daily_usd: 1}\n")
    limit = _worst(wf, SONNET, "hello") * 3 / 2
    wf = with_limits(f"  budget: {{daily_usd: {limit}}}\n")
    fake = FakeOpenRouter()
    store, env = await _sql_env(db_url, fake, now)
    try:
        first = await run_workflow(wf, RunRequest("hello"), env)
        assert first.succeeded
        # the real cost is far below the worst case; fill the day with spend from elsewhere
        now[0] += timedelta(minutes=1)
        for _ in range(30):
            if not (await run_workflow(wf, RunRequest("hello"), env)).succeeded:
                break
        refused = await run_workflow(wf, RunRequest("hello"), env)
        assert refused.error_class == ErrorClass.BUDGET_EXCEEDED
        assert "day budget" in str(refused.error)
        sent = len(fake.requests)
        now[0] = datetime(2026, 1, 2, 0, 0, 1, tzinfo=UTC)
        assert (await run_workflow(wf, RunRequest("hello"), env)).succeeded
        assert len(fake.requests) == sent + 1
        day = await env.limits.shared.window_use(budget_windows(wf.limits.budget, now[0]), now[0])  # type: ignore[union-attr]
        assert day[0].spent_usd == first.cost_usd and day[0].reserved_usd == 0
    finally:
        store.close()


async def test_a_dead_process_reservation_expires(db_url: str) -> None:
    """A reservation whose process died holds the budget until it expires, then frees it."""
    store = await SqlStore.open(db_url)
    ledger = SqlLedger(store.engine)
    try:
        t0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
        window = [BudgetWindow("day", Decimal(1), t0.replace(hour=0))]

        def res(i: int, at: datetime, amount: str) -> Reservation:
            return Reservation(f"00000000-0000-0000-0000-00000000000{i}", f"run-{i}", 1,
                               SONNET, Decimal(amount), at, at + timedelta(seconds=60))  # fmt: skip

        assert await ledger.reserve(res(1, t0, "0.8"), window) is None
        refused = await ledger.reserve(res(2, t0 + timedelta(seconds=30), "0.5"), window)
        assert refused is not None and refused.reserved_usd == Decimal("0.8")
        assert await ledger.reserve(res(3, t0 + timedelta(seconds=61), "0.5"), window) is None
    finally:
        store.close()


def test_usage_error_class_for_missing_prices() -> None:
    """check_budget_prices is an input error (exit 2)."""
    from demiarch_flow.cli._common import check_budget_prices

    wf = with_limits("  budget: {daily_usd: 5}\n")
    bad = with_limits("  budget: {daily_usd: 5}\n")
    object.__setattr__(bad, "models", ("acme/none",))
    check_budget_prices(wf)
    with pytest.raises(UsageError) as info:
        check_budget_prices(bad)
    assert info.value.exit_code == 2


def test_readme_limits_example_is_valid() -> None:
    """The README's `limits` block parses, and means what its comments say."""
    readme = (Path(__file__).parent.parent.parent / "README.md").read_text("utf-8")
    block = readme.split("```yaml\nlimits:\n", 1)[1].split("```", 1)[0]
    wf = with_limits(block)
    assert wf.limits is not None
    assert wf.limits.budget.daily_usd == Decimal("5.00")
    openai = wf.limits.buckets_for(GPT4O)
    assert [b.key for b in openai] == ["*", "openai/*"]
    assert (openai[1].rpm, openai[1].tpm, openai[1].concurrency, openai[1].burst) == (
        60,
        200000,
        8,
        5,
    )
    assert [b.key for b in wf.limits.buckets_for(SONNET)] == ["*"]


def test_window_amounts_are_plain_decimal_strings() -> None:
    """`budget --json` amounts read like cost_usd: 0.000000000, never 0E-9."""
    from demiarch_flow.store.limits import WindowUse

    doc = WindowUse("day", Decimal(5), Decimal(0), Decimal(0)).to_json()
    assert (doc["spent_usd"], doc["reserved_usd"], doc["limit_usd"]) == (
        "0.000000000", "0.000000000", "5.000000000",
    )  # fmt: skip


async def test_a_timed_out_attempt_stays_counted_after_its_run_failed(
    db_url: str, autojump_clock: object
) -> None:
    """A blocking request that timed out may have been billed in full, and no llm_usage row
    will ever say what it cost: its worst case stays counted in the windows it falls in after
    the run has failed (and so keeps the next run out when it fills the day), but not in a
    window that begins after it."""
    now = [datetime(2026, 1, 1, 12, tzinfo=UTC)]
    wf = with_limits("  budget: {daily_usd: 1}\n", fallback="model_unavailable")
    worst = _worst(wf, SONNET, "hello")
    text = "  budget: {daily_usd: %s}\n" % (worst * 3 / 2)
    wf = with_limits(text, fallback="model_unavailable")
    wf = dataclasses.replace(
        wf,
        request=dataclasses.replace(wf.request, timeout_s=10, stream=False),
        retry=dataclasses.replace(wf.retry, max_retries=0),
    )
    fake = FakeOpenRouter(f"{SONNET}=hang")
    store, env = await _sql_env(db_url, fake, now)
    try:
        failed = await run_workflow(wf, RunRequest("hello"), env)
        assert failed.status == "failed"
        assert [a.error_class for a in failed.attempts] == [ErrorClass.TIMEOUT]
        assert len(fake.requests) == 1
        ledger = env.limits.shared
        (day,) = await ledger.window_use(budget_windows(wf.limits.budget, now[0]), now[0])
        assert (day.spent_usd, day.reserved_usd) == (0, worst)
        # the day has room for half a worst case more: the next run is refused, sends nothing
        refused = await run_workflow(wf, RunRequest("hello"), env)
        assert refused.error_class == ErrorClass.BUDGET_EXCEEDED
        assert len(fake.requests) == 1
        now[0] = datetime(2026, 1, 2, 0, 0, 1, tzinfo=UTC)
        (day,) = await ledger.window_use(budget_windows(wf.limits.budget, now[0]), now[0])
        assert day.reserved_usd == 0
    finally:
        store.close()


async def test_a_request_that_never_left_releases_its_reservation(
    db_url: str, autojump_clock: object
) -> None:
    """A refused connection is a network error like a dropped one, but the request never
    reached the provider: nothing can have been billed, so nothing stays counted."""
    now = [datetime(2026, 1, 1, 12, tzinfo=UTC)]
    wf = with_limits("  budget: {daily_usd: 1}\n", fallback="model_unavailable")
    wf = dataclasses.replace(wf, retry=dataclasses.replace(wf.retry, max_retries=0))
    fake = FakeOpenRouter(f"{SONNET}=refused")
    store, env = await _sql_env(db_url, fake, now)
    try:
        failed = await run_workflow(wf, RunRequest("hello"), env)
        assert [a.error_class for a in failed.attempts] == [ErrorClass.NETWORK_ERROR]
        windows = budget_windows(wf.limits.budget, now[0])  # type: ignore[union-attr]
        (day,) = await env.limits.shared.window_use(windows, now[0])  # type: ignore[union-attr]
        assert (day.spent_usd, day.reserved_usd) == (0, 0)
    finally:
        store.close()


async def test_a_cancelled_attempt_stays_counted_until_resume_books_it(
    db_url: str, autojump_clock: object
) -> None:
    """Ctrl-C while a stream is out: its worst case stays counted after the run is recorded
    cancelled (it may be billed, nothing booked it); `runs resume` finds the generation, books
    its real cost in llm_usage and drops the kept worst case, so nothing counts twice."""
    from demiarch_flow.runner.resume import resume_run

    now = [datetime(2026, 1, 1, 12, tzinfo=UTC)]
    wf = with_limits("  budget: {daily_usd: 1}\n")
    worst = _worst(wf, SONNET, "hello")
    fake = FakeOpenRouter(f"{SONNET}=stall:3")
    store, env = await _sql_env(db_url, fake, now)
    scope = trio.CancelScope()

    class CtrlC:
        """Cancels the run once text has arrived (not by time: the store's threads would
        let the autojump clock fire a deadline anywhere)."""

        async def on_record(self, rec: FlowRecord) -> None:
            if rec.kind == "delta":
                scope.cancel()

    try:
        with scope:
            await run_workflow(
                wf, RunRequest("hello"), dataclasses.replace(env, listeners=(CtrlC(),))
            )
        (run,) = await store.list_runs(status=None, since=None, limit=5)
        assert run.status == "cancelled"
        ledger = env.limits.shared
        windows = budget_windows(wf.limits.budget, now[0])
        (day,) = await ledger.window_use(windows, now[0])
        assert (day.spent_usd, day.reserved_usd) == (0, worst)
        resumed = await resume_run(run.run_id, env)
        assert resumed.outcome.succeeded
        assert len(fake.requests) == 2
        (day,) = await ledger.window_use(windows, now[0])
        booked = await store.load_run(run.run_id)
        assert booked is not None and booked.cost_usd is not None
        assert day.reserved_usd == 0
        assert day.spent_usd == booked.cost_usd > resumed.outcome.cost_usd  # type: ignore[operator]
    finally:
        store.close()


async def test_a_request_lost_in_a_crash_stays_counted_after_resume(
    db_url: str, autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process died while a blocking request was out: nothing settled its reservation and
    no generation id is known. `runs resume` journals it as `attempt_unrecorded` (it may have
    been billed) and the budget keeps its worst case, past the resumed run's end."""
    from sqlalchemy import text

    from demiarch_flow.runner import limits as runner_limits
    from demiarch_flow.runner.resume import resume_run

    now = [datetime(2026, 1, 1, 12, tzinfo=UTC)]
    wf = with_limits("  budget: {daily_usd: 1}\n")
    wf = dataclasses.replace(wf, request=dataclasses.replace(wf.request, stream=False))
    worst = _worst(wf, SONNET, "hello")
    scope = trio.CancelScope()

    class DiesWhileOut(FakeOpenRouter):
        """The process dies once the request is out (not by time: the store's threads would
        let the autojump clock fire a deadline anywhere)."""

        async def handle_async_request(self, request: Any) -> Any:
            scope.cancel()
            return await super().handle_async_request(request)

    fake = DiesWhileOut(f"{SONNET}=hang")
    store, env = await _sql_env(db_url, fake, now)

    async def dies(self: object) -> None:  # a killed process settles nothing
        return None

    monkeypatch.setattr(runner_limits.Gate, "abandoned", dies)
    try:
        with scope:
            await run_workflow(wf, RunRequest("hello"), env)
        assert len(fake.requests) == 1
        with store.engine.begin() as conn:  # what the dead process left: running, no heartbeat
            conn.execute(text("UPDATE workflow_runs SET status = 'running', owner = 'gone:1:1'"))
        monkeypatch.undo()
        (run,) = await store.list_runs(status=None, since=None, limit=5)
        now[0] += timedelta(minutes=1)
        resumed = await resume_run(run.run_id, env)
        assert resumed.outcome.succeeded
        journal = [e.event for e in await store.journal(run.run_id)]
        assert "attempt_unrecorded" in journal
        windows = budget_windows(wf.limits.budget, now[0])  # type: ignore[union-attr]
        (day,) = await env.limits.shared.window_use(windows, now[0])  # type: ignore[union-attr]
        assert day.reserved_usd == worst
        assert day.spent_usd == resumed.outcome.cost_usd
    finally:
        store.close()


async def test_the_memory_ledger_keeps_an_unbooked_reservation_too() -> None:
    """MemoryLedger.settle_lost with no figure: a held reservation of that run and attempt
    stays counted (reserved, as in the SQL ledger) in its windows; another attempt's expires
    as before."""
    from demiarch_flow.store.limits import MemoryLedger

    ledger = MemoryLedger()
    t0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
    day = [BudgetWindow("day", Decimal(1), t0.replace(hour=0))]
    for attempt in (1, 2):
        r = Reservation(f"res-{attempt}", "run-1", attempt, SONNET, Decimal("0.1"), t0,
                        t0 + timedelta(seconds=60))  # fmt: skip
        assert await ledger.reserve(r, day) is None
    await ledger.settle_lost("run-1", 1, Decimal(0), t0 + timedelta(days=32), certain=False)
    later = t0 + timedelta(hours=1)  # the held reservation of attempt 2 has expired by now
    (use,) = await ledger.window_use(day, later)
    assert (use.spent_usd, use.reserved_usd) == (0, Decimal("0.1"))
    (tomorrow,) = await ledger.window_use(
        [BudgetWindow("day", Decimal(1), t0.replace(day=2, hour=0))], t0.replace(day=2)
    )
    assert tomorrow.reserved_usd == 0


async def test_a_ledger_that_cannot_settle_does_not_cost_the_answer() -> None:
    """The budget's books fail to settle after the answer arrived: a warning, and the paid
    answer is still stored (the reservation stays held until it expires)."""
    from demiarch_flow.errors import PersistenceError
    from demiarch_flow.store import MemoryStore
    from demiarch_flow.store.limits import MemoryLedger

    class BrokenSettle(MemoryLedger):
        async def settle(self, *args: Any, **kwargs: Any) -> None:
            raise PersistenceError("budget or rate bookkeeping failed: database is locked")

    wf = with_limits("  budget: {daily_usd: 1}\n")
    store = MemoryStore()
    env = make_env(FakeOpenRouter(), store=store, limits=Limiter(BrokenSettle()))
    outcome = await run_workflow(wf, RunRequest("hello"), env)
    assert outcome.succeeded
    assert len(store.usage) == 1


_T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
_DAY = [BudgetWindow("day", Decimal(1), _T0.replace(hour=0))]


@contextlib.contextmanager
def _ledger_with_a_reservation(kind: str, tmp_path: Path) -> Iterator[Any]:
    """A memory or SQLite ledger holding run-1's reservation of attempt 1 (0.1 USD)."""
    from demiarch_flow.store.limits import MemoryLedger, SqlLedger
    from demiarch_flow.store.sql import SqlStore

    store = None
    if kind == "memory":
        ledger: Any = MemoryLedger()
    else:
        store = SqlStore.open_sync(f"sqlite:///{tmp_path / 'f.db'}")
        ledger = SqlLedger(store.engine)
    try:
        yield ledger
    finally:
        if store is not None:
            store.close()


async def _reserved(ledger: Any) -> None:
    r = Reservation("res-1", "run-1", 1, SONNET, Decimal("0.1"), _T0, _T0 + timedelta(seconds=60))
    assert await ledger.reserve(r, _DAY) is None


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("certain", [True, False])
async def test_a_lost_attempt_booked_by_a_resume_is_counted_once(
    kind: str, certain: bool, tmp_path: Path
) -> None:
    """A resume books a lost attempt (0.03 USD of a 0.1 USD worst case): at the provider's
    figure, the row replaces the reservation (it stayed unbooked at 0.1 for a month, counted
    beside the row); at an estimate, the worst case stays counted in all (row + the rest)."""
    with _ledger_with_a_reservation(kind, tmp_path) as ledger:
        await _reserved(ledger)
        # Ctrl-C while the request was out: the worst case is kept, unbooked
        await ledger.settle("res-1", Decimal("0.1"), _T0 + timedelta(days=32), unbooked=True)
        await ledger.settle_lost(
            "run-1", 1, Decimal("0.03"), _T0 + timedelta(days=32), certain=certain
        )
        (use,) = await ledger.window_use(_DAY, _T0 + timedelta(hours=1))
        # (the SQL ledger's spend is llm_usage, where the resume wrote 0.03: no row here)
        expected = {
            ("memory", True): (Decimal("0.03"), 0),
            ("memory", False): (0, Decimal("0.1")),
            ("sqlite", True): (0, 0),
            ("sqlite", False): (0, Decimal("0.07")),
        }[kind, certain]
        assert (use.spent_usd, use.reserved_usd) == expected


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_lost_attempt_finds_its_reservation_under_another_number(
    kind: str, tmp_path: Path
) -> None:
    """A reservation is numbered before the store numbers the attempt; after a refused attempt
    took a number they differ (reserved as 1, sent as 2). A resume settling the lost attempt 2
    still keeps its worst case (the run's reservation in flight) — it was dropped with the run's
    end, and the spend with it (found by the paid-once property)."""
    with _ledger_with_a_reservation(kind, tmp_path) as ledger:
        await _reserved(ledger)
        await ledger.settle_lost("run-1", 2, Decimal(0), _T0 + timedelta(days=32), certain=False)
        (use,) = await ledger.window_use(_DAY, _T0 + timedelta(hours=1))  # past its expiry
        assert use.reserved_usd == Decimal("0.1")
