"""``batch --resume``: succeeded ids are not asked again, failed ones resume as the same run,
missing ones run, and OUT ends with exactly one line per input id."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import FAST, Cli, SimThread


def _write(path: Path, docs: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def _out(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_skips_successes_resumes_failures_runs_the_rest(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """A key the provider refused for one model (401) is fixed; the batch is resumed."""
    docs = [{"id": f"ok{i}", "message": f"hello {i}"} for i in range(3)]
    docs.append({"id": "denied", "message": "x", "model": "acme/denied"})
    inp = _write(cli.home / "in.jsonl", docs)
    out = cli.home / "out.jsonl"
    first = simulator("acme/denied=401")
    res = cli("batch", str(inp), FAST, "--out", str(out), "--base-url", first.url, "--quiet")
    assert res.code == 1, res.stderr
    before = {d["id"]: d for d in _out(out)}
    assert before["denied"]["status"] == "failed"

    docs.append({"id": "late", "message": "added afterwards"})
    _write(inp, docs)
    second = simulator("")
    res = cli(
        "batch", str(inp), FAST, "--out", str(out), "--resume", "--base-url", second.url, "--quiet"
    )
    assert res.code == 0, res.stderr
    after = _out(out)
    assert [d["id"] for d in after] == ["ok0", "ok1", "ok2", "denied", "late"]
    assert all(d["status"] == "succeeded" for d in after)
    # one request for the resumed run, one for the new line; none for the successes
    assert sorted(second.sim.models_seen) == ["acme/denied", "anthropic/claude-sonnet-4"]
    resumed = next(d for d in after if d["id"] == "denied")
    assert resumed["run_id"] == before["denied"]["run_id"]  # the same run, resumed
    for i in range(3):
        assert after[i] == before[f"ok{i}"]  # untouched
    run_id = resumed["run_id"]
    assert cli.rows(f"select resume_count from workflow_runs where id = '{run_id}'") == [(1,)]
    assert cli.rows("select count(*) from chat_messages where role = 'user'") == [(5,)]
    assert not (cli.home / "out.jsonl.partial").exists()


def test_resume_needs_out(cli: Cli) -> None:
    """--resume without --out is an input error, before anything is opened."""
    inp = _write(cli.home / "in.jsonl", [{"message": "hi"}])
    res = cli("batch", str(inp), FAST, "--resume")
    assert res.code == 2
    assert "--resume needs --out" in res.stderr


def _batch(cli: Cli, inp: Path, out: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "demiarch_flow", "batch", str(inp), FAST, "--out", str(out),
         "--concurrency", "4", "--base-url", url, "--quiet", *extra],
        env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("stop", ["ctrl-c twice", "sigkill"])
def test_runs_stopped_before_their_result_line_are_resumed_not_sent_again(
    cli: Cli, simulator: Callable[[str], SimThread], stop: str
) -> None:
    """Two lines answered, four in flight (the provider is slow for them), then the batch is
    cancelled (Ctrl-C twice) or killed: their run ids were noted in OUT.runs as they started,
    so --resume continues those very runs — one user message per line, no answered line asked
    again — and OUT ends with one line per id, OUT.runs gone."""
    docs = [{"id": f"q{i}", "message": f"m{i}"} for i in range(6)]
    inp = _write(cli.home / "in.jsonl", docs)
    out = cli.home / "out.jsonl"
    sim = simulator("*=ok*2,slow:60*4")
    proc = _batch(cli, inp, out, sim.url)
    try:
        _wait_for(lambda: sim.sim.chat_requests == 6, "six requests")
        _wait_for(lambda: len(_out(out)) == 2, "the two answers in OUT")  # written as they come
        if stop == "sigkill":
            proc.kill()
        else:
            proc.send_signal(signal.SIGINT)
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    started = {d["id"]: d["run_id"] for d in _out(cli.home / "out.jsonl.runs")}
    assert len(started) == 6
    res = cli("batch", str(inp), FAST, "--out", str(out), "--resume", "--base-url", sim.url,
              "--quiet")  # fmt: skip
    assert res.code == 0, res.stderr
    after = _out(out)
    assert [d["id"] for d in after] == [d["id"] for d in docs]
    assert all(d["status"] == "succeeded" for d in after)
    assert {d["id"]: d["run_id"] for d in after} == started  # the same runs, continued
    assert sim.sim.chat_requests == 10  # 6 before, one again for each of the 4 stopped
    assert cli.rows("select count(*) from chat_messages where role = 'user'") == [(6,)]
    assert cli.rows("select count(*) from workflow_runs where resume_count = 1") == [(4,)]
    assert not (cli.home / "out.jsonl.runs").exists()
    assert not (cli.home / "out.jsonl.partial").exists()


def test_a_run_noted_but_never_stored_runs_afresh(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """OUT.runs names a run the database never got (the batch died before its first commit),
    or OUT holds a run id that is not there: nothing of it was sent, so the line runs afresh."""
    inp = _write(cli.home / "in.jsonl", [{"id": "a", "message": "x"}, {"id": "b", "message": "y"}])
    out = cli.home / "out.jsonl"
    _write(out, [{"id": "b", "run_id": "no-such-run", "status": "failed"}])
    _write(cli.home / "out.jsonl.runs", [{"id": "a", "line": 1, "run_id": "never-stored"}])
    sim = simulator("")
    cli("db", "upgrade")
    res = cli("batch", str(inp), FAST, "--out", str(out), "--resume", "--base-url", sim.url,
              "--quiet")  # fmt: skip
    assert res.code == 0, res.stderr
    after = _out(out)
    assert [d["status"] for d in after] == ["succeeded", "succeeded"]
    assert sim.sim.chat_requests == 2


def test_results_of_another_input_or_an_edited_line_are_not_kept(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """OUT was written for another input (ids are line numbers in both), or a failed line was
    edited since: those lines run afresh with what they ask now; an unchanged line that
    succeeded is kept as it was."""
    first = _write(
        cli.home / "a.jsonl", [{"message": "alpha"}, {"message": "beta", "model": "acme/x"}]
    )
    out = cli.home / "out.jsonl"
    sim = simulator("acme/x=401")
    res = cli("batch", str(first), FAST, "--out", str(out), "--base-url", sim.url, "--quiet")
    assert res.code == 1
    before = sorted(_out(out), key=lambda d: str(d["id"]))  # in the order runs ended
    assert [d["status"] for d in before] == ["succeeded", "failed"]
    edited = _write(cli.home / "a.jsonl", [{"message": "alpha"}, {"message": "beta, fixed"}])
    res = cli("batch", str(edited), FAST, "--out", str(out), "--resume", "--base-url", sim.url,
              "--quiet")  # fmt: skip
    assert res.code == 0, res.stderr
    after = _out(out)
    assert after[0] == before[0]  # unchanged and succeeded: not asked again
    assert "beta, fixed" in str(after[1]["content"]) and after[1]["run_id"] != before[1]["run_id"]
    other = _write(cli.home / "b.jsonl", [{"message": "gamma"}, {"message": "delta"}])
    res = cli("batch", str(other), FAST, "--out", str(out), "--resume", "--base-url", sim.url,
              "--quiet")  # fmt: skip
    assert res.code == 0, res.stderr
    assert ["gamma" in str(d["content"]) for d in _out(out)] == [True, False]
    assert "delta" in str(_out(out)[1]["content"])
    assert sim.sim.chat_requests == 2 + 1 + 2
