"""One job, on the trio side: start its run, or continue it without paying twice.

procrastinate delivers a job at least once: a worker killed, frozen past ``--stall-after`` or
cut off from the database has its jobs given to another. Whatever the job's history, the run's
own records decide what happens, exactly as ``runs resume`` decides (:mod:`demiarch_flow.runner
.resume`):

* no run yet: it starts, under the run id the submission gave it;
* no run, but it had begun (its usage or budget rows are there): its row was deleted by hand
  after it began; the job fails with that said (:class:`NotSubmitted`) and nothing is sent
  again;
* it has ended (succeeded, or failed as a workflow fails): nothing is sent, the job succeeds;
* it is running under a live owner (another worker has it): :class:`RunBusy`, the job is
  retried later and by then finds it ended — the owner is never overtaken (owner fencing);
* it was cancelled (a worker's grace ran out), its owner is gone, or it failed because the
  database failed: resumed — a stored or recovered answer is kept, never asked again.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

import trio
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ..definition import Workflow, parse_workflow
from ..errors import DefinitionError, ErrorClass, FlowError, PersistenceError, RunError, UsageError
from ..runner import RunEnv, RunOutcome, RunRequest, run_workflow
from ..runner.owner import effective_status
from ..runner.resume import resume_run, saved_outcome
from ..runner.state import RunState
from ..store.base import StoredRun
from ..store.sql import SqlStore
from .submit import Submission

Action = Literal["ran", "resumed", "ended"]
Seen = Literal["new", "begun", "deleted"]
"""What a run id has in the database: nothing (a first delivery), a run, or what a run leaves
when it paid or reserved something and then its row was deleted."""


class RunBusy(FlowError):
    """The run is running under a live owner: the job is tried again later (not an error)."""

    def __init__(self, run_id: str, owner: str | None) -> None:
        super().__init__(f"run {run_id} is running under {owner}; its job is tried again later")


class NotSubmitted(UsageError):
    """The job cannot become a run (its definition or its arguments are gone): it fails with
    this message, and the worker goes on."""


@dataclass(frozen=True, slots=True)
class Taken:
    """What a job did to its run."""

    outcome: RunOutcome
    action: Action
    """``ran``: started here; ``resumed``: continued here; ``ended``: it had ended already
    (nothing sent)."""


_DEFINITION = text("SELECT text FROM workflow_definitions WHERE sha256 = :sha")
_SEEN = text(
    "SELECT r.id,"
    " EXISTS (SELECT 1 FROM workflow_runs w WHERE w.id = r.id) AS begun,"
    " EXISTS (SELECT 1 FROM llm_usage u WHERE u.run_id = r.id)"
    " OR EXISTS (SELECT 1 FROM budget_reservations b WHERE b.run_id = r.id) AS left_rows"
    " FROM unnest(CAST(:runs AS text[])) AS r(id)"
)
"""One round trip on indexed columns for every run id asked at the moment; a run's row and
its user message are written in one transaction that has committed before anything else of
the run, so no write of this process still queued can change the answer."""


class _Asked:
    """One run id waiting for the next :data:`_SEEN` read, and its answer once read."""

    __slots__ = ("answer", "error", "run_id")

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.answer: Seen | None = None
        self.error: Exception | None = None


class Workflows:
    """The worker's own reads: the definitions jobs name (parsed once per SHA-256 for the life
    of a worker) and what a job's run id has in the database (:meth:`seen`)."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self._parsed: dict[str, Workflow] = {}
        self._asked: list[_Asked] = []
        self._reading = trio.Lock()

    async def get(self, sub: Submission) -> Workflow:
        """Raises: NotSubmitted: the database has no such definition, or it does not parse."""
        if (wf := self._parsed.get(sub.workflow_sha256)) is not None:
            return wf
        source = await trio.to_thread.run_sync(self._read, sub.workflow_sha256)
        if source is None:
            raise NotSubmitted(
                f"run {sub.run_id}: its workflow (sha256 {sub.workflow_sha256[:12]}) is not in"
                " workflow_definitions; submit it again"
            )
        try:
            wf = parse_workflow(source, source=f"<definition {sub.workflow_sha256[:12]}>")
        except DefinitionError as exc:
            raise NotSubmitted(
                f"run {sub.run_id}: its workflow no longer validates: {exc}"
            ) from None
        self._parsed[sub.workflow_sha256] = wf
        return wf

    async def seen(self, run_id: str) -> Seen:
        """Whether ``run_id`` is new, has begun, or was deleted after it began.

        A first delivery (the common case) costs a share of one light query, not the run's
        whole record (:meth:`~demiarch_flow.store.sql.SqlStore.load_run` reads its attempts
        and definition too, and commits the store's queued writes first to read its own).
        The jobs a worker takes together ask together: whoever holds the lock reads every id
        asked so far in one statement (the lock's ``acquire`` yields to trio's scheduler even
        when it is free, which lets the other jobs of the moment ask first) — one pooled
        connection, its check and one thread hop for all of them. Asked one by one, this read
        was a fifth of a worker's throughput (2,000 runs through 2 workers × 50: 0.70–0.75× of
        one ``batch`` process with it, 0.90–0.92× with it left out).

        Raises:
            PersistenceError: the database failed.
        """
        asked = _Asked(run_id)
        self._asked.append(asked)
        async with self._reading:
            if asked.answer is None and asked.error is None:
                batch, self._asked = self._asked, []
                try:
                    # Shielded: every id taken off the list is answered, even if the job that
                    # took them is cancelled (an abort, a grace run out) before its thread
                    # starts — the others wait on the answer, not on that job.
                    with trio.CancelScope(shield=True):
                        found = await trio.to_thread.run_sync(self._seen, [a.run_id for a in batch])
                except Exception as exc:
                    for a in batch:
                        a.error = exc
                else:
                    for a in batch:
                        a.answer = found[a.run_id]
        if asked.error is not None:
            raise asked.error
        if asked.answer is None:  # never: every list taken is answered (see above)
            raise AssertionError(f"run {run_id}: asked, never answered")
        return asked.answer

    def _seen(self, run_ids: list[str]) -> dict[str, Seen]:
        try:
            with self._store.engine.connect() as conn:
                auto = conn.execution_options(isolation_level="AUTOCOMMIT")
                rows = auto.execute(_SEEN, {"runs": run_ids}).all()
        except SQLAlchemyError as exc:
            raise PersistenceError(f"cannot read the run: {exc}") from None
        return {
            run_id: "begun" if begun else "deleted" if left_rows else "new"
            for run_id, begun, left_rows in rows
        }

    def _read(self, sha: str) -> str | None:
        try:
            with self._store.engine.connect() as conn:
                found: str | None = conn.execute(_DEFINITION, {"sha": sha}).scalar()
                return found
        except SQLAlchemyError as exc:
            raise PersistenceError(f"cannot read the workflow definition: {exc}") from None


