"""``simulator``: run the bundled OpenRouter-compatible simulator on 127.0.0.1."""

from __future__ import annotations

import argparse
import sys

import trio

from ..faults import FaultScript
from ..simulator import Simulator, base_url
from ._common import run_trio


def cmd_simulator(args: argparse.Namespace) -> int:
    sim = Simulator(FaultScript.parse(args.faults), latency_s=args.latency)

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(sim.serve, args.port)
            print(
                f"simulator listening on {base_url(port)} (Ctrl-C stops it)",
                file=sys.stderr,
                flush=True,
            )
            print(base_url(port), flush=True)
        return 0

    return run_trio(main)
