"""`demiarch-flow batch` end to end: mixed lines, a bad line, and Ctrl-C leaving a consistent database."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from demiarch_flow.cli._lines import parse_line
from demiarch_flow.errors import UsageError

from .conftest import FAST, Cli, SimThread

pytestmark = pytest.mark.e2e


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _start_batch(cli: Cli, sim: SimThread, concurrency: int) -> subprocess.Popen[str]:
    """A 40-line batch in the background, returned once `concurrency` requests are in flight."""
    inp = _write(
        cli.home / "in.jsonl", [json.dumps({"id": f"q{i}", "message": f"m{i}"}) for i in range(40)]
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "demiarch_flow", "batch", str(inp), FAST, "--concurrency", str(concurrency), "--base-url", sim.url],
        env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while sim.sim.chat_requests < concurrency and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sim.sim.chat_requests == concurrency
    return proc


def test_mixed_lines(cli: Cli, simulator: Callable[[str], SimThread]) -> None:
    """Successes, a failing model, a retried one and a bad line: one output line per good input."""
    sim = simulator("acme/denied=401;acme/flaky=500,ok")
    lines = [json.dumps({"id": f"ok{i}", "message": f"hello {i}"}) for i in range(6)]
    lines += [
        json.dumps({"id": "denied", "message": "x", "model": "acme/denied"}),
        json.dumps({"id": "flaky", "message": "y", "model": "acme/flaky"}),
        "{not json",
        json.dumps({"message": "no id"}),
    ]
    inp = _write(cli.home / "in.jsonl", lines)
    res = cli("batch", str(inp), FAST, "--concurrency", "4", "--base-url", sim.url)
    assert res.code == 1
    assert "in.jsonl:9: skipped: not JSON" in res.stderr
    out = [json.loads(line) for line in res.stdout.splitlines()]
    by_id = {o["id"]: o for o in out}
    assert set(by_id) == {f"ok{i}" for i in range(6)} | {"denied", "flaky", "10"}
    assert by_id["denied"]["status"] == "failed"
    assert by_id["denied"]["error_class"] == "auth"
    assert by_id["flaky"]["status"] == "succeeded"
    assert len(by_id["flaky"]["attempts"]) == 2
    assert all(o["status"] == "succeeded" for k, o in by_id.items() if k != "denied")
    assert cli.rows(
        "select status, count(*) from workflow_runs group by status order by status"
    ) == [("failed", 1), ("succeeded", 8)]
    assert cli.rows("select count(*) from llm_usage") == [(8,)]


def test_out_file(cli: Cli, simulator: Callable[[str], SimThread]) -> None:
    """--out writes the result lines to a file."""
    sim = simulator("")
    inp = _write(
        cli.home / "in.jsonl", [json.dumps({"message": "a"}), json.dumps({"message": "b"})]
    )
    res = cli(
        "batch",
        str(inp),
        FAST,
        "--out",
        str(cli.home / "out.jsonl"),
        "--base-url",
        sim.url,
        "--quiet",
    )
    assert res.code == 0
    assert res.stdout == ""
    assert len((cli.home / "out.jsonl").read_text().splitlines()) == 2


def test_ctrl_c_twice_leaves_the_database_consistent(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """First Ctrl-C stops reading, second cancels runs in flight: every run row is final,
    every succeeded run has its usage row, cancelled runs have none, and the ids are reported."""
    sim = simulator("*=slow:30*")
    proc = _start_batch(cli, sim, 5)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "did not complete" in stderr
    for i in range(5):
        assert f"q{i}" in stderr
    assert "lines from" in stderr
    statuses = dict(cli.rows("select status, count(*) from workflow_runs group by status"))
    assert statuses == {"cancelled": 5}
    assert cli.rows("select count(*) from llm_usage") == [(0,)]
    assert cli.rows("select count(*) from chat_messages where role = 'assistant'") == [(0,)]
    assert stdout == ""


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[1, 2]", "not a JSON object"),
        ('{"message": 5}', "'message' must be a non-empty string"),
        ('{"message": "x", "model": 3}', "'model' must be a string"),
        ('{"message": "x", "id": true}', "'id' must be"),
    ],
)
def test_parse_line_rejects(text: str, problem: str) -> None:
    """Bad input lines are refused with the reason."""
    with pytest.raises(UsageError, match=problem):
        parse_line(text, 1)


def test_parse_line_defaults_id_to_line_number() -> None:
    """Without an id, the line number is the id."""
    item = parse_line('{"message": "hi", "conversation_id": "c", "model": "m"}', 7)
    assert (item.id, item.conversation_id, item.model) == ("7", "c", "m")


def test_ctrl_c_once_lets_runs_in_flight_finish(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """One Ctrl-C: no new lines are started, the runs in flight finish and are written."""
    sim = simulator("*=slow:1*")
    proc = _start_batch(cli, sim, 4)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    finished = [json.loads(line) for line in stdout.splitlines()]
    assert 4 <= len(finished) < 40
    assert all(o["status"] == "succeeded" for o in finished)
    assert dict(cli.rows("select status, count(*) from workflow_runs group by status")) == {
        "succeeded": len(finished)
    }
    assert "did not complete" not in stderr
