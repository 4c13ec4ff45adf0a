"""The quick reader of `history`, `usage` and `runs list` (the standard library's sqlite3, no
SQLAlchemy) reads exactly what SqlStore reads, on one database filled by real runs; anything it
does not take is left to SqlStore (`NotLite`), which then reads it or says what is wrong."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from demiarch_flow.definition import load_workflow
from demiarch_flow.errors import UnknownConversation
from demiarch_flow.runner import RunRequest, run_workflow
from demiarch_flow.store._lite import LiteReader, NotLite, head_revision, sqlite_path
from demiarch_flow.store.schema import HEAD
from demiarch_flow.store.sql import SqlStore
from demiarch_flow.testing import FakeOpenRouter, make_env

from .test_schema import migrate

WF = load_workflow(Path(__file__).resolve().parents[2] / "workflows" / "chat.yaml")
START = datetime(2026, 3, 30, 12, 0, 0, 500_000, tzinfo=UTC)
"""Runs span midnight and a month's end, so `--by day` has two days to tell apart."""
SONNET, HAIKU = "anthropic/claude-sonnet-4", "anthropic/claude-3.5-haiku"


def ticking() -> Callable[[], datetime]:
    """A wall clock that moves an hour each time it is read (no two rows share a time)."""
    state = {"at": START}

    def now() -> datetime:
        state["at"] += timedelta(hours=1)
        return state["at"]

    return now


async def fill(url: str) -> dict[str, str]:
    """Real runs through the engine: a retry, a stream broken after its first token (an
    `interrupted` usage row), a fallback, a failed run, and a conversation of two turns."""
    store = SqlStore.open_sync(url)
    now = ticking()
    ids: dict[str, str] = {}
    try:
        for name, script, conversation in [
            ("retried", f"{SONNET}=429,ok", None),
            ("interrupted", f"{SONNET}=cut:2,ok", None),
            ("second turn", "", "interrupted"),
            ("fell back", f"{SONNET}=404;{HAIKU}=ok", None),
            ("failed", "*=401", None),
        ]:
            env = make_env(FakeOpenRouter(script), store=store, now=now)
            request = RunRequest(name, conversation_id=ids.get(conversation or ""))
            out = await run_workflow(WF, request, env)
            assert out.status == ("failed" if name == "failed" else "succeeded"), name
            assert out.conversation_id is not None
            ids[name] = out.conversation_id
            ids[f"run {name}"] = out.run_id
    finally:
        store.close()
    return ids


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('lite') / 'flow.db'}"
    ids = trio.run(fill, url, clock=trio.testing.MockClock(autojump_threshold=0))
    return url, ids


def both(url: str, read: Callable[[Any], Any]) -> tuple[Any, Any]:
    """``read`` through the quick reader and through SqlStore (read-only), on one database."""
    lite = LiteReader.open(url)
    try:
        quick = read(lite)
    finally:
        lite.close()
    store = SqlStore.open_sync(url, read_only=True)
    try:

        async def full() -> Any:
            class Blocking:  # SqlStore's report methods are async: await each
                def __getattr__(self, name: str) -> Any:
                    method = getattr(store, name)
                    return lambda *a, **k: ("await", method(*a, **k))

            call = read(Blocking())
            return await call[1] if isinstance(call, tuple) and call[0] == "await" else call

        slow = trio.run(full)
    finally:
        store.close()
    return quick, slow


@pytest.mark.parametrize("limit", [1, 2, 50])
def test_conversations_are_the_same(filled: tuple[str, dict[str, str]], limit: int) -> None:
    """`history`: the latest conversations, newest first, with their message counts."""
    url, _ = filled
    quick, slow = both(url, lambda r: r.conversations(limit))
    assert quick == slow and len(quick) == min(limit, 4)
    assert {c.messages for c in quick} <= {1, 2, 4}


@pytest.mark.parametrize("limit", [1, 3, 50])
@pytest.mark.parametrize("which", ["retried", "interrupted", "failed"])
def test_messages_are_the_same(filled: tuple[str, dict[str, str]], which: str, limit: int) -> None:
    """`history --conversation ID`: the last N messages, oldest first, every field."""
    url, ids = filled
    quick, slow = both(url, lambda r: r.messages(ids[which], limit))
    assert quick == slow and quick and all(m.created_at.tzinfo is UTC for m in quick)


def test_an_unknown_conversation_is_refused_alike(filled: tuple[str, dict[str, str]]) -> None:
    url, _ = filled
    lite = LiteReader.open(url)
    try:
        with pytest.raises(UnknownConversation):
            lite.messages("nope", 10)
    finally:
        lite.close()


