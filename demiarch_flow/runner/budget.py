"""What an attempt may cost at worst, and the budget windows it must fit — pure.

Before each attempt the runner reserves its *worst case*: the prompt's tokens estimated
conservatively from its size, times the model's prompt price, plus the most tokens the answer
can have (``request.max_tokens``, else the model's ``max_completion_tokens`` from the price
table) times its completion price. The real cost replaces it when the attempt ends.

Token estimate: tokenizers need model files (tiktoken downloads them), so the prompt is counted
as its UTF-8 size in bytes divided by 2, rounded up, plus 4 tokens per message and 3 for the
reply's priming. Real tokenizers give about 4 bytes per token for English and at least 1 token
per 3 bytes for CJK text, so this over-counts — which is the safe side for a budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal

from ..definition import Workflow
from ..definition.limits import BudgetPolicy
from ..pricing import MILLION, NANO, PriceTable
from ..store.limits import BudgetWindow
from .state import Message

#: Tokens counted per message for its role and separators, and once for the reply's priming.
PER_MESSAGE_TOKENS = 4
PRIMING_TOKENS = 3


def estimate_tokens(messages: Iterable[Message]) -> int:
    """A conservative token count of ``messages`` (see the module docstring)."""
    total = PRIMING_TOKENS
    for m in messages:
        size = len(m.content.encode("utf-8", "surrogatepass")) + len(m.role)
        total += -(-size // 2) + PER_MESSAGE_TOKENS
    return total


def completion_cap(prices: PriceTable, model: str, max_tokens: int | None) -> int | None:
    """The most tokens an answer of ``model`` can have (``None``: unknown)."""
    if max_tokens is not None:
        return max_tokens
    price = prices.prices.get(model)
    return price.max_completion_tokens if price is not None else None


def worst_case_usd(
    prices: PriceTable, model: str, prompt_tokens: int, max_tokens: int | None
) -> Decimal | None:
    """The most one attempt can cost, or ``None`` when a price or the completion cap is
    unknown (a budget never guesses zero)."""
    price = prices.prices.get(model)
    cap = completion_cap(prices, model, max_tokens)
    if price is None or cap is None:
        return None
    usd = (price.prompt * prompt_tokens + price.completion * cap) / MILLION
    return usd.quantize(NANO, rounding="ROUND_CEILING")


def price_problems(wf: Workflow, prices: PriceTable, models: Sequence[str] = ()) -> list[str]:
    """Why the budget of ``wf`` cannot be enforced for its models (and ``models``): one line
    per model without a price, or without a completion cap when ``request.max_tokens`` is
    unset. Empty when ``wf`` has no budget."""
    if wf.limits is None or not wf.limits.budget.any:
        return []
    problems = []
    for model in dict.fromkeys((*wf.models, *models)):
        if model not in prices.prices:
            problems.append(
                f"{model}: no price is known (run `demiarch-flow models sync`), so the budget"
                " cannot bound what an attempt costs"
            )
        elif completion_cap(prices, model, wf.request.max_tokens) is None:
            problems.append(
                f"{model}: its largest completion is not known; set request.max_tokens so the"
                " budget can bound what an attempt costs"
            )
    return problems


def budget_windows(policy: BudgetPolicy, now: datetime) -> tuple[BudgetWindow, ...]:
    """The windows ``policy`` limits at ``now``: the run, the UTC day, the UTC month."""
    utc = now.astimezone(UTC)
    day = utc.replace(hour=0, minute=0, second=0, microsecond=0)
    windows = []
    if policy.per_run_usd is not None:
        windows.append(BudgetWindow("run", policy.per_run_usd))
    if policy.daily_usd is not None:
        windows.append(BudgetWindow("day", policy.daily_usd, day))
    if policy.monthly_usd is not None:
        windows.append(BudgetWindow("month", policy.monthly_usd, day.replace(day=1)))
    return tuple(windows)
