"""``submit``, ``worker`` and ``runs wait``: runs on many machines, through the queue.

See :mod:`demiarch_flow.queue` for the design. Each command checks, before it opens anything,
that the database is PostgreSQL (exit 2 otherwise) and that procrastinate is installed (exit 3
with the command that installs it), then opens the database as every command does (its schema
checked before any request) and the queue's schema with it (:mod:`demiarch_flow.queue.schema`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import Engine, bindparam, text
from sqlalchemy.exc import SQLAlchemyError

from ..client._endpoint import DEFAULT_BASE_URL
from ..errors import StoreUnavailable, UsageError
from ..paths import database_url
from ..queue.backend import conninfo, require_postgres, require_procrastinate
from ..queue.notify import CHANNEL
from ..queue.submit import TASK, Submission, Submitted, batch_run_id, submit_runs
from ..store.base import Definition
from ..store.sql import SqlStore, safe_url
from ..telemetry import open_tracer
from ._common import (
    check_conversation_option,
    check_model_option,
    read_message,
    resolve_base_url,
    setup_logging,
    workflow_from,
)
from ._json import json_line

if TYPE_CHECKING:
    from ..queue.take import Taken
    from ..runner import RunOutcome

RECHECK_S = 5.0
"""``runs wait`` reads the runs again at least this often, for runs ended outside a worker."""


def queue_ready(command: str, db: str | None) -> str:
    """The database URL, checked for the queue (see the module doc)."""
    url = database_url(db)
    require_postgres(url, command)
    require_procrastinate(command)
    return url


@contextlib.contextmanager
def open_queue(url: str) -> Iterator[SqlStore]:
    """Our store, its schema checked, and the queue's installed (or refused when behind)."""
    from ..queue.schema import check_queue

    store = SqlStore.open_sync(url)
    try:
        with database_errors(url):
            check_queue(store.engine)
            yield store
    finally:
        store.close()


@contextlib.contextmanager
def database_errors(url: str) -> Iterator[None]:
    """A database failing under a queue command is the environment's (exit 3)."""
    from procrastinate.exceptions import ConnectorException

    try:
        yield
    except (SQLAlchemyError, ConnectorException, OSError) as exc:
        raise StoreUnavailable(f"database {safe_url(url)}: {str(exc).splitlines()[0]}") from None


# ---------------------------------------------------------------------------- submit


def cmd_submit(args: argparse.Namespace) -> int:
    """Queue one run (``-m``) or one per line of a batch file (``--batch``)."""
    url = queue_ready("submit", args.db)
    wf = workflow_from(args.workflow)
    setup_logging(debug=args.debug)
    definition = Definition(wf.name, wf.sha256, wf.text)
    if args.batch:
        return _submit_batch(args, url, wf.name, definition)
    message = read_message(args.message)
    check_model_option(args.model)
    check_conversation_option(args.conversation)
    sub = Submission(str(uuid.uuid4()), wf.name, wf.sha256, message, args.conversation, args.model)
    with traced(args.trace, [sub]) as (sub,), open_queue(url) as store:
        _check_conversations(store.engine, [args.conversation] if args.conversation else [])
        submit_runs(store.engine, definition, [sub], queue=args.queue, at=datetime.now(UTC))
    if args.json:
        print(json_line({"run_id": sub.run_id, "status": "queued"}))
    else:
        print(sub.run_id)
    return 0


@contextlib.contextmanager
def traced(flag: bool | None, subs: list[Submission]) -> Iterator[list[Submission]]:
    """``subs``, each carrying the ``traceparent`` of its own ``submit`` span when submits are
    traced (``--trace``, or the ``OTEL_*`` variables), so the worker's run continues that
    trace; the spans are flushed when the block ends (bounded, as for any traced command)."""
    with open_tracer(flag, server_url=DEFAULT_BASE_URL) as tracer:
        if tracer is None:
            yield subs
        else:
            yield [
                dataclasses.replace(s, traceparent=tracer.submitted(s.run_id, s.workflow))
                for s in subs
            ]


def read_batch(path: str, name: str, sha256: str) -> tuple[list[Submission], int]:
    """The submissions of a batch file (each line's run id from its id and input hash), and
    how many lines were bad (each reported on stderr with its line number, then skipped)."""
    from ._lines import SeenIds, open_input, read_item  # not ._batch: no runner to import

    subs: list[Submission] = []
    bad = 0
    seen = SeenIds()
    with open_input(path) as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                item = read_item(raw, number, seen)
            except UsageError as exc:
                bad += 1
                print(f"demiarch-flow: {path}:{number}: {exc}; skipped", file=sys.stderr)
                continue
            sha = item.fingerprint
            subs.append(
                Submission(
                    batch_run_id(item.id, sha), name, sha256, item.message,
                    item.conversation_id, item.model, item.id, sha, line=item.line,
                )
            )  # fmt: skip
    return subs, bad


