"""``worker``: procrastinate's asyncio worker, running each job's run on the trio guest.

One process takes up to ``concurrency`` jobs at once from its queue (``SELECT … FOR UPDATE
SKIP LOCKED``, woken by ``LISTEN/NOTIFY``) and runs them on one trio runner (:mod:`.guest`)
that shares one HTTP pool, one store writer and one heartbeat. What it owes the queue:

* **retries**: a database or network failure (and a run another live process owns) is given
  back to the queue with a growing delay; a workflow that failed is a result, not an error;
* **stalled jobs**: every worker sweeps, every few seconds, the jobs of workers whose heartbeat
  is older than ``stall_after_s`` back to the queue (procrastinate's ``get_stalled_jobs`` and
  ``retry_job``), so a dead worker's runs move within that plus the sweep's period;
* **stopping**: SIGTERM or Ctrl-C stops taking jobs, lets those in flight finish for
  ``grace_s``, then cancels the rest — each run recorded ``cancelled``, its job given back;
* ``until_empty``: stop once the queue has no job waiting or running (cron, CI, tests);
* **a lost database**: procrastinate's pool and listener connect again by themselves; should
  its worker loop stop (a heartbeat or the listener failing, a pool that will not open), the
  worker logs what happened (the error's class and message) and how long it waits, then
  starts again with a new pool; an end of a job that could not be written is written once
  the database answers (:mod:`.batching`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..client import ApiKey
from ..errors import FlowError, PersistenceError, RunTakenOver, StoreUnavailable
from ..runner.owner import HEARTBEAT_S
from ..runtime import World, open_world
from .backend import conninfo
from .pool import autocommit, pool_factory
from .submit import DEFAULT_QUEUE, TASK, Submission
from .take import NotSubmitted, RunBusy, Taken, Workflows, take_run

log = logging.getLogger("demiarch_flow")

RETRY_CAP_S = 60
_QUEUE_LEFT = (
    "SELECT count(*) AS n FROM procrastinate_jobs"
    " WHERE queue_name = %(queue)s AND status IN ('todo', 'doing')"
)


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """The ``worker`` command's options."""

    db: str
    base_url: str
    concurrency: int = 20
    queue: str = DEFAULT_QUEUE
    until_empty: bool = False
    stall_after_s: float = 30.0
    grace_s: float = 30.0
    empty_poll_s: float = 0.5
    trace: bool | None = None
    """``--trace`` / ``--no-trace`` (``None``: as the ``OTEL_*`` variables say)."""


@dataclass
class WorkerStats:
    """What a worker did, for its exit code and its last line."""

    finished: int = 0
    cancelled: int = 0
    errors: int = 0
    stopped_by: int | None = None
    """The signal that stopped it (``None``: it stopped because the queue was empty)."""
    stalled_moved: int = 0
    started: float = field(default_factory=time.monotonic)


def retry_in(exc: BaseException, attempts: int) -> int | None:
    """Seconds until a job that raised ``exc`` (after ``attempts`` earlier tries) runs again,
    or ``None``: it failed for good.

    Cancelled by a worker's grace: at once. A run another live process owns, or trouble with
    the database or the network: 1 s, 2 s, 4 s, … at most :data:`RETRY_CAP_S`. A job that is not a
    run, or any other error of ours (a run that cannot be continued): never.
    """
    if isinstance(exc, asyncio.CancelledError):
        return 0
    backoff = min(RETRY_CAP_S, 1 << min(attempts, 6))
    if isinstance(exc, RunBusy | PersistenceError | StoreUnavailable | OSError):
        return backoff
    if isinstance(exc, FlowError):
        return None
    # anything else comes from the database driver or procrastinate: the database's trouble
    return backoff if isinstance(exc, Exception) else None


def _retry_strategy() -> Any:
    """procrastinate's side of :func:`retry_in`."""
    from procrastinate import BaseRetryStrategy, RetryDecision

    class Retry(BaseRetryStrategy):
        def get_retry_decision(self, *, exception: BaseException, job: Any) -> Any:
            wait = retry_in(exception, job.attempts)
            return None if wait is None else RetryDecision(retry_in={"seconds": wait})

    return Retry()


