"""First start is race-free: many processes opening a new database at the same moment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from demiarch_flow.store.sql import open_engine

from .conftest import PG_URL, drop_everything, postgres_available

PROCESSES = 16

# Each child imports everything first, says "ready", and waits for the word to open the
# database and write one run; so all of them reach the empty database together.
CHILD = """
import sys, uuid
from datetime import UTC, datetime
import trio
from demiarch_flow.store.base import NewRun
from demiarch_flow.store.sql import SqlStore
url, n = sys.argv[1], sys.argv[2]
print("ready", flush=True)
sys.stdin.readline()
store = SqlStore.open_sync(url)
run = NewRun(
    run_id=str(uuid.uuid4()), workflow="chat", workflow_sha256="0" * 64, conversation_id=None,
    create_with_id=str(uuid.uuid4()), project_id=None, user_message_id=str(uuid.uuid4()),
    content=f"process {n}", context_messages=0, at=datetime.now(UTC), title=f"process {n}",
    state="LoadContext",
)
trio.run(store.begin_run, run)
store.close()
"""


def start_together(url: str) -> list[tuple[int, str]]:
    """Start the children, release them at once, and return (exit code, stderr) of each."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, url, str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(PROCESSES)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            _, err = child.communicate(timeout=60)
            results.append((child.returncode, err))
        return results
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def contents(url: str) -> list[str]:
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(conn.execute(text("SELECT content FROM chat_messages")).scalars())
    finally:
        engine.dispose()


def expected() -> list[str]:
    return sorted(f"process {n}" for n in range(PROCESSES))


def test_sixteen_processes_create_a_new_sqlite_file_together(tmp_path: Path) -> None:
    """16 processes on a SQLite file that does not exist yet: all exit 0, every row is there."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    results = start_together(url)
    assert [code for code, _ in results] == [0] * PROCESSES, [err for _, err in results if err]
    assert contents(url) == expected()


@pytest.mark.postgres
def test_sixteen_processes_create_a_new_postgres_database_together() -> None:
    """16 processes on an empty PostgreSQL database: all exit 0, every row is there."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    drop_everything()
    results = start_together(PG_URL)
    assert [code for code, _ in results] == [0] * PROCESSES, [err for _, err in results if err]
    assert contents(PG_URL) == expected()
    drop_everything()
