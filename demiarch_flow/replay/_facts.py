"""What one run did, counted the same way on both sides of the comparison.

The recorded side comes from the database's rows (:class:`~._record.RecordedRun`), the replayed
side from the in-memory store the replay wrote to; both are reduced to a :class:`RunFacts`
by the same rules — a request is an attempt that was sent and answered (a cooling skip, a
budget refusal or a crash is not), a retry is a ``retry`` transition, a fallback a
``next_model`` one, the spend every ``llm_usage`` row of the run — so that an unchanged policy
can be seen to replay to exactly its record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from ..store import MemoryStore
from ._record import UNSENT, RecordedRun


@dataclass(frozen=True, slots=True)
class RunFacts:
    """One run's outcome, requests, waits, time and spend."""

    run_id: str
    status: str
    error_class: str | None
    model: str | None
    """The model that answered (a succeeded run)."""
    requests: tuple[tuple[str, int], ...]
    """Requests per model, in the order the models were first asked."""
    retries: int
    fallbacks: int
    waits: tuple[float, ...]
    seconds: float | None
    """From the run's start to its end (``None``: no end recorded)."""
    spend_by_model: tuple[tuple[str, Decimal], ...]
    assumed: bool = False
    """The replay asked a model the record never did: the outcome rests on an assumption."""

    @property
    def spend(self) -> Decimal:
        return sum((usd for _, usd in self.spend_by_model), Decimal(0))

    @property
    def outcome(self) -> str:
        """``succeeded with MODEL``, ``failed (CLASS)`` or ``cancelled``."""
        if self.status == "succeeded":
            return f"succeeded with {self.model}"
        if self.status == "failed":
            return f"failed ({self.error_class})"
        return self.status


def _per_model(pairs: Iterable[tuple[str, Decimal]]) -> tuple[tuple[str, Decimal], ...]:
    out: dict[str, Decimal] = {}
    for model, usd in pairs:
        out[model] = out.get(model, Decimal(0)) + usd
    return tuple(out.items())


def recorded_facts(run: RecordedRun) -> RunFacts:
    """The facts of a recorded run, from its rows."""
    seconds = (
        (run.finished_at - run.started_at).total_seconds() if run.finished_at is not None else None
    )
    return RunFacts(
        run_id=run.run_id,
        status=run.status,
        error_class=run.error_class,
        model=run.answered_by if run.status == "succeeded" else None,
        requests=tuple(Counter(o.model for o in run.observations).items()),
        retries=run.journal.retries,
        fallbacks=run.journal.fallbacks,
        waits=run.journal.waits,
        seconds=seconds,
        spend_by_model=_per_model((u.model, u.cost_usd) for u in run.usage),
    )


def replayed_facts(run_id: str, store: MemoryStore, *, assumed: bool) -> RunFacts:
    """The facts of a replayed run, from the in-memory store it alone wrote to."""
    row = store.runs[run_id]
    sent = [a.model for a in store.attempts.values()  # numbered in order, one run's
            if a.latency_ms is not None and a.error_class not in UNSENT and a.model]  # fmt: skip
    usage = [(u.model, u.cost_usd) for u in store.usage]
    usage += [(b.model, b.cost_usd) for b in store.billed]
    reply = store.usage[0].model if store.usage else None
    finished = row.get("finished_at")
    waits = tuple(e.wait_s for e in store.events if e.wait_s is not None)
    return RunFacts(
        run_id=run_id,
        status=row["status"],
        error_class=row.get("error_class"),
        model=reply if row["status"] == "succeeded" else None,
        requests=tuple(Counter(sent).items()),
        retries=sum(1 for e in store.events if e.event == "retry"),
        fallbacks=sum(1 for e in store.events if e.event == "next_model"),
        waits=waits,
        seconds=(finished - row["started_at"]).total_seconds() if finished else None,
        spend_by_model=_per_model(usage),
        assumed=assumed,
    )