@pytest.mark.parametrize("by", ["model", "day", "conversation"])
@pytest.mark.parametrize("since", [None, START + timedelta(hours=20), START + timedelta(days=900)])
def test_usage_is_the_same(
    filled: tuple[str, dict[str, str]], by: str, since: datetime | None
) -> None:
    """`usage --by … --since …`: the same groups, counts, tokens and exact amounts, the
    interrupted stream's spend apart."""
    url, _ = filled
    quick, slow = both(url, lambda r: r.usage(since, by))
    assert quick == slow
    if since is None:
        assert sum(r.interrupted_calls for r in quick) == 1
        assert by != "day" or len(quick) > 1


@pytest.mark.parametrize("status", [None, "succeeded", "failed", "running"])
@pytest.mark.parametrize("since", [None, START + timedelta(hours=20)])
@pytest.mark.parametrize("limit", [1, 100])
def test_runs_are_the_same(
    filled: tuple[str, dict[str, str]], status: Any, since: datetime | None, limit: int
) -> None:
    """`runs list`: the runs newest first with their attempts, reply and booked cost."""
    url, _ = filled
    quick, slow = both(url, lambda r: r.list_runs(status=status, since=since, limit=limit))
    assert quick == slow
    if status is None and since is None and limit == 100:
        assert len(quick) == 5 and sum(len(r.attempts) for r in quick) >= 8


def test_missing_replies_are_the_same(filled: tuple[str, dict[str, str]]) -> None:
    """What the recovery warning asks: runs with no reply whose conversation exists (a run
    the database has never seen is one: `recover` would import it)."""
    url, ids = filled
    pairs = [(ids["run retried"], ids["retried"]), (ids["run failed"], ids["failed"]),
             ("no-such-run", ids["retried"]), (ids["run failed"], "no-such-conversation")]  # fmt: skip
    quick, slow = both(url, lambda r: r.missing_replies(pairs))
    assert quick == slow == {ids["run failed"], "no-such-run"}


def test_the_head_revision_is_the_schemas() -> None:
    """Read off the shipped migrations' names, it is schema.HEAD."""
    assert head_revision() == HEAD


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:////tmp/x.db", "/tmp/x.db"),
        ("sqlite+pysqlite:///rel/x.db", "rel/x.db"),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("sqlite:///file:x.db?mode=ro&uri=true", None),
        ("sqlite:////tmp/x%20y.db", None),
        ("postgresql+psycopg://u@h/db", None),
    ],
)
def test_only_plain_sqlite_urls_are_read_quickly(url: str, path: str | None) -> None:
    assert sqlite_path(url) == (Path(path) if path else None)


def test_what_the_quick_reader_does_not_take(tmp_path: Path) -> None:
    """A missing file, a file behind head, and a broken alembic_version are NotLite (SqlStore
    then says what is wrong); nothing is created."""
    missing = tmp_path / "none.db"
    with pytest.raises(NotLite):
        LiteReader.open(f"sqlite:///{missing}")
    assert not missing.exists()
    behind = tmp_path / "behind.db"
    migrate(f"sqlite:///{behind}", "0005")
    with pytest.raises(NotLite):
        LiteReader.open(f"sqlite:///{behind}")
    with sqlite3.connect(behind) as conn:
        conn.execute("INSERT INTO alembic_version VALUES (?)", (HEAD,))
    conn.close()
    with pytest.raises(NotLite):  # two rows
        LiteReader.open(f"sqlite:///{behind}")


def test_a_query_the_file_cannot_answer_is_left_to_the_full_store(
    filled: tuple[str, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A column the quick query needs is gone: NotLite, and `usage` then says what SqlStore
    says — exit 3 naming the table and column — rather than a driver error."""
    from demiarch_flow.cli.main import main

    url, _ = filled
    broken = tmp_path / "broken.db"
    with sqlite3.connect(str(sqlite_path(url))) as src, sqlite3.connect(broken) as dst:
        src.backup(dst)
        dst.execute("ALTER TABLE llm_usage DROP COLUMN prompt_tokens")
    src.close()
    dst.close()
    lite = LiteReader.open(f"sqlite:///{broken}")
    try:
        with pytest.raises(NotLite):
            lite.usage(None, "model")
    finally:
        lite.close()
    assert main(["usage", "--db", f"sqlite:///{broken}"]) == 3
    err = capsys.readouterr().err
    assert "table llm_usage" in err and "prompt_tokens" in err
