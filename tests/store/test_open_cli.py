"""Opening from the command line: `db upgrade`/`db current`, read-only commands that never
create a database, a schema that does not fit (exit 3 before any request), and a server that
never answers (a connect timeout, and Ctrl-C exits 130)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from demiarch_flow.cli.main import main
from demiarch_flow.errors import StoreUnavailable
from demiarch_flow.store.schema import BASELINE, HEAD
from demiarch_flow.store.sql import CONNECT_TIMEOUT_S, SqlStore, open_engine

from ..e2e.conftest import FAST, SimThread
from .conftest import PG_URL, drop_everything, postgres_available
from .test_schema import layout, migrate, revision_of

KEY = "sk-or-open-cli-0123456789abcdef"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private data folder, the test key, and no database from the environment."""
    monkeypatch.setenv("DEMIARCH_FLOW_HOME", str(tmp_path))
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    monkeypatch.delenv("DEMIARCH_FLOW_DB", raising=False)
    return tmp_path


class SilentServer:
    """A TCP listener on 127.0.0.1 that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.accepted.set()

    def url(self, query: str = "") -> str:
        return f"postgresql+psycopg://nobody@127.0.0.1:{self.port}/nothing{query}"

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


# ---------------------------------------------------------------------- db current / upgrade


def test_db_upgrade_then_current(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`db upgrade` creates a new database at head; `db current --json` reports it."""
    url = f"sqlite:///{home / 'flow.db'}"
    assert main(["db", "upgrade", "--db", url]) == 0
    assert f"created at revision {HEAD}" in capsys.readouterr().out
    assert main(["db", "current", "--db", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "revision": HEAD,
        "head": HEAD,
        "is_head": True,
        "status": "head",
        "backend": "sqlite",
        "queue": None,
    }
    assert main(["db", "current", "--db", url]) == 0
    assert f"revision {HEAD} (head)" in capsys.readouterr().out
    assert main(["db", "upgrade", "--db", url]) == 0
    assert "already at revision" in capsys.readouterr().out


def test_db_current_behind_and_never_creating(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`db current` on a database at 0001 says so (and does not upgrade it); on a missing
    SQLite file it exits 3 and creates nothing."""
    url = f"sqlite:///{home / 'old.db'}"
    migrate(url, BASELINE)
    assert main(["db", "current", "--db", url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["revision"], doc["is_head"], doc["status"]) == (BASELINE, False, "behind")
    assert revision_of(url) == BASELINE
    missing = home / "missing.db"
    assert main(["db", "current", "--db", f"sqlite:///{missing}"]) == 3
    assert f"no database at {missing}" in capsys.readouterr().err
    assert not missing.exists()


@pytest.mark.postgres
def test_db_upgrade_on_postgres_and_sql_for_a_dba(capsys: pytest.CaptureFixture[str]) -> None:
    """On PostgreSQL at 0001: a run is refused (exit 3, naming `db upgrade`), `--sql` prints
    the DDL and changes nothing, `db upgrade` brings it to head."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    drop_everything()
    migrate(PG_URL, BASELINE)
    assert main(["history", "--db", PG_URL]) == 3
    err = capsys.readouterr().err
    assert f"database is at revision {BASELINE}, this release needs {HEAD}" in err
    assert "demiarch-flow db upgrade --db postgresql+psycopg://" in err
    assert main(["db", "upgrade", "--db", PG_URL, "--sql"]) == 0
    sql = capsys.readouterr().out
    assert "DROP CONSTRAINT uq_llm_usage_generation_id" in sql
    assert revision_of(PG_URL) == BASELINE
    assert main(["db", "upgrade", "--db", PG_URL]) == 0
    assert f"upgraded from revision {BASELINE} to {HEAD}" in capsys.readouterr().out
    assert revision_of(PG_URL) == HEAD
    assert main(["history", "--db", PG_URL]) == 0
    drop_everything()


def test_db_upgrade_sql_for_a_file_not_created_yet(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`db upgrade --sql` on a SQLite path that does not exist: the DDL of a new database,
    exit 0, and no file or folder; applied by hand, it builds what `db upgrade` builds."""
    missing = home / "new" / "flow.db"
    assert main(["db", "upgrade", "--db", f"sqlite:///{missing}", "--sql"]) == 0
    sql = capsys.readouterr().out
    assert "CREATE TABLE conversations" in sql
    assert f"version_num='{HEAD}'" in sql.replace(" ", "")
    assert not missing.parent.exists()
    by_hand, by_upgrade = home / "by_hand.db", home / "by_upgrade.db"
    with sqlite3.connect(by_hand) as conn:
        conn.executescript(sql)
    assert main(["db", "upgrade", "--db", f"sqlite:///{by_upgrade}"]) == 0
    assert revision_of(f"sqlite:///{by_hand}") == HEAD
    assert layout(f"sqlite:///{by_hand}") == layout(f"sqlite:///{by_upgrade}")


@pytest.mark.parametrize(
    ("statement", "said"),
    [
        ("UPDATE alembic_version SET version_num = ''", "its alembic_version row is empty"),
        ("INSERT INTO alembic_version VALUES ('0001')", "its alembic_version table holds 2 rows"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [["db", "current"], ["db", "current", "--json"], ["db", "upgrade"], ["db", "upgrade", "--sql"],
     ["history"], ["usage"], ["runs", "list"]],
)  # fmt: skip
def test_a_broken_version_table_exits_3_saying_what_is_wrong(
    home: Path, command: list[str], statement: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A blank revision or two revision rows: every command exits 3 naming that (no internal
    AssertionError, no "newer demiarch-flow"), and nothing is backed up or changed."""
    db = home / "flow.db"
    assert main(["db", "upgrade", "--db", f"sqlite:///{db}"]) == 0
    with sqlite3.connect(db) as conn:
        conn.execute(statement)
    conn.close()
    before = sorted(p.name for p in home.iterdir())
    capsys.readouterr()
    assert main([*command, "--db", f"sqlite:///{db}"]) == 3
    err = capsys.readouterr().err
    assert said in err
    assert "internal error" not in err and "newer" not in err
    assert sorted(p.name for p in home.iterdir()) == before


# ---------------------------------------------------------------------- read-only commands


@pytest.mark.parametrize(
    "command", [["history"], ["usage"], ["runs", "show", "0000"], ["history", "--json"]]
)
def test_read_only_commands_never_create_a_database(
    home: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """history, usage and runs show on a SQLite path that does not exist: exit 3 "no
    database at …", and neither the file nor its folder is created."""
    missing = home / "not" / "there.db"
    assert main([*command, "--db", f"sqlite:///{missing}"]) == 3
    assert f"no database at {missing}" in capsys.readouterr().err
    assert not missing.parent.exists()


def test_read_only_default_database_is_not_created(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same without --db: the default file in the data folder is not created."""
    assert main(["history"]) == 3
    assert "no database at" in capsys.readouterr().err
    assert list(home.iterdir()) == []


# ---------------------------------------------------------------------- before a cent is spent


@pytest.mark.parametrize(
    ("table", "column"), [("llm_usage", "cached_tokens"), ("run_events", "wait_s")]
)
def test_a_dropped_column_stops_the_run_before_any_request(
    home: Path, table: str, column: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` on a database missing a column: exit 3 naming table and column, zero requests,
    and the database is left as it was."""
    url = f"sqlite:///{home / 'flow.db'}"
    SqlStore.open_sync(url).close()
    engine = open_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
    engine.dispose()
    sim = SimThread("")
    try:
        code = main(["run", FAST, "-m", "hi", "--quiet", "--db", url, "--base-url", sim.url])
    finally:
        sim.stop()
    assert code == 3
    assert f"table {table} has no column {column}" in capsys.readouterr().err
    assert sim.sim.chat_requests == 0
    assert layout(url)["conversations"]  # still there, untouched


# ---------------------------------------------------------------------- a server that never answers


def test_postgres_connect_timeout_defaults_to_ten_seconds() -> None:
    """Without connect_timeout in the URL the driver is given 10 s; the URL's own wins."""
    pytest.importorskip("psycopg")
    seen: list[dict[str, Any]] = []

    class Stop(Exception):
        pass

    def capture(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        seen.append(dict(cparams))
        raise Stop

    for url in (
        "postgresql+psycopg://u@127.0.0.1:9/x",
        "postgresql+psycopg://u@127.0.0.1:9/x?connect_timeout=3",
    ):
        engine = open_engine(url)
        event.listen(engine, "do_connect", capture)
        with pytest.raises(Stop):
            engine.connect()
        engine.dispose()
    assert CONNECT_TIMEOUT_S == 10
    assert [int(s["connect_timeout"]) for s in seen] == [10, 3]


def test_a_server_that_never_answers_times_out(
    silent: SilentServer, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A host that accepts the connection and never answers: exit 3 once the URL's timeout
    has passed, instead of hanging for ever."""
    pytest.importorskip("psycopg")
    url = silent.url("?connect_timeout=1")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="timeout"):
        SqlStore.open_sync(url)
    assert main(["usage", "--db", url]) == 3
    assert "timeout" in capsys.readouterr().err
    assert time.monotonic() - started < 9
    assert silent.accepted.is_set()


def test_ctrl_c_while_opening_exits_130(silent: SilentServer, tmp_path: Path) -> None:
    """SIGINT while the database connection hangs (before its 10 s timeout): exit 130 at once."""
    pytest.importorskip("psycopg")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER_", "DEMIARCH_FLOW_"))
    }
    env.update(
        OPENROUTER_API_KEY=KEY,
        DEMIARCH_FLOW_HOME=str(tmp_path),
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "demiarch_flow", "run", FAST, "-m", "hi", "--quiet",
         "--db", silent.url(), "--base-url", "http://127.0.0.1:9/api/v1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert silent.accepted.wait(30), "the command never connected"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=8)
        assert proc.returncode == 130, err
        assert time.monotonic() - sent < 5
        assert "interrupted" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_history_of_an_unknown_conversation_in_an_existing_database(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once the database exists, an unknown --conversation is an input error (exit 2), as an
    unknown RUN_ID is for `runs show`."""
    url = f"sqlite:///{home / 'flow.db'}"
    assert main(["db", "upgrade", "--db", url]) == 0
    assert main(["history", "--conversation", "nope", "--db", url]) == 2
    assert "no conversation with id 'nope'" in capsys.readouterr().err
