"""`simulate`, `validate` and `graph` in-process: timelines in virtual time, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from demiarch_flow.cli.main import main

from .conftest import DEFAULT_WORKFLOW


def test_simulate_prints_the_timeline(capsys: pytest.CaptureFixture[str]) -> None:
    """Three 500s then haiku: waits 1, 2, 4 s, exhausted, fallback at t=7."""
    code = main(["simulate", "--faults", "anthropic/claude-sonnet-4=500*4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "t=    3.0s  Backoff   wait 4.0 s (backoff) before attempt 4" in out
    assert "t=    7.0s  Fallback  anthropic/claude-sonnet-4 → anthropic/claude-3.5-haiku" in out
    assert "5 requests, 7.0 s a real run would have taken" in out


def test_simulate_shows_the_cooldown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A workflow with a cooldown block: the timeline shows it start and the skip it causes."""
    text = DEFAULT_WORKFLOW.read_text().replace(
        "initial: LoadContext",
        "cooldown: {after_failures: 2, window_s: 60, cool_s: 30}\ninitial: LoadContext",
    )
    wf = tmp_path / "cool.yaml"
    wf.write_text(text)
    code = main(["simulate", str(wf), "--faults", "anthropic/claude-sonnet-4=500*"])
    out = capsys.readouterr().out
    assert code == 0
    assert "t=    1.0s  Cooldown  anthropic/claude-sonnet-4 cools down for 30.0 s (all runs)" in out
    assert "t=    3.0s  Request   anthropic/claude-sonnet-4 skipped: cooling, 28.0 s left" in out
    assert "3 requests, 3.0 s a real run would have taken" in out


def test_simulate_failure_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    """Every model failing: exit 1 and the all-models-failed error."""
    assert main(["simulate", "--faults", "*=404"]) == 1
    assert "all models failed" in capsys.readouterr().out


def test_simulate_json(capsys: pytest.CaptureFixture[str]) -> None:
    """--json gives the run object plus virtual seconds and the models asked."""
    import json

    assert main(["simulate", "--json", "--faults", "anthropic/claude-sonnet-4=429@2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["virtual_seconds"] == 2.0
    assert doc["requests"] == ["anthropic/claude-sonnet-4", "anthropic/claude-sonnet-4"]


def test_bad_fault_script_is_an_input_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed script: exit 2 and what the items may be."""
    assert main(["simulate", "--faults", "m=teapot"]) == 2
    assert "bad fault 'teapot'" in capsys.readouterr().err


def test_validate_several_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """validate: 0 when all are valid, 2 when any is not, each error on stderr."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 2\n")
    assert main(["validate", str(DEFAULT_WORKFLOW)]) == 0
    assert main(["validate", str(DEFAULT_WORKFLOW), str(bad)]) == 2
    captured = capsys.readouterr()
    assert "ok — workflow 'chat'" in captured.out
    assert f"{bad}:1:10: version: 2 is not supported" in captured.err


def test_graph_mermaid(capsys: pytest.CaptureFixture[str]) -> None:
    """graph prints Mermaid by default."""
    assert main(["graph", str(DEFAULT_WORKFLOW)]) == 0
    assert capsys.readouterr().out.startswith("stateDiagram-v2")


def test_simulate_shows_first_tokens_and_interruptions(capsys: pytest.CaptureFixture[str]) -> None:
    """A stream cut after two chunks, then a slow first token: the timeline shows both (the
    bundled chat.yaml streams)."""
    code = main(["simulate", "--faults", "anthropic/claude-sonnet-4=cut:2,slowfirst:4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "attempt 1 → HTTP 200 stream_interrupted after " in out
    assert "characters (server_error) (first token at 0.0 s)" in out
    assert "attempt 2 → ok (first token at 4.0 s)" in out
