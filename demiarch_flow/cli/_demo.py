"""``demo``: the whole product with no key and no network, against the bundled simulator."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import trio

from ..client import ApiKey
from ..runtime import open_world
from ..simulator import Simulator, base_url
from ._common import run_trio, setup_logging, workflow_from
from ._run import Progress, turn
from ._table import plain_or_none

DEMO_FAULTS = "anthropic/claude-sonnet-4=429@1,500,ok,404"
TURNS = (
    "Write a haiku about retries.",
    "Now one about fallbacks.",
)


def cmd_demo(args: argparse.Namespace) -> int:
    setup_logging(quiet=True)
    wf = workflow_from(None)
    folder = Path(tempfile.mkdtemp(prefix="demiarch-flow-demo-"))
    db = f"sqlite:///{folder / 'demo.db'}"
    print("=" * 72)
    print("SIMULATION — no key, no network: the provider is demiarch-flow's bundled")
    print("OpenRouter-compatible simulator on 127.0.0.1, scripted to fail on purpose:")
    print(f"  {DEMO_FAULTS}")
    print(f"database: {db}")
    print("=" * 72)

    async def main() -> int:
        sim = Simulator(DEMO_FAULTS)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(sim.serve)
            async with open_world(
                db=db,
                base_url=base_url(port),
                key=ApiKey("demo-key", "demo"),
                listeners=(Progress(sys.stdout, show_fallbacks=True),),
            ) as world:
                conversation = None
                for n, text in enumerate(TURNS, 1):
                    print(f"\nturn {n}: you> {text}", flush=True)
                    outcome = await turn(world, wf, text, conversation, None)
                    conversation = outcome.conversation_id
                    if not outcome.succeeded:
                        print(f"turn {n} failed: {outcome.error}")
                        nursery.cancel_scope.cancel()
                        return 1
                    print(f"turn {n}: {outcome.model}> {outcome.content}")
                    print(
                        f"  run {outcome.run_id}: {len(outcome.attempts)} attempts, cost {plain_or_none(outcome.cost_usd)} USD ({outcome.cost_source})"
                    )
            nursery.cancel_scope.cancel()
        return 0

    code = run_trio(main)
    if code:
        return code
    from . import _report

    print("\n$ demiarch-flow history")
    _report.cmd_history(argparse.Namespace(conversation=None, limit=5, json=False, db=db))
    print("\n$ demiarch-flow usage --by model")
    _report.cmd_usage(argparse.Namespace(since=None, by="model", json=False, db=db))
    print(f"\nThe demo's database stays at {folder / 'demo.db'}. Look at what it wrote:")
    for command in ("history", "usage --by model", "runs list", "runs show RUN_ID"):
        print(f"  demiarch-flow {command} --db {db}")
    print("(RUN_ID: one of the runs above.) For a real reply: demiarch-flow key set, then run -m.")
    return 0
