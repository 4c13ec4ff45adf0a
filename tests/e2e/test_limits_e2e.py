"""Limits across processes, end to end: real CLI processes sharing one database (SQLite file or
PostgreSQL) against the bundled simulator — one rpm for all of them, one daily budget that
none of them overshoots — and the `budget` command."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from demiarch_flow.definition import parse_workflow
from demiarch_flow.pricing import PriceTable
from demiarch_flow.runner.budget import estimate_tokens, worst_case_usd
from demiarch_flow.runner.state import Message

from ..store.conftest import PG_URL, drop_everything, postgres_available
from .conftest import FAST, Cli, SimThread

SONNET = "anthropic/claude-sonnet-4"


def _workflow(tmp: Path, limits: str, max_tokens: int | None = None) -> str:
    text = Path(FAST).read_text("utf-8")
    if max_tokens is not None:
        text = text.replace("  # optional: temperature, max_tokens", f"  max_tokens: {max_tokens}")
    path = tmp / "limited.yaml"
    path.write_text(text + "\nlimits:\n" + limits, "utf-8")
    parse_workflow(path.read_text("utf-8"))
    return str(path)


def _batch(cli: Cli, sim: SimThread, wf: str, name: str, n: int, db: str) -> subprocess.Popen[str]:
    inp = cli.home / f"{name}.jsonl"
    inp.write_text(
        "".join(json.dumps({"id": f"{name}-{i}", "message": f"{name} line {i:03}"}) + "\n"
                for i in range(n)),
        "utf-8",
    )  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "demiarch_flow", "batch", str(inp), wf, "--concurrency", "50",
         "--base-url", sim.url, "--db", db, "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli.env,
    )  # fmt: skip


def _db(request: pytest.FixtureRequest, cli: Cli) -> str:
    if request.param == "postgresql":
        if not postgres_available():
            pytest.skip("no PostgreSQL server")
        drop_everything()
        return PG_URL
    return cli.db


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, cli: Cli) -> str:
    return _db(request, cli)


def test_two_processes_share_one_rpm(
    cli: Cli, simulator: Callable[..., SimThread], tmp_path: Path, db: str
) -> None:
    """Two batches at once on one database, rpm 1200 (one request per 50 ms): the requests the
    simulator sees, from both, stay 50 ms apart on average — not twice as fast."""
    sim = simulator()
    wf = _workflow(tmp_path, '  rate:\n    "*": {rpm: 1200}\n')
    cli("db", "upgrade", "--db", db)
    procs = [_batch(cli, sim, wf, name, 30, db) for name in ("a", "b")]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (err, out[-2000:])
        failed = [json.loads(x) for x in out.splitlines() if json.loads(x)["status"] != "succeeded"]
        assert not failed, [d["error_message"] for d in failed][:3]
    arrivals = sorted(sim.sim.arrivals)
    assert len(arrivals) == 60
    interval = 60 / 1200
    # the slots are exactly 50 ms apart on the database's clock; arrivals add each request's
    # own latency, larger for a process's first requests (connections), so leave those out
    steady = arrivals[5:]
    assert steady[-1] - steady[0] >= (len(steady) - 1) * interval * 0.9
    # any 20 consecutive gaps take 1 s, less what a late request's jitter can take off (two
    # processes each pacing alone would take 0.5 s)
    for i in range(len(arrivals) - 20):
        assert arrivals[i + 20] - arrivals[i] >= 20 * interval - 0.3


def test_four_processes_never_overspend_a_daily_budget(
    cli: Cli, simulator: Callable[..., SimThread], tmp_path: Path, db: str
) -> None:
    """200 runs from four processes against a daily budget that fits 50 worst cases: the spend
    in llm_usage stays within it, and every refused run is budget_exceeded and sent nothing."""
    sim = simulator("", latency_s=0.02)
    text = Path(FAST).read_text("utf-8")
    wf0 = parse_workflow(text)
    # answers are ~15 tokens: with max_tokens 16 the real cost is close to the worst case
    tokens = estimate_tokens(
        [*([Message("system", wf0.system)] if wf0.system else []), Message("user", "a line 000")]
    )
    worst = worst_case_usd(PriceTable.load(), SONNET, tokens, 16)
    assert worst is not None
    limit = worst * 50
    wf = _workflow(tmp_path, f"  budget: {{daily_usd: {limit}}}\n", max_tokens=16)
    cli("db", "upgrade", "--db", db)
    procs = [_batch(cli, sim, wf, name, 50, db) for name in "abcd"]
    lines = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, 1), err
        lines += [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 200
    ok = [d for d in lines if d["status"] == "succeeded"]
    refused = [d for d in lines if d["status"] != "succeeded"]
    assert len(ok) >= 50 and refused
    assert {d["error_class"] for d in refused} == {"budget_exceeded"}, [
        d["error_message"] for d in refused if d["error_class"] != "budget_exceeded"
    ][:3]
    assert sim.sim.chat_requests == len(ok)
    spent = sum(Decimal(d["cost_usd"]) for d in ok)
    assert spent <= limit
    used = cli("budget", "--workflow", wf, "--db", db, "--json")
    assert used.code == 0, used.stderr
    day = used.json()[0]
    assert day["window"] == "day" and Decimal(day["spent_usd"]) == spent
    assert Decimal(day["reserved_usd"]) == 0


def test_budget_json_and_key(cli: Cli, simulator: Callable[..., SimThread], tmp_path: Path) -> None:
    """`budget --json` lists day and month with decimal strings; `--key` adds OpenRouter's
    figures and warns when they differ."""
    sim = simulator()
    wf = _workflow(tmp_path, "  budget: {daily_usd: 5, monthly_usd: 50}\n", max_tokens=64)
    assert cli("run", wf, "-m", "hello", "--base-url", sim.url, "--quiet").code == 0
    res = cli("budget", "--workflow", wf, "--json")
    assert res.code == 0, res.stderr
    doc = res.json()
    assert [d["window"] for d in doc] == ["day", "month"]
    assert doc[0]["limit_usd"] == "5.000000000" and doc[1]["limit_usd"] == "50.000000000"
    spent = Decimal(doc[0]["spent_usd"])
    assert spent > 0 and Decimal(doc[0]["remaining_usd"]) == Decimal(5) - spent
    with sqlite3.connect(cli.db_path) as conn:
        (booked,) = conn.execute("SELECT cost_usd FROM llm_usage").fetchone()
    assert Decimal(booked) == spent
    keyed = cli("budget", "--workflow", wf, "--key", "--base-url", sim.url, "--json")
    assert keyed.code == 0, keyed.stderr
    assert Decimal(keyed.json()[0]["openrouter_usd"]) == spent
    assert "warning" not in keyed.stderr
    # another tool spends on the same key: OpenRouter's figure runs ahead of ours
    sim.sim.spent_usd += Decimal("1")
    keyed = cli("budget", "--workflow", wf, "--key", "--base-url", sim.url)
    assert keyed.code == 0 and "warning: this day's spend differs" in keyed.stderr
    assert "openrouter" in keyed.stdout
