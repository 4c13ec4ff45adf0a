"""What a run costs in a ``worker`` against a ``batch`` process: CPU and instructions per run.

Each side drains N runs (one ``worker --concurrency C --until-empty`` after ``submit --batch``,
or one ``batch --concurrency C``) on a fresh PostgreSQL database against the bundled
simulator, twice — with a small and a large N — so that start-up and shut-down cancel in the
difference. Per run, for each side: the process's CPU seconds (its rusage, all threads), the
PostgreSQL backends' CPU seconds (read from ``/proc`` of the backends connected to that
database, sampled while they live), and, with ``--callgrind``, the process's instructions
(``valgrind --tool=callgrind``, all threads). Wall runs/s of the large drain beside (not the
difference: it includes start-up). Prints one JSON object.

Usage: ``python bench/worker_cost.py [--small N] [--large N] [--concurrency C]
[--callgrind] [--sides worker,batch]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers import drop_db, fresh_db

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "demiarch_flow"]
ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
KEY = "sk-or-bench-0123456789abcdef"
TICK = os.sysconf("SC_CLK_TCK")


class BackendCpu:
    """CPU seconds of the PostgreSQL backends connected to one database: every backend's
    last-seen utime+stime, sampled every 50 ms from ``/proc`` while the side runs."""

    def __init__(self, dbname: str) -> None:
        self._needle = f" {dbname} ".encode()
        self._seen: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                        cmd = f.read()
                    if not cmd.startswith(b"postgres:") or self._needle not in cmd + b" ":
                        continue
                    with open(f"/proc/{entry.name}/stat", "rb") as f:
                        fields = f.read().rsplit(b")", 1)[1].split()
                except OSError:
                    continue
                self._seen[int(entry.name)] = int(fields[11]) + int(fields[12])
            self._stop.wait(0.05)

    def __enter__(self) -> BackendCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self._seen.values()) / TICK


def commits(dbname: str) -> int:
    """Transactions committed in the database so far (each autocommit statement is one)."""
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (dbname,)
        ).fetchone()
    return int(row[0]) if row else 0


def instructions(profile: Path) -> int:
    for line in profile.read_text().splitlines():
        if m := re.match(r"(?:totals|summary):\s+(\d+)", line):
            return int(m.group(1))
    raise ValueError(f"no totals in {profile}")


def drain(side: str, n: int, opts: argparse.Namespace, folder: Path, url: str) -> dict[str, float]:
    env = {**os.environ, "OPENROUTER_API_KEY": KEY, "DEMIARCH_FLOW_HOME": str(folder)}
    inp = folder / f"in.{n}.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "message": f"q {i}"}) + "\n" for i in range(n)))
    workflow = folder / "chat-blocking.yaml"
    name, db = fresh_db()
    try:
        subprocess.run(
            [*CLI, "db", "upgrade", "--db", db], env=env, check=True, capture_output=True
        )
        if side == "worker":
            subprocess.run([*CLI, "submit", str(workflow), "--batch", str(inp), "--db", db],
                           env=env, check=True, capture_output=True)  # fmt: skip
            cmd = [*CLI, "worker", "--db", db, "--base-url", url, "--until-empty",
                   "--concurrency", str(opts.concurrency)]  # fmt: skip
        else:
            cmd = [*CLI, "batch", str(inp), str(workflow), "--quiet", "--db", db,
                   "--concurrency", str(opts.concurrency), "--out", str(folder / f"out.{n}"),
                   "--base-url", url]  # fmt: skip
        profile = folder / f"callgrind.{side}.{n}.out"
        if opts.callgrind:
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={profile}", *cmd]
        committed = commits(name)
        before = os.times()
        t0 = time.perf_counter()
        with BackendCpu(name) as pg:
            subprocess.run(cmd, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        after = os.times()
        out = {
            "wall_s": wall,
            "cpu_s": (after.children_user - before.children_user)
            + (after.children_system - before.children_system),
            "sys_s": after.children_system - before.children_system,
            "pg_cpu_s": pg.seconds,
        }
        time.sleep(1.5)  # the backends' statistics reach pg_stat_database within a second
        out["commits"] = commits(name) - committed
        if opts.callgrind:
            out["instructions"] = instructions(profile)
        return out
    finally:
        drop_db(name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--sides", default="worker,batch")
    opts = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="demiarch-bench-cost-"))
    text = (ROOT / "workflows" / "chat.yaml").read_text("utf-8")
    (folder / "chat-blocking.yaml").write_text(text.replace("stream: true", "stream: false"))
    sim = subprocess.Popen([*CLI, "simulator"], stdout=subprocess.PIPE, text=True)
    assert sim.stdout is not None
    url = sim.stdout.readline().strip()
    report: dict[str, object] = {"small": opts.small, "large": opts.large,
                                 "concurrency": opts.concurrency,
                                 "load_before": os.getloadavg()[0]}  # fmt: skip
    try:
        for side in opts.sides.split(","):
            small = drain(side, opts.small, opts, folder, url)
            large = drain(side, opts.large, opts, folder, url)
            d = opts.large - opts.small
            per: dict[str, float] = {
                "cpu_ms_per_run": round((large["cpu_s"] - small["cpu_s"]) / d * 1000, 2),
                "sys_ms_per_run": round((large["sys_s"] - small["sys_s"]) / d * 1000, 2),
                "pg_cpu_ms_per_run": round((large["pg_cpu_s"] - small["pg_cpu_s"]) / d * 1000, 2),
                "commits_per_run": round((large["commits"] - small["commits"]) / d, 2),
                "wall_runs_per_s_large": round(opts.large / large["wall_s"], 1),
            }
            if opts.callgrind:
                per["minstr_per_run"] = round(
                    (large["instructions"] - small["instructions"]) / d / 1e6, 2
                )
            report[side] = per
    finally:
        sim.terminate()
    report["load_after"] = os.getloadavg()[0]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
