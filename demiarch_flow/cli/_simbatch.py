"""``simulate --batch N``: a batch plan checked in virtual time before a cent is spent — how
long it takes under the workflow's rate buckets, how long its runs wait for slots, what it
spends and where a budget would stop it."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import trio
import trio.testing

from ..definition import Workflow
from ..errors import ErrorClass
from ..fake import FakeOpenRouter, fake_client
from ..faults import FaultScript
from ..runner import FlowRecord, RunEnv, RunOutcome, RunRequest, WaitSource, run_workflow
from ..runner.context import utc_now
from ..store import MemoryStore
from ._table import plain


@dataclass(frozen=True)
class BatchPlan:
    """What a simulated batch did, in virtual time."""

    runs: int
    succeeded: int
    virtual_s: float
    requests: int
    throttle_waits: int
    throttle_wait_s: float
    spent_usd: Decimal
    budget_stops: int
    first_budget_stop_s: float | None
    """Virtual time at which the first run was refused by a budget."""

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "succeeded": self.succeeded,
            "virtual_seconds": round(self.virtual_s, 6),
            "requests": self.requests,
            "throttle_waits": self.throttle_waits,
            "throttle_wait_seconds": round(self.throttle_wait_s, 6),
            "spent_usd": plain(self.spent_usd),
            "budget_stops": self.budget_stops,
            "first_budget_stop_seconds": self.first_budget_stop_s,
        }

    def lines(self) -> list[str]:
        out = [
            f"{self.runs} runs: {self.succeeded} succeeded, {self.requests} requests,"
            f" {self.virtual_s:.1f} s of virtual time",
            f"throttle: {self.throttle_waits} waits, {self.throttle_wait_s:.1f} s in all",
            f"spend: {plain(self.spent_usd)} USD",
        ]
        if self.budget_stops:
            out.append(
                f"budget: {self.budget_stops} runs refused (budget_exceeded), the first at"
                f" t={self.first_budget_stop_s:.1f}s"
            )
        return out


class _Tally:
    def __init__(self) -> None:
        self.waits: list[FlowRecord] = []
        self.stops: list[float] = []

    async def on_record(self, record: FlowRecord) -> None:
        if record.kind == "wait" and record.wait_source is WaitSource.THROTTLE:
            self.waits.append(record)


def simulate_batch(
    wf: Workflow, script: FaultScript, message: str, runs: int, concurrency: int, seed: int
) -> BatchPlan:
    """Run ``runs`` copies of ``message`` (numbered) under MockClock, ``concurrency`` at once."""
    tally = _Tally()
    fake = FakeOpenRouter(script)

    async def main() -> BatchPlan:
        env = RunEnv(
            client=fake_client(fake),
            store=MemoryStore(),
            rng=random.Random(seed),
            now=utc_now,
            listeners=(tally,),
        )
        limiter = trio.CapacityLimiter(concurrency)
        outcomes: list[tuple[RunOutcome, float]] = []
        start = trio.current_time()

        async def one(i: int) -> None:
            async with limiter:
                outcome = await run_workflow(wf, RunRequest(f"{message} #{i + 1}"), env)
                outcomes.append((outcome, trio.current_time() - start))

        async with trio.open_nursery() as nursery:
            for i in range(runs):
                nursery.start_soon(one, i)
        stops = [t for o, t in outcomes if o.error_class == ErrorClass.BUDGET_EXCEEDED]
        return BatchPlan(
            runs=runs,
            succeeded=sum(1 for o, _ in outcomes if o.succeeded),
            virtual_s=trio.current_time() - start,
            requests=len(fake.requests),
            throttle_waits=len(tally.waits),
            throttle_wait_s=sum(r.wait_s or 0.0 for r in tally.waits),
            spent_usd=sum(
                (o.cost_usd or Decimal(0) for o, _ in outcomes if o.succeeded), Decimal(0)
            ),
            budget_stops=len(stops),
            first_budget_stop_s=min(stops) if stops else None,
        )

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def print_plan(plan: BatchPlan, as_json: bool) -> None:
    print(json.dumps(plan.to_json()) if as_json else "\n".join(plan.lines()))
