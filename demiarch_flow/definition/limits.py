"""The ``limits`` block of a workflow: spend budgets and request-rate buckets, as frozen values.

Budgets cap what runs may spend per run, per UTC day and per UTC calendar month; rate buckets
pace requests per model (or glob of models). Both are optional: a workflow without ``limits``
costs nothing extra on the hot path. What they mean at run time lives in
:mod:`demiarch_flow.runner.budget` and :mod:`demiarch_flow.runner.ratelimit`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """Spend limits in USD; ``None`` leaves a window unlimited. No attempt starts whose worst
    case could take a window past its limit."""

    per_run_usd: Decimal | None = None
    """What one run (all its attempts) may spend."""
    daily_usd: Decimal | None = None
    """What every run on this database may spend per UTC day."""
    monthly_usd: Decimal | None = None
    """What every run on this database may spend per UTC calendar month."""

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.per_run_usd, self.daily_usd, self.monthly_usd))


@dataclass(frozen=True, slots=True)
class RateBucket:
    """One rate bucket: shared by every model its key matches (a model id or a glob)."""

    key: str
    rpm: float | None = None
    """Requests per minute."""
    tpm: float | None = None
    """Tokens per minute (estimated before the call, corrected from the usage after it)."""
    burst: int = 1
    """Requests that may go back to back (1: evenly spaced at 60/rpm seconds)."""
    concurrency: int | None = None
    """Requests of this bucket in flight at once, in one process."""
    scope: Literal["shared", "process"] = "shared"
    """``shared``: one row in the database for every process; ``process``: in memory."""

    def matches(self, model: str) -> bool:
        return fnmatch.fnmatchcase(model, self.key)


@dataclass(frozen=True, slots=True)
class LimitsPolicy:
    """The ``limits`` block."""

    budget: BudgetPolicy = BudgetPolicy()
    rate: tuple[RateBucket, ...] = ()

    def buckets_for(self, model: str) -> tuple[RateBucket, ...]:
        """Every bucket whose key matches ``model`` (each one is enforced)."""
        return tuple(b for b in self.rate if b.matches(model))


def _usd(value: Any) -> Decimal | None:
    return None if value is None else Decimal(repr(value) if isinstance(value, float) else value)


def build_limits(doc: dict[str, Any] | None) -> LimitsPolicy | None:
    """The :class:`LimitsPolicy` of a schema-valid ``limits`` mapping (``None``: no block)."""
    if doc is None:
        return None
    budget = doc.get("budget", {})
    return LimitsPolicy(
        budget=BudgetPolicy(
            per_run_usd=_usd(budget.get("per_run_usd")),
            daily_usd=_usd(budget.get("daily_usd")),
            monthly_usd=_usd(budget.get("monthly_usd")),
        ),
        rate=tuple(
            RateBucket(
                key=str(key),
                rpm=spec.get("rpm"),
                tpm=spec.get("tpm"),
                burst=int(spec.get("burst", 1)),
                concurrency=spec.get("concurrency"),
                scope=spec.get("scope", "shared"),
            )
            for key, spec in doc.get("rate", {}).items()
        ),
    )
