"""A first-release database, upgraded: its runs replay with what they have, and the report says
what is missing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from demiarch_flow.definition import parse_workflow
from demiarch_flow.replay import Selection, read_record, replay
from demiarch_flow.store.sql import SqlStore

from ..conftest import DEFAULT_WORKFLOW
from ..store.test_schema import first_release

SONNET = "anthropic/claude-sonnet-4"


def test_first_release_runs_replay_from_their_stored_answers(tmp_path: Path) -> None:
    """Two first-release runs (no attempts, journal or definition): one answered by sonnet in
    1.2 s for $0.001, one failed. Upgraded and replayed under the bundled file: the answer is
    met again (same model, cost and latency), the failed run has no provider behaviour of its
    own and meets sonnet as that answer showed it; both gaps are named."""
    db = tmp_path / "flow.db"
    url = f"sqlite:///{db}"
    first_release(url)
    with sqlite3.connect(db) as conn:
        conn.executescript(
            f"""
            INSERT INTO conversations VALUES ('c1', NULL, 'old', '2026-11-24 10:00:00',
                '2026-11-24 10:00:01');
            INSERT INTO chat_messages VALUES ('m1', 'c1', NULL, 'user', 'hello', NULL, NULL,
                'r1', '2026-11-24 10:00:00');
            INSERT INTO chat_messages VALUES ('m2', 'c1', NULL, 'assistant', 'hi there',
                '{SONNET}', 3, 'r1', '2026-11-24 10:00:01.200000');
            INSERT INTO workflow_runs VALUES ('r1', 'chat', 'old-sha', 'c1', 'succeeded', 'Done',
                '{SONNET}', NULL, NULL, '2026-11-24 10:00:00', '2026-11-24 10:00:01.200000');
            INSERT INTO llm_usage VALUES ('u1', 'c1', 'm2', 'r1', NULL, '{SONNET}', '{SONNET}',
                'gen-old-1', 12, 3, 15, 0, '0.001000000', 'provider', 1200, 1,
                '2026-11-24 10:00:00');
            INSERT INTO chat_messages VALUES ('m3', 'c1', NULL, 'user', 'again', NULL, NULL,
                'r2', '2026-11-24 11:00:00');
            INSERT INTO workflow_runs VALUES ('r2', 'chat', 'old-sha', 'c1', 'failed', 'Failed',
                NULL, 'all_models_failed', 'all models failed', '2026-11-24 11:00:00',
                '2026-11-24 11:00:07');
            """
        )
    SqlStore.open_sync(url).close()  # what any command does: adopt and upgrade
    store = SqlStore.open_sync(url, read_only=True)
    try:
        rec = read_record(store.engine, Selection("chat", None, None))
    finally:
        store.close()
    report = replay(parse_workflow(DEFAULT_WORKFLOW.read_text("utf-8")), rec)
    first, second = report.pairs
    assert (first[1].outcome, first[1].spend, first[1].seconds) == (
        f"succeeded with {SONNET}",
        first[0].spend,
        1.2,
    )
    assert second[0].outcome == "failed (all_models_failed)"
    assert second[1].outcome == f"succeeded with {SONNET}"
    assert [c.run_id for c in report.changed] == ["r2"]
    assert report.missing == (
        "2 runs: no stored workflow definition (first-release runs): a Retry-After they did not"
        " wait is not guessed",
        "1 run: no recorded attempts (first-release runs): only their answer is known (its"
        " model, latency and cost), not what failed before it",
        "1 run: no recorded attempts and no answer (first-release runs): replayed from the"
        " other runs of their models",
    )
