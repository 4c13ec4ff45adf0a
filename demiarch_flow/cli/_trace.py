"""``runs trace RUN_ID``: a run's span tree with timings, drawn from its journal."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..store.base import JournalEntry, StoredRun
from ..telemetry.tree import draw
from ._common import run_trio
from ._report import _open


def cmd_runs_trace(args: argparse.Namespace) -> int:
    """Print the tree a trace viewer would show for the run (no collector needed)."""
    store = _open(args.db)
    try:

        async def read() -> tuple[StoredRun | None, tuple[JournalEntry, ...]]:
            return await store.load_run(args.run_id), await store.journal(args.run_id)

        run, events = run_trio(read)
    finally:
        store.close()
    if run is None:
        raise UsageError(f"no run with id {args.run_id!r} in this database")
    print("\n".join(draw(run, events)))
    return 0
