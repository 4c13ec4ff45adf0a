"""``demiarch-flow simulate EDITED.yaml --replay``: the report, ``--json``, the run selection,
``--fail-if``, exit codes, and a database that is only ever read."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from demiarch_flow.cli.main import main
from demiarch_flow.definition import parse_workflow

from ..conftest import DEFAULT_WORKFLOW
from .history import record

SONNET = "anthropic/claude-sonnet-4"
HAIKU = "anthropic/claude-3.5-haiku"
GPT = "openai/gpt-4o"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Six runs an hour apart: the first meets two 500s, the rest are answered at once."""
    path = tmp_path_factory.mktemp("cli") / "flow.db"
    wf = parse_workflow(DEFAULT_WORKFLOW.read_text("utf-8"))
    ids = record(f"sqlite:///{path}", wf, f"{SONNET}=500,500,ok*", [i * 3600.0 for i in range(6)])
    return path, ids


def args(path: Path, *more: str) -> list[str]:
    return ["simulate", "--replay", "--db", f"sqlite:///{path}", "--since", "2026-11-01", *more]


def digest(path: Path) -> str:
    return hashlib.sha256(
        b"".join(p.read_bytes() for p in sorted(path.parent.iterdir()))
    ).hexdigest()


def test_the_report_side_by_side(
    recorded: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """The bundled file against its own record: recorded and replayed columns agree, no run
    changed, exit 0; the database's folder is byte for byte what it was."""
    path, _ = recorded
    before = digest(path)
    assert main(args(path)) == 0
    out = capsys.readouterr().out
    assert "on 6 recorded runs of 'chat' since 2026-11-01 00:00" in out
    assert re.search(r"\nrequests +8 +8\n", out)
    assert re.search(r"\nretries +2 +2\n", out)
    assert "changed: no run's outcome" in out
    assert digest(path) == before


def test_json_has_recorded_replayed_changed_and_assumptions(
    recorded: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--json``: one object; an edit putting gpt-4o (never asked) first changes every run, each
    marked as resting on the ``--unrecorded succeed`` assumption."""
    path, ids = recorded
    text = (
        DEFAULT_WORKFLOW.read_text("utf-8")
        .replace(f"  - {HAIKU}\n  - {GPT}\n", f"  - {HAIKU}\n")
        .replace(f"  - {SONNET}\n", f"  - {GPT}\n  - {SONNET}\n")
    )
    edited = tmp_path / "gpt.yaml"
    edited.write_text(text)
    assert main([*args(path, "--json", "--unrecorded", "succeed"), str(edited)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"recorded", "replayed", "changed", "assumptions"} <= set(doc)
    assert doc["replayed"]["models"][GPT]["answers"] == 6
    assert sorted(c["run_id"] for c in doc["changed"]) == sorted(ids)
    assert all(c["rests_on_assumption"] for c in doc["changed"])
    assert doc["assumptions"] == [
        {
            "model": GPT,
            "assumption": "answers every request, after the median latency of the recorded answers",
            "runs": 6,
        }
    ]


def test_run_picks_runs_by_id(
    recorded: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--run ID`` replays that run only; ``--limit 2`` the latest two."""
    path, ids = recorded
    assert (
        main(["simulate", "--replay", "--db", f"sqlite:///{path}", "--json", "--run", ids[0]]) == 0
    )
    assert json.loads(capsys.readouterr().out)["recorded"]["runs"] == 1
    assert main(args(path, "--json", "--limit", "2")) == 0
    assert json.loads(capsys.readouterr().out)["recorded"]["requests"] == 2


def test_fail_if_gates_the_exit_code(
    recorded: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--fail-if 'success_rate < 0.99'``: 0 when the replay keeps every run, 1 when an edit
    (gpt-4o alone, assumed to fail) loses them."""
    path, _ = recorded
    assert main(args(path, "--fail-if", "success_rate < 0.99")) == 0
    text = DEFAULT_WORKFLOW.read_text("utf-8").replace(f"  - {SONNET}\n  - {HAIKU}\n", "")
    edited = tmp_path / "gpt-only.yaml"
    edited.write_text(text)
    code = main([*args(path, "--unrecorded", "fail", "--fail-if", "success_rate < 0.99"),
                 str(edited)])  # fmt: skip
    assert code == 1
    assert "--fail-if met: success_rate < 0.99" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("more", "says"),
    [
        (["--faults", f"{SONNET}=500"], "--faults cannot be used with --replay"),
        (["-m", "hi"], "-m/--message cannot be used with --replay"),
        (["--until", "yesterday"], "--until 'yesterday' is not a date"),
        (["--until", "2026-10-01"], "is not before --until"),
        (["--run", "no-such-run"], "no ended run of workflow 'chat' with id no-such-run"),
        (["--unrecorded", "x/unknown"], "the record never asked that model"),
        (["--fail-if", "speed > 3"], "expected METRIC OP NUMBER"),
        (["--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_bad_input_exits_2(
    recorded: tuple[Path, list[str]], more: list[str], says: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Bad input: exit 2, one paragraph naming the flag, no traceback."""
    path, _ = recorded
    assert main(args(path, *more)) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_a_database_that_cannot_be_read_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No database at the path: exit 3, and none is created."""
    missing = tmp_path / "none.db"
    assert main(["simulate", "--replay", "--db", f"sqlite:///{missing}"]) == 3
    assert "no database at" in capsys.readouterr().err
    assert not missing.exists()


def test_no_runs_to_replay_is_said_and_is_not_an_error(
    recorded: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A window with no runs: one line saying so, exit 0."""
    path, _ = recorded
    assert main(args(path, "--until", "2026-11-02")) == 0
    assert capsys.readouterr().out == (
        "no ended runs of workflow 'chat' to replay since 2026-11-01 00:00 until 2026-11-02 00:00\n"
    )


def test_runs_are_picked_by_the_files_name_unless_told(
    recorded: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file renamed ``chat-v2`` finds no runs of its own name; ``--workflow-name chat``
    replays the recorded chat runs under it."""
    path, _ = recorded
    renamed = tmp_path / "v2.yaml"
    renamed.write_text(
        DEFAULT_WORKFLOW.read_text("utf-8").replace("name: chat\n", "name: chat-v2\n")
    )
    assert main([*args(path), str(renamed)]) == 0
    assert "no ended runs of workflow 'chat-v2'" in capsys.readouterr().out
    assert main([*args(path, "--json", "--workflow-name", "chat"), str(renamed)]) == 0
    assert json.loads(capsys.readouterr().out)["replayed"]["runs"] == 6
