"""Cost in USD, as ``Decimal``: the provider's own figure first, a price table second.

The shipped table (``data/prices.json``, USD per million tokens) holds the published prices of
the default chain; ``demiarch-flow models sync`` writes a fresher copy to the user's data folder,
which then takes precedence. Amounts are quantized to 1e-9 USD (a nano-dollar), the resolution
the ``llm_usage.cost_usd`` column stores.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any, Literal

NANO = Decimal("0.000000001")
MILLION = Decimal(1_000_000)
CostSource = Literal["provider", "price_table", "unknown"]


def to_usd(value: Any) -> Decimal | None:
    """A JSON number or string as a quantized ``Decimal``, or ``None`` if it is not one.

    Floats go through ``repr`` so ``0.00009`` stays ``0.000090000``, not a binary tail.
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    if not amount.is_finite() or amount < 0:
        return None
    return amount.quantize(NANO)


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    prompt: Decimal
    completion: Decimal


@dataclass(frozen=True, slots=True)
class Cost:
    usd: Decimal
    source: CostSource


class PriceTable:
    """Model → :class:`Price`, with the cost rule of the usage table."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self.prices = dict(prices)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PriceTable:
        prices = {}
        for model, entry in data.items():
            if model.startswith("_") or not isinstance(entry, Mapping):
                continue
            prompt, completion = to_usd(entry.get("prompt")), to_usd(entry.get("completion"))
            if prompt is not None and completion is not None:
                prices[model] = Price(prompt, completion)
        return cls(prices)

    @classmethod
    def load(cls, override: Path | None = None) -> PriceTable:
        """The synced table at ``override`` if it exists and parses, else the shipped one."""
        if override is not None and override.is_file():
            try:
                return cls.from_json(json.loads(override.read_text("utf-8")))
            except (OSError, ValueError):
                pass
        shipped = resources.files("demiarch_flow").joinpath("data", "prices.json")
        return cls.from_json(json.loads(shipped.read_text("utf-8")))

    def cost(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        provider_cost: Decimal | None,
        *also: str,
    ) -> Cost:
        """The cost of one call: ``usage.cost`` if given, else table price, else 0 (unknown).

        ``also`` names further models to look up (the requested one when the answering model
        is not in the table).
        """
        if provider_cost is not None:
            return Cost(provider_cost, "provider")
        for name in (model, *also):
            price = self.prices.get(name)
            if price is not None:
                usd = (
                    price.prompt * prompt_tokens + price.completion * completion_tokens
                ) / MILLION
                return Cost(usd.quantize(NANO), "price_table")
        return Cost(Decimal(0).quantize(NANO), "unknown")


def table_from_models_listing(models: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Turn ``GET /models`` ``data`` entries (USD per token, as strings) into our file format."""
    out: dict[str, Any] = {
        "_comment": "USD per million tokens, written by `demiarch-flow models sync`."
    }
    for entry in models:
        pricing = entry.get("pricing") or {}
        prompt, completion = to_usd(pricing.get("prompt")), to_usd(pricing.get("completion"))
        model_id = entry.get("id")
        if not isinstance(model_id, str) or prompt is None or completion is None:
            continue
        out[model_id] = {
            "prompt": format((Decimal(str(pricing["prompt"])) * MILLION).normalize(), "f"),
            "completion": format((Decimal(str(pricing["completion"])) * MILLION).normalize(), "f"),
        }
    return out


def write_synced_table(models: Iterable[Mapping[str, Any]], path: Path) -> int:
    """Write the price table built from a ``/models`` listing to ``path`` atomically.

    Returns:
        How many models with prices were written.
    """
    table = table_from_models_listing(models)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n", "utf-8")
    tmp.replace(path)
    return len(table) - 1
