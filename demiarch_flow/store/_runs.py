"""SQL of a run's life after it began: checkpoints, attempts, heartbeats, resumes and reads.

Each function runs inside a transaction the caller owns (``SqlStore``'s group commit), on its
executor (:class:`~._fast.Tx`; a SQLAlchemy ``Connection`` is taken too). The statements a run
writes every time are :class:`~._fast.Fixed`, named in :mod:`._statements`: run on the DB-API
cursor without SQLAlchemy on the store's own SQLite connection. The rare ones (a resume, the
reads) are built as they go and imported with SQLAlchemy when first needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..errors import RunTakenOver
from ._fast import Fixed, Tx, sa_of
from .base import (
    AttemptRow,
    BilledAttempt,
    Checkpoint,
    Definition,
    JournalEntry,
    RunStatus,
    StoredReply,
    StoredRun,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection

_INS_EVENT = Fixed("insert_event")
_INS_ATTEMPT = Fixed("insert_attempt")
_INS_DEFINITION = Fixed("insert_definition")
_INS_USAGE = Fixed("insert_usage")
_DEFINITION_EXISTS = Fixed("definition_exists")
_END_ATTEMPT = Fixed("end_attempt")
_PROGRESS_ATTEMPT = Fixed("attempt_progress")
_ANSWERED_ATTEMPT = Fixed("attempt_answered")
_CHECKPOINT_OWNED = Fixed("checkpoint_owned")
"""Only while the run is still the writer's (another process may have resumed it)."""
_CHECKPOINT_ANY = Fixed("checkpoint")
_HEARTBEAT = Fixed("heartbeat")
_BILLED_EXISTS = Fixed("billed_exists")
_LOCK_RUN = Fixed("lock_run")
_FENCE_RUN = Fixed("fence_run")
"""Proof of ownership before a request (see :mod:`._statements`)."""
_LAST_ATTEMPT = Fixed("last_attempt")


def append_events(conn: Tx | Connection, entries: Sequence[JournalEntry]) -> None:
    _INS_EVENT.executemany(
        conn,
        [
            {"run_id": e.run_id, "seq": e.seq, "from_state": e.from_state, "event": e.event,
             "to_state": e.to_state, "model": e.model, "attempt": e.attempt,
             "error_class": e.error_class, "wait_s": e.wait_s, "at": e.at,
             "wait_source": e.wait_source, "bucket": e.bucket}
            for e in entries
        ],
    )  # fmt: skip


def store_definition(
    conn: Tx | Connection, sha256: str, name: str, text: str, at: datetime
) -> None:
    """Keep a workflow's text once per SHA-256 (processes starting together may both try:
    the second insert is a no-op, not a duplicate-key error)."""
    if _DEFINITION_EXISTS.scalar(conn, {"b_sha": sha256}) is not None:
        return
    _INS_DEFINITION.execute(conn, {"sha256": sha256, "name": name, "text": text, "created_at": at})


def checkpoint(conn: Tx | Connection, cp: Checkpoint) -> None:
    fenced = cp.owner is not None
    done = (_CHECKPOINT_OWNED if fenced else _CHECKPOINT_ANY).execute(
        conn,
        {"b_id": cp.run_id, "b_state": cp.current_state, "b_model": cp.model,
         "b_json": cp.state.to_json(), **({"b_owner": cp.owner} if fenced else {})},
    )  # fmt: skip
    if fenced and done != 1:
        raise RunTakenOver(cp.run_id)
    if cp.entries:
        append_events(conn, cp.entries)


def prove_owner(conn: Tx | Connection, run_id: str, owner: str, at: datetime) -> None:
    """:class:`RunTakenOver` unless the run is running under ``owner`` (its heartbeat is
    refreshed to ``at`` as it is checked)."""
    if _FENCE_RUN.execute(conn, {"b_id": run_id, "b_owner": owner, "b_at": at}) != 1:
        raise RunTakenOver(run_id)


