"""`recover`, and the warning of `usage` and `history` while the recovery file holds replies
that are not in the database (in-process, SQLite)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
import trio
import trio.testing

from demiarch_flow.cli.main import main
from demiarch_flow.store.sql import SqlStore

from .store.test_recovery_import import _old_row, fail_to_persist


def _failed_persist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path, str]:
    """A database with one run whose reply went to the recovery file beside it:
    (database URL, recovery file, the reply's cost as printed)."""
    url = f"sqlite:///{tmp_path / 'flow.db'}"

    async def scenario() -> None:
        store = await SqlStore.open(url)
        try:
            await fail_to_persist(store, tmp_path, monkeypatch)
        finally:
            store.close()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    path = tmp_path / "recovery.jsonl"
    cost = Decimal(json.loads(path.read_text())["cost_usd"])
    assert cost > 0
    return url, path, f"${cost:.6f}"


def test_recover_imports_once_and_the_warning_goes_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """usage and history warn about the unimported reply; recover imports it (its spend now in
    usage); a second recover creates nothing; the file is left in place."""
    url, path, cost = _failed_persist(tmp_path, monkeypatch)
    capsys.readouterr()
    warning = (
        f"demiarch-flow: warning: 1 replies ({cost}) in {path} are not in the database yet:"
        " run `demiarch-flow recover`\n"
    )

    assert main(["usage", "--db", url]) == 0
    out = capsys.readouterr()
    assert (out.out, out.err) == ("no usage recorded yet\n", warning)
    assert main(["history", "--db", url]) == 0
    assert capsys.readouterr().err == warning

    assert main(["recover", "--db", url]) == 0
    out = capsys.readouterr()
    assert out.out == f"imported 1 replies ({cost}), skipped 0 already in the database\n"
    assert out.err == ""

    assert main(["usage", "--db", url, "--json"]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert f"${Decimal(json.loads(out.out)['total_cost_usd']):.6f}" == cost
    assert main(["history", "--db", url]) == 0
    assert capsys.readouterr().err == ""

    assert main(["recover", "--db", url]) == 0
    assert capsys.readouterr().out == (
        "imported 0 replies ($0.000000), skipped 1 already in the database\n"
    )
    assert path.is_file()


def test_an_unknown_conversation_still_warns_of_the_recovery_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`history --conversation ID` with an id the database does not hold is exit 2, and it
    still says that replies wait in the recovery file (the id may be among them)."""
    url, path, cost = _failed_persist(tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(["history", "--conversation", "nope", "--db", url]) == 2
    err = capsys.readouterr().err
    assert f"warning: 1 replies ({cost}) in {path} are not in the database yet" in err
    assert "nope" in err.split("warning:")[1].split("\n", 1)[1]


def test_bad_lines_and_gone_conversations_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed line and a row of a conversation that no longer exists: both named by line,
    the good entry imported, exit 1 because of the bad line."""
    url, path, cost = _failed_persist(tmp_path, monkeypatch)
    with path.open("a") as fh:
        fh.write("{truncated\n")
        fh.write(json.dumps(_old_row(run_id="r-gone", conversation_id="c-gone")) + "\n")
    capsys.readouterr()
    assert main(["recover", "--db", url]) == 1
    out = capsys.readouterr()
    assert out.out == (
        f"imported 1 replies ({cost}), skipped 0 already in the database,"
        " 1 whose conversation no longer exists; 1 malformed line\n"
    )
    assert f"{path}:2: malformed, skipped: not JSON" in out.err
    assert f"{path}:3: skipped: conversation c-gone (run r-gone) no longer exists" in out.err
    assert main(["usage", "--db", url]) == 0
    assert "warning" not in capsys.readouterr().err


def test_nothing_to_recover(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No recovery file: a plain message and exit 0; a missing --file is an input error."""
    url = f"sqlite:///{tmp_path / 'flow.db'}"
    assert main(["recover", "--db", url]) == 0
    assert (
        capsys.readouterr().out
        == f"nothing to recover: {tmp_path / 'recovery.jsonl'} does not exist\n"
    )
    assert main(["recover", "--db", url, "--file", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such recovery file" in capsys.readouterr().err


def test_recover_reads_an_explicit_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--file imports a recovery file from elsewhere (e.g. the data folder of a PostgreSQL user)."""
    url, path, cost = _failed_persist(tmp_path, monkeypatch)
    moved = path.rename(tmp_path / "elsewhere.jsonl")
    capsys.readouterr()
    assert main(["recover", "--db", url, "--file", str(moved)]) == 0
    assert capsys.readouterr().out.startswith(f"imported 1 replies ({cost})")
