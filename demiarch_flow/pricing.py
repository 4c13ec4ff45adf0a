"""Cost in USD, as ``Decimal``: the provider's own figure first, a price table second.

The shipped table (``data/prices.json``, USD per million tokens) holds the published prices of
the default chain; ``demiarch-flow models sync`` writes a fresher copy to the user's data folder,
which then takes precedence. Amounts are quantized to 1e-9 USD (a nano-dollar), the resolution
the ``llm_usage.cost_usd`` column stores.

Figures from outside (``usage.cost``, token counts, a price listing) are checked against the
bounds below, in this one place: a figure beyond them is a provider bug or an overflow, not a
bill, and is treated as unknown rather than stored (or crashing the run that paid for it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ._frozen import quick

NANO = Decimal("0.000000001")
MILLION = Decimal(1_000_000)
CostSource = Literal["provider", "price_table", "estimated", "unknown"]
"""Where a cost came from; ``estimated``: the price table over token counts estimated from the
text, because the response gave none (``llm_usage.cost_source``)."""

#: The most one call can believably cost, in USD. ``cost_usd`` is NUMERIC(20, 9) (at most 11
#: integer digits); anything above this bound is unknown, and the price table is used instead.
MAX_CALL_COST_USD = Decimal(1_000_000)
#: The most a price can believably be, in USD per million tokens (today's dearest model costs
#: a few hundred); a listed price above it is skipped.
MAX_PRICE_PER_MILLION_USD = Decimal(1_000_000)
#: The largest token count taken at face value (the token columns are 32-bit signed integers).
MAX_TOKENS = 2**31 - 1
#: How far above the price table's figure for its tokens a ``usage.cost`` is still believed
#: (routing to a dearer provider, reasoning or cache writes); beyond it, the table is used.
BELIEVABLE_FACTOR = Decimal(10)
_CENT = Decimal("0.01")
"""Added to the ceiling, so a tiny answer's rounding is never taken for a provider bug."""

log = logging.getLogger("demiarch_flow")


def to_usd(value: Any, limit: Decimal = MAX_CALL_COST_USD) -> Decimal | None:
    """A JSON number or string as a quantized ``Decimal``, or ``None`` if it is not one.

    Floats go through ``repr`` so ``0.00009`` stays ``0.000090000``, not a binary tail.
    Negative, non-finite and values above ``limit`` are not amounts either.
    """
    amount = _amount(value, limit)
    return None if amount is None else amount.quantize(NANO)


def _amount(value: Any, limit: Decimal) -> Decimal | None:
    if (
        value is None
        or isinstance(value, bool)
        or not isinstance(value, int | float | str | Decimal)
    ):
        return None
    try:
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
        if not amount.is_finite() or not 0 <= amount <= limit:
            return None
    except (ArithmeticError, ValueError):  # InvalidOperation, or an int too long for str()
        return None
    return amount if amount else Decimal(0)  # no "-0"


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    prompt: Decimal
    completion: Decimal
    max_completion_tokens: int | None = None
    """The model's largest completion, when known: the worst case a budget reserves for
    when a workflow sets no ``request.max_tokens``."""


def _token_count(entry: Mapping[str, Any]) -> int | None:
    value = entry.get("max_completion_tokens")
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_TOKENS:
        return value
    return None


@quick
@dataclass(frozen=True)
class Cost:
    usd: Decimal
    source: CostSource


