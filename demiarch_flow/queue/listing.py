"""Runs that are still only jobs, for ``runs list``: submitted, not yet begun by a worker.

A submitted run has no ``workflow_runs`` row until a worker's LoadContext writes it; until then
its job (waiting, or just taken) is the run, and ``runs list`` shows it as ``queued``. Read
only, and only where the queue's tables exist (a PostgreSQL database the queue has been used
on), so ``runs list`` on SQLite is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, inspect, text

from .submit import TASK

_QUEUED = text(
    "SELECT j.args->>'run_id' AS run_id, j.args->>'conversation_id' AS conversation_id,"
    " j.args->>'model' AS model,"
    " (SELECT min(e.at) FROM procrastinate_events e WHERE e.job_id = j.id) AS submitted_at"
    " FROM procrastinate_jobs j WHERE j.task_name = :task AND j.status IN ('todo', 'doing')"
    " AND NOT EXISTS (SELECT 1 FROM workflow_runs r WHERE r.id = j.args->>'run_id')"
    " AND (CAST(:since AS timestamptz) IS NULL OR EXISTS (SELECT 1 FROM procrastinate_events e"
    "  WHERE e.job_id = j.id AND e.at >= CAST(:since AS timestamptz)))"
    " ORDER BY j.id DESC LIMIT :limit"
)


_ONE_QUEUED = text(
    "SELECT j.args->>'run_id' AS run_id, j.args->>'conversation_id' AS conversation_id,"
    " j.args->>'model' AS model, j.args->>'workflow' AS workflow,"
    " j.args->>'workflow_sha256' AS workflow_sha256,"
    " (SELECT min(e.at) FROM procrastinate_events e WHERE e.job_id = j.id) AS submitted_at"
    " FROM procrastinate_jobs j WHERE j.task_name = :task AND j.status IN ('todo', 'doing')"
    " AND j.args->>'run_id' = :run_id"
    " AND NOT EXISTS (SELECT 1 FROM workflow_runs r WHERE r.id = :run_id)"
    " ORDER BY j.id LIMIT 1"
)


@dataclass(frozen=True, slots=True)
class QueuedRun:
    run_id: str
    conversation_id: str | None
    model: str | None
    submitted_at: datetime | None
    workflow: str | None = None
    workflow_sha256: str | None = None


def queued_runs(conn: Connection, *, since: datetime | None, limit: int) -> list[QueuedRun]:
    """The newest ``limit`` submitted runs no worker has begun (none where there is no queue)."""
    if conn.dialect.name != "postgresql" or not inspect(conn).has_table("procrastinate_jobs"):
        return []
    found = conn.execute(_QUEUED, {"task": TASK, "since": since, "limit": limit}).all()
    return [QueuedRun(r.run_id, r.conversation_id, r.model, r.submitted_at) for r in found]


def queued_run(conn: Connection, run_id: str) -> QueuedRun | None:
    """The submitted run ``run_id`` if no worker has begun it yet (``runs show``), else
    ``None`` (also where there is no queue)."""
    if conn.dialect.name != "postgresql" or not inspect(conn).has_table("procrastinate_jobs"):
        return None
    r = conn.execute(_ONE_QUEUED, {"task": TASK, "run_id": run_id}).first()
    if r is None:
        return None
    return QueuedRun(
        r.run_id, r.conversation_id, r.model, r.submitted_at, r.workflow, r.workflow_sha256
    )
