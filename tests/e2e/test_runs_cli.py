"""``runs list`` and ``runs resume`` through the real CLI: the listing's fields, ``--status
stale``, and a live run refused (exit 2)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import FAST, Cli, SimThread
from .test_crash_matrix import kill, run_child, start_run, wait_until

pytestmark = pytest.mark.e2e

KEYS = {
    "run_id", "status", "state", "conversation_id", "models", "attempts", "cost_usd",
    "started_at", "resume_count", "owner",
}  # fmt: skip


def test_runs_list_shows_stale_runs(cli: Cli, simulator: Callable[[str], SimThread]) -> None:
    """A succeeded run and one whose process was killed: both listed with the same fields;
    ``--status stale`` finds only the killed one (stored as running), ``--status running``
    neither."""
    sim = simulator("")
    done = cli("run", FAST, "-m", "fine", "--base-url", sim.url, "--json")
    assert done.code == 0, done.stderr
    run_child(cli, cli.db, sim, "loaded")
    listed = cli("runs", "list", "--json")
    assert listed.code == 0, listed.stderr
    rows = listed.json()
    assert [set(r) for r in rows] == [KEYS, KEYS]
    by_id = {r["run_id"]: r for r in rows}
    ok = by_id[done.json()["run_id"]]
    assert (ok["status"], ok["state"], ok["attempts"], ok["resume_count"]) == (
        "succeeded",
        "Done",
        1,
        0,
    )
    assert ok["models"] == ["anthropic/claude-sonnet-4"]
    assert float(ok["cost_usd"]) > 0
    (stale_id,) = set(by_id) - {ok["run_id"]}
    assert by_id[stale_id]["status"] == "stale"
    assert ok["owner"] is None
    assert isinstance(by_id[stale_id]["owner"]["pid"], int)
    stale = cli("runs", "list", "--status", "stale", "--json")
    assert stale.code == 0, stale.stderr
    assert [(r["run_id"], r["status"]) for r in stale.json()] == [(stale_id, "stale")]
    assert cli("runs", "list", "--status", "running", "--json").json() == []


def test_a_live_run_is_not_resumed(
    cli: Cli, simulator: Callable[[str], SimThread], tmp_path: Path
) -> None:
    """``runs resume`` of a run whose process is alive (waiting on the provider): exit 2, one
    paragraph, and nothing sent; an unknown id is exit 2 too."""
    sim = simulator("*=hang*")
    # The live run's attempt must outlast the refused resume: with fast.yaml's 5 s it timed out
    # and retried while ``runs resume`` was still starting on a loaded machine (2 requests).
    text = Path(FAST).read_text("utf-8")
    assert "timeout_s: 5 " in text
    patient = tmp_path / "patient.yaml"
    patient.write_text(text.replace("timeout_s: 5 ", "timeout_s: 600 "), "utf-8")
    proc = start_run(cli, cli.db, sim, str(patient))
    try:
        wait_until(lambda: sim.sim.chat_requests >= 1, "the hanging request")
        ((run_id,),) = cli.rows("select id from workflow_runs")
        refused = cli("runs", "resume", run_id, "--base-url", sim.url)
        assert refused.code == 2
        assert "still running" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert sim.sim.chat_requests == 1
    finally:
        kill(proc)
    unknown = cli("runs", "resume", "no-such-run", "--base-url", sim.url)
    assert unknown.code == 2
    assert "no run with id" in unknown.stderr


@pytest.mark.parametrize(
    ("run_id", "says"),
    [("", "RUN_ID is empty"), ("   ", "RUN_ID is empty"), ("x" * 100_000, "100,000 characters")],
)
def test_a_run_id_that_cannot_be_one_is_an_input_error(cli: Cli, run_id: str, says: str) -> None:
    """An empty or absurdly long RUN_ID: exit 2 with a message about the id (not about
    --conversation), and a long one is not echoed back whole."""
    res = cli("runs", "resume", run_id)
    assert res.code == 2
    assert says in res.stderr
    assert "--conversation" not in res.stderr
    assert len(res.stderr) < 500


def test_a_failed_run_says_how_to_continue_it(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """A failed run's one paragraph names the run and how to continue it once the cause is
    dealt with, without a doubled full stop."""
    sim = simulator("*=401")
    res = cli("run", FAST, "-m", "hi", "--base-url", sim.url)
    assert res.code == 1
    ((run_id,),) = cli.rows("select id from workflow_runs")
    assert f"`demiarch-flow runs resume {run_id}`" in res.stderr
    assert ".." not in res.stderr
