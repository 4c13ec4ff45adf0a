"""The command line speaks one language: every argument has help, an unknown id is an input
error (2) and a network command without a network an environment error (3), hints carry the
real id, decimals print plainly, JSON lines survive ``str.splitlines`` and every command that
reports something can say it in JSON (in-process, SQLite, the simulator on 127.0.0.1)."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from demiarch_flow.cli._json import json_line
from demiarch_flow.cli.main import build_parser, main
from demiarch_flow.store.schema import HEAD

from .conftest import DEFAULT_WORKFLOW, MemoryKeyring
from .e2e.conftest import FAST, Cli, SimThread, cli
from .test_recover_cli import _failed_persist

__all__ = ["cli"]  # the subprocess fixture, for the streamed run

KEY = "sk-or-consistency-0123456789abcdef"


def _undocumented(parser: argparse.ArgumentParser, path: str) -> Iterator[str]:
    """Every argument, option, command and sub-command of ``parser`` that has no help text."""
    if not parser.description:
        yield f"{path} (no description for its --help)"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if not action.help:
                yield f"{path} {action.metavar}"
            helped = {choice.dest for choice in action._choices_actions if choice.help}
            for name, child in action.choices.items():
                if name not in helped:
                    yield f"{path} {name} (no line in the list of commands)"
                yield from _undocumented(child, f"{path} {name}")
        elif not action.help or action.help == argparse.SUPPRESS:
            yield f"{path} {'/'.join(action.option_strings) or action.metavar or action.dest}"


def test_every_argument_and_option_has_help() -> None:
    """Walking the whole parser finds no argument, option or command without help text, and
    every command's own --help says what it does."""
    assert list(_undocumented(build_parser(), "demiarch-flow")) == []


# ---------------------------------------------------------------------- exit codes


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memory_keyring: MemoryKeyring) -> Path:
    """A private data folder, an in-memory keyring, the test key and a database URL in it."""
    monkeypatch.setenv("DEMIARCH_FLOW_HOME", str(tmp_path))
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    monkeypatch.setenv("DEMIARCH_FLOW_DB", f"sqlite:///{tmp_path / 'flow.db'}")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("OPENROUTER_BASE_URL", raising=False)
    return tmp_path


@pytest.fixture
def sim() -> Iterator[SimThread]:
    """The bundled simulator on 127.0.0.1, answering every request."""
    started = SimThread("")
    yield started
    started.stop()


