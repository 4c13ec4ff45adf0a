"""Where budgets and shared rate buckets keep their state: the :class:`Ledger` interface, its
SQL implementation (every process on one database shares it) and an in-memory one.

A budget holds because each reservation is written in a *serialised* transaction — SQLite:
``BEGIN IMMEDIATE`` (one writer at a time, the others wait on the busy timeout); PostgreSQL: a
transaction-level advisory lock — that first reads what every window has spent (the sum of
``llm_usage`` since the window began: a new day starts at zero by construction) and reserved,
and inserts the new reservation only if ``spent + reserved + estimate <= limit`` holds for every
window at once. A rate bucket is two rows — its schedule of slots and its record of sends
(:mod:`demiarch_flow.gcra`) — updated under ``BEGIN IMMEDIATE`` or ``SELECT … FOR UPDATE``, and
timed by the database's clock (the wall clock inside the immediate transaction on SQLite,
``clock_timestamp()`` on PostgreSQL), so processes on several machines share one clock.

A bucket's rows are named by its key *and its rule* (:func:`bucket_row`): a schedule is only
meaningful under the rule that made it. A mistaken ``rpm: 0.01`` can push a row days ahead;
had the row been the key's alone, the corrected file would inherit those days and every
process would wait them out. Two workflows giving one key different rules at once are thus
two buckets, each held to its own rule.

The memory ledger (``simulate``, tests, ``scope: process`` buckets) keeps the same books, under
the same row names, in the process and times buckets by trio's clock, so ``MockClock`` drives
them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import trio

from ..gcra import BucketRule, BucketState, Slot, correct, pause, stamp, take
from ..pricing import NANO
from .base import Held

if TYPE_CHECKING:
    from ._sql_ledger import SqlLedger as SqlLedger

T = TypeVar("T")
WindowName = Literal["run", "day", "month"]
_LOCK_KEY = 0x64656D6961726369  # the advisory lock of budget reservations ("demiarci")
_ZERO = Decimal(0).quantize(NANO)


@dataclass(frozen=True, slots=True)
class BudgetWindow:
    """One budget window: its limit, and since when spend counts (``None`` for ``run``)."""

    name: WindowName
    limit_usd: Decimal
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class WindowUse:
    """A window's books: its limit, what was spent in it and what is reserved now."""

    window: WindowName
    limit_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal

    @property
    def remaining_usd(self) -> Decimal:
        return max(self.limit_usd - self.spent_usd - self.reserved_usd, _ZERO)

    def to_json(self) -> dict[str, str]:
        """The ``budget --json`` object (amounts as decimal strings, like ``cost_usd``)."""
        return {
            "window": self.window,
            "limit_usd": _text(self.limit_usd),
            "spent_usd": _text(self.spent_usd),
            "reserved_usd": _text(self.reserved_usd),
            "remaining_usd": _text(self.remaining_usd),
        }


def _text(amount: Decimal) -> str:
    """An amount as a plain decimal string (``0.000000000``, never ``0E-9``)."""
    return format(amount.quantize(NANO), "f")


@dataclass(frozen=True, slots=True)
class Reservation:
    """The worst-case cost of one attempt, held while it is in flight."""

    id: str
    run_id: str
    attempt: int
    model: str
    amount_usd: Decimal
    at: datetime
    expires_at: datetime


class Ledger(Protocol):
    """Budget reservations and rate buckets, atomically (see the module docstring)."""

    async def reserve(
        self, reservation: Reservation, windows: Sequence[BudgetWindow]
    ) -> WindowUse | None:
        """Insert ``reservation`` if it fits every window; else return the first window it
        does not fit (its books before this estimate), and insert nothing."""

    async def settle(
        self,
        reservation_id: str,
        amount_usd: Decimal | None,
        expires_at: datetime,
        *,
        unbooked: bool = False,
        booked: bool = False,
    ) -> None:
        """Replace a reservation by the real cost (``None``: nothing was billed, release it).

        ``booked``: ``amount_usd`` is in an ``llm_usage`` row already (an interrupted
        stream's, written first): a ledger whose spend is ``llm_usage`` drops the reservation.

        ``unbooked``: the attempt may have been billed and no ``llm_usage`` row will ever say
        what it cost (a request that timed out or lost its connection: a blocking request is
        billed in full). ``amount_usd`` then stays counted in the windows it falls in after its
        run has ended, until ``expires_at``, instead of going with the run.
        """

    async def settle_lost(
        self,
        run_id: str,
        attempt: int,
        booked_usd: Decimal,
        expires_at: datetime,
        *,
        certain: bool,
    ) -> None:
        """Settle the reservation of an attempt whose process is gone (a crash, or Ctrl-C
        while its request was out), now that a resume has booked ``booked_usd`` for it in
        ``llm_usage`` (0 when nothing could be booked).

        ``certain``: the provider's figure: the row replaces the reservation. Otherwise
        the figure is an estimate (or nothing): the attempt's worst case stays counted in
        all, as :meth:`settle` keeps a timeout's (``unbooked``), until ``expires_at`` — the
        part the row does not hold stays reserved.

        The reservation is the one of that attempt number; when none has it (a reservation
        is numbered before the store gives the attempt its number, and the two differ after
        a refused or unrecorded attempt took a number), the run's reservations still in
        flight — the dead process's, a run has one attempt out at a time.
        """

    async def window_use(
        self, windows: Sequence[BudgetWindow], now: datetime, run_id: str | None = None
    ) -> list[WindowUse]:
        """Each window's books (``run`` needs ``run_id``)."""

    async def take(
        self, rules: Sequence[BucketRule], tokens: int, max_wait_s: float = math.inf
    ) -> tuple[float, str | None]:
        """Take the next slot of every bucket; returns the seconds to wait for it and the
        bucket that made it wait. A slot further than ``max_wait_s`` away is not taken (the
        caller will not wait that long, and a slot it left empty would hold the others back):
        the wait is returned and nothing changes."""

    async def stamp(self, rules: Sequence[BucketRule]) -> tuple[float, str | None]:
        """Count a request sent now in every bucket's record of sends, if each allows it
        (``0.0, None``); else the seconds until one would and the bucket, counting nothing."""

    async def correct(self, rules: Sequence[BucketRule], delta_tokens: int) -> None:
        """Move the token schedules by the real tokens minus the estimate."""

    async def pause(self, rules: Sequence[BucketRule], seconds: float) -> None:
        """No request of these buckets for ``seconds`` (a 429's Retry-After)."""


