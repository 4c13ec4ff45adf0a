"""The store's statements, written once in SQLAlchemy Core.

The fixed ones (:data:`FIXED`, every write a run makes) are named: :class:`~._fast.Fixed`
refers to them by name, and SQLAlchemy compiles them only where it is needed — PostgreSQL, a
SQLite database opened through SQLAlchemy, and :mod:`._sqlite_gen`, which writes their SQLite
form into :mod:`._sqlite_sql` ahead of time so that a run on SQLite never imports SQLAlchemy.
The others (resumes, recovery, reports) are run by SQLAlchemy on the rare paths that import this
module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.sql import ClauseElement

from .tables import (
    ChatMessage,
    Conversation,
    LlmUsage,
    RunAttempt,
    RunEvent,
    WorkflowDefinition,
    WorkflowRun,
)

CONV: Table = Conversation.__table__  # type: ignore[assignment]
MSG: Table = ChatMessage.__table__  # type: ignore[assignment]
USAGE: Table = LlmUsage.__table__  # type: ignore[assignment]
RUN: Table = WorkflowRun.__table__  # type: ignore[assignment]
EVENT: Table = RunEvent.__table__  # type: ignore[assignment]
ATTEMPT: Table = RunAttempt.__table__  # type: ignore[assignment]
DEFINITION: Table = WorkflowDefinition.__table__  # type: ignore[assignment]

Spec = tuple[ClauseElement, Sequence[str] | None]
"""A fixed statement and, for an ``INSERT``, every column it writes (the keys of each row)."""


def _inserting(table: Table) -> Spec:
    return insert(table), [c.key for c in table.c]


def _define(dialect: str) -> Spec:
    """Keep a workflow's text once per SHA-256: processes starting together may both insert
    it, and the second insert is a no-op, not a duplicate-key error."""
    columns = [c.key for c in DEFINITION.c]
    # imported here: the PostgreSQL dialect alone costs a SQLite command ~50 ms to start
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(DEFINITION).on_conflict_do_nothing(), columns
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(DEFINITION).on_conflict_do_nothing(), columns
    return insert(DEFINITION), columns


_FINISH = (
    update(RUN)
    .where(RUN.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"), current_state=bindparam("b_state"),
        model=bindparam("b_model"), error_class=bindparam("b_class"),
        error_message=bindparam("b_message"), finished_at=bindparam("b_at"),
    )
)  # fmt: skip
_FINISH_OWNED = _FINISH.where(RUN.c.owner == bindparam("b_owner"))
_CHECKPOINT = (
    update(RUN)
    .where(RUN.c.id == bindparam("b_id"))
    .values(
        current_state=bindparam("b_state"), model=bindparam("b_model"),
        state_json=bindparam("b_json"),
    )
)  # fmt: skip
_BY_ATTEMPT = (ATTEMPT.c.run_id == bindparam("b_run"), ATTEMPT.c.number == bindparam("b_number"))

_STATEMENTS: dict[str, ClauseElement] = {
    "conversation_exists": select(CONV.c.id).where(CONV.c.id == bindparam("b_id")),
    "history": (
        select(
            MSG.c.id,
            MSG.c.conversation_id,
            MSG.c.role,
            MSG.c.content,
            MSG.c.model,
            MSG.c.created_at,
            MSG.c.run_id,
            MSG.c.token_count,
        )
        .where(MSG.c.conversation_id == bindparam("b_id"))
        .order_by(MSG.c.created_at.desc())
        .limit(bindparam("b_limit"))
    ),
    "touch_conversation": update(CONV)
    .where(CONV.c.id == bindparam("b_id"))
    .values(updated_at=bindparam("b_at")),
    # The run's end: only a running one, unless ``again``; owner-fenced or not (``_finish``).
    "end": _FINISH.where(RUN.c.status == "running"),
    "end_again": _FINISH,
    "end_owned": _FINISH_OWNED.where(RUN.c.status == "running"),
    "end_owned_again": _FINISH_OWNED,
    # The run's end with its last checkpoint's JSON, even if it ended already.
    "end_with_state": _FINISH.values(state_json=bindparam("b_json")),
    "end_owned_with_state": _FINISH_OWNED.values(state_json=bindparam("b_json")),
    "reply_of_run": select(USAGE.c.message_id).where(
        USAGE.c.run_id == bindparam("b_run"), USAGE.c.outcome == "reply"
    ),
    "owner_of_run": select(RUN.c.owner).where(RUN.c.id == bindparam("b_id")),
    "definition_exists": select(DEFINITION.c.sha256).where(
        DEFINITION.c.sha256 == bindparam("b_sha")
    ),
    "end_attempt": update(ATTEMPT)
    .where(*_BY_ATTEMPT)
    .values(
        ended_at=bindparam("b_ended"),
        status=bindparam("b_status"),
        error_class=bindparam("b_class"),
        generation_id=bindparam("b_gen"),
        latency_ms=bindparam("b_latency"),
        partial_text=bindparam("b_partial"),
        finish_reason=bindparam("b_finish"),
        response_model=bindparam("b_response_model"),
        error_message=bindparam("b_message"),
    ),
    "attempt_progress": update(ATTEMPT)
    .where(*_BY_ATTEMPT)
    .values(generation_id=bindparam("b_gen")),
    "attempt_answered": update(ATTEMPT)
    .where(*_BY_ATTEMPT)
    .values(
        generation_id=bindparam("b_gen"),
        partial_text=bindparam("b_partial"),
        finish_reason=bindparam("b_finish"),
        response_model=bindparam("b_response_model"),
        status=bindparam("b_status"),
        latency_ms=bindparam("b_latency"),
    ),
    # Only while the run is still the writer's (another process may have resumed it).
    "checkpoint_owned": _CHECKPOINT.where(RUN.c.owner == bindparam("b_owner")),
    "checkpoint": _CHECKPOINT,
    "heartbeat": update(RUN)
    .where(RUN.c.owner == bindparam("b_owner"), RUN.c.status == "running")
    .values(heartbeat_at=bindparam("b_at")),
    "billed_exists": select(USAGE.c.id).where(
        USAGE.c.run_id == bindparam("b_run"), USAGE.c.generation_id == bindparam("b_gen")
    ),
    "lock_run": select(RUN.c.id).where(RUN.c.id == bindparam("b_id")).with_for_update(),
    # Proof of ownership before a request: it also takes the run's row lock (PostgreSQL), so a
    # resume reopening the run and this owner's next attempt are serialised.
    "fence_run": update(RUN)
    .where(
        RUN.c.id == bindparam("b_id"),
        RUN.c.owner == bindparam("b_owner"),
        RUN.c.status == "running",
    )
    .values(heartbeat_at=bindparam("b_at")),
    "last_attempt": select(func.max(ATTEMPT.c.number)).where(
        ATTEMPT.c.run_id == bindparam("b_run")
    ),
}


def _plain(statement: ClauseElement) -> Callable[[str], Spec]:
    return lambda _dialect: (statement, None)


def _insert_of(table: Table) -> Callable[[str], Spec]:
    return lambda _dialect: _inserting(table)


FIXED: dict[str, Callable[[str], Spec]] = {
    **{name: _plain(statement) for name, statement in _STATEMENTS.items()},
    **{
        f"insert_{name}": _insert_of(table)
        for name, table in (
            ("conversation", CONV),
            ("message", MSG),
            ("run", RUN),
            ("usage", USAGE),
            ("event", EVENT),
            ("attempt", ATTEMPT),
        )
    },
    "insert_definition": _define,
}
"""Every fixed statement by name: its dialect's name → the statement (and its columns)."""

REOPEN = (
    update(RUN)
    .where(RUN.c.id == bindparam("b_id"))
    .values(
        status="running", current_state=bindparam("b_state"), model=bindparam("b_model"),
        state_json=bindparam("b_json"), owner=bindparam("b_owner"),
        heartbeat_at=bindparam("b_at"), resume_count=RUN.c.resume_count + 1,
        error_class=None, error_message=None, finished_at=None,
    )
)  # fmt: skip
ASSISTANT_OF_RUN = select(MSG.c.id).where(
    MSG.c.run_id == bindparam("b_run"), MSG.c.role == "assistant"
)
RUN_STATE = select(RUN.c.current_state).where(RUN.c.id == bindparam("b_id"))
