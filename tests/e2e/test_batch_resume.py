"""``batch --resume``: succeeded ids are not asked again, failed ones resume as the same run,
missing ones run, and OUT ends with exactly one line per input id."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

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