def insert_attempt(
    conn: Tx | Connection, attempt: AttemptRow, owner: str | None = None, *, new_run: bool = False
) -> int:
    """Record a request about to leave under the run's next free number (returned).

    With ``owner``, only while the run is running under it (:class:`RunTakenOver` otherwise,
    nothing written). The number is allocated here, in the transaction, one above the run's
    highest: numbers chosen by the caller collided after a take-over or a skipped request.
    ``new_run``: the run's row was inserted in this transaction, so it has no attempt yet
    (its number is 1, not read).
    """
    if owner is not None:
        prove_owner(conn, attempt.run_id, owner, attempt.started_at)
    number = 1 if new_run else (_LAST_ATTEMPT.scalar(conn, {"b_run": attempt.run_id}) or 0) + 1
    _INS_ATTEMPT.execute(
        conn,
        {"run_id": attempt.run_id, "number": number, "model": attempt.model,
         "started_at": attempt.started_at, "ended_at": None, "status": None,
         "error_class": None, "generation_id": None, "latency_ms": None,
         "partial_text": None, "finish_reason": None, "response_model": None,
         "error_message": None},
    )  # fmt: skip
    return number


def end_attempt(conn: Tx | Connection, attempt: AttemptRow) -> None:
    _END_ATTEMPT.execute(
        conn,
        {"b_run": attempt.run_id, "b_number": attempt.number, "b_ended": attempt.ended_at,
         "b_status": attempt.status, "b_class": attempt.error_class,
         "b_gen": attempt.generation_id, "b_latency": attempt.latency_ms,
         "b_partial": attempt.partial_text, "b_finish": attempt.finish_reason,
         "b_response_model": attempt.response_model, "b_message": attempt.error_message},
    )  # fmt: skip


def attempt_progress(conn: Tx | Connection, attempt: AttemptRow) -> None:
    _PROGRESS_ATTEMPT.execute(
        conn,
        {"b_run": attempt.run_id, "b_number": attempt.number, "b_gen": attempt.generation_id},
    )


def attempt_answered(conn: Tx | Connection, attempt: AttemptRow) -> None:
    _ANSWERED_ATTEMPT.execute(
        conn,
        {"b_run": attempt.run_id, "b_number": attempt.number, "b_gen": attempt.generation_id,
         "b_partial": attempt.partial_text, "b_finish": attempt.finish_reason,
         "b_response_model": attempt.response_model, "b_status": attempt.status,
         "b_latency": attempt.latency_ms},
    )  # fmt: skip


def heartbeat(conn: Tx | Connection, owner: str, at: datetime) -> None:
    _HEARTBEAT.execute(conn, {"b_owner": owner, "b_at": at})


def reopen(
    conn: Tx | Connection,
    cp: Checkpoint,
    owner: str | None,
    at: datetime,
    expect: tuple[RunStatus, str | None] | None = None,
    definition: Definition | None = None,
) -> bool:
    from sqlalchemy import update

    from ._statements import REOPEN, RUN

    statement = REOPEN
    if expect is not None:
        statement = REOPEN.where(
            RUN.c.status == expect[0], RUN.c.owner.is_not_distinct_from(expect[1])
        )
    done = sa_of(conn).execute(
        statement,
        {"b_id": cp.run_id, "b_state": cp.current_state, "b_model": cp.model,
         "b_json": cp.state.to_json(), "b_owner": owner, "b_at": at},
    )  # fmt: skip
    if done.rowcount != 1:
        return False
    if definition is not None:
        store_definition(conn, definition.sha256, definition.name, definition.text, at)
        sa_of(conn).execute(
            update(RUN)
            .where(RUN.c.id == cp.run_id)
            .values(workflow=definition.name, workflow_sha256=definition.sha256)
        )
    if cp.entries:
        append_events(conn, cp.entries)
    return True


def book_billed(conn: Tx | Connection, billed: BilledAttempt) -> None:
    # Two processes resuming one run book its lost attempts before either has taken the run:
    # the run's row lock makes the second see the first's row on PostgreSQL (SQLite's
    # BEGIN IMMEDIATE already serialises them).
    _LOCK_RUN.scalar(conn, {"b_id": billed.run_id})
    if _BILLED_EXISTS.scalar(conn, {"b_run": billed.run_id, "b_gen": billed.generation_id}):
        return
    prompt, completion = billed.prompt_tokens, billed.completion_tokens
    total = None if prompt is None or completion is None else prompt + completion  # NULL: unknown
    _INS_USAGE.execute(
        conn,
        {"id": billed.usage_id, "conversation_id": billed.conversation_id, "message_id": None,
         "outcome": billed.outcome, "run_id": billed.run_id, "project_id": billed.project_id,
         "model": billed.model, "requested_model": billed.model,
         "generation_id": billed.generation_id, "prompt_tokens": prompt,
         "completion_tokens": completion, "total_tokens": total,
         "cached_tokens": 0, "cost_usd": billed.cost_usd, "cost_source": billed.cost_source,
         "latency_ms": 0, "attempts": billed.attempt, "request_timestamp": billed.at},
    )  # fmt: skip


