"""A ``worker`` whose database stops answering the finish of its jobs for a while.

Right after a run has ended, the statement that records its job's end meets a connection the
server cuts (``pg_terminate_backend`` of its own backend: the error a PostgreSQL restart or a
network cut gives a statement in flight), for the first ``FAILS`` such statements; everything
else (fetch, heartbeat, the runs' own writes) is untouched, so the worker goes on beating.
Nothing of this lives in the package.

Usage: ``python -m tests.e2e.outage_child FAILS worker ARGS…``.
"""

from __future__ import annotations

import sys
from typing import Any

import procrastinate

from demiarch_flow.cli.main import main


def patch(fails: int) -> None:
    real = procrastinate.PsycopgConnector
    left = [fails]

    class CutFinishes(real):  # type: ignore[misc,valid-type]
        async def _cut(self, query: str) -> None:
            if "procrastinate_finish_job_v1" in query and left[0] > 0:
                left[0] -= 1
                await super().execute_query_async("SELECT pg_terminate_backend(pg_backend_pid())")

        async def execute_query_async(self, query: str, **arguments: Any) -> None:
            await self._cut(query)
            await super().execute_query_async(query, **arguments)

        async def execute_query_all_async(self, query: str, **arguments: Any) -> list[Any]:
            await self._cut(query)
            return list(await super().execute_query_all_async(query, **arguments))

    procrastinate.PsycopgConnector = CutFinishes  # type: ignore[misc]


if __name__ == "__main__":
    patch(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
