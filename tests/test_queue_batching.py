"""The worker's fewer round trips: several jobs per fetch and per finish, keeping
procrastinate's locks and each job's own failure; log records built only when made."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from .store.conftest import own_pg_database

pytest.importorskip("procrastinate")


@pytest.fixture
def pg() -> Iterator[str]:
    yield from own_pg_database("dflow_batching")


def _install(url: str) -> None:
    from demiarch_flow.cli.main import main

    assert main(["db", "upgrade", "--db", url]) == 0


def _defer(conn: Any, locks: list[str | None]) -> None:
    from psycopg.types.json import Jsonb

    for i, lock in enumerate(locks):
        conn.execute(
            "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('runs', 't', 0, %s, NULL, %s::jsonb,"
            " NULL)::procrastinate_job_to_defer_v1])",
            (lock, Jsonb({"i": i})),
        )


@pytest.mark.postgres
def test_one_fetch_takes_a_job_per_slot_and_keeps_procrastinates_locks(
    pg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """One statement takes the first job of each lock and every unlocked one, each once, in
    procrastinate's order; a lock's next job is taken only once its first has finished."""
    import psycopg
    from psycopg.rows import dict_row

    from demiarch_flow.queue.backend import conninfo
    from demiarch_flow.queue.batching import FETCH_MANY, FINISH_MANY

    _install(pg)
    capsys.readouterr()
    with psycopg.connect(conninfo(pg), autocommit=True, row_factory=dict_row) as conn:
        _defer(conn, ["a", "a", "b", None, "b", None, "c"])
        row = conn.execute("SELECT procrastinate_register_worker_v1() AS w").fetchone()
        assert row is not None
        args = {"n": 16, "queues": ["runs"], "worker_id": row["w"]}
        first = conn.execute(FETCH_MANY, args).fetchall()
        assert [(r["id"], r["lock"], r["status"]) for r in first] == [
            (1, "a", "doing"), (3, "b", "doing"), (4, None, "doing"), (6, None, "doing"),
            (7, "c", "doing"),
        ]  # fmt: skip
        assert conn.execute(FETCH_MANY, args).fetchall() == []
        ids = [r["id"] for r in first]
        conn.execute(
            FINISH_MANY,
            {
                "ids": ids, "statuses": ["succeeded"] * len(ids), "deletes": [False] * len(ids),
                "worker_id": row["w"],
            },
        )  # fmt: skip
        after = conn.execute(FETCH_MANY, {**args, "n": 1}).fetchall()
        assert [r["id"] for r in after] == [2]  # one slot: one job
        rows = conn.execute("SELECT id, status FROM procrastinate_jobs ORDER BY id").fetchall()
        assert [(r["id"], r["status"]) for r in rows] == [
            (1, "succeeded"), (2, "doing"), (3, "succeeded"), (4, "succeeded"), (5, "todo"),
            (6, "succeeded"), (7, "succeeded"),
        ]  # fmt: skip


@pytest.mark.postgres
def test_an_end_is_written_only_while_the_job_is_still_this_workers(
    pg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker frozen past the stall limit and woken: the job the sweep gave back and another
    worker took is not marked ended by it (alone or among its other ends); its own are."""
    import psycopg
    from psycopg.rows import dict_row

    from demiarch_flow.queue.backend import conninfo
    from demiarch_flow.queue.batching import FETCH_MANY, FINISH_IF_OURS, FINISH_MANY

    _install(pg)
    capsys.readouterr()
    with psycopg.connect(conninfo(pg), autocommit=True, row_factory=dict_row) as conn:
        _defer(conn, [None, None, None])
        frozen, live = (
            conn.execute("SELECT procrastinate_register_worker_v1() AS w").fetchone()["w"]  # type: ignore[index]
            for _ in range(2)
        )
        taken = conn.execute(FETCH_MANY, {"n": 3, "queues": ["runs"], "worker_id": frozen})
        assert [r["id"] for r in taken.fetchall()] == [1, 2, 3]
        # the sweep gives job 2 back and the live worker takes it
        conn.execute("UPDATE procrastinate_jobs SET worker_id = %s WHERE id = 2", (live,))
        ends = {"ids": [1, 2], "statuses": ["succeeded"] * 2, "deletes": [False] * 2}
        rows = conn.execute(FINISH_MANY, {**ends, "worker_id": frozen}).fetchall()
        assert [r["id"] for r in rows] == [1]
        one = {"status": "failed", "delete_job": False}
        assert (
            conn.execute(FINISH_IF_OURS, {**one, "job_id": 2, "worker_id": frozen}).fetchall() == []
        )
        assert [
            r["id"] for r in conn.execute(FINISH_IF_OURS, {**one, "job_id": 3, "worker_id": frozen})
        ] == [3]
        statuses = conn.execute("SELECT id, status, worker_id FROM procrastinate_jobs ORDER BY id")
        assert [(r["id"], r["status"]) for r in statuses] == [
            (1, "succeeded"), (2, "doing"), (3, "failed"),
        ]  # fmt: skip