def submit_batch(
    url: str, definition: Definition, subs: list[Submission], queue: str
) -> list[Submitted]:
    """Queue a batch's runs (those already submitted are not queued again)."""
    with open_queue(url) as store:
        conversations = sorted({s.conversation_id for s in subs if s.conversation_id})
        _check_conversations(store.engine, conversations)
        return submit_runs(
            store.engine, definition, subs, queue=queue, at=datetime.now(UTC), dedupe=True
        )


def _submit_batch(args: argparse.Namespace, url: str, name: str, definition: Definition) -> int:
    if args.message is not None:
        raise UsageError("give -m TEXT or --batch FILE, not both")
    subs, bad = read_batch(args.batch, name, definition.sha256)
    with traced(args.trace, subs) as subs:
        statuses = submit_batch(url, definition, subs, args.queue)
    for sub, status in zip(subs, statuses, strict=True):
        if args.json:
            print(json_line({"id": sub.item_id, "run_id": sub.run_id, "status": status}))
        else:
            print(f"{sub.item_id}\t{sub.run_id}\t{status.replace('_', ' ')}")
    queued = statuses.count("queued")
    print(
        f"submit: {queued} queued, {len(subs) - queued} already submitted, {bad} bad lines",
        file=sys.stderr,
    )
    return 1 if bad else 0


