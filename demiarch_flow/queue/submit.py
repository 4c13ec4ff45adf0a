"""``submit``: a run and its job, written as one row in one transaction.

The job's arguments are the run's request (:class:`Submission`); the workflow's text goes to
``workflow_definitions`` (once per SHA-256) in the same transaction, through procrastinate's
own versioned SQL function (``procrastinate_defer_jobs_v1``) run on our connection. A crash can therefore leave neither a queued run that
no worker will take nor a job without its definition: either all of a submit is committed or
none of it.

A line of ``submit --batch`` gets a run id derived from its id and ``input_sha256`` (UUID 5),
so the same line submitted again names the same run and is found (a job, or the run it
became) and reported as already submitted; an edited line hashes differently and is a new run.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Engine, bindparam, text

from ..errors import UsageError
from ..store import _runs
from ..store.base import Definition

TASK = "demiarch_flow.run"
"""The procrastinate task every submitted run is a job of."""
DEFAULT_QUEUE = "runs"
_BATCH_NS = uuid.UUID("5d0c3f8e-8a8e-4f7e-9d59-6b1f4f1a0c19")
"""The namespace of batch lines' run ids (any fixed UUID: it only has to never change)."""

Submitted = Literal["queued", "already_submitted"]


@dataclass(frozen=True, slots=True)
class Submission:
    """What a queued run asks: the arguments of its job."""

    run_id: str
    workflow: str
    workflow_sha256: str
    message: str
    conversation_id: str | None = None
    model: str | None = None
    item_id: str | None = None
    """The batch line's id (``submit --batch``)."""
    input_sha256: str | None = None
    """What the batch line asked (message, conversation, model), as ``batch`` hashes it."""
    line: int | None = None
    """The batch line's number in its file."""
    traceparent: str | None = None
    """The W3C ``traceparent`` of the ``submit`` span (``submit --trace``): the worker's run
    continues that trace, as the submit's child."""

    @property
    def lock(self) -> str | None:
        """procrastinate's lock: runs of one conversation run one at a time, in the order
        they were submitted (a new conversation needs none)."""
        return f"conversation:{self.conversation_id}" if self.conversation_id else None

    def to_args(self) -> dict[str, Any]:
        """The job's arguments: the fields that are set (read directly: ``asdict`` copies
        each value through its deep-copying recursion, a tenth of a second for 2,000)."""
        return {k: v for k in _FIELDS if (v := getattr(self, k)) is not None}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Submission:
        """A job's arguments read back.

        Raises:
            UsageError: they are not a submission's (a job deferred by hand, or damaged).
        """
        try:
            sub = cls(**args)
        except TypeError as exc:
            raise UsageError(f"the job's arguments are not a submitted run's ({exc})") from None
        if not all(isinstance(getattr(sub, f), str) for f in ("run_id", "workflow_sha256")):
            raise UsageError("the job's arguments are not a submitted run's (no run id)")
        return sub


_FIELDS = tuple(f.name for f in fields(Submission))


def batch_run_id(item_id: str, input_sha256: str) -> str:
    """The run id of a batch line: the same line (id and what it asks) names the same run."""
    return str(uuid.uuid5(_BATCH_NS, f"{item_id}\n{input_sha256}"))


_DEFER = text(
    "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY("
    " SELECT ROW(:queue, :task, 0, j.lock, NULL, j.args, NULL)::procrastinate_job_to_defer_v1"
    " FROM ROWS FROM (jsonb_to_recordset(CAST(:jobs AS jsonb)) AS (lock text, args jsonb))"
    " WITH ORDINALITY AS j(lock, args, n)"
    " ORDER BY j.n)))"
)
"""procrastinate's versioned SQL API for deferring jobs, fed one JSON document: the jobs keep
their order (their ids, and so a conversation's order, follow the submission's), and 2,000
jobs cost one parameter instead of 2,000 composite values adapted one by one."""
_KNOWN = text(
    "SELECT id FROM workflow_runs WHERE id IN :ids"
    " UNION SELECT args->>'run_id' FROM procrastinate_jobs"
    " WHERE task_name = :task AND args->>'run_id' IN :ids"
).bindparams(bindparam("ids", expanding=True))


def submit_runs(
    engine: Engine,
    definition: Definition,
    submissions: list[Submission],
    *,
    queue: str = DEFAULT_QUEUE,
    at: datetime,
    dedupe: bool = False,
) -> list[Submitted]:
    """Queue ``submissions`` (one job each) under ``definition``, in one transaction.

    Args:
        dedupe: skip those whose run id has a job or a run already (``submit --batch``).

    Returns:
        For each submission, in order: ``queued`` or ``already_submitted``.
    """
    with engine.begin() as conn:
        _runs.store_definition(conn, definition.sha256, definition.name, definition.text, at)
        known: set[str] = set()
        if dedupe and submissions:
            ids = [s.run_id for s in submissions]
            for start in range(0, len(ids), 5000):
                chunk = ids[start : start + 5000]
                known.update(conn.execute(_KNOWN, {"ids": chunk, "task": TASK}).scalars())
        fresh = [s for s in submissions if s.run_id not in known]
        if fresh:
            jobs = [{"lock": s.lock, "args": s.to_args()} for s in fresh]
            conn.execute(_DEFER, {"jobs": json.dumps(jobs), "queue": queue, "task": TASK})
    return ["already_submitted" if s.run_id in known else "queued" for s in submissions]
