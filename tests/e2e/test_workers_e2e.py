"""Runs on many machines (issue 19): ``submit``, real ``worker`` processes and ``runs wait`` on
PostgreSQL, against the bundled simulator.

Each test owns a PostgreSQL database (uniquely named, dropped after). Sizes are small for CI;
``DEMIARCH_FLOW_WORKERS_N`` raises the drain test's run count (the issue's 300). Waits poll an
observable condition with a deadline: no fixed sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from ..store.conftest import own_pg_database
from .conftest import FAST, Cli, Result, SimThread

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

N = int(os.environ.get("DEMIARCH_FLOW_WORKERS_N", "24"))
DEADLINE_S = 60.0
_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
CHILD = "tests.e2e.worker_child"


@pytest.fixture
def pg() -> Iterator[str]:
    """A PostgreSQL database of this test's own, dropped afterwards."""
    yield from own_pg_database("dflow_workers")


def write(url: str, *statements: str, **params: Any) -> None:
    """Run ``statements`` in one transaction (a test's edit of the database by hand)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for sql in statements:
                conn.execute(text(sql), params)
    finally:
        engine.dispose()


def rows(url: str, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())
    finally:
        engine.dispose()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start_worker(
    cli: Cli, url: str, sim: SimThread, *extra: str, kill_at: str | None = None
) -> subprocess.Popen[str]:
    head = ["-m", CHILD, kill_at] if kill_at else ["-m", "demiarch_flow"]
    return subprocess.Popen(
        [sys.executable, *head, "worker", "--db", url, "--base-url", sim.url, "--json", *extra],
        env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).parents[2],
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float = DEADLINE_S) -> Result:
    out, err = proc.communicate(timeout=timeout)
    return Result(proc.returncode, out, err)


def lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def batch_file(tmp_path: Path, n: int, name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(
        "".join(json.dumps({"id": f"q{i}", "message": f"turn {i}"}) + "\n" for i in range(n))
    )
    return path


def paid_once(url: str, run_ids: list[str]) -> None:
    """Each run succeeded with exactly one reply and one ``llm_usage`` row."""
    usage = dict(rows(url, "SELECT run_id, count(*) FROM llm_usage GROUP BY run_id"))
    replies = dict(
        rows(
            url,
            "SELECT run_id, count(*) FROM chat_messages WHERE role = 'assistant' GROUP BY run_id",
        )
    )
    status = dict(rows(url, "SELECT id, status FROM workflow_runs"))
    for run_id in run_ids:
        assert (status.get(run_id), usage.get(run_id), replies.get(run_id)) == (
            "succeeded",
            1,
            1,
        ), run_id


def test_three_workers_drain_a_submitted_batch_paid_once(
    cli: Cli, simulator: Callable[..., SimThread], pg: str, tmp_path: Path
) -> None:
    """3 workers drain N submitted runs: each run once in `llm_usage` with one reply, each
    request sent once, every run reported by exactly one worker; `submit --batch` again submits
    nothing twice, and an edited line is a new run."""
    sim = simulator()
    path = batch_file(tmp_path, N)
    first = cli("submit", FAST, "--batch", str(path), "--db", pg, "--json")
    assert first.code == 0, first.stderr
    submitted = lines(first)
    assert [d["status"] for d in submitted] == ["queued"] * N
    assert len({d["run_id"] for d in submitted}) == N
    again = cli("submit", FAST, "--batch", str(path), "--db", pg, "--json")
    assert [d["status"] for d in lines(again)] == ["already_submitted"] * N
    assert [d["run_id"] for d in lines(again)] == [d["run_id"] for d in submitted]
    queued = cli("runs", "list", "--status", "queued", "--limit", "100000", "--db", pg, "--json")
    assert sorted(r["run_id"] for r in queued.json()) == sorted(d["run_id"] for d in submitted)
    assert {(r["status"], r["owner"]) for r in queued.json()} == {("queued", None)}
    workers = [start_worker(cli, pg, sim, "--until-empty", "--concurrency", "8") for _ in range(3)]
    results = [finish(w) for w in workers]
    assert [r.code for r in results] == [0, 0, 0], [r.stderr for r in results]
    reported = [d["run_id"] for r in results for d in lines(r)]
    assert sorted(reported) == sorted(d["run_id"] for d in submitted)
    paid_once(pg, reported)
    assert sim.sim.chat_requests == N
    # the same file, after the runs: still nothing twice; one edited line is one new run
    edited = path.read_text().replace('"turn 0"', '"turn zero"')
    path.write_text(edited)
    third = lines(cli("submit", FAST, "--batch", str(path), "--db", pg, "--json"))
    assert [d["status"] for d in third] == ["queued"] + ["already_submitted"] * (N - 1)
    assert third[0]["run_id"] != submitted[0]["run_id"]


def test_runs_show_a_queued_run(cli: Cli, pg: str) -> None:
    """A submitted run no worker has begun is shown as queued (it was "no run with id")."""
    run_id = cli("submit", FAST, "-m", "waiting", "--db", pg).stdout.strip()
    shown = cli("runs", "show", run_id, "--db", pg, "--json").json()
    assert (shown["run_id"], shown["status"], shown["events"]) == (run_id, "queued", [])
    assert shown["submitted_at"] is not None
    text_form = cli("runs", "show", run_id, "--db", pg)
    assert f"run {run_id}" in text_form.stdout
    assert "queued" in text_form.stdout


def test_eight_workers_started_at_once_on_a_new_database_all_come_up(
    cli: Cli, simulator: Callable[..., SimThread], pg: str
) -> None:
    """Eight workers started together on an empty database: our tables and the queue's are
    created once between them, every worker comes up and (the queue being empty) exits 0."""
    sim = simulator()
    workers = [start_worker(cli, pg, sim, "--until-empty") for _ in range(8)]
    results = [finish(w) for w in workers]
    assert [r.code for r in results] == [0] * 8, [r.stderr for r in results if r.code]
    current = cli("db", "current", "--db", pg, "--json").json()
    assert current["is_head"] is True
    assert current["queue"]["is_current"] is True


def test_a_job_delivered_twice_is_paid_once(
    cli: Cli, simulator: Callable[..., SimThread], pg: str
) -> None:
    """The job of a run that succeeded, delivered again, sends nothing and succeeds."""
    sim = simulator()
    run_id = cli("submit", FAST, "-m", "once", "--db", pg).stdout.strip()
    assert finish(start_worker(cli, pg, sim, "--until-empty")).code == 0
    assert sim.sim.chat_requests == 1
    # procrastinate delivers at least once: put the finished job back in the queue
    write(pg, "UPDATE procrastinate_jobs SET status = 'todo'")
    again = finish(start_worker(cli, pg, sim, "--until-empty"))
    assert again.code == 0, again.stderr
    assert [(d["run_id"], d["action"], d["status"]) for d in lines(again)] == [
        (run_id, "ended", "succeeded")
    ]
    assert sim.sim.chat_requests == 1
    paid_once(pg, [run_id])


@pytest.mark.parametrize(
    ("point", "action"),
    [
        pytest.param("loaded", "resumed", id="before-the-request"),
        pytest.param("persist", "resumed", id="answer-received-in-persist"),
        pytest.param("saved", "ended", id="after-the-reply-was-saved"),
    ],
)
def test_a_worker_killed_at_a_point_has_its_run_finished_once_by_another(
    point: str, action: str, cli: Cli, simulator: Callable[..., SimThread], pg: str
) -> None:
    """SIGKILL before the request, in Persist (the answer arrived and was checkpointed) and
    after the reply was saved: another worker finishes the same run within --stall-after plus
    10 s, and the simulator sees one request in all — none again for a received answer.

    The 10 s are counted beyond what a worker takes to start and stop on this machine at this
    moment (one with nothing to do, timed first): under a heavy load a process's start alone
    has taken longer than the whole allowance."""
    sim = simulator()
    began = time.monotonic()
    assert finish(start_worker(cli, pg, sim, "--until-empty")).code == 0
    start_and_stop = time.monotonic() - began
    run_id = cli("submit", FAST, "-m", f"killed at {point}", "--db", pg).stdout.strip()
    dead = start_worker(cli, pg, sim, "--stall-after", "2", kill_at=point)
    assert finish(dead).code == -signal.SIGKILL
    began = time.monotonic()
    live = finish(start_worker(cli, pg, sim, "--until-empty", "--stall-after", "2"))
    assert live.code == 0, live.stderr
    assert time.monotonic() - began < 2 + 10 + start_and_stop
    assert [(d["run_id"], d["status"], d["action"]) for d in lines(live)] == [
        (run_id, "succeeded", action)
    ]
    assert sim.sim.chat_requests == 1
    paid_once(pg, [run_id])


def test_a_worker_killed_in_a_backoff_wait_has_the_retry_sent_by_another(
    cli: Cli, simulator: Callable[..., SimThread], pg: str, tmp_path: Path
) -> None:
    """SIGKILL while the run waits in Backoff after a 500: another worker resumes it in
    Backoff and sends only the retry (two requests in all, one reply)."""
    slow = tmp_path / "slow-backoff.yaml"
    text_ = Path(FAST).read_text().replace("initial_delay_s: 0.01", "initial_delay_s: 2")
    slow.write_text(text_.replace("max_delay_s: 0.05", "max_delay_s: 2"))
    sim = simulator("anthropic/claude-sonnet-4=500")
    run_id = cli("submit", str(slow), "-m", "killed in backoff", "--db", pg).stdout.strip()
    dead = start_worker(cli, pg, sim, "--stall-after", "2")
    in_backoff = "SELECT current_state FROM workflow_runs WHERE id = :r"
    wait_for(lambda: rows(pg, in_backoff, r=run_id) == [("Backoff",)], "the run to wait in Backoff")
    dead.send_signal(signal.SIGKILL)
    assert finish(dead).code == -signal.SIGKILL
    live = finish(start_worker(cli, pg, sim, "--until-empty", "--stall-after", "2"))
    assert live.code == 0, live.stderr
    assert [(d["run_id"], d["action"]) for d in lines(live)] == [(run_id, "resumed")]
    assert sim.sim.chat_requests == 2
    paid_once(pg, [run_id])


def test_a_job_that_is_not_a_run_fails_alone(
    cli: Cli, simulator: Callable[..., SimThread], pg: str
) -> None:
    """A job whose run cannot be made (its arguments name no run) fails with one clear log
    line; the worker goes on with the next job and exits 0 with --until-empty."""
    sim = simulator()
    run_id = cli("submit", FAST, "-m", "after the bad one", "--db", pg).stdout.strip()
    write(  # a job deferred by hand
        pg,
        "INSERT INTO procrastinate_jobs (queue_name, task_name, args)"
        " VALUES ('runs', 'demiarch_flow.run', '{\"run_id\": \"gone\"}')",
    )
    done = finish(start_worker(cli, pg, sim, "--until-empty"))
    assert done.code == 0, done.stderr
    assert "not a submitted run's" in done.stderr
    assert "Traceback" not in done.stderr
    assert [d["run_id"] for d in lines(done)] == [run_id]
    failed = rows(pg, "SELECT status FROM procrastinate_jobs WHERE args->>'run_id' = 'gone'")
    assert failed == [("failed",)]


def test_a_run_deleted_while_its_job_is_queued_fails_its_job_alone(
    cli: Cli, simulator: Callable[..., SimThread], pg: str
) -> None:
    """A run that had begun and paid, its rows deleted by hand while its job was back in the
    queue: the job fails with one clear log line, nothing is sent again (it used to start
    afresh and pay twice), and the worker goes on with the next job."""
    sim = simulator()
    gone = cli("submit", FAST, "-m", "deleted later", "--db", pg).stdout.strip()
    assert finish(start_worker(cli, pg, sim, "--until-empty")).code == 0
    assert sim.sim.chat_requests == 1
    write(
        pg,
        "DELETE FROM run_events WHERE run_id = :r",
        "DELETE FROM run_attempts WHERE run_id = :r",
        "DELETE FROM workflow_runs WHERE id = :r",
        "UPDATE procrastinate_jobs SET status = 'todo'",
        r=gone,
    )
    after = cli("submit", FAST, "-m", "after it", "--db", pg).stdout.strip()
    done = finish(start_worker(cli, pg, sim, "--until-empty"))
    assert done.code == 0, done.stderr
    assert f"run {gone} was deleted from workflow_runs after it had begun" in done.stderr
    assert "Traceback" not in done.stderr
    assert [d["run_id"] for d in lines(done)] == [after]
    assert sim.sim.chat_requests == 2
    assert rows(pg, "SELECT count(*) FROM workflow_runs WHERE id = :r", r=gone) == [(0,)]
    failed = rows(pg, "SELECT status FROM procrastinate_jobs WHERE args->>'run_id' = :r", r=gone)
    assert failed == [("failed",)]
    # `runs wait` reports the run whose job failed for good instead of waiting for a run row
    # that will never come (it used to wait until its timeout: exit 124)
    waited = cli("runs", "wait", gone, after, "--db", pg, "--json", "--timeout", "30")
    assert waited.code == 1, waited.stderr
    outcomes = {d["run_id"]: d for d in lines(waited)}
    assert outcomes[after]["status"] == "succeeded"
    assert outcomes[gone]["status"] == "failed"
    assert "its job failed before the run began" in json.dumps(outcomes[gone])


def test_a_worker_killed_mid_request_has_its_run_finished_by_another(
    cli: Cli, simulator: Callable[..., SimThread], pg: str
) -> None:
    """SIGKILL while the request is out (no answer yet): a live worker resumes the same run id,
    sends it again (nothing had been received) and stores exactly one reply."""
    sim = simulator("anthropic/claude-sonnet-4=hang,ok")
    run_id = cli("submit", FAST, "-m", "killed mid-request", "--db", pg).stdout.strip()
    dead = start_worker(cli, pg, sim, "--stall-after", "2")
    wait_for(lambda: sim.sim.chat_requests == 1, "the request to reach the simulator")
    dead.send_signal(signal.SIGKILL)
    assert finish(dead).code == -signal.SIGKILL
    live = finish(start_worker(cli, pg, sim, "--until-empty", "--stall-after", "2"))
    assert live.code == 0, live.stderr
    assert [(d["run_id"], d["action"]) for d in lines(live)] == [(run_id, "resumed")]
    assert sim.sim.chat_requests == 2
    paid_once(pg, [run_id])


def test_a_frozen_worker_is_taken_over_and_writes_nothing_when_woken(
    cli: Cli, simulator: Callable[..., SimThread], pg: str
) -> None:
    """SIGSTOP a worker mid-request past --stall-after: another finishes the same run; woken
    with SIGCONT, the first overwrites nothing (one reply, one usage row) and says so."""
    sim = simulator("anthropic/claude-sonnet-4=hang,ok")
    run_id = cli("submit", FAST, "-m", "frozen", "--db", pg).stdout.strip()
    frozen = start_worker(cli, pg, sim, "--stall-after", "2", "--grace", "20")
    wait_for(lambda: sim.sim.chat_requests == 1, "the request to reach the simulator")
    frozen.send_signal(signal.SIGSTOP)
    (listed,) = cli("runs", "list", "--db", pg, "--json").json()
    assert (listed["run_id"], listed["status"]) == (run_id, "running")
    assert listed["owner"]["pid"] == frozen.pid
    try:
        live = finish(start_worker(cli, pg, sim, "--until-empty", "--stall-after", "2"))
    finally:
        frozen.send_signal(signal.SIGCONT)
    assert live.code == 0, live.stderr
    assert [(d["run_id"], d["action"]) for d in lines(live)] == [(run_id, "resumed")]
    frozen.send_signal(signal.SIGTERM)  # its run in flight ends (the hung request times out)
    woken = finish(frozen)
    assert woken.code == 0, woken.stderr
    assert "taken over by another worker" in woken.stderr
    assert "Traceback" not in woken.stderr
    assert lines(woken) == []
    assert sim.sim.chat_requests == 2
    paid_once(pg, [run_id])


def test_a_worker_outlives_its_database_connections(
    cli: Cli, simulator: Callable[..., SimThread], pg: str
) -> None:
    """Every connection of the database killed under a running worker (as a PostgreSQL restart
    does): the worker reconnects and runs what is submitted afterwards."""
    import psycopg

    sim = simulator()
    first = cli("submit", FAST, "-m", "before", "--db", pg).stdout.strip()
    worker = start_worker(cli, pg, sim, "--stall-after", "2")
    try:
        done = "SELECT status FROM workflow_runs WHERE id = :r"
        wait_for(lambda: rows(pg, done, r=first) == [("succeeded",)], "the first run")
        name = pg.rsplit("/", 1)[1]
        with psycopg.connect(_ADMIN, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        second = cli("submit", FAST, "-m", "after", "--db", pg).stdout.strip()
        wait_for(lambda: rows(pg, done, r=second) == [("succeeded",)], "the second run")
    finally:
        worker.send_signal(signal.SIGTERM)
        stopped = finish(worker)
    assert stopped.code == 0, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert [d["run_id"] for d in lines(stopped)] == [first, second]
    paid_once(pg, [first, second])


def test_a_job_whose_finish_fails_is_recorded_once_the_database_answers(
    cli: Cli, simulator: Callable[..., SimThread], pg: str
) -> None:
    """The database cuts the statements that record a job's end, right after its run ended,
    while the worker goes on beating: the end is recorded once the database answers again (the
    job used to stay `doing` under a live worker, which no stalled-job sweep takes, and
    `--until-empty` never exited), one log line says what failed, and nothing runs twice."""
    sim = simulator()
    run_id = cli("submit", FAST, "-m", "finish cut", "--db", pg).stdout.strip()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.outage_child", "4", "worker", "--db", pg,
         "--base-url", sim.url, "--json", "--until-empty", "--stall-after", "2"],
        env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).parents[2],
    )  # fmt: skip
    try:
        done = finish(proc, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert done.code == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert f"run {run_id}" in done.stderr
    assert "its end could not be written (AdminShutdown: terminating connection" in done.stderr
    assert "discarding closed connection" not in done.stderr  # psycopg's pool kept quiet
    assert [(d["run_id"], d["action"]) for d in lines(done)] == [(run_id, "ran")]
    jobs = rows(pg, "SELECT status, attempts FROM procrastinate_jobs")
    assert jobs == [("succeeded", 1)]
    assert sim.sim.chat_requests == 1
    paid_once(pg, [run_id])


def test_batch_queue_interrupted_then_run_again_writes_every_line_once(
    cli: Cli, simulator: Callable[..., SimThread], pg: str, tmp_path: Path
) -> None:
    """`batch --queue` submits the file and waits; Ctrl-C stops the waiting only (exit 130, the
    runs stay queued); the same command again, with a worker running, collects every run and
    leaves OUT with one line per input id, in input order, as `batch` writes them."""
    sim = simulator()
    path = batch_file(tmp_path, 6)
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "demiarch_flow", "batch", str(path), FAST, "--queue",
            "--out", str(out), "--db", pg]  # fmt: skip
    waiting = subprocess.Popen(argv, env=cli.env, stderr=subprocess.PIPE, text=True)
    queued = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'"
    wait_for(lambda: rows(pg, queued) == [(6,)] if _has_jobs(pg) else False, "the submission")
    waiting.send_signal(signal.SIGINT)
    _, err = waiting.communicate(timeout=DEADLINE_S)
    assert waiting.returncode == 130, err
    assert "the runs go on in the workers" in err
    worker = start_worker(cli, pg, sim, "--until-empty")
    again = cli("batch", str(path), FAST, "--queue", "--out", str(out), "--db", pg)
    assert finish(worker).code == 0
    assert again.code == 0, again.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in results] == [f"q{i}" for i in range(6)]
    assert [r["line"] for r in results] == list(range(1, 7))
    assert {r["status"] for r in results} == {"succeeded"}
    assert all(len(r["input_sha256"]) == 64 for r in results)
    assert sim.sim.chat_requests == 6
    paid_once(pg, [r["run_id"] for r in results])


def _has_jobs(url: str) -> bool:
    return bool(rows(url, "SELECT to_regclass('procrastinate_jobs') IS NOT NULL")[0][0])


def _limited(tmp_path: Path, limits: str, max_tokens: int | None = None) -> str:
    text_ = Path(FAST).read_text("utf-8")
    if max_tokens is not None:
        text_ = text_.replace(
            "  # optional: temperature, max_tokens", f"  max_tokens: {max_tokens}"
        )
    path = tmp_path / "limited.yaml"
    path.write_text(text_ + "\nlimits:\n" + limits, "utf-8")
    return str(path)


def test_four_workers_never_overspend_a_daily_budget(
    cli: Cli, simulator: Callable[..., SimThread], pg: str, tmp_path: Path
) -> None:
    """48 runs through four workers against a daily budget that fits 12 worst cases: the spend
    stays within it, every refused run failed as budget_exceeded and sent nothing."""
    from decimal import Decimal

    from demiarch_flow.definition import parse_workflow
    from demiarch_flow.pricing import PriceTable
    from demiarch_flow.runner.budget import estimate_tokens, worst_case_usd
    from demiarch_flow.runner.state import Message

    sim = simulator("", latency_s=0.02)
    wf0 = parse_workflow(Path(FAST).read_text("utf-8"))
    system = [Message("system", wf0.system)] if wf0.system else []
    tokens = estimate_tokens([*system, Message("user", "turn 00")])
    worst = worst_case_usd(PriceTable.load(), "anthropic/claude-sonnet-4", tokens, 16)
    assert worst is not None
    limit = worst * 12
    wf = _limited(tmp_path, f"  budget: {{daily_usd: {limit}}}\n", max_tokens=16)
    path = batch_file(tmp_path, 48)
    assert cli("submit", wf, "--batch", str(path), "--db", pg).code == 0
    workers = [start_worker(cli, pg, sim, "--until-empty", "--concurrency", "10") for _ in range(4)]
    done = [d for w in workers for d in lines(finish(w))]
    assert len(done) == 48
    ok = [d for d in done if d["status"] == "succeeded"]
    refused = [d for d in done if d["status"] != "succeeded"]
    assert len(ok) >= 12
    assert refused
    assert {d["error_class"] for d in refused} == {"budget_exceeded"}
    assert sim.sim.chat_requests == len(ok)
    spent = sum(Decimal(d["cost_usd"]) for d in ok)
    assert spent <= limit


def test_four_workers_share_one_rpm(
    cli: Cli, simulator: Callable[..., SimThread], pg: str, tmp_path: Path
) -> None:
    """40 runs through four workers under rpm 1200 (one request per 50 ms): the simulator sees
    them paced for all four together, not four times as fast."""
    sim = simulator()
    wf = _limited(tmp_path, '  rate:\n    "*": {rpm: 1200}\n')
    path = batch_file(tmp_path, 40)
    assert cli("submit", wf, "--batch", str(path), "--db", pg).code == 0
    workers = [start_worker(cli, pg, sim, "--until-empty", "--concurrency", "10") for _ in range(4)]
    assert [finish(w).code for w in workers] == [0, 0, 0, 0]
    arrivals = sorted(sim.sim.arrivals)
    assert len(arrivals) == 40
    interval = 60 / 1200
    for i in range(len(arrivals) - 20):  # any 20 gaps take 1 s, less a late request's jitter
        assert arrivals[i + 20] - arrivals[i] >= 20 * interval - 0.3


def test_runs_of_one_conversation_run_in_submission_order(
    cli: Cli, simulator: Callable[..., SimThread], pg: str, tmp_path: Path
) -> None:
    """Runs submitted for one conversation run one at a time, in order, each seeing the replies
    before it, even with two workers taking jobs in parallel."""
    sim = simulator("*=slow:0.05*")
    first = cli("submit", FAST, "-m", "turn 0", "--db", pg).stdout.strip()
    assert finish(start_worker(cli, pg, sim, "--until-empty")).code == 0
    conversation = rows(pg, "SELECT conversation_id FROM workflow_runs WHERE id = :r", r=first)[0][
        0
    ]
    turns = tmp_path / "turns.jsonl"
    turns.write_text(
        "".join(
            json.dumps({"id": f"t{i}", "message": f"turn {i}", "conversation_id": conversation})
            + "\n"
            for i in range(1, 6)
        )
    )
    done = cli("submit", FAST, "--batch", str(turns), "--db", pg, "--json")
    assert done.code == 0, done.stderr
    ids = [first, *(d["run_id"] for d in lines(done))]
    workers = [start_worker(cli, pg, sim, "--until-empty", "--concurrency", "6") for _ in range(2)]
    assert [finish(w).code for w in workers] == [0, 0]
    paid_once(pg, ids)
    messages = rows(
        pg,
        "SELECT role, run_id FROM chat_messages WHERE conversation_id = :c ORDER BY created_at",
        c=conversation,
    )
    assert messages == [(role, r) for r in ids for role in ("user", "assistant")]
    # the last request carried the whole conversation before it as context
    assert len(sim.sim.last_messages) == 2 * len(ids) - 1


def test_runs_wait_reports_outcomes_and_times_out(
    cli: Cli, simulator: Callable[..., SimThread], pg: str, tmp_path: Path
) -> None:
    """`runs wait` exits 124 on timeout while a run is queued, 0 once the runs succeeded (one
    `run --json` object each), 1 when one failed; an unknown id is an input error."""
    sim = simulator("openai/gpt-4o=401*")
    both = tmp_path / "both.jsonl"
    both.write_text('{"message": "fine"}\n{"message": "refused", "model": "openai/gpt-4o"}\n')
    submitted = cli("submit", FAST, "--batch", str(both), "--db", pg, "--json")
    ok, bad = (d["run_id"] for d in lines(submitted))
    timed_out = cli("runs", "wait", ok, "--timeout", "0.2", "--db", pg)
    assert timed_out.code == 124, timed_out.stderr
    waiting = subprocess.Popen(
        [sys.executable, "-m", "demiarch_flow", "runs", "wait", ok, "--db", pg, "--json"],
        env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert finish(start_worker(cli, pg, sim, "--until-empty")).code == 0
    woken = finish(waiting)
    assert woken.code == 0, woken.stderr
    assert [(d["run_id"], d["status"]) for d in lines(woken)] == [(ok, "succeeded")]
    both = cli("runs", "wait", ok, bad, "--db", pg, "--json")
    assert both.code == 1
    assert [(d["run_id"], d["status"]) for d in lines(both)] == [(ok, "succeeded"), (bad, "failed")]
    unknown = cli("runs", "wait", str(uuid.uuid4()), "--db", pg)
    assert unknown.code == 2
    assert "no run with id" in unknown.stderr


def test_sigterm_after_the_grace_cancels_and_requeues(
    cli: Cli, simulator: Callable[..., SimThread], pg: str
) -> None:
    """SIGTERM with a run stuck past --grace: the run is recorded cancelled, the worker exits
    143, and the job goes back to the queue, where another worker finishes the same run."""
    sim = simulator("anthropic/claude-sonnet-4=hang,ok")
    run_id = cli("submit", FAST, "-m", "stuck", "--db", pg).stdout.strip()
    worker = start_worker(cli, pg, sim, "--grace", "0.3")
    wait_for(lambda: sim.sim.chat_requests == 1, "the request to reach the simulator")
    worker.send_signal(signal.SIGTERM)
    stopped = finish(worker)
    assert stopped.code == 143, stopped.stderr
    assert rows(pg, "SELECT status FROM workflow_runs")[0][0] == "cancelled"
    assert rows(pg, "SELECT status FROM procrastinate_jobs")[0][0] == "todo"
    live = finish(start_worker(cli, pg, sim, "--until-empty"))
    assert live.code == 0, live.stderr
    assert [(d["run_id"], d["action"]) for d in lines(live)] == [(run_id, "resumed")]
    paid_once(pg, [run_id])


def test_sigterm_lets_the_runs_in_flight_finish(
    cli: Cli, simulator: Callable[..., SimThread], pg: str
) -> None:
    """SIGTERM within the grace: no new job is taken, the run in flight finishes, exit 0."""
    sim = simulator("*=slow:1*")
    first = cli("submit", FAST, "-m", "in flight", "--db", pg).stdout.strip()
    second = cli("submit", FAST, "-m", "not taken", "--db", pg).stdout.strip()
    worker = start_worker(cli, pg, sim, "--concurrency", "1")
    wait_for(lambda: sim.sim.chat_requests == 1, "the request to reach the simulator")
    worker.send_signal(signal.SIGTERM)
    stopped = finish(worker)
    assert stopped.code == 0, stopped.stderr
    assert [(d["run_id"], d["status"]) for d in lines(stopped)] == [(first, "succeeded")]
    assert sim.sim.chat_requests == 1
    assert rows(pg, "SELECT id FROM workflow_runs") == [(first,)]
    assert rows(
        pg, "SELECT args->>'run_id', status FROM procrastinate_jobs WHERE status = 'todo'"
    ) == [(second, "todo")]
