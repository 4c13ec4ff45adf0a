"""Workers against one process: ``just bench-workers`` (the README's Performance table).

N runs (default 2,000) through 2 ``worker`` processes × 50 in flight, against the bundled
simulator (its own process, zero latency), compared in the same run with one ``batch
--concurrency 100`` process on the same PostgreSQL server (a fresh database each, same
blocking workflow, same simulator). Also: the wall time of ``submit --batch`` of the N runs,
and the p50 from a ``submit`` to its run's first transition with an idle worker waiting
(procrastinate's ``deferred`` event → the run's first journal row). Prints one JSON object.

Usage: ``python bench/workers.py [--runs N] [--latency-samples K]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import installed_env

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "demiarch_flow"]
ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
KEY = "sk-or-bench-0123456789abcdef"


def fresh_db() -> tuple[str, str]:
    name = f"dflow_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_db(name: str) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--latency-samples", type=int, default=30)
    opts = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="demiarch-bench-workers-"))
    workflow = folder / "chat-blocking.yaml"
    text = (ROOT / "workflows" / "chat.yaml").read_text("utf-8")
    workflow.write_text(text.replace("stream: true", "stream: false"), "utf-8")
    sim = subprocess.Popen([*CLI, "simulator"], stdout=subprocess.PIPE, text=True)
    assert sim.stdout is not None
    url = sim.stdout.readline().strip()
    env = installed_env(OPENROUTER_API_KEY=KEY, DEMIARCH_FLOW_HOME=str(folder))
    inp = folder / "in.jsonl"
    inp.write_text(
        "".join(json.dumps({"id": i, "message": f"q {i}"}) + "\n" for i in range(opts.runs))
    )
    # both sides on the same PostgreSQL server (a fresh database each): like for like
    report: dict[str, object] = {"runs": opts.runs, "database": "postgresql (both sides)",
                                 "load_before": round(os.getloadavg()[0], 1)}  # fmt: skip
    names: list[str] = []
    try:
        # one batch process, 100 in flight
        name, db = fresh_db()
        names.append(name)
        run(["db", "upgrade", "--db", db], env)
        t0 = time.perf_counter()
        run(["batch", str(inp), str(workflow), "--concurrency", "100", "--quiet",
             "--out", str(folder / "out.jsonl"), "--db", db, "--base-url", url], env)  # fmt: skip
        batch_s = time.perf_counter() - t0
        report["batch_runs_per_s"] = round(opts.runs / batch_s, 1)
        # submit, then two workers x 50 drain it
        name, db = fresh_db()
        names.append(name)
        run(["db", "upgrade", "--db", db], env)
        t0 = time.perf_counter()
        run(["submit", str(workflow), "--batch", str(inp), "--db", db], env)
        report["submit_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        workers = [
            subprocess.Popen(
                [
                    *CLI,
                    "worker",
                    "--db",
                    db,
                    "--base-url",
                    url,
                    "--concurrency",
                    "50",
                    "--until-empty",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
            )
            for _ in range(2)
        ]
        for w in workers:
            w.wait()
        workers_s = time.perf_counter() - t0
        report["workers_runs_per_s"] = round(opts.runs / workers_s, 1)
        report["ratio_workers_to_batch"] = round(batch_s / workers_s, 2)
        # p50 submit -> first transition, one idle worker waiting
        name, db = fresh_db()
        names.append(name)
        run(["db", "upgrade", "--db", db], env)
        idle = subprocess.Popen(
            [*CLI, "worker", "--db", db, "--base-url", url], env=env, stdout=subprocess.DEVNULL
        )
        time.sleep(2)  # let it start and wait for jobs
        for i in range(opts.latency_samples):
            run(["submit", str(workflow), "-m", f"ping {i}", "--db", db], env)
            time.sleep(0.1)
        time.sleep(1)
        idle.terminate()
        idle.wait()
        conninfo = db.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(conninfo) as conn:
            lags = [
                row[0]
                for row in conn.execute(
                    "SELECT extract(epoch FROM min(e.at) - min(d.at)) * 1000"
                    " FROM procrastinate_jobs j"
                    " JOIN procrastinate_events d ON d.job_id = j.id AND d.type = 'deferred'"
                    " JOIN run_events e ON e.run_id = j.args->>'run_id'"
                    " GROUP BY j.id"
                )
            ]
        report["submit_to_first_transition_p50_ms"] = round(
            statistics.median(float(x) for x in lags), 1
        )
        report["latency_samples"] = len(lags)
    finally:
        sim.terminate()
        for name in names:
            drop_db(name)
    report["load_after"] = round(os.getloadavg()[0], 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
