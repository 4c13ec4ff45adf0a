"""A run that SIGKILLs itself at a chosen point: the crash matrix's child process.

Some windows of a run cannot be hit by timing from outside (the process is between two writes
for microseconds). This script runs a real run — the CLI's own world: ``SqlStore``,
``OpenRouterClient`` against the simulator, owner and heartbeat — with the store wrapped in a
proxy that kills the process at one named point, so the database holds exactly what a crash
there leaves behind. Nothing of this lives in the package: production code has no fault hook.

Usage: ``python crash_child.py DB_URL BASE_URL WORKFLOW POINT MESSAGE`` where POINT is

* ``loaded`` — after LoadContext (its transition to Request has been handed to the store);
* ``persist`` — in Persist, before the reply is written;
* ``saved`` — after Persist committed the reply, before the run reaches Done.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from typing import Any

from demiarch_flow.cli._common import run_trio
from demiarch_flow.definition import load_workflow
from demiarch_flow.keys import resolve_key
from demiarch_flow.runner import RunRequest, run_workflow
from demiarch_flow.runtime import open_world
from demiarch_flow.store.base import Checkpoint, Reply, RunEnd

POINTS = ("loaded", "persist", "saved")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillingStore:
    """The real store, except that the process dies at ``point``."""

    def __init__(self, store: Any, point: str) -> None:
        self._store = store
        self._point = point

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def checkpoint(self, checkpoint: Checkpoint, *, durable: bool) -> None:
        await self._store.checkpoint(checkpoint, durable=durable)
        if self._point == "loaded" and any(e.event == "loaded" for e in checkpoint.entries):
            die()

    async def save_reply(
        self, reply: Reply, end: RunEnd, checkpoint: Checkpoint | None = None
    ) -> str:
        if self._point == "persist":
            die()
        saved: str = await self._store.save_reply(reply, end, checkpoint)
        if self._point == "saved":
            die()
        return saved


def main(argv: list[str]) -> int:
    db, base_url, workflow, point, message = argv
    if point not in POINTS:
        raise SystemExit(f"unknown kill point {point!r}; expected one of {POINTS}")
    wf = load_workflow(workflow)
    key = resolve_key()

    async def run() -> None:
        async with open_world(db=db, base_url=base_url, key=key) as world:
            env = dataclasses.replace(world.env, store=KillingStore(world.env.store, point))
            await run_workflow(wf, RunRequest(message), env)

    run_trio(run)
    return 0  # not reached when the kill point is: the parent checks for SIGKILL


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
