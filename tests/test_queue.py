"""The queue's pieces without worker processes: refusals before anything is opened, the job's
arguments, the retry decisions, the trio guest inside asyncio, and the queue's schema."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from demiarch_flow.cli.main import main
from demiarch_flow.errors import PersistenceError, UsageError
from demiarch_flow.queue import backend
from demiarch_flow.queue.guest import TrioGuest
from demiarch_flow.queue.submit import Submission, batch_run_id
from demiarch_flow.queue.take import NotSubmitted, RunBusy
from demiarch_flow.queue.worker import _retry_strategy, retry_in

from .store.conftest import own_pg_database

COMMANDS = [
    ["submit", "-m", "hi"],
    ["worker"],
    ["runs", "wait", "5f1c0d3e-0000-4000-8000-000000000000"],
    ["batch", "in.jsonl", "--queue"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_sqlite_is_refused_in_one_line(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With SQLite, the queue's commands (and `batch --queue`) exit 2 with one line asking for a PostgreSQL URL, and
    create nothing."""
    db = tmp_path / "flow.db"
    assert main([*argv, "--db", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "needs a PostgreSQL database" in err
    assert not db.exists()


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_missing_procrastinate_exits_3_with_the_pip_command(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without procrastinate the queue's commands exit 3 and say what installs it."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        backend.importlib.util, "find_spec",
        lambda name, *a: None if name == "procrastinate" else real(name, *a),
    )  # fmt: skip
    assert main([*argv, "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none"]) == 3
    assert "pip install 'demiarch-flow[postgres]'" in capsys.readouterr().err


def test_a_submission_round_trips_and_locks_its_conversation() -> None:
    """A job's arguments read back as the submission; runs of one conversation share a lock,
    a new conversation takes none; something else is refused."""
    sub = Submission("r1", "chat", "ab" * 32, "hello", "c1", None, "7", "f" * 64)
    assert Submission.from_args(sub.to_args()) == sub
    assert sub.lock == "conversation:c1"
    assert Submission("r2", "chat", "ab" * 32, "hello").lock is None
    with pytest.raises(UsageError, match="not a submitted run's"):
        Submission.from_args({"run_id": "r1", "surprise": 1})


def test_a_batch_line_names_the_same_run_until_it_is_edited() -> None:
    """The same id and input hash give the same run id; a changed hash or id another."""
    assert batch_run_id("1", "aa") == batch_run_id("1", "aa")
    assert len({batch_run_id("1", "aa"), batch_run_id("1", "ab"), batch_run_id("2", "aa")}) == 3


@pytest.mark.parametrize(
    ("exc", "attempts", "wait"),
    [
        (asyncio.CancelledError(), 0, 0),
        (RunBusy("r", "host:1:2"), 0, 1),
        (PersistenceError("down"), 3, 8),
        (PersistenceError("down"), 40, 60),
        (OSError("connection refused"), 1, 2),
        (NotSubmitted("gone"), 0, None),
        (UsageError("run r has no checkpoint"), 0, None),
        (RuntimeError("server closed the connection"), 2, 4),
    ],
)
def test_retry_decisions(exc: BaseException, attempts: int, wait: int | None) -> None:
    """Given back at once after the grace, with a capped growing delay for a busy run or the
    database's trouble, never for a job that cannot become a run."""
    decision = _retry_strategy().get_retry_decision(
        exception=exc, job=SimpleNamespace(attempts=attempts)
    )
    assert retry_in(exc, attempts) == wait
    if wait is None:
        assert decision is None
        return
    assert decision is not None
    delay = decision.retry_at.timestamp() - __import__("time").time()
    assert wait - 1 <= delay <= wait + 1


def test_the_trio_guest_runs_jobs_and_passes_results_errors_and_cancellation() -> None:
    """Inside asyncio, a call returns the trio function's result, an error crosses as itself,
    and cancelling the asyncio side cancels the trio side, whose cleanup runs first."""
    cleaned: list[str] = []

    async def world(ready: Any) -> None:
        ready("env")
        await trio.sleep_forever()

    async def double(x: int) -> int:
        await trio.sleep(0)
        return 2 * x

    async def boom() -> None:
        raise PersistenceError("database down")

    async def forever() -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0)
                cleaned.append("recorded")

    async def scenario() -> None:
        guest: TrioGuest[str] = TrioGuest()
        assert await guest.start(world) == "env"
        assert await guest.call(double, 21) == 42
        with pytest.raises(PersistenceError, match="database down"):
            await guest.call(boom)
        task = asyncio.create_task(guest.call(forever))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned == ["recorded"]
        await guest.stop()

    asyncio.run(scenario())


def test_a_guest_that_cannot_open_raises_its_error() -> None:
    """What the world raised while opening (a database that will not open) reaches the caller."""

    async def world(ready: Any) -> None:
        raise PersistenceError("cannot open")

    async def scenario() -> None:
        with pytest.raises(PersistenceError, match="cannot open"):
            await TrioGuest().start(world)

    asyncio.run(scenario())


@pytest.fixture
def pg() -> Iterator[str]:
    yield from own_pg_database("dflow_queue")


@pytest.mark.postgres
def test_eight_processes_installing_the_queue_at_once_install_it_once(pg: str) -> None:
    """Eight workers starting together on a new database: every one finds the queue ready,
    procrastinate's schema installed exactly once."""
    from demiarch_flow.queue.schema import check_queue, shipped
    from demiarch_flow.store.sql import open_engine

    engine = open_engine(pg)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            check_queue(engine)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with engine.connect() as conn:
        recorded = conn.exec_driver_sql("SELECT name FROM queue_migrations ORDER BY name")
        names = [r[0] for r in recorded]
    engine.dispose()
    assert errors == []
    assert names == shipped()


@pytest.mark.postgres
def test_db_current_reports_the_queue_and_a_queue_behind_is_refused(
    pg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`db upgrade` installs the queue with our tables and `db current --json` reports both;
    a queue missing a migration is reported and refused (exit 3, naming `db upgrade`) before
    anything is queued, and `db upgrade` applies it."""
    from sqlalchemy import create_engine, text

    assert main(["db", "upgrade", "--db", pg, "--json"]) == 0
    upgraded = json.loads(capsys.readouterr().out)
    assert upgraded["queue"]["action"] == "created"
    assert main(["db", "current", "--db", pg, "--json"]) == 0
    current = json.loads(capsys.readouterr().out)
    assert current["is_head"] is True
    assert current["queue"]["is_current"] is True
    engine = create_engine(pg)
    with engine.begin() as conn:  # as if a newer procrastinate brought one more migration
        last = conn.execute(text("SELECT max(name) FROM queue_migrations")).scalar()
        conn.execute(text("DELETE FROM queue_migrations WHERE name = :n"), {"n": last})
    engine.dispose()
    assert main(["db", "current", "--db", pg, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["queue"]["pending"] == 1
    assert main(["submit", "-m", "hi", "--db", pg]) == 3
    err = capsys.readouterr().err
    assert "db upgrade" in err
    assert last in err


def test_submit_to_an_unreachable_database_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    """No server at the URL: exit 3 with one paragraph naming the database, nothing queued."""
    assert main(["submit", "-m", "hi", "--db", "postgresql+psycopg://u@127.0.0.1:1/none"]) == 3
    err = capsys.readouterr().err
    assert "127.0.0.1:1" in err
    assert "Traceback" not in err


@pytest.mark.postgres
def test_db_upgrade_sql_covers_the_queue_for_a_dba(
    pg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`db upgrade --sql` on a new PostgreSQL database prints our DDL and the queue's; a DBA who
    runs it gets a database that `db current` calls current on both counts."""
    import psycopg

    assert main(["db", "upgrade", "--db", pg, "--sql"]) == 0
    sql = capsys.readouterr().out
    assert "procrastinate_jobs" in sql
    assert "INSERT INTO queue_migrations" in sql
    with psycopg.connect(pg.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(sql.encode())
    assert main(["db", "current", "--db", pg, "--json"]) == 0
    current = json.loads(capsys.readouterr().out)
    assert current["is_head"] is True
    assert current["queue"]["is_current"] is True


def test_an_idle_connection_is_checked_only_when_the_server_spoke() -> None:
    """The pool's check looks for anything the server sent to an idle connection (its goodbye
    before a restart): nothing to read, no round trip; something, or the end, the full check."""
    import socket

    from demiarch_flow.queue.pool import has_news

    ours, server = socket.socketpair()
    try:
        assert not has_news(ours.fileno())
        server.sendall(b"E")  # an error message, as PostgreSQL sends before it closes
        assert has_news(ours.fileno())
        ours.recv(1)
        server.close()
        assert has_news(ours.fileno())
    finally:
        ours.close()


@pytest.mark.postgres
def test_the_queue_pool_is_in_autocommit_and_replaces_a_terminated_connection(pg: str) -> None:
    """procrastinate's queries run one round trip each (autocommit: no BEGIN, no COMMIT), and a
    connection whose backend the server ended while it sat idle is replaced, not handed out."""
    import psycopg
    from procrastinate import PsycopgConnector

    from demiarch_flow.queue.backend import conninfo
    from demiarch_flow.queue.pool import autocommit, pool_factory

    async def scenario() -> tuple[bool, int, int]:
        connector = PsycopgConnector(
            conninfo=conninfo(pg), min_size=1, max_size=1, configure=autocommit,
            pool_factory=pool_factory,
        )  # fmt: skip
        await connector.open_async()
        try:
            async with connector.pool.connection() as conn:
                first = conn.info.backend_pid
                in_autocommit = conn.autocommit
            with psycopg.connect(conninfo(pg), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (first,))
                gone = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"
                while admin.execute(gone, (first,)).fetchone() != (0,):
                    await asyncio.sleep(0.01)  # until the backend has said goodbye and left
            row = await connector.execute_query_one_async(query="SELECT pg_backend_pid() AS p")
            return in_autocommit, first, row["p"]
        finally:
            await connector.close_async()

    in_autocommit, before, after = asyncio.run(scenario())
    assert in_autocommit
    assert after != before


def test_a_worker_that_cannot_reach_the_database_says_why_and_tries_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The queue's pool will not open (nothing listens at the URL): the worker does not die;
    each time it logs the error's class and message and how long it waits, then tries again
    with a new pool; the URL's password never appears."""
    from procrastinate import App, PsycopgConnector
    from psycopg_pool import AsyncConnectionPool

    from demiarch_flow.queue import worker
    from demiarch_flow.queue.backend import conninfo
    from demiarch_flow.queue.pool import autocommit

    class QuickPool(AsyncConnectionPool):  # type: ignore[type-arg]
        async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
            await super().open(wait=wait, timeout=0.2)

    monkeypatch.setattr(worker, "RECONNECT_FIRST_S", 0.01)
    url = "postgresql+psycopg://flow:s3cret-pw@127.0.0.1:1/none"
    options = worker.WorkerOptions(db=url, base_url="http://127.0.0.1:1/api/v1")
    stop = asyncio.Event()
    apps: list[Any] = []

    def make_app() -> Any:
        if len(apps) == 3:
            stop.set()
        apps.append(
            App(
                connector=PsycopgConnector(
                    conninfo=conninfo(url), min_size=1, max_size=1, configure=autocommit,
                    pool_factory=QuickPool,
                )
            )
        )  # fmt: skip
        return apps[-1]

    caplog.set_level("WARNING", logger="demiarch_flow")
    asyncio.run(worker._work(make_app, options, worker.WorkerStats(), stop))
    said = [r.getMessage() for r in caplog.records if "loop stopped" in r.getMessage()]
    assert len(said) == 3
    assert all("(OperationalError: connection failed:" in line for line in said), said
    assert all("Connection refused" in line or "port 1 failed" in line for line in said)
    assert [line.rsplit("again in ", 1)[1] for line in said] == ["0.01 s", "0.02 s", "0.04 s"]
    assert not any("s3cret-pw" in r.getMessage() for r in caplog.records)


def test_a_password_in_an_error_message_is_masked() -> None:
    """A DSN quoted back in a driver's message loses its password in the worker's log line."""
    from demiarch_flow.queue.backend import describe

    said = describe(RuntimeError("cannot use postgresql://flow:hunter2@db/x password=hunter2"))
    assert said == "RuntimeError: cannot use postgresql://flow:***@db/x password=***"


def test_submit_to_a_server_that_never_answers_gives_up_after_one_connect_timeout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A database host that takes the connection and then says nothing (a hung server, a
    firewall that swallows the handshake): `submit` makes one attempt, gives up when the
    connect timeout expires, and exits 3 naming the database; nothing is queued."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    accepted: list[socket.socket] = []

    def take() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(silent.accept()[0])

    taker = threading.Thread(target=take, daemon=True)
    taker.start()
    try:
        url = f"postgresql+psycopg://u:pw@127.0.0.1:{port}/x?connect_timeout=1"
        assert main(["submit", "-m", "hi", "--db", url]) == 3
    finally:
        silent.close()
        for conn in accepted:
            conn.close()
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err
    assert "timeout expired" in err
    assert "pw@" not in err
    assert len(accepted) == 1