# ---------------------------------------------------------------------- reads


def load_runs(
    conn: Connection,
    *,
    run_id: str | None = None,
    status: RunStatus | None = None,
    since: datetime | None = None,
    limit: int = 1,
    with_definition: bool = False,
) -> list[StoredRun]:
    """Runs (newest first) with their attempts, reply and booked cost."""
    from sqlalchemy import select

    from ._statements import ATTEMPT as _ATTEMPT
    from ._statements import DEFINITION as _DEFINITION
    from ._statements import MSG as _MSG
    from ._statements import RUN as _RUN
    from ._statements import USAGE as _USAGE

    query = select(_RUN).order_by(_RUN.c.started_at.desc()).limit(limit)
    if run_id is not None:
        query = query.where(_RUN.c.id == run_id)
    if status is not None:
        query = query.where(_RUN.c.status == status)
    if since is not None:
        query = query.where(_RUN.c.started_at >= since)
    rows = conn.execute(query).all()
    if not rows:
        return []
    ids = [r.id for r in rows]
    attempts: dict[str, list[AttemptRow]] = {}
    for a in conn.execute(
        select(_ATTEMPT).where(_ATTEMPT.c.run_id.in_(ids)).order_by(_ATTEMPT.c.number)
    ):
        attempts.setdefault(a.run_id, []).append(
            AttemptRow(a.run_id, a.number, a.model, a.started_at, a.ended_at, a.status,
                       a.error_class, a.generation_id, a.latency_ms, a.partial_text,
                       a.finish_reason, a.response_model, a.error_message)
        )  # fmt: skip
    replies: dict[str, StoredReply] = {}
    for u in conn.execute(
        select(_USAGE, _MSG.c.content)
        .join(_MSG, _MSG.c.id == _USAGE.c.message_id)
        .where(_USAGE.c.run_id.in_(ids), _USAGE.c.outcome == "reply")
    ):
        replies[u.run_id] = StoredReply(
            u.message_id, u.content, u.model, u.prompt_tokens, u.completion_tokens,
            u.cost_usd, u.cost_source,
        )  # fmt: skip
    costs: dict[str, Decimal] = {}
    for run, cost in conn.execute(
        select(_USAGE.c.run_id, _USAGE.c.cost_usd).where(_USAGE.c.run_id.in_(ids))
    ):  # summed here: SQLite keeps amounts as text, and SUM would make them floats
        costs[run] = costs.get(run, Decimal(0)) + _usd(cost)
    definitions: dict[str, str] = {}
    if with_definition:
        shas = {r.workflow_sha256 for r in rows}
        definitions = {
            sha: text
            for sha, text in conn.execute(
                select(_DEFINITION.c.sha256, _DEFINITION.c.text).where(
                    _DEFINITION.c.sha256.in_(shas)
                )
            )
        }
    out = []
    for r in rows:
        out.append(
            StoredRun(
                run_id=r.id,
                workflow=r.workflow,
                workflow_sha256=r.workflow_sha256,
                definition=definitions.get(r.workflow_sha256),
                conversation_id=r.conversation_id,
                status=r.status,
                current_state=r.current_state,
                model=r.model,
                error_class=r.error_class,
                error_message=r.error_message,
                started_at=r.started_at,
                finished_at=r.finished_at,
                state_json=r.state_json,
                owner=r.owner,
                heartbeat_at=r.heartbeat_at,
                resume_count=r.resume_count or 0,
                attempts=tuple(attempts.get(r.id, ())),
                reply=replies.get(r.id),
                cost_usd=costs.get(r.id, Decimal(0)),
            )
        )
    return out


def load_journal(conn: Connection, run_id: str) -> tuple[JournalEntry, ...]:
    """The run's journal rows in order."""
    from sqlalchemy import select

    from ._statements import EVENT as _EVENT

    rows = conn.execute(select(_EVENT).where(_EVENT.c.run_id == run_id).order_by(_EVENT.c.seq))
    return tuple(
        JournalEntry(e.run_id, e.seq, e.from_state, e.event, e.to_state, e.model, e.attempt,
                     e.error_class, e.wait_s, e.at, e.wait_source)
        for e in rows
    )  # fmt: skip


def _usd(value: Any) -> Decimal:
    return Decimal(0) if value is None else Decimal(str(value))
