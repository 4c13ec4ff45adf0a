"""Streamed runs through the real command line and the bundled simulator (real HTTP, SSE)."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from .conftest import Cli, SimThread

SONNET = "anthropic/claude-sonnet-4"


def _popen(cli: Cli, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "demiarch_flow", "run", *args],
        env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
    )  # fmt: skip


def _line(stream: IO[str] | None) -> str:
    assert stream is not None
    return stream.readline()


def test_jsonl_events_are_readable_while_the_stream_runs(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """--jsonl: a delta line can be read while the run is still going (the stream pauses
    after its first chunk); the last line is the result with the --json keys."""
    sim = simulator(f"{SONNET}=pause:2")
    proc = _popen(cli, "-m", "hi there", "--jsonl", "--base-url", sim.url)
    events = []
    while True:
        event = json.loads(_line(proc.stdout))
        events.append(event)
        if event["type"] == "delta":
            break
    assert proc.poll() is None, "the run should still be streaming"
    rest, _ = proc.communicate(timeout=60)
    events += [json.loads(line) for line in rest.splitlines()]
    assert proc.returncode == 0
    kinds = [e["type"] for e in events]
    assert kinds[0] == "transition" and kinds[-1] == "result"
    assert "attempt" in kinds
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    result = events[-1]
    assert result["status"] == "succeeded" and result["content"] == text
    assert {"run_id", "attempts", "transitions", "cost_usd"} <= set(result)
    attempt = next(e for e in events if e["type"] == "attempt")
    assert attempt["first_token_ms"] is not None and attempt["partial_chars"] is None


def test_a_streamed_run_writes_the_text_and_marks_an_interruption(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """--stream: stdout gets the text as it comes; a broken stream is marked on stderr once the
    retry is decided, and only the retry's text is stored as the reply."""
    sim = simulator(f"{SONNET}=cut:2")
    res = cli("run", "-m", "héllo wörld", "--stream", "--base-url", sim.url)
    assert res.code == 0, res.stderr
    assert "— interrupted after" in res.stderr and "(server_error); retrying" in res.stderr
    reply = cli.rows("select content from chat_messages where role = 'assistant'")
    assert reply == [(f"[simulated {SONNET}] You said: héllo wörld",)]
    assert res.stdout.endswith(reply[0][0] + "\n")
    usage = cli.rows("select outcome from llm_usage order by outcome")
    assert usage == [("interrupted",), ("reply",)]


def test_piped_output_is_exactly_the_reply(cli: Cli, simulator: Callable[[str], SimThread]) -> None:
    """`run -m … > out.txt` (stdout not a terminal, no --stream): stdout is the reply and
    nothing else — not the broken attempt's text, a newline, then the retry's."""
    sim = simulator(f"{SONNET}=cut:2")
    res = cli("run", "-m", "héllo wörld", "--base-url", sim.url)
    assert res.code == 0, res.stderr
    assert res.stdout == f"[simulated {SONNET}] You said: héllo wörld\n"


def test_json_attempts_carry_partial_chars(cli: Cli, simulator: Callable[[str], SimThread]) -> None:
    """run --json: the interrupted attempt says how many characters it had received."""
    sim = simulator(f"{SONNET}=drop:2")
    doc = cli("run", "-m", "hi", "--json", "--base-url", sim.url).json()
    assert doc["attempts"][0]["error_class"] == "stream_interrupted"
    assert doc["attempts"][0]["partial_chars"] > 0
    assert doc["attempts"][1]["partial_chars"] is None


def test_ctrl_c_mid_stream_exits_130_and_keeps_the_partial_text(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """Ctrl-C while tokens flow: the connection is closed, exit 130, the run is cancelled and
    its attempt keeps the text received; nothing is stored as a reply."""
    sim = simulator(f"{SONNET}=stall:3")
    proc = _popen(cli, "-m", "hi", "--jsonl", "--base-url", sim.url)
    deltas = 0
    while deltas < 3:
        if json.loads(_line(proc.stdout))["type"] == "delta":
            deltas += 1
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert cli.rows("select status from workflow_runs") == [("cancelled",)]
    ((partial, error_class, generation),) = cli.rows(
        "select partial_text, error_class, generation_id from run_attempts"
    )
    assert partial and partial.startswith("[simulated") and error_class == "cancelled"
    assert generation and generation.startswith("gen-sim-")
    assert cli.rows("select count(*) from chat_messages where role = 'assistant'") == [(0,)]


def test_ctrl_c_after_the_answer_is_whole_keeps_it_for_resume(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """A stream delivers its whole answer, then goes silent (``quiet``: no usage, no [DONE]);
    Ctrl-C while the run still waits for the usage chunk: the answer is already on its attempt
    row, and ``runs resume`` stores it as the reply without a second request."""
    sim = simulator(f"{SONNET}=quiet")
    proc = _popen(cli, "-m", "hi", "--jsonl", "--base-url", sim.url)
    deadline = time.monotonic() + 20
    kept: list[tuple[Any, ...]] = []
    while not kept and time.monotonic() < deadline:
        time.sleep(0.02)
        with contextlib.suppress(sqlite3.OperationalError):  # not created yet
            kept = cli.rows("select partial_text from run_attempts where finish_reason = 'stop'")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    [(answer,)] = kept
    assert answer.startswith(f"[simulated {SONNET}]")
    [(run_id,)] = cli.rows("select id from workflow_runs where status = 'cancelled'")
    assert sim.sim.chat_requests == 1
    doc = cli("runs", "resume", run_id, "--json", "--base-url", sim.url).json()
    assert (doc["status"], doc["content"]) == ("succeeded", answer)
    assert sim.sim.chat_requests == 1
    assert cli.rows("select count(*), min(outcome) from llm_usage") == [(1, "reply")]


def test_usage_and_runs_show_report_interrupted_streams(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """usage shows interrupted spend apart; runs show --json carries the partial text."""
    sim = simulator(f"{SONNET}=cut:2")
    doc = cli("run", "-m", "hi", "--json", "--base-url", sim.url).json()
    usage = json.loads(cli("usage", "--json").stdout)
    (row,) = usage["rows"]
    assert row["calls"] == 2 and row["interrupted_calls"] == 1
    assert usage["interrupted_cost_usd"] == row["interrupted_cost_usd"] != "0"
    assert "of which interrupted streams" in cli("usage").stdout
    shown = json.loads(cli("runs", "show", doc["run_id"], "--json").stdout)
    first = shown["attempts"][0]
    assert first["partial_text"] == f"[simulated {SONNET}] "
    assert first["partial_chars"] == doc["attempts"][0]["partial_chars"]
    assert first["error_message"] and first["finish_reason"] is None
    second = shown["attempts"][1]
    assert (second["finish_reason"], second["response_model"], second["partial_text"]) == (
        "stop",
        SONNET,
        None,
    )