async def take_run(
    sub: Submission, env: RunEnv, workflows: Workflows, *, stale_after_s: float
) -> Taken:
    """Start or continue the run of ``sub`` (see the module doc).

    Raises:
        RunBusy: a live process owns the run.
        NotSubmitted: the job cannot become a run, or its run was deleted after it began.
        PersistenceError: the database failed (the job is retried).
    """
    seen = await workflows.seen(sub.run_id)
    run = await env.store.load_run(sub.run_id) if seen == "begun" else None
    if seen != "new" and run is None:
        raise NotSubmitted(
            f"run {sub.run_id} was deleted from workflow_runs after it had begun (its"
            " llm_usage or budget rows remain); its job fails and nothing is sent again"
        )
    if run is None:
        wf = await workflows.get(sub)
        request = RunRequest(
            sub.message, conversation_id=sub.conversation_id, model=sub.model,
            traceparent=sub.traceparent,
        )  # fmt: skip
        return _retried_if_unrecorded(
            Taken(await run_workflow(wf, request, env, run_id=sub.run_id), "ran")
        )
    if run.reply is not None:
        return Taken(saved_outcome(run), "ended")
    if run.status == "failed" and run.error_class != ErrorClass.PERSISTENCE:
        return Taken(ended_outcome(run), "ended")
    status = effective_status(run, env.now(), stale_after_s=stale_after_s)
    if status == "running":
        raise RunBusy(run.run_id, run.owner)
    resumed = await resume_run(run.run_id, env, stale_after_s=stale_after_s)
    return _retried_if_unrecorded(Taken(resumed.outcome, "resumed" if resumed.ran else "ended"))


def _retried_if_unrecorded(taken: Taken) -> Taken:
    """A run that failed because the database failed is the database's trouble, not the
    run's result: its job is retried (and then resumes the run, or starts it if even its row
    was never written).

    Raises:
        PersistenceError: the run failed with class ``persistence``.
    """
    outcome = taken.outcome
    if outcome.status == "failed" and outcome.error_class == ErrorClass.PERSISTENCE:
        raise PersistenceError(f"run {outcome.run_id}: {outcome.error}")
    return taken


def ended_outcome(run: StoredRun) -> RunOutcome:
    """The outcome of a run that has ended, read back from its row (a succeeded run with its
    reply, else its status and error), as ``run --json`` reports it."""
    if run.reply is not None:
        return saved_outcome(run)
    state = RunState.from_json(run.state_json) if run.state_json else None
    error = None
    if run.error_class or run.error_message:
        try:
            cls = ErrorClass(run.error_class) if run.error_class else ErrorClass.INTERNAL
        except ValueError:
            cls = ErrorClass.INTERNAL
        error = RunError(run.error_message or run.status, error_class=cls)
    return RunOutcome(
        run_id=run.run_id,
        conversation_id=run.conversation_id,
        status=run.status,
        final_state=run.current_state or "",
        model=run.model,
        content=None,
        prompt_tokens=None,
        completion_tokens=None,
        cost_usd=run.cost_usd if run.cost_usd else Decimal(0),
        cost_source=None,
        attempts=state.attempts if state else (),
        transitions=(),
        error=error,
        virtual_wait_s=0.0,
        resume_count=run.resume_count,
    )


def job_failed_outcome(run_id: str) -> RunOutcome:
    """The outcome of a submitted run whose job failed for good before the run began (its
    arguments or its workflow definition were unusable, or its run was deleted after it had
    begun): ``failed``, nothing sent or paid, so ``runs wait`` and ``batch --queue`` report it
    instead of waiting for a run that will never come."""
    return RunOutcome(
        run_id=run_id, conversation_id=None, status="failed", final_state="", model=None,
        content=None, prompt_tokens=None, completion_tokens=None, cost_usd=Decimal(0),
        cost_source=None, attempts=(), transitions=(),
        error=RunError(
            "its job failed before the run began, and nothing was sent (the worker's log says"
            " why: a workflow definition or arguments it could not use, or a run deleted after"
            " it had begun)",
            error_class=ErrorClass.INTERNAL,
        ),
        virtual_wait_s=0.0, resume_count=0,
    )  # fmt: skip
