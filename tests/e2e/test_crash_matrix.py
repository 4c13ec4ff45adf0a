"""The crash matrix (issue 10): SIGKILL at every point of a run, then ``runs resume``.

Killed after LoadContext, during a Request, during a Backoff wait, during Persist and between
Persist and Done, every run ends after one ``runs resume`` with exactly one user message, one
assistant reply, one ``llm_usage`` row per billed generation, a journal numbered 1..N without
gaps, and no request sent that was not needed. Kills that timing can reach are done to the real
CLI from outside (the simulator hangs, or the run waits); the others by ``crash_child.py``,
which kills itself from inside the store at the named point. Every wait polls an observable
condition (simulator counters, database rows) with a generous deadline: no fixed sleeps.

Runs are driven by the transition table; the cases that resume in the middle of a run (in a
Backoff wait, in Persist) run again driven by a python-statemachine instance per run
(``DEMIARCH_FLOW_MACHINE=statemachine``), which costs two cases rather than the whole matrix.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from demiarch_flow.runner.table import MACHINE_ENV
from demiarch_flow.store.sql import open_engine

from ..store.conftest import PG_URL, drop_everything, postgres_available
from .conftest import FAST, Cli, SimThread

pytestmark = pytest.mark.e2e

CHILD = str(Path(__file__).parent / "crash_child.py")
DEADLINE_S = 60.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, cli: Cli) -> Iterator[str]:
    """The database URL of the case: the CLI's SQLite file, or an emptied PostgreSQL database."""
    if request.param == "sqlite":
        yield cli.db
        return
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    drop_everything(PG_URL)
    yield PG_URL


#: Parametrize a case with this to run it under both drivers (see the module docstring).
BOTH_DRIVERS = pytest.mark.parametrize("driver", ["table", "statemachine"], indirect=True)


@pytest.fixture(autouse=True)
def driver(request: pytest.FixtureRequest, cli: Cli) -> str:
    """What drives the runs of the case's processes: the table unless parametrized."""
    name: str = getattr(request, "param", "table")
    cli.env[MACHINE_ENV] = name
    return name


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = open_engine(url, create=False)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (an error, such as a database not created yet, counts as not yet)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            if condition():
                return
        except Exception:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start_run(cli: Cli, db: str, sim: SimThread, workflow: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "demiarch_flow", "run", workflow, "-m", "crash me", "--db", db,
         "--base-url", sim.url, "--quiet"],
        env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == -signal.SIGKILL