class PriceTable:
    """Model → :class:`Price`, with the cost rule of the usage table."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self.prices = dict(prices)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PriceTable:
        """The table of a prices file; an entry without two believable prices is skipped."""
        prices = {}
        for model, entry in data.items():
            if model.startswith("_") or not isinstance(entry, Mapping):
                continue
            prompt = to_usd(entry.get("prompt"), MAX_PRICE_PER_MILLION_USD)
            completion = to_usd(entry.get("completion"), MAX_PRICE_PER_MILLION_USD)
            if prompt is not None and completion is not None:
                prices[model] = Price(prompt, completion, _token_count(entry))
        return cls(prices)

    @classmethod
    def load(cls, override: Path | None = None) -> PriceTable:
        """The synced table at ``override`` if it exists and parses, else the shipped one."""
        if override is not None and override.is_file():
            try:
                data = json.loads(override.read_text("utf-8"))
            except (OSError, ValueError, RecursionError):
                data = None
            if isinstance(data, Mapping):
                return cls.from_json(data)
        shipped = resources.files("demiarch_flow").joinpath("data", "prices.json")
        return cls.from_json(json.loads(shipped.read_text("utf-8")))

    def cost(
        self,
        model: str,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        provider_cost: Decimal | None,
        *also: str,
    ) -> Cost:
        """The cost of one call: ``usage.cost`` if given, else table price, else 0 (unknown).

        ``also`` names further models to look up (the requested one when the answering model
        is not in the table). Unknown token counts (``None``) cannot be priced, and a table
        price above :data:`MAX_CALL_COST_USD` is no more believable than such a ``usage.cost``.
        """
        if provider_cost is not None:
            return Cost(provider_cost, "provider")
        if prompt_tokens is None or completion_tokens is None:
            return Cost(Decimal(0).quantize(NANO), "unknown")
        for name in (model, *also):
            price = self.prices.get(name)
            if price is not None:
                usd = (
                    price.prompt * prompt_tokens + price.completion * completion_tokens
                ) / MILLION
                if usd <= MAX_CALL_COST_USD:
                    return Cost(usd.quantize(NANO), "price_table")
        return Cost(Decimal(0).quantize(NANO), "unknown")

    def answer_cost(
        self,
        model: str,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        provider_cost: Decimal | None,
        *also: str,
        prompt_estimate: int,
        text: str,
    ) -> Cost:
        """What an answer that was paid for is counted as: never less than a defensible figure.

        Like :meth:`cost`, with two differences that keep a budget honest. A ``usage.cost``
        far above what the table says the answer could cost (:data:`BELIEVABLE_FACTOR` times
        the table's price of its tokens, plus a cent) is a provider bug, not a bill: the table
        is used instead. And when a token count is missing, it is estimated conservatively —
        ``prompt_estimate`` for the prompt, half a token per byte of ``text`` for the answer —
        and priced from the table (``estimated``), instead of counting 0 USD (``unknown``
        remains only for a model the table does not know).
        """
        text_estimate = max(1, -(-len(text.encode("utf-8", "surrogatepass")) // 2))
        prompt = prompt_tokens if prompt_tokens is not None else prompt_estimate
        completion = completion_tokens if completion_tokens is not None else text_estimate
        if provider_cost is not None:
            # the most the answer could cost: the larger of its reported and estimated tokens
            most = self.cost(
                model, max(prompt, prompt_estimate), max(completion, text_estimate), None, *also
            )
            ceiling = most.usd * BELIEVABLE_FACTOR + _CENT
            if most.source != "price_table" or provider_cost <= ceiling:
                return Cost(provider_cost, "provider")
        table = self.cost(model, prompt, completion, None, *also)  # not needed before here
        if provider_cost is not None:
            log.warning(
                "usage.cost %s USD for %s is far above the price table's %s USD for its tokens:"
                " counted at the table's figure",
                provider_cost, model, table.usd,
            )  # fmt: skip
        if table.source != "price_table":
            return table
        if prompt_tokens is None or completion_tokens is None:
            return Cost(table.usd, "estimated")
        return table


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What ``models sync`` wrote: models with a price, and listed models skipped for want of a
    believable one (no pricing, a non-number, negative, non-finite or absurdly large)."""

    written: int
    skipped: int


def table_from_models_listing(models: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Turn ``GET /models`` ``data`` entries (USD per token, as strings) into our file format."""
    return _listing_table(models)[0]


def _listing_table(models: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {
        "_comment": "USD per million tokens, written by `demiarch-flow models sync`."
    }
    skipped = 0
    per_token_limit = MAX_PRICE_PER_MILLION_USD / MILLION
    for entry in models:
        pricing = entry.get("pricing") if isinstance(entry, Mapping) else None
        pricing = pricing if isinstance(pricing, Mapping) else {}
        prompt = _amount(pricing.get("prompt"), per_token_limit)
        completion = _amount(pricing.get("completion"), per_token_limit)
        model_id = entry.get("id") if isinstance(entry, Mapping) else None
        if not isinstance(model_id, str) or prompt is None or completion is None:
            skipped += 1
            continue
        out[model_id] = {
            "prompt": format((prompt * MILLION).normalize(), "f"),
            "completion": format((completion * MILLION).normalize(), "f"),
        }
        top = entry.get("top_provider")
        cap = top.get("max_completion_tokens") if isinstance(top, Mapping) else None
        if _token_count({"max_completion_tokens": cap}) is not None:
            out[model_id]["max_completion_tokens"] = cap
    return out, skipped


def write_synced_table(
    models: Iterable[Mapping[str, Any]], path: Path, source: str | None = None
) -> SyncReport:
    """Write the price table built from a ``/models`` listing to ``path`` atomically.

    Args:
        models: the ``data`` entries of ``GET /models``.
        path: the table's file.
        source: the base URL the listing came from, kept in the file as ``_source`` (a key
            the table's reader skips) so a table from another endpoint can be told apart.

    Returns:
        How many models with prices were written, and how many listed models were skipped.
    """
    table, skipped = _listing_table(models)
    written = len(table) - 1
    if source is not None:
        table["_source"] = source
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n", "utf-8")
    tmp.replace(path)
    return SyncReport(written=written, skipped=skipped)
