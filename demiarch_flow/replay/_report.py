"""The replay's report: the recorded and the replayed runs summed up alike, side by side, the
runs whose outcome changed, and every assumption the replay had to make."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ._facts import RunFacts


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank percentile (a value that occurred; ``None`` for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


@dataclass(frozen=True)
class ModelFigures:
    requests: int
    answers: int
    spend_usd: Decimal


@dataclass(frozen=True)
class Summary:
    """One side's totals."""

    runs: int
    succeeded: int
    failed: dict[str, int]
    """Failed (and cancelled) runs by error class."""
    requests: int
    fallbacks: int
    retries: int
    wait_s: float
    p50_s: float | None
    """Time to the answer of the succeeded runs: the median …"""
    p95_s: float | None
    """… and the 95th percentile (nearest rank)."""
    spend_usd: Decimal
    models: dict[str, ModelFigures]

    @classmethod
    def of(cls, facts: Sequence[RunFacts]) -> Summary:
        requests: Counter[str] = Counter()
        answers: Counter[str] = Counter()
        spend: dict[str, Decimal] = {}
        for f in facts:
            requests.update(dict(f.requests))
            if f.model is not None:
                answers[f.model] += 1
            for model, usd in f.spend_by_model:
                spend[model] = spend.get(model, Decimal(0)) + usd
        models = sorted(set(requests) | set(spend))
        times = [f.seconds for f in facts if f.status == "succeeded" and f.seconds is not None]
        return cls(
            runs=len(facts),
            succeeded=sum(1 for f in facts if f.status == "succeeded"),
            failed=dict(sorted(Counter(
                str(f.error_class or f.status) for f in facts if f.status != "succeeded"
            ).items())),
            requests=sum(requests.values()),
            fallbacks=sum(f.fallbacks for f in facts),
            retries=sum(f.retries for f in facts),
            wait_s=sum(sum(f.waits) for f in facts),
            p50_s=percentile(times, 0.50),
            p95_s=percentile(times, 0.95),
            spend_usd=sum((f.spend for f in facts), Decimal(0)),
            models={
                m: ModelFigures(requests[m], answers[m], spend.get(m, Decimal(0))) for m in models
            },
        )  # fmt: skip

    @property
    def success_rate(self) -> float:
        return self.succeeded / self.runs if self.runs else 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "succeeded": self.succeeded,
            "success_rate": round(self.success_rate, 6),
            "failed": self.failed,
            "requests": self.requests,
            "fallbacks": self.fallbacks,
            "retries": self.retries,
            "wait_seconds": round(self.wait_s, 6),
            "p50_seconds": _rounded(self.p50_s),
            "p95_seconds": _rounded(self.p95_s),
            "spend_usd": format(self.spend_usd, "f"),
            "models": {
                m: {"requests": f.requests, "answers": f.answers,
                    "spend_usd": format(f.spend_usd, "f")}
                for m, f in self.models.items()
            },
        }  # fmt: skip


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


@dataclass(frozen=True)
class Change:
    """A run whose outcome (status, error class or answering model) is not the recorded one."""

    run_id: str
    recorded: str
    replayed: str
    assumed: bool

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "recorded": self.recorded, "replayed": self.replayed,
                "rests_on_assumption": self.assumed}  # fmt: skip


@dataclass(frozen=True)
class Assumption:
    """A model the record never asked, how it was made to answer, and the runs that asked it."""

    model: str
    how: str
    runs: int

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "assumption": self.how, "runs": self.runs}


@dataclass(frozen=True)
class Report:
    """Recorded vs replayed: the ``simulate --replay`` result."""

    recorded: Summary
    replayed: Summary
    changed: tuple[Change, ...]
    assumptions: tuple[Assumption, ...]
    missing: tuple[str, ...]
    """What the record could not say, and how the replay stood in for it."""
    pairs: tuple[tuple[RunFacts, RunFacts], ...]
    """Each run's recorded and replayed facts, in the record's order."""

    @classmethod
    def of(
        cls,
        pairs: Sequence[tuple[RunFacts, RunFacts]],
        assumptions: Sequence[Assumption],
        missing: Sequence[str],
    ) -> Report:
        changed = tuple(
            Change(rec.run_id, rec.outcome, rep.outcome, rep.assumed)
            for rec, rep in pairs
            if rec.outcome != rep.outcome
        )
        return cls(
            Summary.of([r for r, _ in pairs]), Summary.of([r for _, r in pairs]), changed,
            tuple(assumptions), tuple(missing), tuple(pairs),
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "recorded": self.recorded.to_json(),
            "replayed": self.replayed.to_json(),
            "changed": [c.to_json() for c in self.changed],
            "assumptions": [a.to_json() for a in self.assumptions],
            "missing": list(self.missing),
        }
