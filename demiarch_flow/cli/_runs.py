"""``runs list`` and ``runs resume``: every run at a glance, and continuing one that stopped."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..runner.owner import Owner, effective_status
from ..store.base import RunStatus, StoredRun
from ._common import text_problem
from ._json import json_line
from ._reading import read_report
from ._table import plain, table

if TYPE_CHECKING:
    from ..queue.listing import QueuedRun
    from ..runner.resume import Resumed

#: ``--status`` values: the stored ones, ``stale`` (running, but its process is gone) and
#: ``queued`` (submitted to the workers' queue, not begun yet).
STATUSES = ("queued", "running", "stale", "failed", "cancelled", "succeeded")


def _models(run: StoredRun) -> list[str]:
    """The models the run asked, in the order it first asked them."""
    seen: dict[str, None] = {}
    for attempt in run.attempts:
        seen.setdefault(attempt.model, None)
    return list(seen)


def _row(run: StoredRun, status: str) -> dict[str, object]:
    """A ``runs list --json`` object."""
    return {
        "run_id": run.run_id,
        "status": status,
        "state": run.current_state,
        "conversation_id": run.conversation_id,
        "models": _models(run),
        "attempts": len(run.attempts),
        "cost_usd": plain(run.cost_usd),
        "started_at": run.started_at.isoformat(),
        "resume_count": run.resume_count,
        "owner": _owner(run, status),
    }


def _owner(run: StoredRun, status: str) -> dict[str, object] | None:
    """The process that runs (or ran, for a stale run) the run: its host and pid."""
    owner = Owner.parse(run.owner) if run.owner and status in ("running", "stale") else None
    return {"host": owner.host, "pid": owner.pid} if owner else None


def _queued_row(run: QueuedRun) -> dict[str, object]:
    """A ``runs list --json`` object of a run still in the queue."""
    return {
        "run_id": run.run_id, "status": "queued", "state": None,
        "conversation_id": run.conversation_id, "models": [run.model] if run.model else [],
        "attempts": 0, "cost_usd": "0",
        "started_at": run.submitted_at.isoformat() if run.submitted_at else None,
        "resume_count": 0, "owner": None,
    }  # fmt: skip


def _since(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        since = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r} is not a date (use YYYY-MM-DD)") from None
    return since if since.tzinfo else since.replace(tzinfo=UTC)


def cmd_runs_list(args: argparse.Namespace) -> int:
    """One row per run, newest first; ``stale`` runs are running runs whose process is gone."""
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    since = _since(args.since)
    # 'stale' is stored as 'running': read those and keep the ones whose owner is gone.
    stored: RunStatus | None = "running" if args.status == "stale" else args.status
    limit = args.limit if args.status not in ("running", "stale") else max(args.limit, 10_000)
    queued = _queued(args.db, since, args.limit) if args.status in (None, "queued") else []
    runs = (
        []
        if args.status == "queued"
        else read_report(args.db, lambda r: r.list_runs(status=stored, since=since, limit=limit))
    )
    now = datetime.now(UTC)
    listed = [(r, effective_status(r, now)) for r in runs]
    if args.status in ("running", "stale"):
        listed = [(r, status) for r, status in listed if status == args.status][: args.limit]
    if args.json:
        docs = [_queued_row(q) for q in queued] + [_row(r, status) for r, status in listed]
        print(json_line(docs[: args.limit]))
        return 0
    if not listed and not queued:
        print("no runs" + (f" with status {args.status}" if args.status else ""))
        return 0
    headers = ["run", "status", "state", "conversation", "models", "attempts", "cost USD",
               "started (UTC)", "resumed", "owner"]  # fmt: skip
    body = [
        (q.run_id, "queued", "", q.conversation_id or "", q.model or "", 0, "0",
         q.submitted_at.strftime("%Y-%m-%d %H:%M:%S") if q.submitted_at else "", 0, "")
        for q in queued
    ] + [
        (r.run_id, status, r.current_state or "", r.conversation_id or "",
         " → ".join(_models(r)), len(r.attempts), plain(r.cost_usd),
         r.started_at.strftime("%Y-%m-%d %H:%M:%S"), r.resume_count,
         _owner_text(_owner(r, status)))
        for r, status in listed
    ]  # fmt: skip
    body = body[: args.limit]
    print(table(headers, body, numeric=[5, 6, 8]))
    return 0


def _owner_text(owner: dict[str, object] | None) -> str:
    return f"{owner['host']} pid {owner['pid']}" if owner else ""


def _queued(db: str | None, since: datetime | None, limit: int) -> list[QueuedRun]:
    """Runs submitted to the workers' queue and not begun (none without a queue: the queue
    lives on PostgreSQL only)."""
    from ..paths import database_url

    url = database_url(db)
    if not url.startswith("postgresql"):
        return []
    from ..queue.listing import queued_runs
    from ..store.sql import SqlStore

    store = SqlStore.open_sync(url, read_only=True)
    try:
        with store.engine.connect() as conn:
            return queued_runs(conn, since=since, limit=limit)
    finally:
        store.close()


def check_run_id(run_id: str) -> None:
    """Raises: UsageError: RUN_ID is empty, too long for an id, not valid UTF-8 or holds a
    NUL character (said without echoing it whole)."""
    if problem := text_problem(run_id):
        raise UsageError(f"RUN_ID: {problem}")
    if not run_id.strip():
        raise UsageError("RUN_ID is empty: `demiarch-flow runs list` shows the ids")
    if len(run_id) > 200:
        raise UsageError(
            f"no run with id {run_id[:40]!r}… ({len(run_id):,} characters) in this database"
        )


def cmd_runs_resume(args: argparse.Namespace) -> int:
    """Continue a failed, cancelled or stale run from its last checkpoint (same run id)."""
    from ..definition import load_workflow
    from ..keys import resolve_key
    from ..paths import database_url
    from ..runner.resume import NotResumable, resume_run, saved_outcome
    from ..runtime import open_world
    from ..store.sql import SqlStore
    from ._common import resolve_base_url, run_trio, setup_logging
    from ._run import AttemptMessages, Progress, report_outcome

    check_run_id(args.run_id)
    wf = load_workflow(args.workflow) if args.workflow else None
    setup_logging(quiet=args.quiet, debug=args.debug)
    store = SqlStore.open_sync(database_url(args.db), create=False)
    try:
        run = run_trio(lambda: store.load_run(args.run_id))
    finally:
        store.close()
    if run is None:
        raise UsageError(f"no run with id {args.run_id!r} in this database")
    if run.reply is not None:  # nothing to do, and no key needed to say so
        if not args.json:
            print(f"run {run.run_id} already succeeded; nothing was sent", file=sys.stderr)
        return report_outcome(saved_outcome(run), json_out=args.json, quiet=True, asked=None)
    if effective_status(run, datetime.now(UTC)) == "running":  # say so before asking for a key
        raise NotResumable(
            f"run {run.run_id} is still running (owner {run.owner}); it becomes resumable once"
            " its process is gone"
        )
    key = resolve_key()
    base_url = resolve_base_url(args.base_url)
    messages = AttemptMessages()
    listeners = (messages,) if args.quiet or args.json else (messages, Progress())

    async def main() -> Resumed:
        async with open_world(
            db=args.db, base_url=base_url, key=key, listeners=listeners, trace=args.trace
        ) as world:
            return await resume_run(args.run_id, world.env, workflow=wf)

    resumed = run_trio(main)
    if resumed.recovered and not args.json:
        print(f"run {args.run_id}: its reply was stored from the recovery file", file=sys.stderr)
    return report_outcome(
        resumed.outcome, json_out=args.json, quiet=True, asked=None, messages=messages
    )
