"""Read-only commands (`db current`, `history`, `usage`, `runs list`, `runs show`, `db upgrade
--sql`) open SQLite read-only: they work on a file the user cannot write, never create, back up,
upgrade or switch the journal of it, and a file that needs an upgrade is refused saying so.

Tests run as root here, and root ignores file permissions; so the read-only case is made with a
read-only bind mount in a private mount namespace (``unshare``), which binds root too, and the
permission cases run only for another user."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from sqlalchemy.exc import OperationalError

from demiarch_flow.cli.main import main
from demiarch_flow.store.schema import HEAD, REVISIONS
from demiarch_flow.store.sql import SqlStore

from .test_schema import migrate, one_run, revision_of

BEHIND = REVISIONS[-2]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private data folder and no database from the environment."""
    monkeypatch.setenv("DEMIARCH_FLOW_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("DEMIARCH_FLOW_DB", raising=False)
    return tmp_path


@pytest.fixture
def filled(home: Path) -> tuple[Path, str]:
    """A database at head in its own folder, holding one finished run; and the run's id."""
    folder = home / "db"
    folder.mkdir()
    db = folder / "flow.db"
    trio.run(one_run, f"sqlite:///{db}")
    with sqlite3.connect(db) as conn:
        run_id: str = conn.execute("SELECT id FROM workflow_runs").fetchone()[0]
    conn.close()
    assert sorted(p.name for p in folder.iterdir()) == ["flow.db"]  # the writer folded its WAL
    return db, run_id


def commands(run_id: str) -> list[list[str]]:
    return [["db", "current"], ["history"], ["usage"], ["runs", "list"], ["runs", "show", run_id],
            ["db", "upgrade", "--sql"]]  # fmt: skip


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_read_only_commands_change_no_byte_and_create_no_file(
    filled: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every read-only command reads the run and leaves the folder exactly as it was: same
    bytes, same modification times, no -wal, -shm or backup beside the file."""
    db, run_id = filled
    before = snapshot(db.parent)
    for command in commands(run_id):
        assert main([*command, "--db", f"sqlite:///{db}"]) == 0, command
    out = capsys.readouterr().out
    assert run_id in out and f"revision {HEAD} (head)" in out
    assert snapshot(db.parent) == before


def test_a_read_only_store_cannot_write(filled: tuple[Path, str]) -> None:
    """SqlStore.open_sync(read_only=True): any write fails inside SQLite, so a read-only
    command that tried one would fail loudly instead of changing the file."""
    db, _ = filled
    store = SqlStore.open_sync(f"sqlite:///{db}", read_only=True)
    try:
        with (
            pytest.raises(OperationalError, match="attempt to write a readonly database"),
            store.engine.begin() as conn,
        ):
            conn.exec_driver_sql("DELETE FROM workflow_runs")
    finally:
        store.close()
    assert revision_of(f"sqlite:///{db}") == HEAD


def test_read_only_commands_never_upgrade_a_file_that_is_behind(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file at an older revision: history, usage and runs list exit 3 saying it needs
    `db upgrade`; it is not backed up or upgraded; `db current` still reports it."""
    folder = home / "db"
    folder.mkdir()
    url = f"sqlite:///{folder / 'flow.db'}"
    migrate(url, BEHIND)
    before = snapshot(folder)
    for command in (["history"], ["usage"], ["runs", "list"]):
        assert main([*command, "--db", url]) == 3, command
        err = capsys.readouterr().err
        assert f"database is at revision {BEHIND}, this release needs {HEAD}" in err
        assert "only reads the database" in err and f"db upgrade --db {url}" in err
    assert main(["db", "current", "--db", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "behind"
    assert snapshot(folder) == before
    assert revision_of(url) == BEHIND


def test_rows_still_in_the_write_ahead_log_are_read(
    filled: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """While a writer holds rows in the -wal (not yet in the file), history shows them: a
    file with a -wal beside it is read through it, never as if the file were complete."""
    db, _ = filled
    writer = sqlite3.connect(db)
    try:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute(
            "INSERT INTO conversations (id, title, created_at, updated_at) VALUES"
            " ('in-the-wal', 'only in the log', '2030-01-01 00:00:00', '2030-01-01 00:00:00')"
        )
        writer.commit()
        assert (db.parent / "flow.db-wal").stat().st_size > 0
        assert main(["history", "--db", f"sqlite:///{db}", "--json"]) == 0
        assert "in-the-wal" in capsys.readouterr().out
    finally:
        writer.close()


# ---------------------------------------------------------------------- a read-only file system


def _read_only_mount_works(folder: Path) -> bool:
    """Whether this machine lets us bind-mount ``folder`` read-only in a private namespace."""
    if shutil.which("unshare") is None or sys.platform != "linux":
        return False
    probe = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c",
         'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && ! touch "$1/probe"',
         "sh", str(folder)],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    return probe.returncode == 0 and not (folder / "probe").exists()


def _run_read_only(folder: Path, db: Path, run_id: str) -> tuple[list[int], str]:
    """Each read-only command, in one process that sees ``folder`` mounted read-only."""
    driver = (
        "import json, sys\n"
        "from demiarch_flow.cli.main import main\n"
        "codes = [main(c) for c in json.loads(sys.argv[1])]\n"
        "print('CODES=' + json.dumps(codes))\n"
    )
    argv = [[*c, "--db", f"sqlite:///{db}"] for c in commands(run_id)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMIARCH_FLOW_")}
    env["DEMIARCH_FLOW_HOME"] = str(folder)
    proc = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c",
         'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"',
         "sh", str(folder), sys.executable, "-c", driver, json.dumps(argv)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    codes = [line for line in proc.stdout.splitlines() if line.startswith("CODES=")]
    assert codes, proc.stderr
    return json.loads(codes[-1].removeprefix("CODES=")), proc.stdout + proc.stderr


def test_read_only_commands_work_on_a_read_only_file_system(filled: tuple[Path, str]) -> None:
    """On a read-only mount (to SQLite, what an unwritable folder is: no -shm can be made)
    every read-only command exits 0, reads the run and changes nothing."""
    db, run_id = filled
    if not _read_only_mount_works(db.parent):
        pytest.skip("cannot bind-mount a folder read-only here (unshare or mount refused)")
    before = snapshot(db.parent)
    codes, output = _run_read_only(db.parent, db, run_id)
    assert codes == [0] * len(commands(run_id)), output
    assert run_id in output and "readonly" not in output
    assert snapshot(db.parent) == before


def test_a_log_left_behind_on_a_read_only_file_system_is_explained(
    filled: tuple[Path, str],
) -> None:
    """A -wal left by a writer that died, on a read-only mount: it cannot be read without a
    -shm, so exit 3 says what to run — not a bare "attempt to write a readonly database"."""
    db, run_id = filled
    if not _read_only_mount_works(db.parent):
        pytest.skip("cannot bind-mount a folder read-only here (unshare or mount refused)")
    crashed = db.parent.parent / "crashed"
    crashed.mkdir()
    writer = sqlite3.connect(db)
    try:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("DELETE FROM run_events")
        writer.commit()
        for name in ("flow.db", "flow.db-wal"):  # what a SIGKILL leaves (-shm is rebuilt)
            shutil.copyfile(db.parent / name, crashed / name)
    finally:
        writer.close()
    codes, output = _run_read_only(crashed, crashed / "flow.db", run_id)
    assert codes == [3] * len(commands(run_id)), output
    assert "flow.db-shm, which cannot be created in its folder" in output
    assert "`demiarch-flow db upgrade`" in output


# ---------------------------------------------------------------------- another user's view


needs_permissions = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root ignores file permissions (the read-only mount tests cover this as root)",
)


@needs_permissions
def test_a_file_and_folder_the_user_cannot_write(
    filled: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """chmod 0444 file in a 0555 folder: every read-only command exits 0."""
    db, run_id = filled
    db.chmod(0o444)
    db.parent.chmod(0o555)
    try:
        for command in commands(run_id):
            assert main([*command, "--db", f"sqlite:///{db}"]) == 0, command
    finally:
        db.parent.chmod(0o755)
        db.chmod(0o644)
    assert run_id in capsys.readouterr().out


@needs_permissions
def test_a_read_only_file_in_a_writable_folder_leaves_no_side_files(
    filled: tuple[Path, str],
) -> None:
    """chmod 0444 file in a writable folder: the commands exit 0 and leave no -wal or -shm
    (read-only ones would break the owner's next write once the file is writable again)."""
    db, run_id = filled
    db.chmod(0o444)
    try:
        for command in commands(run_id):
            assert main([*command, "--db", f"sqlite:///{db}"]) == 0, command
        assert sorted(p.name for p in db.parent.iterdir()) == ["flow.db"]
    finally:
        db.chmod(0o644)
