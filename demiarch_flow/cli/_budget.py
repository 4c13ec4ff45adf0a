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
from typing import TYPE_CHECKING, Any

from ..errors import ProviderError
from ..paths import database_url
from ..pricing import to_usd
from ..runner.budget import budget_windows
from ..store.limits import SqlLedger
from ..store.sql import SqlStore
from ._common import network_needed, resolve_base_url, run_trio, workflow_from
from ._table import plain, plain_or_none, table

if TYPE_CHECKING:
    from ..store.limits import BudgetWindow, WindowUse

#: OpenRouter's figure and ours may differ by this much before ``--key`` warns: $0.01, or
#: 1 % of the larger figure when that is more (its usage lags a little behind ours).
TOLERANCE_USD = Decimal("0.01")
TOLERANCE_SHARE = Decimal("0.01")


def _windows(limits: dict[str, Decimal | None], now: datetime) -> list[BudgetWindow]:
    """The day and month windows, with a placeholder limit where the workflow sets none."""
    from ..definition.limits import BudgetPolicy

    policy = BudgetPolicy(daily_usd=limits["day"] or Decimal(0),
                          monthly_usd=limits["month"] or Decimal(0))  # fmt: skip
    return [w for w in budget_windows(policy, now) if w.name != "run"]


def _row(use: WindowUse, limit: Decimal | None) -> dict[str, Any]:
    doc: dict[str, Any] = use.to_json()
    if limit is None:
        doc["limit_usd"] = doc["remaining_usd"] = None
    return doc


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
    wf = workflow_from(args.workflow)
    policy = wf.limits.budget if wf.limits is not None else None
    limits = {
        "day": policy.daily_usd if policy else None,
        "month": policy.monthly_usd if policy else None,
    }
    base = resolve_base_url(args.base_url) if args.key else ""
    now = datetime.now(UTC)
    store = SqlStore.open_sync(database_url(args.db), create=False)

    async def main() -> tuple[list[WindowUse], dict[str, Any] | None]:
        uses = await SqlLedger(store.engine).window_use(_windows(limits, now), now)
        return uses, (await _key_usage(base) if args.key else None)

    try:
        with network_needed(base, "GET /key"):
            uses, key = run_trio(main)
    finally:
        store.close()
    rows = [_row(u, limits[u.window]) for u in uses]
    theirs: dict[str, Decimal | None] = {}
    if key is not None:
        theirs = {"day": to_usd(key.get("usage_daily")), "month": to_usd(key.get("usage_monthly"))}
        for row in rows:
            row["openrouter_usd"] = plain_or_none(theirs[row["window"]])
        for use in uses:
            if _differs(use.spent_usd, theirs[use.window]):
                print(
                    f"demiarch-flow: warning: this {use.window}'s spend differs:"
                    f" {plain(use.spent_usd)} USD in the database,"
                    f" {plain_or_none(theirs[use.window])} USD at OpenRouter (other tools may"
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
