"""The SQL ledger: budgets and shared rate buckets in the database, every process on it sharing
them (see :mod:`.limits` for how a budget holds and what a bucket's rows are).

Apart from :mod:`.limits` so that the runner can hold a ledger without importing SQLAlchemy: a
workflow with no budget and no shared bucket never asks it anything (:class:`~.limits.LazyLedger`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TypeVar

import trio
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from ..errors import PersistenceError, redact
from ..gcra import BucketRule, BucketState, correct, pause, stamp, take
from ..pricing import NANO
from ._tx import serialised
from .base import Held
from .limits import (
    _LOCK_KEY,
    _ZERO,
    BudgetWindow,
    Reservation,
    WindowUse,
    _paced,
    bucket_row,
)
from .tables import BudgetReservation, LlmUsage, RateBucketRow, WorkflowRun

T = TypeVar("T")

_RES: Table = BudgetReservation.__table__  # type: ignore[assignment]
_USAGE: Table = LlmUsage.__table__  # type: ignore[assignment]
_RUN: Table = WorkflowRun.__table__  # type: ignore[assignment]
_BUCKET: Table = RateBucketRow.__table__  # type: ignore[assignment]


class SqlLedger:
    """The books in the database, shared by every process that opens it.

    Args:
        engine: the store's engine (``SqlStore.engine``).
        clock: the clock of the bucket schedules, read inside the serialised transaction;
            ``None``: the database's — ``clock_timestamp()`` on PostgreSQL, the wall clock on
            SQLite (a test passes trio's virtual one, on either backend).
    """

    def __init__(self, engine: Engine, clock: Callable[[], float] | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self._lock = trio.Lock()
        """One ledger transaction at a time in this process (they serialise in the database
        anyway; waiting here keeps this process's threads off the busy timeout)."""

    async def _run(self, fn: Callable[[Connection], T]) -> T:
        async with self._lock:
            return await trio.to_thread.run_sync(functools.partial(self._serialised, fn))

    def _serialised(self, fn: Callable[[Connection], T]) -> T:
        try:
            with serialised(self.engine) as conn:
                return fn(conn)
        except SQLAlchemyError as exc:
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise PersistenceError(
                f"budget or rate bookkeeping failed: {redact(first[0] if first else '')[:300]}"
            ) from None

    # -- budgets

    async def reserve(
        self, reservation: Reservation, windows: Sequence[BudgetWindow]
    ) -> WindowUse | None:
        return await self._run(functools.partial(_reserve, r=reservation, windows=windows))

    async def settle(
        self,
        reservation_id: str,
        amount_usd: Decimal | None,
        expires_at: datetime,
        *,
        unbooked: bool = False,
        booked: bool = False,
    ) -> None:
        def op(conn: Connection) -> None:
            if amount_usd is None or (booked and not unbooked):  # nothing, or llm_usage has it
                conn.execute(delete(_RES).where(_RES.c.id == reservation_id))
            else:
                conn.execute(
                    update(_RES)
                    .where(_RES.c.id == reservation_id)
                    .values(
                        amount_usd=amount_usd,
                        settled=Held.UNBOOKED if unbooked else Held.SETTLED,
                        expires_at=expires_at,
                    )
                )

        await self._run(op)

    async def settle_lost(
        self,
        run_id: str,
        attempt: int,
        booked_usd: Decimal,
        expires_at: datetime,
        *,
        certain: bool,
    ) -> None:
        # llm_usage is this ledger's spend: the reservation keeps only what the row does not
        numbered = and_(
            _RES.c.run_id == run_id, _RES.c.attempt == attempt, _RES.c.settled != Held.SETTLED
        )
        in_flight = and_(_RES.c.run_id == run_id, _RES.c.settled == Held.HELD)

        def op(conn: Connection) -> None:
            pick = select(_RES.c.id, _RES.c.amount_usd)
            lost = conn.execute(pick.where(numbered)).all()
            lost = lost or conn.execute(pick.where(in_flight)).all()
            if certain:
                conn.execute(delete(_RES).where(_RES.c.id.in_([rid for rid, _ in lost])))
                return
            for rid, amount in lost:
                rest = max(Decimal(amount) - booked_usd, _ZERO)
                conn.execute(
                    update(_RES)
                    .where(_RES.c.id == rid)
                    .values(settled=Held.UNBOOKED, amount_usd=rest, expires_at=expires_at)
                )

        await self._run(op)

    async def window_use(
        self, windows: Sequence[BudgetWindow], now: datetime, run_id: str | None = None
    ) -> list[WindowUse]:
        def op(conn: Connection) -> list[WindowUse]:
            _clean(conn, now)
            return [_use(conn, w, run_id) for w in windows]

        return await self._run(op)

    # -- rate buckets

    def _now(self, conn: Connection) -> float:
        if self.clock is not None:
            return self.clock()
        if conn.dialect.name == "postgresql":
            return float(
                conn.execute(text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one()
            )
        return time.time()

    @staticmethod
    def _lock_rows(conn: Connection, names: Sequence[str]) -> dict[str, BucketState]:
        """The rows ``names`` (created empty where missing), locked until the transaction
        ends: PostgreSQL locks them in name order, so two transactions never wait on each
        other crosswise; SQLite's immediate transaction holds the whole database already."""
        keys = sorted(set(names))
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            conn.execute(pg_insert(_BUCKET).on_conflict_do_nothing(), [{"key": k} for k in keys])
            query = select(_BUCKET).where(_BUCKET.c.key.in_(keys)).order_by(_BUCKET.c.key)
            rows = {r.key: r for r in conn.execute(query.with_for_update())}
        else:
            rows = {r.key: r for r in conn.execute(select(_BUCKET).where(_BUCKET.c.key.in_(keys)))}
            missing = [k for k in keys if k not in rows]
            if missing:
                conn.execute(insert(_BUCKET), [{"key": k, "tat": 0.0, "tat_tokens": 0.0,
                                                "paused_until": 0.0} for k in missing])  # fmt: skip
        return {
            k: BucketState(rows[k].tat, rows[k].tat_tokens, rows[k].paused_until)
            if k in rows else BucketState()
            for k in keys
        }  # fmt: skip

    @staticmethod
    def _store(conn: Connection, names: Sequence[str], states: Sequence[BucketState]) -> None:
        for name, state in zip(names, states, strict=True):
            conn.execute(
                update(_BUCKET)
                .where(_BUCKET.c.key == name)
                .values(tat=state.tat, tat_tokens=state.tat_tokens,
                        paused_until=state.paused_until)
            )  # fmt: skip

    async def take(
        self, rules: Sequence[BucketRule], tokens: int, max_wait_s: float = math.inf
    ) -> tuple[float, str | None]:
        names = [bucket_row(r) for r in rules]

        def op(conn: Connection) -> tuple[float, str | None]:
            held = self._lock_rows(conn, names)
            now = self._now(conn)
            slot = take([(r, held[n]) for r, n in zip(rules, names, strict=True)], now, tokens)
            if slot.start - now <= max_wait_s:
                self._store(conn, names, slot.states)
            return slot.start - now, slot.blocking

        return await self._run(op)

    async def stamp(self, rules: Sequence[BucketRule]) -> tuple[float, str | None]:
        paced = _paced(rules)
        if not paced:
            return 0.0, None
        names = [bucket_row(r, sends=True) for r in paced]

        def op(conn: Connection) -> tuple[float, str | None]:
            held = self._lock_rows(conn, names)
            now = self._now(conn)
            slot = stamp([(r, held[n]) for r, n in zip(paced, names, strict=True)], now)
            if slot.blocking is None:
                self._store(conn, names, slot.states)
            return max(slot.start - now, 0.0), slot.blocking

        return await self._run(op)

    async def correct(self, rules: Sequence[BucketRule], delta_tokens: int) -> None:
        names = [bucket_row(r) for r in rules]

        def op(conn: Connection) -> None:
            held = self._lock_rows(conn, names)
            states = [correct(r, held[n], delta_tokens) for r, n in zip(rules, names, strict=True)]
            self._store(conn, names, states)

        await self._run(op)

    async def pause(self, rules: Sequence[BucketRule], seconds: float) -> None:
        names = [bucket_row(r) for r in rules]

        def op(conn: Connection) -> None:
            held = self._lock_rows(conn, names)
            until = self._now(conn) + seconds
            self._store(conn, names, [pause(held[n], until) for n in names])

        await self._run(op)


def _clean(conn: Connection, now: datetime) -> None:
    """Drop reservations that expired (their process died, or an unbooked amount's windows
    have passed) or whose run has ended (its cost is in ``llm_usage`` now, or it was never
    billed) — except the unbooked ones, whose cost no row will ever hold."""
    ended = select(_RUN.c.id).where(_RUN.c.status != "running")
    went_with_run = and_(_RES.c.run_id.in_(ended), _RES.c.settled != Held.UNBOOKED)
    conn.execute(delete(_RES).where(or_(_RES.c.expires_at < now, went_with_run)))


def _sum(conn: Connection, column: ColumnElement[Decimal], *where: ColumnElement[bool]) -> Decimal:
    """An exact sum of a USD column (SQLite keeps amounts as text: summed here)."""
    if conn.dialect.name == "sqlite":
        return sum(conn.execute(select(column).where(*where)).scalars(), _ZERO)
    total = conn.execute(select(func.sum(column)).where(*where)).scalar()
    return _ZERO if total is None else Decimal(total).quantize(NANO)


def _use(conn: Connection, window: BudgetWindow, run_id: str | None) -> WindowUse:
    if window.name == "run":
        spent = _sum(conn, _USAGE.c.cost_usd, _USAGE.c.run_id == run_id)
        reserved = _sum(conn, _RES.c.amount_usd, _RES.c.run_id == run_id)
    else:
        spent = _sum(conn, _USAGE.c.cost_usd, _USAGE.c.request_timestamp >= window.since)
        # in flight: every window (it may land in any); unbooked: the windows it fell in
        counted = or_(_RES.c.settled != Held.UNBOOKED, _RES.c.created_at >= window.since)
        reserved = _sum(conn, _RES.c.amount_usd, counted)
    return WindowUse(window.name, window.limit_usd, spent, reserved)


def _reserve(conn: Connection, r: Reservation, windows: Sequence[BudgetWindow]) -> WindowUse | None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    _clean(conn, r.at)
    for window in windows:
        use = _use(conn, window, r.run_id)
        if use.spent_usd + use.reserved_usd + r.amount_usd > use.limit_usd:
            return use
    conn.execute(
        insert(_RES),
        {"id": r.id, "run_id": r.run_id, "attempt": r.attempt, "model": r.model,
         "amount_usd": r.amount_usd, "settled": Held.HELD, "created_at": r.at,
         "expires_at": r.expires_at},
    )  # fmt: skip
    return None
