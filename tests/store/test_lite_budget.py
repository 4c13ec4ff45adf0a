"""`budget`'s quick read (`LiteReader.window_books`, the standard library's sqlite3) counts a
window's books exactly as `SqlLedger.window_use` does, on one database holding every kind of
reservation: in flight, settled, unbooked inside and before the window, expired, and gone with
a run that has ended."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import trio
import trio.testing
from sqlalchemy import insert, select

from demiarch_flow.cli._budget import window_starts
from demiarch_flow.definition.limits import BudgetPolicy
from demiarch_flow.runner.budget import budget_windows
from demiarch_flow.store._lite import LiteReader
from demiarch_flow.store.limits import BudgetWindow, SqlLedger
from demiarch_flow.store.sql import SqlStore
from demiarch_flow.store.tables import BudgetReservation, Held, LlmUsage, WorkflowRun

from .test_lite_reader import fill


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database filled by real runs (usage rows over two days and two months)."""
    path = tmp_path_factory.mktemp("lite-budget") / "flow.db"
    trio.run(fill, f"sqlite:///{path}", clock=trio.testing.MockClock(autojump_threshold=0))
    return path


def reservations(url: str, now: datetime) -> Decimal:
    """Add one reservation of each kind around ``now``; what the day window must count."""
    store = SqlStore.open_sync(url)
    table = BudgetReservation.__table__
    try:
        with store.engine.begin() as conn:
            ended = conn.execute(
                select(WorkflowRun.__table__.c.id).where(WorkflowRun.__table__.c.status != "running")
            ).scalars().first()  # fmt: skip
            assert ended is not None
            day = now.replace(hour=0, minute=0, second=0, microsecond=0)
            later, long_ago = now + timedelta(hours=1), day - timedelta(days=40)
            rows = [  # (run, settled, amount, created, expires, counted in the day window)
                ("live", Held.HELD, "0.100000001", now, later, True),
                ("live", Held.SETTLED, "0.020000000", now, later, True),
                ("live", Held.HELD, "0.003000000", long_ago, later, True),  # in flight: any
                ("live", Held.UNBOOKED, "0.000400000", day, later, True),  # from the first instant
                ("live", Held.UNBOOKED, "0.000050000", day - timedelta(seconds=1), later, False),
                ("live", Held.HELD, "7", now - timedelta(hours=2), now - timedelta(hours=1),
                 False),  # expired
                (ended, Held.HELD, "8", now, later, False),  # went with its run
                (ended, Held.SETTLED, "9", now, later, False),
                (ended, Held.UNBOOKED, "0.000006000", now, later, True),  # stays: no row has it
            ]  # fmt: skip
            conn.execute(
                insert(table),
                [{"id": f"r{i}", "run_id": run, "attempt": 1, "model": "acme/a",
                  "amount_usd": Decimal(amount), "settled": settled, "created_at": created,
                  "expires_at": expires}
                 for i, (run, settled, amount, created, expires, _) in enumerate(rows)],
            )  # fmt: skip
    finally:
        store.close()
    return sum((Decimal(r[2]) for r in rows if r[5]), Decimal(0))


@pytest.mark.parametrize(
    "now",
    [
        datetime(2026, 3, 30, 18, 30, tzinfo=UTC),  # during the runs' first day
        datetime(2026, 3, 31, 9, 0, 0, 1, tzinfo=UTC),  # the next day, same month
        datetime(2026, 4, 1, 0, 0, tzinfo=UTC),  # a new day and month began this instant
        datetime(2026, 5, 2, 12, tzinfo=UTC),  # nothing spent this month
    ],
)
def test_the_quick_books_are_the_ledgers(template: Path, tmp_path: Path, now: datetime) -> None:
    """Spent and reserved, per window, equal the SQL ledger's on the same database (the quick
    read first: the ledger drops what expired), and the reserved figure of the day is the one
    the reservations' kinds call for."""
    path = tmp_path / "flow.db"
    shutil.copy(template, path)
    url = f"sqlite:///{path}"
    day_reserved = reservations(url, now)
    starts = window_starts(now)
    reader = LiteReader.open(url)
    try:
        quick = reader.window_books([starts["day"], starts["month"]], now)
    finally:
        reader.close()

    async def ledger() -> list[tuple[Decimal, Decimal]]:
        store = await SqlStore.open(url)
        try:
            windows = [BudgetWindow("day", Decimal(1), starts["day"]),
                       BudgetWindow("month", Decimal(1), starts["month"])]  # fmt: skip
            uses = await SqlLedger(store.engine).window_use(windows, now)
            return [(u.spent_usd, u.reserved_usd) for u in uses]
        finally:
            store.close()

    assert quick == trio.run(ledger)
    assert quick[0][1] == day_reserved
    spent_by_hand = _spent_since(url, starts["month"])
    assert quick[1][0] == spent_by_hand
    assert all(str(a) == str(a.quantize(Decimal("1e-9"))) for pair in quick for a in pair)


def _spent_since(url: str, since: datetime) -> Decimal:
    store = SqlStore.open_sync(url, read_only=True)
    try:
        with store.engine.connect() as conn:
            usage = LlmUsage.__table__
            costs = conn.execute(
                select(usage.c.cost_usd).where(usage.c.request_timestamp >= since)
            ).scalars()
            return sum(costs, Decimal(0))
    finally:
        store.close()


@pytest.mark.parametrize(
    "now",
    [
        datetime(2026, 1, 1, 0, 0, tzinfo=UTC),
        datetime(2026, 2, 28, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 7, 15, 1, 30, tzinfo=UTC).astimezone(timezone(timedelta(hours=5))),
    ],
)
def test_the_window_starts_are_the_runners(now: datetime) -> None:
    """`budget` begins the day and month where the runner's budget windows begin them (UTC)."""
    policy = BudgetPolicy(daily_usd=Decimal(1), monthly_usd=Decimal(1))
    runner = {w.name: w.since for w in budget_windows(policy, now)}
    assert window_starts(now) == {"day": runner["day"], "month": runner["month"]}
