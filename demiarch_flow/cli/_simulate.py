"""``simulate``: a workflow against scripted faults in virtual time — check a policy edit
before spending money. Nothing is sent anywhere; nothing is written unless ``--db`` is given."""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import TYPE_CHECKING, Any

import trio
import trio.testing

from ..definition import Workflow
from ..errors import UsageError
from ..fake import FAKE_BASE_URL, FakeOpenRouter, fake_client
from ..faults import FaultScript
from ..runner import FlowRecord, RunEnv, RunOutcome, RunRequest, WaitSource, run_workflow
from ..runner.context import utc_now
from ..store import MemoryStore, Store
from ..telemetry import open_tracer
from ._common import check_message, check_model_option, setup_logging, workflow_from
from ._table import plain_or_none

if TYPE_CHECKING:
    from ..telemetry._listener import OtelTracer

_WHY = {
    WaitSource.BACKOFF: "backoff",
    WaitSource.RETRY_AFTER: "Retry-After",
    WaitSource.COOLDOWN: "cooldown",
    WaitSource.THROTTLE: "rate limit",
}


class Timeline:
    """Collects records and renders them as ``t=…`` lines."""

    def __init__(self) -> None:
        self.records: list[FlowRecord] = []

    async def on_record(self, record: FlowRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        out = []
        for r in self.records:
            t = f"t={r.monotonic:7.1f}s"
            if r.kind == "attempt":
                result = (
                    "ok"
                    if not r.error_class
                    else f"{'HTTP ' + str(r.status) + ' ' if r.status is not None else ''}{r.error_class}"
                )
                if r.partial_chars is not None:
                    result += f" after {r.partial_chars} characters ({r.cause})"
                first = (
                    f" (first token at {r.first_token_ms / 1000:.1f} s)"
                    if r.first_token_ms is not None
                    else ""
                )
                out.append(f"{t}  Request   {r.model} attempt {r.attempt} → {result}{first}")
            elif r.kind == "wait":
                why = _WHY[r.wait_source or WaitSource.BACKOFF]
                state = "Request" if r.wait_source is WaitSource.THROTTLE else "Backoff"
                out.append(
                    f"{t}  {state:<9} wait {r.wait_s:.1f} s ({why}) before attempt {r.attempt}"
                )
            elif (
                r.kind == "transition"
                and r.from_state is not None
                and r.event == "exhausted"
                and r.to_state
            ):
                out.append(f"{t}  {r.from_state:<9} exhausted → {r.to_state}")
            elif r.kind == "fallback":
                out.append(f"{t}  Fallback  {r.model} → {r.next_model}")
            elif r.kind == "cooldown" and r.event == "started":
                out.append(f"{t}  Cooldown  {r.model} cools down for {r.wait_s:.1f} s (all runs)")
            elif r.kind == "cooldown":
                out.append(f"{t}  Request   {r.model} skipped: cooling, {r.wait_s:.1f} s left")
            elif r.kind == "finished":
                out.append(f"{t}  {r.to_state:<9} run {r.run_status}")
        return out


def simulate(
    wf: Workflow,
    script: FaultScript,
    message: str,
    model: str | None,
    seed: int,
    store: Store | None,
    tracer: OtelTracer | None = None,
) -> tuple[RunOutcome, Timeline, FakeOpenRouter]:
    """Run once under trio's MockClock against a fake provider; returns outcome and timeline.
    A ``tracer`` (``simulate --trace``; also a listener) draws the run's spans in virtual
    time."""
    timeline = Timeline()
    fake = FakeOpenRouter(script)

    async def main() -> RunOutcome:
        env = RunEnv(
            client=fake_client(fake),
            store=store if store is not None else MemoryStore(),
            rng=random.Random(seed),
            now=utc_now,
            listeners=(timeline, tracer) if tracer is not None else (timeline,),
            tracer=tracer,
        )
        return await run_workflow(wf, RunRequest(message, model=model), env)

    outcome = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return outcome, timeline, fake


DEFAULT_MESSAGE = "Hello from the simulator"


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.replay:
        from ._replay import cmd_replay

        return cmd_replay(args)
    message = check_message(args.message if args.message is not None else DEFAULT_MESSAGE)
    check_model_option(args.model)
    wf = workflow_from(args.workflow)
    script = FaultScript.parse(args.faults)
    setup_logging(quiet=True)
    if args.batch is not None:
        from ._simbatch import print_plan, simulate_batch

        if args.batch < 1 or args.concurrency < 1:
            raise UsageError("--batch and --concurrency must be at least 1")
        plan = simulate_batch(wf, script, message, args.batch, args.concurrency, args.seed)
        print_plan(plan, args.json)
        return 0 if plan.succeeded == plan.runs else 1
    store = None
    if args.db:
        from ..paths import database_url
        from ..store.sql import SqlStore

        store = SqlStore.open_sync(database_url(args.db))
    try:
        with open_tracer(args.trace, server_url=FAKE_BASE_URL) as tracer:
            outcome, timeline, fake = simulate(
                wf, script, message, args.model, args.seed, store, tracer
            )
    finally:
        if store is not None:
            store.close()
    if args.json:
        doc: dict[str, Any] = outcome.to_json()
        doc["cost_usd"] = plain_or_none(outcome.cost_usd)
        doc["virtual_seconds"] = outcome.virtual_wait_s
        doc["requests"] = fake.models_called
        print(json.dumps(doc))
        return 0 if outcome.succeeded else 1
    print(
        f"simulation of {wf.source} — virtual time, scripted provider, nothing is sent",
        file=sys.stderr,
    )
    for line in timeline.lines():
        print(line)
    summary = (
        f"{len(fake.requests)} requests, {outcome.virtual_wait_s:.1f} s a real run would have taken"
    )
    if outcome.succeeded:
        print(f"succeeded with {outcome.model}: {summary}")
    else:
        print(f"failed ({outcome.error_class}): {summary}\n  {outcome.error}")
    return 0 if outcome.succeeded else 1
