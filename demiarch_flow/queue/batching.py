"""procrastinate's worker with fewer round trips per job, and no log records nobody reads.

procrastinate 3.10's :class:`~procrastinate.worker.Worker` fetches one job per query and
finishes one job per query, and builds each log record's ``extra`` (``attr.asdict`` of the
job) four times a job whether or not anything is logged (the worker keeps procrastinate's
logger silent unless ``--debug``). :class:`BatchingWorker` changes only those three things:

* **fetch**: as many jobs as there are free slots (at most :data:`FETCH_MAX`) in one
  statement, which calls procrastinate's own ``procrastinate_fetch_job_v2`` once per slot
  (:data:`FETCH_MANY`). Each call is its function exactly as a single fetch runs it, and each
  sees what the calls before it in the statement took (a PL/pgSQL function's statements see
  the statement's earlier changes), so its locks hold as they do one query at a time: a
  conversation's second job is not taken while its first is ``doing``, not even by the same
  statement. A statement that fails takes nothing (it is one transaction).
* **finish**: the ends of jobs that finish while one finish statement is in flight are
  written together by the next (:class:`Finisher`), each by procrastinate's own
  ``procrastinate_finish_job_v1``; should that statement fail, each job's end is written on
  its own, so one job's failure (a job another worker took over) stays that job's. A job
  given back for a retry goes through procrastinate's own ``retry_job``, unchanged.
* **log records**: their ``extra`` is built only when a record is made (:class:`LazyExtra`).
* **an end that could not be written** (the database restarted or unreachable just as a run
  ended): procrastinate lets the error escape and the job stays ``doing`` under a worker that
  goes on beating, so no stalled-job sweep ever takes it and ``--until-empty`` never exits.
  Here the end is kept and written again, with a growing delay, until the database answers
  (:meth:`BatchingWorker._record_unrecorded`), each time only while the job is still this
  worker's ``doing`` job: its run has ended, so nothing runs again, and a job another worker
  has taken since is left to it.

Delivery stays procrastinate's: a job is ``doing`` under this worker from its fetch to its
finish, exactly as before; only the number of statements that carry them changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from procrastinate import job_context, jobs, utils
from procrastinate.worker import Worker

FETCH_MAX = 16
"""Jobs fetched by one statement at most (a worker just started, or one whose runs ended
together)."""

FETCH_MANY = (
    "SELECT j.id, j.status, j.task_name, j.priority, j.lock, j.queueing_lock, j.args,"
    " j.scheduled_at, j.queue_name, j.attempts, j.worker_id"
    " FROM generate_series(1, %(n)s) AS g,"
    " LATERAL procrastinate_fetch_job_v2(%(queues)s::varchar[], %(worker_id)s + 0 * g) AS j"
    " WHERE j.id IS NOT NULL ORDER BY g"
)
"""procrastinate's fetch, ``n`` times in one statement (``+ 0 * g`` makes each row a call of
its own: a function with unchanged arguments is called once and its row reused)."""

FINISH_MANY = (
    "SELECT f.id, procrastinate_finish_job_v1(f.id, f.status::procrastinate_job_status, f.del)"
    " FROM unnest(%(ids)s::bigint[], %(statuses)s::text[], %(deletes)s::boolean[])"
    " WITH ORDINALITY AS f(id, status, del, n)"
    " JOIN procrastinate_jobs j ON j.id = f.id AND j.status = 'doing'"
    " AND j.worker_id = %(worker_id)s ORDER BY f.n"
)
"""The ends of several jobs in one statement, each written only while its job is still this
worker's ``doing`` job: a worker frozen (SIGSTOP) past the stall limit and woken must not mark
ended a job the sweep gave back and another worker now runs (that worker's retry of it, after
an infrastructure error, would then fail, leaving a run that no job will ever take). The ids
returned are the ends written."""
FINISH_IF_OURS = (
    "SELECT j.id, procrastinate_finish_job_v1(j.id, %(status)s::procrastinate_job_status,"
    " %(delete_job)s) FROM procrastinate_jobs j"
    " WHERE j.id = %(job_id)s AND j.status = 'doing' AND j.worker_id = %(worker_id)s"
)
RETRY_IF_OURS = (
    "SELECT procrastinate_retry_job_v2(j.id, %(retry_at)s, %(new_priority)s,"
    " %(new_queue_name)s, %(new_lock)s) FROM procrastinate_jobs j"
    " WHERE j.id = %(job_id)s AND j.status = 'doing' AND j.worker_id = %(worker_id)s"
)
"""A job's end written again later: only while the job is still this worker's ``doing`` job
(no row, no call: it was written after all, or another worker has the job now)."""
RECORD_FIRST_S = 0.5
RECORD_CAP_S = 5.0
"""The delays between tries at writing ends that failed: 0.5 s, doubling, at most 5 s."""

log = logging.getLogger("demiarch_flow")


class LazyExtra(Mapping[str, Any]):
    """A log record's ``extra``, built on first use: :mod:`logging` reads it only when it
    makes a record, which a silenced logger never does."""

    __slots__ = ("_build", "_built")

    def __init__(self, build: Callable[[], dict[str, Any]]) -> None:
        self._build = build
        self._built: dict[str, Any] | None = None

    def _get(self) -> dict[str, Any]:
        if self._built is None:
            self._built = self._build()
        return self._built

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


class Finisher:
    """Writes the ends of jobs, those that arrive together in one statement, each only while
    its job is still this worker's (see :data:`FINISH_MANY`)."""

    def __init__(self, connector: Any, worker_id: Callable[[], int | None]) -> None:
        self._connector = connector
        self._worker_id = worker_id
        self._pending: list[tuple[int, str, bool, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def finish(self, job_id: int, status: str, delete: bool) -> bool:
        """Returns once the job's end is written: ``True``, or ``False`` when the job is no
        longer this worker's ``doing`` job (another worker has it now), and nothing was written.

        Raises:
            whatever procrastinate's ``procrastinate_finish_job_v1`` raised for this job.
        """
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((job_id, status, delete, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="finish jobs")
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                if len(batch) == 1:
                    job_id, status, delete, _ = batch[0]
                    rows = await self._connector.execute_query_all_async(
                        query=FINISH_IF_OURS, job_id=job_id, status=status, delete_job=delete,
                        worker_id=self._worker_id(),
                    )  # fmt: skip
                else:
                    rows = await self._connector.execute_query_all_async(
                        query=FINISH_MANY,
                        ids=[b[0] for b in batch],
                        statuses=[b[1] for b in batch],
                        deletes=[b[2] for b in batch],
                        worker_id=self._worker_id(),
                    )
            except Exception:  # all or nothing: each again on its own, its failure its own
                await self._one_by_one(batch)
                continue
            written = {row["id"] for row in rows}
            for job_id, _, _, future in batch:
                if not future.done():
                    future.set_result(job_id in written)

    async def _one_by_one(self, batch: list[tuple[int, str, bool, asyncio.Future[bool]]]) -> None:
        for job_id, status, delete, future in batch:
            try:
                rows = await self._connector.execute_query_all_async(
                    query=FINISH_IF_OURS, job_id=job_id, status=status, delete_job=delete,
                    worker_id=self._worker_id(),
                )  # fmt: skip
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(bool(rows))


@dataclass(frozen=True, slots=True)
class _End:
    """A job's end still to be written: its final status, or its retry."""

    job: jobs.Job
    status: jobs.Status
    delete: bool
    retry: Any  # procrastinate's RetryDecision, or None


class BatchingWorker(Worker):
    """procrastinate's worker; see the module doc for what differs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._finisher = Finisher(self.app.connector, lambda: self.worker_id)
        self._unrecorded: dict[int, _End] = {}
        self._unrecorded_event = asyncio.Event()
        self.failure: BaseException | None = None
        """The error of the side task (heartbeat, listener) that stopped this worker."""

    def _log_extra(
        self,
        action: str,
        context: job_context.JobContext | None,
        job_result: job_context.JobResult | None,
        **kwargs: Any,
    ) -> Any:
        parent = super()._log_extra

        def build() -> dict[str, Any]:
            return dict(parent(action, context, job_result, **kwargs))

        return LazyExtra(build)

    async def _persist_job_status(
        self,
        job: jobs.Job,
        status: jobs.Status,
        retry_decision: Any,
        context: job_context.JobContext,
        job_result: job_context.JobResult | None,
    ) -> None:
        delete = {
            jobs.DeleteJobCondition.ALWAYS: True,
            jobs.DeleteJobCondition.NEVER: False,
            jobs.DeleteJobCondition.SUCCESSFUL: status == jobs.Status.SUCCEEDED,
        }[self.delete_jobs]
        assert job.id is not None
        try:
            if retry_decision:
                await super()._persist_job_status(job, status, retry_decision, context, job_result)
                return
            written = await self._finisher.finish(job.id, status.value, delete)
        except Exception as exc:
            self._unwritten(_End(job, status, delete, retry_decision), exc)
            return
        if not written:
            log.warning(
                f"worker: job {job.id}{_run_of(job)}: not this worker's any more (given back"
                " to the queue while this worker was not beating); its end is left to the"
                " worker that has it now"
            )
        self._job_ids_to_abort.pop(job.id, None)
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(
                f"Acknowledged job completion {job.call_string}",
                extra=self._log_extra(
                    action="finish_task", context=context, status=status, job_result=job_result
                ),
            )

    def _unwritten(self, end: _End, exc: Exception) -> None:
        """A job's end failed to be written: kept, and tried again until the database answers."""
        from .backend import describe

        job_id = end.job.id
        assert job_id is not None
        if _no_longer_doing(exc):  # written after all, or another worker has it now
            log.warning(
                f"worker: job {job_id}{_run_of(end.job)}: its end was not written"
                f" ({describe(exc)}); the job is no longer this worker's, left as it is"
            )
            return
        self._unrecorded[job_id] = end
        self._unrecorded_event.set()
        log.warning(
            f"worker: job {job_id}{_run_of(end.job)}: its end could not be written"
            f" ({describe(exc)}); written again once the database answers (first try in"
            f" {RECORD_FIRST_S:g} s); its run has ended and does not run again"
        )

    async def _write_end(self, job_id: int, end: _End) -> None:
        if end.retry:
            retry = end.retry
            await self.app.connector.execute_query_async(
                query=RETRY_IF_OURS, job_id=job_id, worker_id=self.worker_id,
                retry_at=retry.retry_at or utils.utcnow(), new_priority=retry.priority,
                new_queue_name=retry.queue, new_lock=retry.lock,
            )  # fmt: skip
        else:
            await self.app.connector.execute_query_async(
                query=FINISH_IF_OURS, job_id=job_id, worker_id=self.worker_id,
                status=end.status.value, delete_job=end.delete,
            )  # fmt: skip

    async def _record_unrecorded(self, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        """The side task that writes the ends that failed, with a growing delay between tries,
        until each is written (or is no longer this worker's to write)."""
        from .backend import describe

        delay = RECORD_FIRST_S
        while True:
            if not self._unrecorded:
                self._unrecorded_event.clear()
                await self._unrecorded_event.wait()
                delay = RECORD_FIRST_S
            await sleep(delay)
            for job_id, end in list(self._unrecorded.items()):
                try:
                    await self._write_end(job_id, end)
                except Exception as exc:
                    if _no_longer_doing(exc):
                        self._unrecorded.pop(job_id, None)
                        continue
                    delay = min(RECORD_CAP_S, delay * 2)
                    log.warning(
                        f"worker: job {job_id}{_run_of(end.job)}: its end still cannot be"
                        f" written ({describe(exc)}); next try in {delay:g} s"
                    )
                    break
                self._unrecorded.pop(job_id, None)
                self._job_ids_to_abort.pop(job_id, None)
                log.warning(f"worker: job {job_id}{_run_of(end.job)}: its end is written now")

    def _start_side_tasks(self) -> list[asyncio.Task[Any]]:
        tasks = super()._start_side_tasks()
        tasks.append(asyncio.create_task(self._record_unrecorded(), name="write failed ends"))
        return tasks

    async def _monitor_side_tasks(self, side_tasks: list[asyncio.Task[Any]]) -> None:
        """procrastinate's: a side task that fails (a heartbeat or the listener losing the
        database) stops the worker; here its error is kept, for the worker's log line."""
        done, _ = await asyncio.wait(side_tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None:
                self.failure = exc
                self.stop()  # type: ignore[no-untyped-call]
                return

    async def _fetch_jobs(self, n: int) -> list[jobs.Job]:
        rows = await self.app.connector.execute_query_all_async(
            query=FETCH_MANY,
            n=n,
            queues=list(self.queues) if self.queues is not None else None,
            worker_id=self.worker_id,
        )
        return [jobs.Job.from_row(row) for row in rows]

    async def _fetch_and_process_jobs(self) -> None:
        """procrastinate's loop, taking a job per free slot in one statement: fetch and start
        jobs until none is left or the worker is asked to stop."""
        while not self._stop_event.is_set():
            acquire = asyncio.create_task(self._job_semaphore.acquire())
            held = 0
            fetched: list[jobs.Job] = []
            try:
                await utils.wait_any(acquire, self._stop_event.wait())
                if acquire.done() and not acquire.cancelled() and acquire.exception() is None:
                    held = 1
                if self._stop_event.is_set():
                    break
                while held < FETCH_MAX and not self._job_semaphore.locked():
                    await self._job_semaphore.acquire()  # a free slot: returns at once
                    held += 1
                assert self.worker_id is not None
                fetched = await self._fetch_jobs(held)
            finally:
                for _ in range(held - len(fetched)):
                    self._job_semaphore.release()
                self._new_job_event.clear()

            for job in fetched:
                self._start(job)
            if len(fetched) < held or not fetched:
                break  # the queue has no more ready now

    def _start(self, job: jobs.Job) -> None:
        """Run one fetched job in a task of its own (procrastinate's own steps)."""
        job_id = job.id

        def abort_reason() -> job_context.AbortReason | None:
            return self._job_ids_to_abort.get(job_id) if job_id else None

        context = job_context.JobContext(
            app=self.app,
            worker_name=self.worker_name,
            worker_queues=self.queues,
            additional_context=self.additional_context.copy() if self.additional_context else {},
            job=job,
            abort_reason=abort_reason,
            start_timestamp=time.time(),
        )
        task = asyncio.create_task(
            self._process_job(context), name=f"process job {job.task_name}[{job.id}]"
        )
        self._running_jobs[task] = context

        def on_job_complete(done: asyncio.Task[Any]) -> None:
            del self._running_jobs[done]
            self._job_semaphore.release()

        task.add_done_callback(on_job_complete)


def _no_longer_doing(exc: BaseException) -> bool:
    """Whether procrastinate's function refused because the job is not ``doing`` any more
    (its PL/pgSQL ``RAISE``: SQLSTATE P0001), as opposed to the database failing."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    return getattr(cause, "sqlstate", None) == "P0001"


def _run_of(job: jobs.Job) -> str:
    run_id = job.task_kwargs.get("run_id") if isinstance(job.task_kwargs, dict) else None
    return f" (run {run_id})" if run_id else ""
