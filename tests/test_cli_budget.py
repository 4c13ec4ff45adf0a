"""`budget` (in-process): the quick read and the store's ledger print the same books, and a
workflow whose models have no price still reports (the command enforces nothing)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
import trio.testing

from demiarch_flow.cli.main import main
from demiarch_flow.store.sql import SqlStore

from .store.test_lite_budget import reservations
from .store.test_lite_reader import fill

UNPRICED = """\
version: 1
name: unpriced
models: [acme/no-price-known]
retry: {max_retries: 1, initial_delay_s: 1, backoff_rate: 2, max_delay_s: 5}
fallback: {when: [retries_exhausted]}
limits:
  budget: {daily_usd: 2.5}
initial: Request
states:
  Request: {action: request, transitions: {succeeded: Done, retryable: Failed, model_failed: Failed, fatal: Failed}}
  Done: {final: true}
  Failed: {final: true}
"""


def test_a_workflow_without_prices_still_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A budget whose model has no price cannot be enforced by a run (exit 2 there), but
    `budget` only reads the books: it shows them, with the workflow's limit."""
    url = f"sqlite:///{tmp_path / 'flow.db'}"
    SqlStore.open_sync(url).close()
    wf = tmp_path / "unpriced.yaml"
    wf.write_text(UNPRICED, "utf-8")
    assert main(["budget", "--workflow", str(wf), "--db", url, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["window"], r["limit_usd"], r["remaining_usd"]) for r in rows] == [
        ("day", "2.500000000", "2.500000000"), ("month", None, None),
    ]  # fmt: skip
    with pytest.raises(SystemExit) as info:  # a run refuses it before sending anything
        main(["run", "-m", "hi", "--workflow", str(wf), "--db", url])
    assert info.value.code == 2


def test_the_quick_read_and_the_ledger_print_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a database with reservations of every kind, `budget --json` through sqlite3 (a
    plain URL, first) and through SQLAlchemy's ledger (the same file named with a query
    string, which the quick read leaves to the store) print the same rows."""
    path = tmp_path / "flow.db"
    trio.run(fill, f"sqlite:///{path}", clock=trio.testing.MockClock(autojump_threshold=0))
    reserved = reservations(f"sqlite:///{path}", datetime.now(UTC))
    printed = []
    for url in (f"sqlite:///{path}", f"sqlite:///{path}?timeout=5"):
        assert main(["budget", "--db", url, "--json"]) == 0
        printed.append(json.loads(capsys.readouterr().out))
    assert printed[0] == printed[1]
    assert (printed[0][0]["window"], printed[0][0]["reserved_usd"]) == ("day", str(reserved))