def run_child(cli: Cli, db: str, sim: SimThread, point: str) -> None:
    """A run that kills itself at ``point`` (see crash_child.py)."""
    proc = subprocess.run(
        [sys.executable, CHILD, db, sim.url, FAST, point, "crash me"],
        env=cli.env, capture_output=True, text=True, timeout=DEADLINE_S, check=False,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def the_run(db: str) -> str:
    ((run_id,),) = rows(db, "select id from workflow_runs")
    return str(run_id)


def slow_backoff(tmp_path: Path) -> str:
    """fast.yaml with a 30 s first retry delay: a run killed in that wait is killed there."""
    text_ = Path(FAST).read_text("utf-8")
    text_ = text_.replace("initial_delay_s: 0.01", "initial_delay_s: 30")
    text_ = text_.replace("max_delay_s: 0.05", "max_delay_s: 60")
    path = tmp_path / "slow-backoff.yaml"
    path.write_text(text_, "utf-8")
    return str(path)


def check_resumed_run(db: str, run_id: str, *, resumed: bool, billed: int = 0) -> list[str]:
    """The invariants of every case; returns the journal's events."""
    ((status, resume_count),) = rows(db, "select status, resume_count from workflow_runs")
    assert status == "succeeded"
    assert resume_count == (1 if resumed else 0)
    messages = rows(db, f"select role from chat_messages where run_id = '{run_id}'")
    assert sorted(r for (r,) in messages) == ["assistant", "user"]
    usage = rows(db, f"select outcome from llm_usage where run_id = '{run_id}'")
    assert sorted(o for (o,) in usage) == ["reply"] + ["billed"] * billed
    events = rows(
        db, f"select seq, event, to_state from run_events where run_id = '{run_id}' order by seq"
    )
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
    assert events[-1][1:] == ("saved", "Done")
    names = [event for _, event, _ in events]
    assert names.count("resume") == (1 if resumed else 0)
    assert names.count("saved") == 1
    return names


def resume(cli: Cli, db: str, sim: SimThread, run_id: str, *extra: str) -> dict[str, Any]:
    result = cli("runs", "resume", run_id, "--json", "--db", db, "--base-url", sim.url, *extra)
    assert result.code == 0, result.stderr
    out: dict[str, Any] = result.json()
    assert out["run_id"] == run_id
    assert out["status"] == "succeeded"
    return out


def test_killed_after_load_context(
    cli: Cli, db: str, simulator: Callable[[str], SimThread]
) -> None:
    """Killed once LoadContext committed the run, the message and the first attempt record:
    resume sends the request once, and journals the recorded attempt as possibly billed."""
    sim = simulator("")
    run_child(cli, db, sim, "loaded")
    assert sim.sim.chat_requests == 0
    run_id = the_run(db)
    resume(cli, db, sim, run_id)
    assert sim.sim.chat_requests == 1
    events = check_resumed_run(db, run_id, resumed=True)
    assert events.count("attempt_unrecorded") == 1


@pytest.mark.parametrize(
    ("script", "sent_before"), [("*=hang,ok", 1), ("*=500,hang,ok", 2)], ids=["first", "retry"]
)
def test_killed_during_a_request(
    cli: Cli, db: str, simulator: Callable[[str], SimThread], script: str, sent_before: int
) -> None:
    """Killed while the provider has not answered (the first request, or a retry): the request
    that may have been billed is journaled, and resume sends it again once."""
    sim = simulator(script)
    proc = start_run(cli, db, sim, FAST)
    try:
        wait_until(lambda: sim.sim.chat_requests >= sent_before, "the hanging request")
    finally:
        kill(proc)
    run_id = the_run(db)
    resume(cli, db, sim, run_id)
    assert sim.sim.chat_requests == sent_before + 1
    events = check_resumed_run(db, run_id, resumed=True)
    assert events.count("attempt_unrecorded") == 1
    assert rows(db, "select count(*) from run_attempts where ended_at is null") == [(0,)]


@BOTH_DRIVERS
def test_killed_during_a_backoff_wait(
    cli: Cli, db: str, simulator: Callable[[str], SimThread], tmp_path: Path
) -> None:
    """Killed in a 30 s Backoff wait: resume (under a workflow with short waits) re-enters
    Backoff, waits, retries once and succeeds; the failed attempt was recorded, none is lost."""
    sim = simulator("*=500,ok")
    proc = start_run(cli, db, sim, slow_backoff(tmp_path))
    try:
        wait_until(
            lambda: bool(rows(db, "select seq from run_events where event = 'retryable'")),
            "the Request --retryable--> Backoff row",
        )
    finally:
        kill(proc)
    assert sim.sim.chat_requests == 1
    run_id = the_run(db)
    resume(cli, db, sim, run_id, "--workflow", FAST)
    assert sim.sim.chat_requests == 2
    events = check_resumed_run(db, run_id, resumed=True)
    assert events == ["loaded", "retryable", "resume", "retry", "succeeded", "saved"]
    ((frm, to),) = rows(db, "select from_state, to_state from run_events where event = 'resume'")
    assert (frm, to) == ("Backoff", "Backoff")


@BOTH_DRIVERS
def test_killed_during_persist(cli: Cli, db: str, simulator: Callable[[str], SimThread]) -> None:
    """Killed in Persist before the reply was written: the paid-for answer was checkpointed
    when it arrived, so resume stores it without asking the provider again."""
    sim = simulator("")
    run_child(cli, db, sim, "persist")
    assert sim.sim.chat_requests == 1
    run_id = the_run(db)
    out = resume(cli, db, sim, run_id)
    assert sim.sim.chat_requests == 1
    assert out["content"]
    events = check_resumed_run(db, run_id, resumed=True)
    assert events == ["loaded", "succeeded", "resume", "saved"]


def test_killed_between_persist_and_done(
    cli: Cli, db: str, simulator: Callable[[str], SimThread]
) -> None:
    """Killed right after Persist committed: the run is complete; resume reports the saved
    outcome and sends nothing."""
    sim = simulator("")
    run_child(cli, db, sim, "saved")
    run_id = the_run(db)
    out = resume(cli, db, sim, run_id)
    assert sim.sim.chat_requests == 1
    assert out["content"]
    events = check_resumed_run(db, run_id, resumed=False)
    assert events == ["loaded", "succeeded", "saved"]
