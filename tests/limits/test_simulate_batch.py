"""`simulate --batch N`: a batch plan's duration, throttle waits and budget stop, in virtual time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from demiarch_flow.cli.main import main

from .helpers import with_limits


def _file(tmp_path: Path, limits: str) -> str:
    path = tmp_path / "w.yaml"
    path.write_text(with_limits(limits).text, "utf-8")
    return str(path)


def test_batch_plan_shows_duration_and_throttle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1,000 runs under rpm 600 take 99.9 s of virtual time, with 999 throttle waits."""
    wf = _file(tmp_path, '  rate:\n    "*": {rpm: 600}\n')
    assert main(["simulate", wf, "--batch", "1000", "--concurrency", "100", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["succeeded"] == plan["requests"] == 1000
    assert abs(plan["virtual_seconds"] - 99.9) < 0.01
    assert plan["throttle_waits"] == 999 and plan["budget_stops"] == 0


def test_batch_plan_shows_where_a_budget_stops_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daily budget stops the batch part-way: the plan says how many runs it refused and
    when the first was; the spend stays within the budget; exit 1."""
    wf = _file(tmp_path, '  budget: {daily_usd: 0.01}\n  rate:\n    "*": {rpm: 600}\n')
    assert main(["simulate", wf, "--batch", "200", "--concurrency", "20"]) == 1
    out = capsys.readouterr().out
    assert "runs refused (budget_exceeded), the first at t=" in out
    assert main(["simulate", wf, "--batch", "200", "--concurrency", "20", "--json"]) == 1
    plan = json.loads(capsys.readouterr().out)
    assert 0 < plan["succeeded"] < 200 and plan["budget_stops"] == 200 - plan["succeeded"]
    assert float(plan["spent_usd"]) <= 0.01


def test_single_simulation_shows_a_throttle_wait(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The timeline of one run shows its retry waiting for the bucket: rpm 30 spaces requests
    2 s apart, the retry's backoff is 1 s, so it waits 1 s more for its slot."""
    wf = _file(tmp_path, '  rate:\n    "anthropic/*": {rpm: 30}\n')
    code = main(["simulate", wf, "--faults", "anthropic/claude-sonnet-4=500"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Request   wait 1.0 s (rate limit) before attempt 2" in out
