"""A ``worker`` that SIGKILLs itself at a chosen point of the runs it takes.

As ``crash_child.py`` does for one run: the worker's world is the real one, its store wrapped
in :class:`~tests.e2e.crash_child.KillingStore`, so the database holds exactly what a worker
dying there leaves behind. Nothing of this lives in the package.

Usage: ``python worker_child.py POINT worker ARGS…`` (POINT as in ``crash_child.py``).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from demiarch_flow.cli.main import main
from demiarch_flow.queue import worker
from demiarch_flow.runtime import World

from .crash_child import POINTS, KillingStore


def patch(point: str) -> None:
    real = worker.open_world

    @asynccontextmanager
    async def killing_world(**kwargs: Any) -> AsyncIterator[World]:
        async with real(**kwargs) as world:
            world.env = dataclasses.replace(world.env, store=KillingStore(world.env.store, point))
            yield world

    worker.open_world = killing_world  # type: ignore[assignment]


if __name__ == "__main__":
    if sys.argv[1] not in POINTS:
        raise SystemExit(f"unknown kill point {sys.argv[1]!r}; expected one of {POINTS}")
    patch(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