_CONVERSATIONS = text("SELECT id FROM conversations WHERE id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)


def _check_conversations(engine: Engine, ids: list[str]) -> None:
    """Raises: UsageError: a conversation id names no conversation (nothing is queued)."""
    if not ids:
        return
    with engine.connect() as conn:
        found = set(conn.execute(_CONVERSATIONS, {"ids": ids}).scalars())
    if missing := [i for i in ids if i not in found]:
        raise UsageError(
            f"no conversation with id {missing[0]!r} in this database"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; nothing was queued"
        )


# ---------------------------------------------------------------------------- worker


def cmd_worker(args: argparse.Namespace) -> int:
    """Run submitted runs until stopped (or, with ``--until-empty``, until none is left)."""
    from ..keys import resolve_key
    from ..queue.notify import Notifier
    from ..queue.worker import WorkerOptions, WorkerStats, serve

    url = queue_ready("worker", args.db)
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if args.stall_after <= 0 or args.grace < 0:
        raise UsageError("--stall-after must be above 0 and --grace at least 0")
    base_url = resolve_base_url(args.base_url)
    key = resolve_key()
    setup_logging(debug=args.debug)
    _quiet_procrastinate(args.debug)
    with open_queue(url):
        pass  # schema checked (and the queue installed on a new database) before any job
    options = WorkerOptions(
        db=url, base_url=base_url, concurrency=args.concurrency, queue=args.queue,
        until_empty=args.until_empty, stall_after_s=args.stall_after, grace_s=args.grace,
        trace=args.trace,
    )  # fmt: skip
    notify = Notifier(url)

    def report(taken: Taken, ms: float) -> None:
        _report_run(taken, ms, json_out=args.json)
        notify.add(taken.outcome.run_id)

    async def main() -> WorkerStats:
        async with notify:
            return await serve(options, key, report)

    stats = asyncio.run(main())
    if stats.cancelled and stats.stopped_by is not None:
        return 143 if stats.stopped_by == signal.SIGTERM else 130
    return 0


def _report_run(taken: Taken, ms: float, *, json_out: bool) -> None:
    """The one line of a finished run."""
    o = taken.outcome
    cost = o.cost_usd if o.cost_usd is not None else Decimal(0)
    if json_out:
        doc = {
            "run_id": o.run_id, "status": o.status, "model": o.model, "ms": round(ms),
            "cost_usd": format(cost, "f"), "action": taken.action,
            "error_class": o.error_class,
        }  # fmt: skip
        print(json_line(doc), flush=True)
    else:
        what = "" if taken.action == "ran" else f" ({taken.action})"
        print(f"{o.run_id} {o.status}{what} {o.model or '-'} {round(ms)} ms ${cost:f}", flush=True)


def _quiet_procrastinate(debug: bool) -> None:
    """procrastinate logs each job with its arguments (the user's message) and tracebacks, and
    psycopg's pool each connection it discards: the worker says what matters itself (what
    failed, and what it does about it), so only ``--debug`` shows theirs."""
    import logging

    for name in ("procrastinate", "psycopg.pool"):
        proc = logging.getLogger(name)
        proc.propagate = False
        if debug:
            proc.handlers[:] = logging.getLogger("demiarch_flow").handlers
            proc.setLevel(logging.DEBUG)
        else:
            proc.addHandler(logging.NullHandler())
            proc.setLevel(logging.CRITICAL + 1)


# ---------------------------------------------------------------------------- runs wait

_STATES = text(
    "SELECT r.id, r.status, EXISTS (SELECT 1 FROM procrastinate_jobs j WHERE j.task_name ="
    " :task AND j.args->>'run_id' = r.id AND j.status IN ('todo', 'doing')) AS queued"
    " FROM workflow_runs r WHERE r.id IN :ids"
).bindparams(bindparam("ids", expanding=True))
_JOBS = text(
    "SELECT args->>'run_id' AS run_id, bool_or(status IN ('todo', 'doing')) AS live"
    " FROM procrastinate_jobs WHERE task_name = :task AND args->>'run_id' IN :ids"
    " GROUP BY args->>'run_id'"
).bindparams(bindparam("ids", expanding=True))


def _ended(engine: Engine, ids: list[str]) -> tuple[set[str], set[str], set[str]]:
    """Of ``ids``: those that have ended (succeeded, failed, or cancelled with no job left to
    continue them), those unknown (no run and no job), and those whose job ended without
    their run ever beginning (it failed for good: a deleted definition, a run deleted after it
    had begun — no run row will ever come)."""
    with engine.connect() as conn:
        rows = conn.execute(_STATES, {"ids": ids, "task": TASK}).all()
        jobs = {r.run_id: r.live for r in conn.execute(_JOBS, {"ids": ids, "task": TASK})}
    ended = {
        r.id
        for r in rows
        if r.status in ("succeeded", "failed") or (r.status == "cancelled" and not r.queued)
    }
    begun = {r.id for r in rows}
    known = begun | set(jobs)
    dead = {i for i, live in jobs.items() if not live and i not in begun}
    return ended, {i for i in ids if i not in known}, dead


def wait_runs(
    url: str,
    store: SqlStore,
    run_ids: list[str],
    on_ended: Callable[[RunOutcome], None],
    *,
    deadline: float | None = None,
    tick: Callable[[int], None] | None = None,
) -> list[str]:
    """Wait until each run of ``run_ids`` has ended, calling ``on_ended`` with each outcome as
    it is seen; woken by the workers' ``NOTIFY`` (and every :data:`RECHECK_S` regardless).
    Returns the runs still pending at ``deadline`` (empty: all ended); ``tick`` hears how many
    are pending after each look.

    Raises:
        UsageError: an id names neither a run nor a job (checked once, first).
    """
    import psycopg

    from ..queue.take import ended_outcome, job_failed_outcome
    from ._common import run_trio

    pending = list(dict.fromkeys(run_ids))
    listener = psycopg.connect(conninfo(url), autocommit=True)
    try:
        listener.execute(f"LISTEN {CHANNEL}")
        first = True
        while pending:
            ended, unknown, dead = _ended(store.engine, pending)
            if first and unknown:
                raise UsageError(f"no run with id {sorted(unknown)[0]!r} in this database")
            first = False
            for run_id in [i for i in pending if i in dead]:
                on_ended(job_failed_outcome(run_id))
                pending.remove(run_id)
            for run_id in [i for i in pending if i in ended]:
                run = run_trio(lambda r=run_id: store.load_run(r))  # type: ignore[misc]
                assert run is not None
                on_ended(ended_outcome(run))
                pending.remove(run_id)
            if tick is not None:
                tick(len(pending))
            left = None if deadline is None else deadline - time.monotonic()
            if not pending or (left is not None and left <= 0):
                break
            for _ in listener.notifies(
                timeout=RECHECK_S if left is None else min(RECHECK_S, left), stop_after=1
            ):
                pass
    finally:
        listener.close()
    return pending


def cmd_runs_wait(args: argparse.Namespace) -> int:
    """Wait until each run has ended; print each outcome as ``run`` does."""
    from ._runs import check_run_id

    for run_id in args.run_ids:
        check_run_id(run_id)
    if args.timeout is not None and args.timeout < 0:
        raise UsageError("--timeout must be at least 0")
    url = queue_ready("runs wait", args.db)
    setup_logging(debug=args.debug)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    failed = False

    def ended(outcome: RunOutcome) -> None:
        nonlocal failed
        failed |= not outcome.succeeded
        _print_outcome(outcome, json_out=args.json)

    with open_queue(url) as store, database_errors(url):
        pending = wait_runs(url, store, args.run_ids, ended, deadline=deadline)
    if pending:
        print(
            f"demiarch-flow: runs wait: timed out with {len(pending)} run(s) not ended:"
            f" {', '.join(pending)}",
            file=sys.stderr,
        )
        return 124
    return 1 if failed else 0


def _print_outcome(outcome: RunOutcome, *, json_out: bool) -> None:
    from ._run import outcome_json

    if json_out:
        print(json_line(outcome_json(outcome)), flush=True)
    elif outcome.succeeded:
        print(outcome.content, flush=True)
    else:
        print(
            f"demiarch-flow: run {outcome.run_id} {outcome.status}: "
            f"{str(outcome.error or 'no reply').rstrip('.')}",
            file=sys.stderr,
            flush=True,
        )
