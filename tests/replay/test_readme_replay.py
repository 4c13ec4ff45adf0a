"""The README's worked ``simulate --replay`` example is what the command prints for that week."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from demiarch_flow.cli.main import main
from demiarch_flow.definition import parse_workflow

from ..conftest import DEFAULT_WORKFLOW, ROOT
from .history import record
from .test_replay import WEEK_RUNS, WEEK_SCRIPT

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def test_the_readme_report_is_the_commands_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The recorded week of the README replayed with ``initial_delay_s: 0.25``: the report in
    the README, line for line (run ids aside: they are drawn anew)."""
    db = tmp_path / "flow.db"
    record(f"sqlite:///{db}", parse_workflow(DEFAULT_WORKFLOW.read_text("utf-8")), WEEK_SCRIPT,
           WEEK_RUNS)  # fmt: skip
    text = DEFAULT_WORKFLOW.read_text("utf-8")
    (tmp_path / "my.yaml").write_text(
        text.replace("initial_delay_s: 1\n", "initial_delay_s: 0.25\n")
    )
    monkeypatch.chdir(tmp_path)
    command = "demiarch-flow simulate my.yaml --replay --since 2026-11-23"
    assert main([*command.split()[1:], "--db", f"sqlite:///{db}"]) == 0
    printed = capsys.readouterr().out
    readme = (ROOT / "README.md").read_text("utf-8")
    shown = readme.split(f"$ {command}\n", 1)[1].split("```", 1)[0]
    assert _UUID.sub("RUN", printed) == _UUID.sub("RUN", shown)