def _unreachable() -> str:
    """A base URL on 127.0.0.1 where nothing listens (connection refused, no real network)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/v1"


@pytest.mark.parametrize(
    "command",
    [
        ["history", "--conversation", "nope"],
        ["history", "--conversation", "nope", "--json"],
        ["runs", "show", "nope"],
        ["runs", "show", "nope", "--json"],
        ["runs", "resume", "nope"],
    ],
)
def test_an_unknown_id_is_an_input_error(
    home: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """An id that names nothing in an existing database is exit 2, whichever command it is
    given to, and the message names it."""
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(command) == 2
    out = capsys.readouterr()
    assert "'nope'" in out.err
    assert out.out == ""


@pytest.mark.parametrize("database", ["missing", "existing"])
@pytest.mark.parametrize("output", [[], ["--json"], ["--jsonl"]])
def test_run_with_an_unknown_conversation_is_an_input_error(
    home: Path,
    sim: SimThread,
    database: str,
    output: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`run --conversation nope`: exit 2 (with or without --json/--jsonl), nothing sent, no
    run recorded, and a database that did not exist is not created for it."""
    if database == "existing":
        assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    argv = ["run", FAST, "-m", "hi", "--conversation", "nope", "--base-url", sim.url, *output]
    assert main(argv) == 2
    out = capsys.readouterr()
    assert "no conversation with id 'nope'" in out.err
    assert out.out == ""
    assert sim.sim.chat_requests == 0
    if database == "missing":
        assert not (home / "flow.db").exists()
    else:
        assert main(["runs", "list", "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == []


def test_models_sync_without_a_network_is_an_environment_error(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`models sync` that cannot reach its base URL: exit 3, naming the host, nothing written."""
    assert main(["models", "sync", "--base-url", _unreachable(), "--force"]) == 3
    err = capsys.readouterr().err
    assert "cannot reach 127.0.0.1" in err
    assert KEY not in err
    assert not (home / "prices.json").exists()


def test_budget_key_without_a_network_is_an_environment_error(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`budget --key` that cannot reach OpenRouter: exit 3, as `models sync`."""
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["budget", "--key", "--base-url", _unreachable()]) == 3
    err = capsys.readouterr().err
    assert "cannot reach 127.0.0.1" in err
    assert KEY not in err


# ---------------------------------------------------------------------- hints


def test_a_failed_runs_hints_carry_its_id(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every model answering 404: the failure's hints name the run's own id (the `runs show`
    one as the `runs resume` one), never a placeholder."""
    sim = SimThread("*=404*")
    try:
        assert main(["run", FAST, "-m", "hi", "--quiet", "--base-url", sim.url]) == 1
    finally:
        sim.stop()
    err = capsys.readouterr().err
    run_id = re.search(r"run (\S+) failed", err)
    assert run_id is not None, err
    assert f"`demiarch-flow runs show {run_id[1]}`" in err
    assert f"`demiarch-flow runs resume {run_id[1]}`" in err
    assert "RUN_ID" not in err


# ---------------------------------------------------------------------- decimals


def _no_exponent(text: str) -> None:
    """No amount in ``text`` is written with an exponent (``0E-9``, ``1E+1``)."""
    assert not re.search(r"\b\d+(?:\.\d+)?E[+-]\d+\b", text), text


def test_budget_key_prints_openrouters_zero_plainly(
    home: Path, sim: SimThread, capsys: pytest.CaptureFixture[str]
) -> None:
    """OpenRouter's "0" is 0.000000000 in `budget --key --json` and in its table, not 0E-9."""
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["budget", "--key", "--base-url", sim.url, "--json"]) == 0
    out = capsys.readouterr().out
    _no_exponent(out)
    assert [row["openrouter_usd"] for row in json.loads(out)] == ["0.000000000"] * 2
    assert main(["budget", "--key", "--base-url", sim.url]) == 0
    out = capsys.readouterr().out
    _no_exponent(out)
    assert "0.000000000" in out


def test_amounts_of_a_run_that_cost_nothing_print_plainly(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that failed before any answer cost nothing: `runs list` (table and --json),
    `usage` and `run --json` write its zero without an exponent."""
    sim = SimThread("*=404*")
    try:
        assert main(["run", FAST, "-m", "hi", "--json", "--base-url", sim.url]) == 1
    finally:
        sim.stop()
    _no_exponent(capsys.readouterr().out)
    for command in (["runs", "list"], ["runs", "list", "--json"], ["usage", "--json"], ["usage"]):
        assert main(command) == 0
        _no_exponent(capsys.readouterr().out)


# ---------------------------------------------------------------------- JSON lines

#: JSON allows these raw in a string; ``str.splitlines`` ends a line at each of them.
BREAKERS = "a\u2028b\u2029c\x85d"


def _lines(text: str) -> list[object]:
    """Every line of ``text``, as split by ``str.splitlines``, parsed as JSON."""
    return [json.loads(line) for line in text.splitlines()]


def test_json_lines_survive_splitlines(
    home: Path, sim: SimThread, cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """U+2028, U+2029 and NEL in a message (echoed by the simulator in the reply) are escaped
    by `run --jsonl` (deltas and result), `run --json`, `batch`, `history --json` and
    `runs list --json`: each line parses, and the text decodes back unchanged."""
    base = ["--base-url", sim.url, "--quiet"]
    # streamed in a process of its own (an in-process stream leaves httpx generators to the GC)
    res = cli("run", FAST, "-m", BREAKERS, "--jsonl", "--stream", *base)
    assert res.code == 0, res.stderr
    events = _lines(res.stdout)
    result = events[-1]
    assert isinstance(result, dict) and result["type"] == "result"
    assert result["content"].endswith(f"You said: {BREAKERS}")
    deltas = "".join(e["text"] for e in events if isinstance(e, dict) and e["type"] == "delta")
    assert deltas == result["content"]

    assert main(["run", FAST, "-m", BREAKERS, "--json", "--no-stream", *base]) == 0
    (doc,) = _lines(capsys.readouterr().out)
    assert isinstance(doc, dict) and doc["content"].endswith(BREAKERS)

    batch = tmp_path / "in.jsonl"
    batch.write_text(json.dumps({"id": "x", "message": BREAKERS}) + "\n", "utf-8")
    assert main(["batch", str(batch), FAST, *base]) == 0, capsys.readouterr().err
    (line,) = _lines(capsys.readouterr().out)
    assert isinstance(line, dict) and line["content"].endswith(BREAKERS)

    assert main(["history", "--conversation", result["conversation_id"], "--json"]) == 0
    (messages,) = _lines(capsys.readouterr().out)
    assert isinstance(messages, list) and messages[0]["content"] == BREAKERS
    assert main(["runs", "list", "--json"]) == 0
    assert len(_lines(capsys.readouterr().out)) == 1


def test_json_line_escapes_only_what_splitlines_breaks_on() -> None:
    """Other non-ASCII text stays readable UTF-8; the escaped text decodes back the same."""
    doc = {"text": f"é😀 {BREAKERS}"}
    line = json_line(doc)
    assert "é😀" in line and "\\u2028" in line and "\\u2029" in line and "\\u0085" in line
    assert line.splitlines() == [line]
    assert json.loads(line) == doc


# ---------------------------------------------------------------------- --json everywhere


def _one_object(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """stdout is exactly one JSON object on one line."""
    (doc,) = _lines(capsys.readouterr().out)
    assert isinstance(doc, dict)
    return doc


def test_validate_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`validate --json`: one object for all files, each problem with its line; exit 2 when
    any file is invalid, and nothing on stderr."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\nmodels: [a/b]\nretry: {max_retries: -1}\n", "utf-8")
    assert main(["validate", "--json", FAST]) == 0
    doc = _one_object(capsys)
    assert doc["ok"] is True
    assert doc["files"][0] | {"models": None} == {
        "file": FAST, "ok": True, "workflow": "chat-fast", "states": 7, "models": None,
        "max_retries": 3,
    }  # fmt: skip
    assert main(["validate", "--json", FAST, str(bad)]) == 2
    out = capsys.readouterr()
    assert out.err == ""
    (doc,) = _lines(out.out)
    assert isinstance(doc, dict) and doc["ok"] is False
    assert [f["ok"] for f in doc["files"]] == [True, False]
    failed = doc["files"][1]
    assert failed["file"] == str(bad) and str(bad) in failed["error"]
    assert failed["problems"] and all(p["line"] > 0 for p in failed["problems"])


def test_key_status_json(
    memory_keyring: MemoryKeyring,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`key status --json`: whether the key is usable and where it comes from, exit 3 when
    it is missing or cannot be sent; the key itself never appears."""
    assert main(["key", "status", "--json"]) == 3
    doc = _one_object(capsys)
    assert (doc["usable"], doc["source"]) == (False, None)
    assert "no API key" in doc["problem"] and doc["message"].startswith("no key")

    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    assert main(["key", "status", "--json"]) == 0
    out = capsys.readouterr().out
    assert KEY not in out
    doc = json.loads(out)
    assert (doc["usable"], doc["source"], doc["problem"]) == (True, "environment", None)

    monkeypatch.delenv("OPENROUTER_API_KEY")
    memory_keyring.set_password("demiarch-flow", "openrouter", "sk-or-bad\u00e9" + "x" * 20)
    assert main(["key", "status", "--json"]) == 3
    out = capsys.readouterr().out
    assert "sk-or-bad" not in out
    doc = json.loads(out)
    assert (doc["usable"], doc["source"]) == (False, "keyring")
    assert "cannot be sent" in doc["problem"]


def test_recover_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`recover --json`: one object with the file and the counts, for no file and for a file
    with one reply to import."""
    url = f"sqlite:///{tmp_path / 'flow.db'}"
    assert main(["recover", "--db", url, "--json"]) == 0
    assert _one_object(capsys) == {
        "file": str(tmp_path / "recovery.jsonl"), "found": False, "imported": 0,
        "imported_usd": "0", "present": 0, "no_conversation": 0, "failed": 0, "malformed": 0,
    }  # fmt: skip
    url, path, cost = _failed_persist(tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(["recover", "--db", url, "--json"]) == 0
    doc = _one_object(capsys)
    assert (doc["file"], doc["found"], doc["imported"], doc["present"]) == (str(path), True, 1, 0)
    assert f"${Decimal(doc['imported_usd']):.6f}" == cost
    assert main(["recover", "--db", url, "--json"]) == 0
    assert _one_object(capsys)["present"] == 1


def test_db_upgrade_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`db upgrade --json`: what was done (created, then nothing) and the revision; it cannot
    be combined with --sql."""
    url = f"sqlite:///{tmp_path / 'flow.db'}"
    assert main(["db", "upgrade", "--db", url, "--json"]) == 0
    doc = _one_object(capsys)
    assert (doc["action"], doc["from_revision"], doc["revision"]) == ("created", None, HEAD)
    assert doc["backend"] == "sqlite" and str(tmp_path) in doc["database"]
    assert main(["db", "upgrade", "--db", url, "--json"]) == 0
    doc = _one_object(capsys)
    assert (doc["action"], doc["from_revision"], doc["revision"]) == ("none", HEAD, HEAD)
    with pytest.raises(SystemExit) as info:
        main(["db", "upgrade", "--db", url, "--json", "--sql"])
    assert info.value.code == 2


def test_models_sync_json(home: Path, sim: SimThread, capsys: pytest.CaptureFixture[str]) -> None:
    """`models sync --json`: the file written and how many models were written and skipped."""
    assert main(["models", "sync", "--base-url", sim.url, "--json", "--force"]) == 0
    doc = _one_object(capsys)
    assert doc["written"] > 0 and doc["skipped"] == 0 and doc["source"] == sim.url
    assert Path(doc["file"]).is_file()


# ---------------------------------------------------------------------- attempts' messages


def test_run_json_attempts_carry_their_error_message(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --json`: each attempt has `error_message` (the provider's words for a failed one,
    null for the one that answered), the same text `--jsonl`'s attempt events carry; batch
    result lines too."""
    sim = SimThread("anthropic/claude-sonnet-4=404*")
    base = ["--base-url", sim.url, "--quiet", "--no-stream"]
    try:
        assert main(["run", FAST, "-m", "hi", "--json", *base]) == 0
        doc = _one_object(capsys)
        assert main(["run", FAST, "-m", "hi", "--jsonl", *base]) == 0
        events = _lines(capsys.readouterr().out)
        batch = tmp_path / "in.jsonl"
        batch.write_text(json.dumps({"id": "x", "message": "hi"}) + "\n", "utf-8")
        assert main(["batch", str(batch), FAST, *base[:-1]]) == 0
        line = _one_object(capsys)
    finally:
        sim.stop()
    failed, answered = doc["attempts"]
    assert failed["outcome"] == "error" and "No endpoints found" in failed["error_message"]
    assert (answered["outcome"], answered["error_message"]) == ("ok", None)
    said = [e["message"] for e in events if isinstance(e, dict) and e["type"] == "attempt"]
    assert said == [failed["error_message"], None]
    result = events[-1]
    assert isinstance(result, dict)
    assert [a["error_message"] for a in result["attempts"]] == said
    assert [a["error_message"] for a in line["attempts"]] == said


def test_a_reader_that_goes_away_is_not_an_internal_error(tmp_path: Path) -> None:
    """`… | head -1`: stdout closed before the command writes — exit 141 (a SIGPIPE's), nothing
    on stderr (no "internal error: BrokenPipeError", no "Exception ignored")."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "demiarch_flow", "validate", "--json", str(DEFAULT_WORKFLOW)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.close()  # before the interpreter has even started up
    _, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stderr.decode()) == (141, "")
