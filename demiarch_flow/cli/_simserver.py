"""``simulator``: run the bundled OpenRouter-compatible simulator on 127.0.0.1."""

from __future__ import annotations

import argparse
import math
import sys

import trio

from ..errors import EnvironmentProblem, UsageError
from ..faults import FaultScript
from ..simulator import Simulator, base_url
from ._common import run_trio


def cmd_simulator(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UsageError(
            f"--port {args.port}: a port is a number from 1 to 65535 (0: any free one)"
        )
    if not math.isfinite(args.latency) or args.latency < 0:
        raise UsageError(f"--latency {args.latency}: give a number of seconds, 0 or more")
    if args.rpm is not None and args.rpm < 1:
        raise UsageError(f"--rpm {args.rpm}: give a number of requests per minute, 1 or more")
    sim = Simulator(FaultScript.parse(args.faults), latency_s=args.latency, rpm=args.rpm)

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            try:
                port = await nursery.start(sim.serve, args.port)
            except OSError as exc:
                raise EnvironmentProblem(
                    f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}"
                    " (is another program using it? --port 0 picks a free one)"
                ) from None
            print(
                f"simulator listening on {base_url(port)} (Ctrl-C stops it)",
                file=sys.stderr,
                flush=True,
            )
            print(base_url(port), flush=True)
        return 0

    return run_trio(main)
