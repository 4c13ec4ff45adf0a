"""The bounds on provider figures: absurd costs and prices are unknown, never a crash."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from demiarch_flow.pricing import (
    MAX_CALL_COST_USD,
    Price,
    PriceTable,
    table_from_models_listing,
    to_usd,
)


@pytest.mark.parametrize(
    "value", [1e30, "1e40", pytest.param(10**5000, id="int5000"),
              pytest.param("9" * 5000, id="str5000"), -1, "-0.01", float("nan"), "NaN", "sNaN",
              "Infinity", float("inf"), True, [1], {"a": 1}, "n/a", None],
)  # fmt: skip
def test_to_usd_refuses_what_is_no_amount(value: Any) -> None:
    """Huge, negative, non-finite and non-numbers are None (no InvalidOperation escapes)."""
    assert to_usd(value) is None


def test_to_usd_keeps_amounts_up_to_the_ceiling() -> None:
    """The ceiling itself is an amount; "-0" is zero; floats keep their decimal digits."""
    assert to_usd(MAX_CALL_COST_USD) == MAX_CALL_COST_USD
    assert to_usd("-0") == Decimal(0)
    assert to_usd(0.00009) == Decimal("0.000090000")


def test_price_file_skips_absurd_entries() -> None:
    """A prices file with "1e40", negative, NaN or Infinity keeps only its sane entries."""
    table = PriceTable.from_json(
        {
            "ok/model": {"prompt": "3", "completion": "15"},
            "huge/model": {"prompt": "1e40", "completion": "1"},
            "neg/model": {"prompt": "-1", "completion": "1"},
            "nan/model": {"prompt": "NaN", "completion": "1"},
            "inf/model": {"prompt": "1", "completion": "Infinity"},
        }
    )
    assert table.prices == {"ok/model": Price(Decimal(3), Decimal(15))}


@pytest.mark.parametrize("text", ["[1, 2]", '"prices"', "[" * 100_000])
def test_a_synced_file_that_is_no_table_falls_back_to_the_shipped_one(
    tmp_path: Path, text: str
) -> None:
    """A prices file holding a list, a string or nesting too deep: the shipped table is used."""
    path = tmp_path / "prices.json"
    path.write_text(text)
    assert PriceTable.load(path).prices == PriceTable.load().prices


def test_listing_skips_absurd_prices() -> None:
    """GET /models prices of "1e40" per token (or worse) are skipped, the rest converted."""
    listing: list[Any] = [
        {"id": "a/ok", "pricing": {"prompt": "0.000003", "completion": "0.000015"}},
        {"id": "a/huge", "pricing": {"prompt": "1e40", "completion": "0.000015"}},
        {"id": "a/list", "pricing": ["0.1"]},
        {"id": 7, "pricing": {"prompt": "0", "completion": "0"}},
    ]
    table = table_from_models_listing(listing)
    assert {k: v for k, v in table.items() if not k.startswith("_")} == {
        "a/ok": {"prompt": "3", "completion": "15"}
    }
    json.dumps(table)


def test_unknown_token_counts_are_not_priced() -> None:
    """No believable token counts and no usage.cost: the cost is unknown, not 0 from the table."""
    table = PriceTable({"m": Price(Decimal(3), Decimal(15))})
    assert table.cost("m", None, 10, None).source == "unknown"
    assert table.cost("m", 10, None, Decimal(1)).source == "provider"


def test_a_table_cost_beyond_the_ceiling_is_unknown() -> None:
    """2^31 tokens at $1,000,000 per million would be a bill no column can hold: unknown."""
    table = PriceTable({"m": Price(Decimal(1_000_000), Decimal(1_000_000))})
    assert table.cost("m", 2**31 - 1, 2**31 - 1, None).source == "unknown"
    assert table.cost("m", 1, 0, None).usd == Decimal("1.000000000")
