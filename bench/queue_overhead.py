"""What the queue itself costs a job: procrastinate's worker against :class:`BatchingWorker`.

N jobs of a task that does nothing, drained by one worker (50 at once, ``wait=False``: it
stops once the queue is empty) on a fresh PostgreSQL database, so what is counted is the
queue's own work per job — the fetch, the job's task and log records, the finish — without
trio, HTTP or the store. Each side is counted in instructions (``valgrind --tool=callgrind``,
the worker process, all threads), as the difference of an N-job and a 4N-job drain so that
start-up cancels; beside it, the PostgreSQL transactions committed per job
(``pg_stat_database``; each autocommit statement is one).

Usage: ``python bench/queue_overhead.py [--jobs N] [--no-callgrind]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def child(kind: str, url: str) -> None:
    """The worker process: drain the queue with procrastinate's worker or ours."""
    from procrastinate import App, PsycopgConnector
    from procrastinate.worker import Worker

    from demiarch_flow.queue.backend import conninfo
    from demiarch_flow.queue.batching import BatchingWorker
    from demiarch_flow.queue.pool import autocommit, pool_factory

    async def main() -> None:
        app = App(
            connector=PsycopgConnector(
                conninfo=conninfo(url), min_size=1, max_size=12, configure=autocommit,
                pool_factory=pool_factory,
            )
        )  # fmt: skip

        @app.task(name="noop", pass_context=True)
        async def noop(context: object, /, **args: object) -> str:
            await asyncio.sleep(0)
            return "ok"

        import logging

        logging.getLogger("procrastinate").setLevel(logging.CRITICAL + 1)
        async with app.open_async():
            cls = BatchingWorker if kind == "batching" else Worker
            worker: object = cls(
                app=app, queues=["runs"], concurrency=50, wait=False,
                install_signal_handlers=False, listen_notify=False, delete_jobs="never",
            )  # fmt: skip
            await worker.run()  # type: ignore[attr-defined]

    asyncio.run(main())


def defer(dbname: str, n: int) -> None:
    with psycopg.connect(f"{ADMIN.rsplit(' ', 1)[0]} dbname={dbname}", autocommit=True) as c:
        c.execute(
            "SELECT procrastinate_defer_jobs_v1(ARRAY(SELECT ROW('runs', 'noop', 0, NULL, NULL,"
            " jsonb_build_object('i', g), NULL)::procrastinate_job_to_defer_v1"
            " FROM generate_series(1, %s) g))",
            (n,),
        )


def commits(dbname: str) -> int:
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (dbname,)
        ).fetchone()
    return int(row[0]) if row else 0


def drain(kind: str, n: int, callgrind: bool, folder: Path) -> tuple[int, int, float]:
    dbname = f"dflow_qo_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{dbname}"
    try:
        subprocess.run([sys.executable, "-m", "demiarch_flow", "db", "upgrade", "--db", url],
                       check=True, capture_output=True)  # fmt: skip
        defer(dbname, n)
        time.sleep(1.5)
        before = commits(dbname)
        profile = folder / f"cg.{kind}.{n}.out"
        cmd = [sys.executable, __file__, "--child", kind, url]
        if callgrind:
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={profile}", *cmd]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        time.sleep(1.5)
        done = commits(dbname) - before
        instr = 0
        if callgrind:
            m = re.search(r"^(?:totals|summary):\s+(\d+)", profile.read_text(), re.M)
            assert m is not None
            instr = int(m.group(1))
        return instr, done, wall
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--no-callgrind", action="store_true")
    opts = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="demiarch-queue-overhead-"))
    report: dict[str, object] = {"jobs": [opts.jobs, 4 * opts.jobs]}
    for kind in ("procrastinate", "batching"):
        small = drain(kind, opts.jobs, not opts.no_callgrind, folder)
        large = drain(kind, 4 * opts.jobs, not opts.no_callgrind, folder)
        d = 3 * opts.jobs
        report[kind] = {
            "kinstr_per_job": round((large[0] - small[0]) / d / 1e3, 1),
            "commits_per_job": round((large[1] - small[1]) / d, 2),
            "wall_s_large": round(large[2], 2),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
