"""Revision 0007: a stream's answer kept on its attempt row, and what each attempt answered or
failed with."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import insert, inspect, select

from demiarch_flow.store.sql import open_engine
from demiarch_flow.store.tables import Conversation, RunAttempt, WorkflowRun

from .test_schema import migrate, revision_of
from .test_v0006 import AT, run_row

_ATTEMPT = RunAttempt.__table__
_NEW = ("finish_reason", "response_model", "error_message")


@pytest.fixture
def url(db_url: str) -> str:
    return db_url


def _attempts(url: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            columns = [c["name"] for c in inspect(conn).get_columns("run_attempts")]
            rows = conn.execute(select(_ATTEMPT.c.run_id, _ATTEMPT.c.number, _ATTEMPT.c.model))
            return columns, [tuple(r) for r in rows]
    finally:
        engine.dispose()


def test_0006_to_0007_and_back_keeps_every_attempt(url: str) -> None:
    """Upgrading adds the three nullable columns (old rows read NULL); a row that uses them
    is written; downgrading drops the columns and keeps the rows."""
    migrate(url, "0006")
    engine = open_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(Conversation.__table__),
                [
                    {
                        "id": "c1",
                        "project_id": None,
                        "title": "t",
                        "created_at": AT,
                        "updated_at": AT,
                    }
                ],
            )
            conn.execute(insert(WorkflowRun.__table__), [run_row("r1")])
            conn.execute(
                insert(_ATTEMPT).values(run_id="r1", number=1, model="acme/fast", started_at=AT)
            )
    finally:
        engine.dispose()
    migrate(url, "0007")
    assert revision_of(url) == "0007"
    columns, rows = _attempts(url)
    assert set(_NEW) <= set(columns) and rows == [("r1", 1, "acme/fast")]
    engine = open_engine(url)
    try:
        with engine.begin() as conn:
            assert conn.execute(select(*(_ATTEMPT.c[n] for n in _NEW))).one() == (None,) * 3
            conn.execute(
                insert(_ATTEMPT).values(
                    run_id="r1",
                    number=2,
                    model="acme/fast",
                    started_at=AT,
                    partial_text="all",
                    finish_reason="stop",
                    response_model="acme/fast-2",
                    error_message=None,
                )
            )
    finally:
        engine.dispose()
    migrate(url, "0006", down=True)
    columns, rows = _attempts(url)
    assert not set(_NEW) & set(columns)
    assert rows == [("r1", 1, "acme/fast"), ("r1", 2, "acme/fast")]
