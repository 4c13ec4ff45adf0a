"""SQLite's writer: one kept connection; commits inline on trio's thread with WAL and
``synchronous=NORMAL``, from a worker thread with ``FULL``, when another process holds the
write lock, and for the WAL checkpoint; ``?synchronous=`` chooses, and a bad value is refused."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from sqlalchemy import Connection, text

from demiarch_flow.errors import StoreUnavailable
from demiarch_flow.runner import RunRequest, run_workflow
from demiarch_flow.store import sql
from demiarch_flow.store.sql import SqlStore
from demiarch_flow.testing import FakeOpenRouter, make_env

from .test_journal_durability import WF


def _store(tmp_path: Path, query: str = "") -> SqlStore:
    store = SqlStore.open_sync(f"sqlite:///{tmp_path / 'flow.db'}{query}")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE probe (x INTEGER)")
    return store


def _insert(x: int) -> Callable[[Connection], None]:
    def op(conn: Connection) -> None:
        conn.execute(text("INSERT INTO probe VALUES (:x)"), {"x": x})

    return op


def _probed(store: SqlStore) -> list[int]:
    with sqlite3.connect(store.engine.url.database or "") as other:
        return [x for (x,) in other.execute("SELECT x FROM probe ORDER BY x")]


def _pragma(store: SqlStore, name: str) -> Any:
    cur = store._writer._connection().cursor()
    try:
        return cur.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        cur.close()


class Hops:
    """Counts ``trio.to_thread.run_sync`` calls (and still makes them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        real = trio.to_thread.run_sync

        async def counting(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            self.calls.append(getattr(fn, "__name__", repr(fn)))
            return await real(fn, *args, **kwargs)

        monkeypatch.setattr(trio.to_thread, "run_sync", counting)


async def test_a_run_commits_inline_on_one_kept_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WAL + NORMAL: every commit of a run happens on trio's thread (no worker thread), on the
    one connection the store opened, with automatic WAL checkpoints off on it."""
    store = _store(tmp_path)
    writer = store._writer._connection()
    assert store._writer.inline
    assert _pragma(store, "wal_autocheckpoint") == 0
    hops = Hops(monkeypatch)
    out = await run_workflow(
        WF, RunRequest("hi", stream=False), make_env(FakeOpenRouter(), store=store)
    )
    assert out.succeeded
    assert "_commit" not in hops.calls
    assert store._writer._connection() is writer
    assert (await store.load_run(out.run_id)).status == "succeeded"  # type: ignore[union-attr]
    store.close()


async def test_the_store_counts_its_commits(tmp_path: Path) -> None:
    """``SqlStore.commits`` counts committed write transactions (``bench/run.py`` prints them
    per run; SQLAlchemy's ``commit`` event does not see SQLite's, made on the driver's
    connection): a blocking run commits three times — run, message and first attempt before
    the request; the answer's checkpoint; the reply with the run's end — and a failed write
    counts nothing."""
    store = _store(tmp_path)
    before = store.commits
    out = await run_workflow(
        WF, RunRequest("hi", stream=False), make_env(FakeOpenRouter(), store=store)
    )
    assert out.succeeded
    assert store.commits - before == 3

    def broken(conn: Any) -> None:
        raise sqlite3.OperationalError("no such table: nowhere")

    before = store.commits
    with pytest.raises(Exception, match="nowhere"):
        await store._write(broken)
    assert store.commits == before
    store.close()


async def test_full_synchronous_commits_from_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``?synchronous=full``: the PRAGMA is FULL (2) and each commit (a disk sync) goes to a
    worker thread, never trio's."""
    store = _store(tmp_path, "?synchronous=full")
    assert _pragma(store, "synchronous") == 2
    assert not store._writer.inline
    hops = Hops(monkeypatch)
    await store._write(_insert(1))
    await store._write(_insert(2))
    assert hops.calls == ["_commit", "_commit"]
    assert _probed(store) == [1, 2]
    store.close()


def test_an_unknown_synchronous_is_refused(tmp_path: Path) -> None:
    """A typo in ``?synchronous=`` is an unavailable store naming the field, not a driver's
    ``TypeError`` (and not silently NORMAL)."""
    with pytest.raises(StoreUnavailable, match="synchronous='fast' is not one of normal, full"):
        SqlStore.open_sync(f"sqlite:///{tmp_path / 'flow.db'}?synchronous=fast")


async def test_a_locked_database_moves_the_commit_off_trios_thread(tmp_path: Path) -> None:
    """Another process holding the write lock does not stall the loop: the inline commit gives
    up at once and a worker thread waits for the lock; once it is released the write lands."""
    store = _store(tmp_path)
    holder = sqlite3.connect(str(tmp_path / "flow.db"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    written = trio.Event()

    async def write() -> None:
        await store._write(_insert(7))
        written.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()  # the writer waits in a worker thread
        assert not written.is_set()
        assert _probed(store) == []
        holder.execute("COMMIT")
    holder.close()
    assert _probed(store) == [7]
    assert store._writer.inline
    assert _pragma(store, "busy_timeout") == 0  # the wait was for that commit only
    store.close()


async def test_the_wal_is_checkpointed_in_a_thread_of_its_own_and_no_commit_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With automatic checkpoints off, one is asked for every ``CHECKPOINT_EVERY`` inline
    commits and runs off trio's thread, on a connection of its own: commits go on while it
    runs (it syncs the file: awaited, it was the p99 of a sequential run), and the WAL is
    copied into the file once it ends."""
    monkeypatch.setattr(sql, "CHECKPOINT_EVERY", 3)
    store = _store(tmp_path)
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    threads: list[str] = []
    real = sql._copy_wal

    def checkpoint(conn: Any) -> int:
        threads.append(threading.current_thread().name)
        assert conn is not store._writer._connection()
        started.set()
        release.wait(10)
        too_big = real(conn)
        finished.set()
        return too_big

    monkeypatch.setattr(sql, "_copy_wal", checkpoint)
    for x in range(3):
        await store._write(_insert(x))
    assert started.wait(10)  # the third commit asked for one, and it is running
    for x in range(3, 7):  # ... while these commit, one of them asking for the next
        await store._write(_insert(x))
    assert _probed(store) == list(range(7))
    assert not finished.is_set()  # no commit waited for it
    release.set()
    store.close()  # ends the thread once the checkpoint in hand is done
    assert finished.is_set()
    assert threads[0] == "demiarch-flow WAL checkpoint"
    assert len(threads) in (1, 2) and set(threads) == {threads[0]}
    with sqlite3.connect(tmp_path / "flow.db") as check:
        assert check.execute("SELECT count(*) FROM probe").fetchone() == (7,)


async def test_the_wal_stays_bounded_under_a_steady_stream_of_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits back to back while checkpoints run beside them: a passive checkpoint alone never
    lets the WAL start over (frames keep coming during it), so it grew without end — 37 MB
    after these 3,000 commits. Past ``WAL_RESTART_PAGES`` the writer starts it over under its
    write lock, and its size stays near that bound."""
    monkeypatch.setattr(sql, "CHECKPOINT_EVERY", 20)
    monkeypatch.setattr(sql, "WAL_RESTART_PAGES", 100)  # 400 KiB
    store = _store(tmp_path)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE pad (x INTEGER, pad TEXT)")
    wal = tmp_path / "flow.db-wal"
    peak = 0

    def padded(x: int) -> Callable[[Connection], None]:
        def op(conn: Connection) -> None:
            conn.execute(text("INSERT INTO pad VALUES (:x, :p)"), {"x": x, "p": "y" * 3000})

        return op

    for x in range(3000):
        await store._write(padded(x))
        if x % 50 == 0:
            peak = max(peak, wal.stat().st_size)
    store.close()
    assert peak < 16_000_000, f"the WAL grew to {peak:,} bytes"  # 37 MB unbounded


async def test_a_store_dropped_without_close_ends_its_checkpoint_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forgotten store must not leave its checkpointer's thread (and its connection to the
    file) behind for the life of the process: its writer's finalizer stops it."""
    import gc

    monkeypatch.setattr(sql, "CHECKPOINT_EVERY", 1)
    store = _store(tmp_path)
    before = set(threading.enumerate())
    await store._write(_insert(1))
    [thread] = [t for t in set(threading.enumerate()) - before if "WAL checkpoint" in t.name]
    del store
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()


async def test_a_reader_pinning_the_wal_holds_writes_off_briefly_and_not_again_soon(
    tmp_path: Path,
) -> None:
    """Another connection's open read transaction keeps the WAL from starting over: the
    restart gives up within about 100 ms (every write waits for it meanwhile), says so, and is
    not tried again until the WAL has grown by another ``WAL_RESTART_PAGES``; once the reader
    is gone, a restart succeeds and the bound is back."""
    import logging
    import time

    said: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    kept = Keep(logging.WARNING)
    logger = logging.getLogger("demiarch_flow")  # as it is, whatever another test made of it
    disabled, level = logger.disabled, logger.level
    logger.disabled = False
    logger.setLevel(logging.WARNING)
    logger.addHandler(kept)
    store = _store(tmp_path)
    for x in range(3):
        await store._write(_insert(x))
    reader = sqlite3.connect(tmp_path / "flow.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM probe").fetchone()  # a snapshot inside the WAL
    await store._write(_insert(3))
    writer = store._writer
    started = time.monotonic()
    writer.restart_wal()
    assert time.monotonic() - started < 0.5
    assert writer.checkpointer.restart_at > sql.WAL_RESTART_PAGES
    logger.removeHandler(kept)
    logger.disabled, logger.level = disabled, level
    assert any("WAL could not be started over" in m for m in said), said
    reader.execute("COMMIT")
    reader.close()
    writer.restart_wal()
    assert writer.checkpointer.restart_at == sql.WAL_RESTART_PAGES
    assert _pragma(store, "busy_timeout") == 0  # the inline writer never waits
    store.close()


def test_an_engine_built_store_does_not_hand_its_writers_pragmas_to_the_pool(
    tmp_path: Path,
) -> None:
    """On a store built on an engine the writer's connection is the pool's; after a failed
    write it is closed, and must not go back to the pool with no busy timeout and no automatic
    checkpoint, where the ledger's or a reader's writes would fail at once on a lock."""
    from demiarch_flow.store.sql import open_engine

    url = f"sqlite:///{tmp_path / 'flow.db'}"
    SqlStore.open_sync(url).close()
    engine = open_engine(url)
    store = SqlStore(engine, url)
    store._writer.open()
    assert store._writer.inline

    def bad(conn: Connection) -> None:
        conn.execute(text("INSERT INTO nowhere VALUES (1)"))

    async def failing() -> None:
        with pytest.raises(Exception, match="nowhere"):
            await store._write(bad)

    trio.run(failing)
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        assert raw.execute("PRAGMA busy_timeout").fetchone()[0] > 0
        assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] > 0
    store.close()


async def test_a_failed_inline_commit_is_redone_in_a_thread_on_a_new_connection(
    tmp_path: Path,
) -> None:
    """A batch whose transaction fails inline is rolled back and redone from a worker thread,
    group then each alone: the good write lands, the bad one gets its error, and the broken
    connection is replaced."""
    store = _store(tmp_path)
    first = store._writer._connection()

    def bad(conn: Connection) -> None:
        conn.execute(text("INSERT INTO nowhere VALUES (1)"))

    async def failing() -> None:
        with pytest.raises(Exception, match="nowhere"):
            await store._write(bad)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(failing)
        nursery.start_soon(store._write, _insert(3))
    assert _probed(store) == [3]
    assert store._writer._connection() is not first
    store.close()


async def test_a_write_cancelled_as_it_takes_the_queue_still_commits_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task that takes the queue commits every queued write, its own cancelled or not
    (from a worker thread: ``synchronous=full``); no write is reported done and then lost."""
    store = _store(tmp_path, "?synchronous=full")
    scopes: dict[Any, trio.CancelScope] = {}
    real = store._take_queue
    taken: list[int] = []

    def take() -> list[Any]:
        batch = real()
        if not taken:
            scopes[trio.lowlevel.current_task()].cancel()
        taken.append(len(batch))
        return batch

    monkeypatch.setattr(store, "_take_queue", take)

    async def write(x: int) -> None:
        with trio.CancelScope() as scope:
            scopes[trio.lowlevel.current_task()] = scope
            await store._write(_insert(x))

    async with trio.open_nursery() as nursery:
        await store._write_lock.acquire()  # both queue up behind it
        nursery.start_soon(write, 1)
        nursery.start_soon(write, 2)
        await trio.testing.wait_all_tasks_blocked()
        store._write_lock.release()
    assert taken == [2]
    assert _probed(store) == [1, 2]
    store.close()
