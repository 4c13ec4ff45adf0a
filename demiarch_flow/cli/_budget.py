"""``budget``: each budget window's limit, spend, reservations and what remains — and, with
``--key``, OpenRouter's own figures for the key beside ours.

Spend is every billed generation on the database (the sum of ``llm_usage`` since the window
began), whatever workflow made it; reservations are the worst cases of attempts in flight,
and of attempts in the window that may have been billed without a figure (timeouts).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ..errors import ProviderError
from ..paths import database_url
from ..pricing import NANO, to_usd
from ._common import network_needed, resolve_base_url, workflow_from
from ._table import plain, plain_or_none, table

#: OpenRouter's figure and ours may differ by this much before ``--key`` warns: $0.01, or
#: 1 % of the larger figure when that is more (its usage lags a little behind ours).
TOLERANCE_USD = Decimal("0.01")
TOLERANCE_SHARE = Decimal("0.01")

#: (window, spent, reserved), day then month.
Books = list[tuple[str, Decimal, Decimal]]


def window_starts(now: datetime) -> dict[str, datetime]:
    """When the day and the month windows began at ``now`` (UTC midnight, the first of the
    month): :func:`demiarch_flow.runner.budget.budget_windows`'s, which a test holds equal."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return {"day": day, "month": day.replace(day=1)}


def read_books(db: str | None, now: datetime) -> Books:
    """Each window's spend and reservations at ``now``: through the standard library's
    ``sqlite3`` on a plain SQLite file at this release's revision (no SQLAlchemy, no trio),
    else through the store's ledger, which reads any database or says what is wrong with it.

    Raises:
        StoreUnavailable: no database, or one the store cannot read.
    """
    from ..store._lite import NotLite
    from ._reading import read_lite

    url = database_url(db)
    starts = window_starts(now)
    try:
        books = read_lite(url, lambda r: r.window_books(list(starts.values()), now))
    except NotLite:
        return _ledger_books(url, starts, now)  # it reads it, or says what is wrong
    return [(w, s, r) for w, (s, r) in zip(starts, books, strict=True)]


def _ledger_books(url: str, starts: dict[str, datetime], now: datetime) -> Books:
    """:func:`read_books` through :class:`~demiarch_flow.store.limits.SqlLedger` (any backend)."""
    from ..store.limits import BudgetWindow, SqlLedger
    from ..store.sql import SqlStore
    from ._common import run_trio

    store = SqlStore.open_sync(url, create=False)
    windows = [BudgetWindow("day", Decimal(0), starts["day"]),
               BudgetWindow("month", Decimal(0), starts["month"])]  # fmt: skip
    try:
        uses = run_trio(lambda: SqlLedger(store.engine).window_use(windows, now))
    finally:
        store.close()
    return [(u.window, u.spent_usd, u.reserved_usd) for u in uses]


def _row(window: str, limit: Decimal | None, spent: Decimal, reserved: Decimal) -> dict[str, Any]:
    """The ``budget --json`` object of a window: amounts as plain decimal strings to the
    nano-dollar; no limit, no ``remaining`` (``None``)."""

    def text(amount: Decimal) -> str:
        return plain(amount.quantize(NANO))

    remaining = None if limit is None else max(limit - spent - reserved, Decimal(0))
    return {
        "window": window,
        "limit_usd": None if limit is None else text(limit),
        "spent_usd": text(spent),
        "reserved_usd": text(reserved),
        "remaining_usd": None if remaining is None else text(remaining),
    }


async def _key_usage(base_url: str) -> dict[str, Any]:
    """``GET {base}/key``: the key's limit and usage as OpenRouter counts them."""
    import httpx

    from ..keys import resolve_key
    from ..runtime import http_client  # the HTTP client and the runner: only for --key

    key = resolve_key()
    async with http_client(2) as http:
        try:
            response = await http.get(
                f"{base_url.rstrip('/')}/key",
                headers={"Authorization": f"Bearer {key.value}"},
                timeout=30,
            )
        except (httpx.HTTPError, OSError) as exc:
            raise ProviderError("network_error", f"GET /key failed: {type(exc).__name__}") from None
    try:
        data = response.json().get("data")
    except (ValueError, AttributeError, RecursionError):
        data = None
    if response.status_code != 200 or not isinstance(data, dict):
        raise ProviderError(
            "server_error", "GET /key did not return the key's usage", status=response.status_code
        )
    return data


def _differs(ours: Decimal, theirs: Decimal | None) -> bool:
    if theirs is None:
        return False
    return abs(ours - theirs) > max(TOLERANCE_USD, TOLERANCE_SHARE * max(ours, theirs))


def cmd_budget(args: argparse.Namespace) -> int:
    wf = workflow_from(args.workflow, check_prices=False)  # it reports, it enforces nothing
    policy = wf.limits.budget if wf.limits is not None else None
    limits = {
        "day": policy.daily_usd if policy else None,
        "month": policy.monthly_usd if policy else None,
    }
    base = resolve_base_url(args.base_url) if args.key else ""
    books = read_books(args.db, datetime.now(UTC))
    key = None
    if args.key:
        from ._common import run_trio

        with network_needed(base, "GET /key"):
            key = run_trio(lambda: _key_usage(base))
    rows = [_row(window, limits[window], spent, reserved) for window, spent, reserved in books]
    theirs: dict[str, Decimal | None] = {}
    if key is not None:
        theirs = {"day": to_usd(key.get("usage_daily")), "month": to_usd(key.get("usage_monthly"))}
        for row in rows:
            row["openrouter_usd"] = plain_or_none(theirs[row["window"]])
        for window, spent, _ in books:
            if _differs(spent, theirs[window]):
                print(
                    f"demiarch-flow: warning: this {window}'s spend differs:"
                    f" {plain(spent)} USD in the database,"
                    f" {plain_or_none(theirs[window])} USD at OpenRouter (other tools may"
                    " use the same key, or usage was not booked here)",
                    file=sys.stderr,
                )
    if args.json:
        print(json.dumps(rows))
        return 0
    headers = ["window", "limit", "spent", "reserved", "remaining"]
    if key is not None:
        headers.append("openrouter")
    print(
        table(
            headers,
            [[r["window"], r["limit_usd"] or "-", r["spent_usd"], r["reserved_usd"],
              r["remaining_usd"] or "-", *([r.get("openrouter_usd") or "-"] if key else [])]
             for r in rows],
            numeric=range(1, len(headers)),
        )
    )  # fmt: skip
    if key is not None:
        limit, remaining = to_usd(key.get("limit")), to_usd(key.get("limit_remaining"))
        if limit is not None:
            print(
                f"OpenRouter key limit {plain(limit)} USD,"
                f" {plain_or_none(remaining) or '?'} USD remaining"
            )
    return 0
