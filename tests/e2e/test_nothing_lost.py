"""Nothing lost: the journal survives SIGKILL, SIGTERM is handled like Ctrl-C (exit 143)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from .conftest import FAST, Cli, SimThread

pytestmark = pytest.mark.e2e

SONNET = "anthropic/claude-sonnet-4"
HAIKU = "anthropic/claude-3.5-haiku"


def _start(cli: Cli, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "demiarch_flow", *args],
        env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for_requests(sim: SimThread, n: int) -> None:
    deadline = time.monotonic() + 30
    while sim.sim.chat_requests < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sim.sim.chat_requests >= n


def test_sigkill_after_waits_and_a_fallback_keeps_the_journal(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """Killed (SIGKILL) while haiku hangs after three waits on sonnet and a fallback: every
    transition before the hanging request is in the database, and so is that request."""
    sim = simulator(f"{SONNET}=429,429,429,429;{HAIKU}=hang")
    proc = _start(cli, "run", FAST, "-m", "kill me", "--base-url", sim.url)
    _wait_for_requests(sim, 5)  # 4 on sonnet, then haiku hangs (5 s timeout in fast.yaml)
    proc.kill()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert cli.rows("select status from workflow_runs") == [("running",)]
    events = cli.rows("select seq, from_state, event, to_state from run_events order by seq")
    assert events == [
        (1, "LoadContext", "loaded", "Request"),
        (2, "Request", "retryable", "Backoff"),
        (3, "Backoff", "retry", "Request"),
        (4, "Request", "retryable", "Backoff"),
        (5, "Backoff", "retry", "Request"),
        (6, "Request", "retryable", "Backoff"),
        (7, "Backoff", "retry", "Request"),
        (8, "Request", "retryable", "Backoff"),
        (9, "Backoff", "exhausted", "Fallback"),
        (10, "Fallback", "next_model", "Request"),
    ]
    attempts = cli.rows("select number, model, status, ended_at from run_attempts order by number")
    assert [(n, m, s) for n, m, s, _ in attempts] == [
        (1, SONNET, 429),
        (2, SONNET, 429),
        (3, SONNET, 429),
        (4, SONNET, 429),
        (5, HAIKU, None),
    ]
    assert attempts[-1][3] is None  # sent, never answered: a resume knows it may be billed


def test_sigterm_during_a_run_records_it_cancelled(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """SIGTERM while the provider hangs: exit 143, the run recorded as cancelled, its journal
    and the user's message kept."""
    sim = simulator("*=hang*")
    proc = _start(cli, "run", FAST, "-m", "wait for it", "--base-url", sim.url)
    _wait_for_requests(sim, 1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    assert "terminated by SIGTERM" in stderr
    assert "Traceback" not in stderr
    assert cli.rows("select status, current_state from workflow_runs") == [("cancelled", "Request")]
    assert cli.rows("select role, content from chat_messages") == [("user", "wait for it")]
    assert cli.rows("select event from run_events order by seq") == [("loaded",)]


def test_sigterm_cancels_a_batch_at_once(cli: Cli, simulator: Callable[[str], SimThread]) -> None:
    """SIGTERM during a batch: the runs in flight are cancelled at once (not after their 30 s
    answers), each recorded cancelled, their ids reported, exit 143."""
    sim = simulator("*=slow:30*")
    inp = cli.home / "in.jsonl"
    inp.write_text(
        "".join(json.dumps({"id": f"q{i}", "message": f"m{i}"}) + "\n" for i in range(20))
    )
    proc = _start(cli, "batch", str(inp), FAST, "--concurrency", "4", "--base-url", sim.url)
    _wait_for_requests(sim, 4)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - started < 10
    assert proc.returncode == 143, stderr
    assert "terminated by SIGTERM" in stderr
    assert "did not complete" in stderr
    for i in range(4):
        assert f"q{i}" in stderr
    assert dict(cli.rows("select status, count(*) from workflow_runs group by status")) == {
        "cancelled": 4
    }
    assert cli.rows("select count(*) from llm_usage") == [(0,)]
    assert stdout == ""