async def serve(
    options: WorkerOptions, key: ApiKey, report: Callable[[Taken, float], None]
) -> WorkerStats:
    """Run the worker until it is stopped (a signal) or, with ``until_empty``, the queue is
    empty; ``report`` is called once per finished run (the run and its wall time in ms).

    Raises:
        SchemaMismatch, StoreUnavailable: the database cannot be used (before any job).
    """
    from procrastinate import App, JobContext, PsycopgConnector

    from .guest import TrioGuest

    loop = asyncio.get_running_loop()
    stats = WorkerStats()
    stop_requested = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stats.stopped_by is None:
            stats.stopped_by = signum
            log.warning(
                f"worker: {signal.Signals(signum).name}: taking no more jobs; the runs in"
                f" flight have {options.grace_s:g} s to finish"
            )
        stop_requested.set()

    def on_loop_error(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # e.g. procrastinate failing to record the end of a job another worker took over
        # while this one was frozen: one line, not asyncio's traceback
        exc = context.get("exception")
        task = context.get("task") or context.get("future")
        name = task.get_name() if isinstance(task, asyncio.Task) else "the worker"
        what = str(exc).strip() if exc else context.get("message", "")
        log.warning(f"worker: {name}: {type(exc).__name__ if exc else 'error'}: {what}")

    loop.set_exception_handler(on_loop_error)
    # Before trio starts: trio then leaves SIGINT to asyncio instead of raising
    # KeyboardInterrupt inside some task.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)

    guest: TrioGuest[World] = TrioGuest()

    async def world_main(ready: Callable[[World], None]) -> None:
        import trio

        # the runs' heartbeat beats well within --stall-after, after which another worker
        # may take them (a live one must never look stale)
        async with open_world(
            db=options.db, base_url=options.base_url, key=key,
            max_in_flight=options.concurrency,
            heartbeat_s=min(HEARTBEAT_S, options.stall_after_s / 4), trace=options.trace,
        ) as world:  # fmt: skip
            ready(world)
            await trio.sleep_forever()

    try:
        world = await guest.start(world_main)
        workflows = Workflows(world.env.store)  # type: ignore[arg-type]

        async def run_job(context: JobContext, /, **args: Any) -> str:
            job_id = context.job.id
            try:
                sub = Submission.from_args(args)
            except FlowError as exc:
                stats.errors += 1
                log.error(f"worker: job {job_id}: {exc}")
                raise NotSubmitted(str(exc)) from None
            began = time.monotonic()
            try:
                take = functools.partial(take_run, stale_after_s=options.stall_after_s)
                taken = await guest.call(take, sub, world.env, workflows)
            except asyncio.CancelledError:
                stats.cancelled += 1
                raise
            except RunBusy:
                raise
            except RunTakenOver:
                # this worker was frozen past --stall-after and another took the run: it is
                # that worker's now, and nothing of it was written here after the take-over
                log.warning(
                    f"worker: run {sub.run_id} was taken over by another worker while this one"
                    " was not beating; left to it"
                )
                return "taken_over"
            except Exception as exc:
                stats.errors += 1
                wait = retry_in(exc, context.job.attempts)
                if wait is None:
                    log.error(
                        f"worker: job {job_id} (run {sub.run_id}): {exc} (the job failed;"
                        " the worker goes on)"
                    )
                else:
                    log.warning(
                        f"worker: job {job_id} (run {sub.run_id}): {exc}; tried again in {wait} s"
                    )
                raise
            stats.finished += 1
            report(taken, (time.monotonic() - began) * 1000)
            return taken.outcome.status

        def make_app() -> Any:
            # a new App (and pool) for each life of the worker: procrastinate's connector
            # keeps a pool that failed to open, closed, and would hand it out ever after
            app = App(
                connector=PsycopgConnector(
                    conninfo=conninfo(options.db),
                    min_size=1,
                    max_size=max(4, options.concurrency // 4),
                    configure=autocommit,
                    pool_factory=pool_factory,
                )
            )
            app.task(name=TASK, pass_context=True, retry=_retry_strategy())(run_job)
            return app

        await _work(make_app, options, stats, stop_requested)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await guest.stop()
    return stats


RECONNECT_FIRST_S = 1.0
RECONNECT_CAP_S = 30.0
"""The waits before taking jobs again after the queue's loop stopped: 1 s, doubling, 30 s at
most; back to the first once a loop has run for :data:`RECONNECT_CAP_S`."""


async def _work(
    make_app: Callable[[], Any],
    options: WorkerOptions,
    stats: WorkerStats,
    stop_requested: asyncio.Event,
) -> None:
    """Take jobs until asked to stop or, with ``until_empty``, until none is left; a worker
    that loses the database says what happened, waits and starts again."""
    delay = RECONNECT_FIRST_S
    while not stop_requested.is_set():
        began = time.monotonic()
        failure = await _one_loop(make_app(), options, stats, stop_requested)
        if stop_requested.is_set():
            return
        if time.monotonic() - began >= RECONNECT_CAP_S:
            delay = RECONNECT_FIRST_S  # it had been running well: a new outage
        log.warning(
            f"worker: the queue's loop stopped ({failure}); taking jobs again in {delay:g} s"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop_requested.wait(), delay)
        delay = min(RECONNECT_CAP_S, delay * 2)


async def _one_loop(
    app: Any, options: WorkerOptions, stats: WorkerStats, stop_requested: asyncio.Event
) -> str:
    """One life of procrastinate's worker (a :class:`~.batching.BatchingWorker`: several jobs
    per fetch and per finish), from opening its pool to its end; returns what ended it, in one
    line (the error's class and message), for the log."""
    from .batching import BatchingWorker

    app.perform_import_paths()
    worker: Any = BatchingWorker(
        app=app, queues=[options.queue], concurrency=options.concurrency, wait=True,
        install_signal_handlers=False, shutdown_graceful_timeout=options.grace_s,
        listen_notify=True, delete_jobs="never",
        update_heartbeat_interval=max(0.2, options.stall_after_s / 4),
        stalled_worker_timeout=options.stall_after_s,
        fetch_job_polling_interval=max(0.2, min(5.0, options.stall_after_s / 4)),
    )  # fmt: skip
    try:
        async with app.open_async():
            running = asyncio.create_task(worker.run())
            helpers = [asyncio.create_task(_sweep_stalled(app, options, stats))]
            if options.until_empty:
                helpers.append(asyncio.create_task(_until_empty(app, options, stop_requested)))
            stopper = asyncio.create_task(stop_requested.wait())
            try:
                await asyncio.wait([running, stopper], return_when=asyncio.FIRST_COMPLETED)
                if not running.done():
                    running.cancel()  # procrastinate's graceful stop: grace, then abort
                with contextlib.suppress(asyncio.CancelledError):
                    await running
            finally:
                for task in (*helpers, stopper):
                    task.cancel()
                await asyncio.gather(*helpers, stopper, return_exceptions=True)
    except Exception as exc:  # the pool would not open, or the worker's end failed
        return await _why(options.db, worker.failure or exc)
    if worker.failure is not None:  # a heartbeat or the listener lost the database
        return await _why(options.db, worker.failure)
    return "it ended without an error"


async def _why(url: str, exc: BaseException) -> str:
    """``exc`` in one line; for a pool that timed out waiting for a connection (which says
    only that), the error one connection attempt meets (connection refused, a password
    refused, a database that does not exist)."""
    import psycopg
    from psycopg_pool import PoolTimeout

    from .backend import describe

    cause: BaseException = exc
    while cause.__cause__ is not None and not isinstance(cause, PoolTimeout):
        cause = cause.__cause__
    if isinstance(cause, PoolTimeout):
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo(url))
        except Exception as probe:
            return describe(probe)
        await conn.close()
    return describe(exc)


async def _sweep_stalled(app: Any, options: WorkerOptions, stats: WorkerStats) -> None:
    """Give the jobs of workers that stopped beating back to the queue, every few seconds."""
    period = max(0.2, min(5.0, options.stall_after_s / 4))
    while True:
        await asyncio.sleep(period)
        try:
            stalled = await app.job_manager.get_stalled_jobs(
                queue=options.queue, task_name=TASK,
                seconds_since_heartbeat=options.stall_after_s,
            )  # fmt: skip
            for job in stalled:
                await app.job_manager.retry_job(job)
                stats.stalled_moved += 1
                run_id = job.task_kwargs.get("run_id")
                log.warning(
                    f"worker: job {job.id} (run {run_id}): its worker stopped beating for"
                    f" {options.stall_after_s:g} s; given back to the queue"
                )
        except Exception as exc:  # the next sweep tries again
            log.debug(f"worker: stalled-job sweep failed: {exc}")


async def _until_empty(app: Any, options: WorkerOptions, stop_requested: asyncio.Event) -> None:
    """``--until-empty``: stop once no job of the queue is waiting or running (anywhere)."""
    while True:
        await asyncio.sleep(options.empty_poll_s)
        try:
            row = await app.connector.execute_query_one_async(
                query=_QUEUE_LEFT, queue=options.queue
            )
        except Exception:
            continue
        if row["n"] == 0:
            stop_requested.set()
            return
