"""``runs trace RUN_ID``: the span tree of a run, drawn from its journal in the terminal."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from demiarch_flow.cli.main import main
from demiarch_flow.runner import RunRequest, run_workflow
from demiarch_flow.store import MemoryStore
from demiarch_flow.telemetry.tree import draw
from demiarch_flow.testing import FakeOpenRouter, make_env

from ..runner.helpers import HAIKU, SONNET, default_workflow

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def virtual_now() -> Callable[[], datetime]:
    """A wall clock following trio's (virtual) one, a microsecond further at every reading,
    as a real clock moves between two things that happen one after the other."""
    ticks = itertools.count()

    def now() -> datetime:
        return T0 + timedelta(seconds=trio.current_time(), microseconds=next(ticks))

    return now


async def test_the_tree_shows_attempts_waits_and_moves_in_time_order(
    autojump_clock: object,
) -> None:
    """500 (a 1 s backoff), 404 (fallback), then haiku: the root with the run's status, the
    three chat spans, the wait with its length, and every move, in time order."""
    store = MemoryStore()
    env = make_env(FakeOpenRouter(f"{SONNET}=500,404"), store=store, now=virtual_now())
    out = await run_workflow(default_workflow(), RunRequest("Hi", stream=False), env)
    run = await store.load_run(out.run_id)
    assert run is not None
    lines = draw(run, await store.journal(out.run_id))
    assert lines[0].startswith(f"invoke_workflow chat  run {out.run_id}  succeeded  1,000 ms")
    body = [line[3:] for line in lines[1:]]
    assert all(line.startswith(("├─ ", "└─ ")) for line in lines[1:-1] + lines[-1:])
    assert lines[-1].startswith("└─ ")
    shapes = [line.split("  ")[0] for line in body]
    assert shapes == [
        "· LoadContext --loaded--> Request",
        f"chat {SONNET}",
        "· Request --retryable--> Backoff (server_error)",
        "wait backoff",
        "· Backoff --retry--> Request",
        f"chat {SONNET}",
        "· Request --model_failed--> Fallback (model_unavailable)",
        "· Fallback --next_model--> Request",
        f"chat {HAIKU}",
        "· Request --succeeded--> Persist",
        "· Persist --saved--> Done",
    ]
    assert "  1,000 ms" in body[3]
    assert body[1].endswith("HTTP 500 server_error") and "#1  +0 ms" in body[1]
    assert body[5].endswith("HTTP 404 model_unavailable") and "#2  +1,000 ms" in body[5]
    assert body[8].endswith("HTTP 200") and "#3  +1,000 ms" in body[8]


def test_runs_trace_of_an_unknown_id_is_an_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An id that names no run: exit 2, and the message names it."""
    monkeypatch.setenv("DEMIARCH_FLOW_HOME", str(tmp_path))
    monkeypatch.setenv("DEMIARCH_FLOW_DB", f"sqlite:///{tmp_path / 'f.db'}")
    assert main(["db", "upgrade"]) == 0
    assert main(["runs", "trace", "nope"]) == 2
    assert "'nope'" in capsys.readouterr().err