class _Connector:
    """A connector that records each statement; ``refuse`` names job ids whose finish fails
    (as procrastinate's function fails for a job that is no longer ``doing``)."""

    def __init__(self, refuse: set[int]) -> None:
        self.statements: list[list[int]] = []
        self.refuse = refuse

    async def execute_query_all_async(self, query: str, **args: Any) -> list[dict[str, int]]:
        ids = args["ids"] if "ids" in args else [args["job_id"]]
        assert args["worker_id"] == 7
        self.statements.append(list(ids))
        await asyncio.sleep(0)
        if self.refuse & set(ids):
            raise RuntimeError(f"job {sorted(self.refuse & set(ids))} not in doing status")
        return [{"id": i} for i in ids]


def test_finishes_that_arrive_together_share_a_statement_and_fail_alone() -> None:
    from demiarch_flow.queue.batching import Finisher

    async def scenario() -> tuple[list[list[int]], list[BaseException | None]]:
        connector = _Connector(refuse={3})
        finisher = Finisher(connector, lambda: 7)
        results = await asyncio.gather(
            *(finisher.finish(i, "succeeded", False) for i in range(1, 6)),
            return_exceptions=True,
        )
        return connector.statements, list(results)

    statements, results = asyncio.run(scenario())
    # the five arrive together: one statement, which fails (job 3) for all of them; they are
    # then written one by one, so only job 3 fails
    assert statements == [[1, 2, 3, 4, 5], [1], [2], [3], [4], [5]]
    assert [r is True for r in results] == [True, True, False, True, True]
    assert "job [3]" in str(results[2])


def test_a_log_records_extra_is_built_only_when_the_record_is_made() -> None:
    from demiarch_flow.queue.batching import LazyExtra

    built: list[int] = []

    def build() -> dict[str, Any]:
        built.append(1)
        return {"action": "start_job", "job": {"id": 7}}

    logger = logging.getLogger("demiarch_flow.test.lazy_extra")
    logger.propagate = False
    logger.setLevel(logging.CRITICAL + 1)
    logger.info("silenced", extra=LazyExtra(build))
    assert built == []
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    logger.info("logged", extra=LazyExtra(build))
    assert built == [1]
    assert records[0].action == "start_job"
    assert records[0].job == {"id": 7}


@pytest.mark.postgres
def test_the_jobs_of_a_moment_ask_what_their_runs_left_in_one_statement(pg: str) -> None:
    """Five jobs asking at once whether their runs are new, begun or deleted after they began
    get each its own answer from one read (one pooled connection, one thread hop), and a job
    asking afterwards reads again; an unreachable database fails every one of them alike."""
    from datetime import UTC, datetime

    import trio
    from sqlalchemy import event

    from demiarch_flow.errors import PersistenceError
    from demiarch_flow.queue.take import Workflows
    from demiarch_flow.store.base import NewRun
    from demiarch_flow.store.sql import SqlStore

    store = SqlStore.open_sync(pg)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    reads: list[str] = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "unnest" in statement:
            reads.append(statement)

    async def scenario() -> None:
        await store.begin_run(
            NewRun(
                run_id="begun", workflow="chat", workflow_sha256="a" * 64, conversation_id=None,
                create_with_id="conv-begun", project_id=None, user_message_id="msg-begun",
                content="hello", context_messages=10, at=at, title="hello", state="Start",
                definition="name: chat\n",
            )
        )  # fmt: skip
        with store.engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO budget_reservations (id, run_id, attempt, model, amount_usd,"
                " settled, created_at, expires_at) VALUES ('res-1', 'gone', 1, 'm', 0.01, 0,"
                " now(), now())"
            )
        workflows = Workflows(store)
        answers: dict[str, str] = {}

        async def ask(run_id: str) -> None:
            answers[run_id] = await workflows.seen(run_id)

        async with trio.open_nursery() as nursery:
            for run_id in ("new-1", "begun", "gone", "new-2", "begun"):
                nursery.start_soon(ask, run_id)
        assert answers == {"new-1": "new", "begun": "begun", "gone": "deleted", "new-2": "new"}
        assert len(reads) == 1
        assert await workflows.seen("gone") == "deleted"
        assert len(reads) == 2

        down = _refusing_engine()
        broken = Workflows(type("Down", (), {"engine": down})())  # type: ignore[arg-type]
        failures: list[BaseException] = []

        async def fails(run_id: str) -> None:
            try:
                await broken.seen(run_id)
            except PersistenceError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for run_id in ("a", "b", "c"):
                nursery.start_soon(fails, run_id)
        down.dispose()
        assert len(failures) == 3 and len({id(f) for f in failures}) == 1

    try:
        trio.run(scenario)
    finally:
        store.close()


def _refusing_engine() -> Any:
    """An engine whose server is not there (a closed port on 127.0.0.1), failing at once."""
    from demiarch_flow.store.sql import open_engine

    return open_engine("postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=1")