# ---------------------------------------------------------------------- in memory


class MemoryLedger:
    """The books of one process (buckets on trio's clock), kept as the SQL ledger keeps them:
    a settled cost is spend (this ledger reads no ``llm_usage``), a held or an unbooked worst
    case is reserved."""

    def __init__(self) -> None:
        self._reservations: dict[str, tuple[Reservation, Held]] = {}
        """id → (reservation, what it stands for now)."""
        self._buckets: dict[str, BucketState] = {}

    def _use(self, window: BudgetWindow, now: datetime, run_id: str | None) -> WindowUse:
        spent = reserved = _ZERO
        for r, settled in self._reservations.values():
            if window.name == "run" and r.run_id != run_id:
                continue
            in_window = window.since is None or r.at >= window.since
            if settled is Held.SETTLED:
                spent += r.amount_usd if in_window else _ZERO
            elif settled is Held.UNBOOKED:
                reserved += r.amount_usd if in_window and r.expires_at >= now else _ZERO
            elif r.expires_at >= now:
                reserved += r.amount_usd
        return WindowUse(window.name, window.limit_usd, spent, reserved)

    async def reserve(
        self, reservation: Reservation, windows: Sequence[BudgetWindow]
    ) -> WindowUse | None:
        for window in windows:
            use = self._use(window, reservation.at, reservation.run_id)
            if use.spent_usd + use.reserved_usd + reservation.amount_usd > use.limit_usd:
                return use
        self._reservations[reservation.id] = (reservation, Held.HELD)
        return None

    async def settle(
        self,
        reservation_id: str,
        amount_usd: Decimal | None,
        expires_at: datetime,
        *,
        unbooked: bool = False,
        booked: bool = False,
    ) -> None:
        # this ledger reads no llm_usage: a settled amount is its spend, booked or not
        held = self._reservations.pop(reservation_id, None)
        if held is not None and amount_usd is not None:
            kept = replace(held[0], amount_usd=amount_usd, expires_at=expires_at)
            self._reservations[reservation_id] = (kept, Held.UNBOOKED if unbooked else Held.SETTLED)

    async def settle_lost(
        self,
        run_id: str,
        attempt: int,
        booked_usd: Decimal,
        expires_at: datetime,
        *,
        certain: bool,
    ) -> None:
        # this ledger reads no llm_usage: a settled amount is its spend
        mine = [
            (k, r, held) for k, (r, held) in self._reservations.items()
            if r.run_id == run_id and held is not Held.SETTLED
        ]  # fmt: skip
        lost = [x for x in mine if x[1].attempt == attempt] or [
            x for x in mine if x[2] is Held.HELD
        ]
        for key, r, _ in lost:
            if certain:
                kept = replace(r, amount_usd=booked_usd, expires_at=expires_at)
                self._reservations[key] = (kept, Held.SETTLED)
            else:
                self._reservations[key] = (replace(r, expires_at=expires_at), Held.UNBOOKED)

    async def window_use(
        self, windows: Sequence[BudgetWindow], now: datetime, run_id: str | None = None
    ) -> list[WindowUse]:
        return [self._use(w, now, run_id) for w in windows]

    def _states(
        self, rules: Sequence[BucketRule], sends: bool = False
    ) -> list[tuple[BucketRule, BucketState]]:
        return [(r, self._buckets.get(bucket_row(r, sends), BucketState())) for r in rules]

    def _store(self, rules: Sequence[BucketRule], slot: Slot, sends: bool = False) -> None:
        self._buckets.update(
            {bucket_row(r, sends): s for r, s in zip(rules, slot.states, strict=True)}
        )

    async def take(
        self, rules: Sequence[BucketRule], tokens: int, max_wait_s: float = math.inf
    ) -> tuple[float, str | None]:
        now = trio.current_time()
        slot = take(self._states(rules), now, tokens)
        if slot.start - now <= max_wait_s:
            self._store(rules, slot)
        return slot.start - now, slot.blocking

    def stamp_wait(self, rules: Sequence[BucketRule]) -> tuple[float, str | None]:
        """What :meth:`stamp` would answer now, counting nothing (no await: the caller may
        act on it before any other task runs)."""
        now = trio.current_time()
        slot = stamp(self._states(_paced(rules), sends=True), now)
        return max(slot.start - now, 0.0), slot.blocking

    async def stamp(self, rules: Sequence[BucketRule]) -> tuple[float, str | None]:
        paced = _paced(rules)
        now = trio.current_time()
        slot = stamp(self._states(paced, sends=True), now)
        if slot.blocking is None:
            self._store(paced, slot, sends=True)
        return max(slot.start - now, 0.0), slot.blocking

    async def correct(self, rules: Sequence[BucketRule], delta_tokens: int) -> None:
        for rule, state in self._states(rules):
            self._buckets[bucket_row(rule)] = correct(rule, state, delta_tokens)

    async def pause(self, rules: Sequence[BucketRule], seconds: float) -> None:
        until = trio.current_time() + seconds
        for rule, state in self._states(rules):
            self._buckets[bucket_row(rule)] = pause(state, until)


# ---------------------------------------------------------------------- bucket rows

#: The width of ``rate_buckets.key``.
_ROW_WIDTH = 200


def bucket_row(rule: BucketRule, sends: bool = False) -> str:
    """The name of the row holding ``rule``'s schedule (``sends``: its record of sends).

    The bucket's key, then its rule as ``interval/tau/token interval`` (keys hold no
    whitespace, so the name reads back unambiguously), then `` sent`` for the record of sends:
    ``* 0.1/0.0/-``. A name past the column's width keeps its start and ends in a digest of
    the whole.

    Naming the rule in the row, rather than in a column of its own, keeps the table as it is
    (no migration for live state); the row of a rule no file uses any more is never read
    again, and stays as a few dozen bytes.
    """

    def num(x: float | None) -> str:
        return "-" if x is None else repr(x)

    name = f"{rule.key} {num(rule.interval_s)}/{num(rule.tau_s)}/{num(rule.token_interval_s)}"
    name += " sent" if sends else ""
    if len(name) > _ROW_WIDTH:
        digest = hashlib.sha256(name.encode()).hexdigest()[:24]
        name = f"{name[: _ROW_WIDTH - len(digest) - 1]} {digest}"
    return name


def _paced(rules: Sequence[BucketRule]) -> list[BucketRule]:
    """The rules with a request rate (the only ones with a record of sends)."""
    return [r for r in rules if r.interval_s is not None]


# ---------------------------------------------------------------------- SQL


def __getattr__(name: str) -> Any:
    """:class:`SqlLedger` lives in :mod:`._sql_ledger` (it imports SQLAlchemy); it is still
    found here."""
    if name == "SqlLedger":
        from ._sql_ledger import SqlLedger

        return SqlLedger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class LazyLedger:
    """A ledger made at its first use: ``run`` holds the database's, and a workflow with no
    budget and no shared bucket never asks it anything, so it never imports SQLAlchemy.

    Args:
        make: makes the ledger (e.g. ``lambda: SqlLedger(store.engine)``).
    """

    def __init__(self, make: Callable[[], Ledger]) -> None:
        self._make = make
        self._made: Ledger | None = None

    @property
    def ledger(self) -> Ledger:
        made = self._made
        if made is None:
            made = self._made = self._make()
        return made

    async def reserve(self, *args: Any, **kwargs: Any) -> WindowUse | None:
        return await self.ledger.reserve(*args, **kwargs)

    async def settle(self, *args: Any, **kwargs: Any) -> None:
        await self.ledger.settle(*args, **kwargs)

    async def settle_lost(self, *args: Any, **kwargs: Any) -> None:
        await self.ledger.settle_lost(*args, **kwargs)

    async def window_use(self, *args: Any, **kwargs: Any) -> list[WindowUse]:
        return await self.ledger.window_use(*args, **kwargs)

    async def take(self, *args: Any, **kwargs: Any) -> tuple[float, str | None]:
        return await self.ledger.take(*args, **kwargs)

    async def stamp(self, *args: Any, **kwargs: Any) -> tuple[float, str | None]:
        return await self.ledger.stamp(*args, **kwargs)

    async def correct(self, *args: Any, **kwargs: Any) -> None:
        await self.ledger.correct(*args, **kwargs)

    async def pause(self, *args: Any, **kwargs: Any) -> None:
        await self.ledger.pause(*args, **kwargs)
