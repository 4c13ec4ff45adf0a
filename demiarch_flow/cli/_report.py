"""``history``, ``runs show`` and ``usage``: reading what runs wrote."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from ..errors import UnknownConversation, UsageError
from ..paths import database_url
from ._json import json_line
from ._reading import Reports, read_report, unimported_warning, warn
from ._table import plain, table

if TYPE_CHECKING:
    from ..queue.listing import QueuedRun
    from ..store.base import JournalEntry, StoredMessage, StoredRun
    from ..store.sql import SqlStore


def _open(db: str | None) -> SqlStore:
    """Open for reading only: a database that does not exist is an error, never created, and
    a SQLite file is opened read-only (never upgraded), so one the user cannot write still
    reads."""
    from ..store.sql import SqlStore

    return SqlStore.open_sync(database_url(db), read_only=True)


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if at else ""


def cmd_history(args: argparse.Namespace) -> int:
    """Without --conversation: the latest conversations. With it: its messages, oldest first."""
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if not args.conversation:
        warning, convs = read_report(
            args.db, lambda r: (unimported_warning(r), r.conversations(args.limit))
        )
        warn(warning)
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            "id": c.id,
                            "title": c.title,
                            "updated_at": c.updated_at.isoformat(),
                            "messages": c.messages,
                        }
                        for c in convs
                    ]
                )
            )
        elif not convs:
            print("no conversations yet")
        else:
            print(
                table(
                    ["conversation", "updated (UTC)", "messages", "title"],
                    [(c.id, _when(c.updated_at), c.messages, c.title[:60]) for c in convs],
                    numeric=[2],
                )
            )
        return 0

    def read(r: Reports) -> tuple[str | None, list[StoredMessage] | UnknownConversation]:
        warning = unimported_warning(r)  # first: the unknown id may be a reply not imported yet
        try:
            return warning, r.messages(args.conversation, args.limit)
        except UnknownConversation as exc:
            return warning, exc

    warning, msgs = read_report(args.db, read)
    warn(warning)
    if isinstance(msgs, UnknownConversation):  # an id the user gave: input error, as `runs show`
        raise UsageError(str(msgs))
    if args.json:
        print(
            json_line(
                [
                    {
                        "id": m.id,
                        "role": m.role,
                        "content": m.content,
                        "model": m.model,
                        "created_at": m.created_at.isoformat(),
                        "run_id": m.run_id,
                    }
                    for m in msgs
                ]
            )
        )
        return 0
    for m in msgs:
        who = m.role if m.role != "assistant" else f"assistant ({m.model})"
        print(f"[{_when(m.created_at)}] {who}:\n{m.content}\n")
    return 0


def _show_queued(queued: QueuedRun, *, json_out: bool) -> int:
    """``runs show`` of a run that is still only its job: queued, no journal yet."""
    if json_out:
        print(json.dumps({
            "run_id": queued.run_id, "workflow": queued.workflow,
            "workflow_sha256": queued.workflow_sha256, "conversation_id": queued.conversation_id,
            "status": "queued", "current_state": None, "model": queued.model,
            "error_class": None, "error_message": None, "started_at": None, "finished_at": None,
            "submitted_at": queued.submitted_at.isoformat() if queued.submitted_at else None,
            "events": [], "attempts": [],
        }))  # fmt: skip
        return 0
    sha = (queued.workflow_sha256 or "")[:12]
    print(f"run {queued.run_id} — workflow {queued.workflow} ({sha}), queued")
    print(
        f"submitted {_when(queued.submitted_at)}, conversation {queued.conversation_id or 'new'};"
        " no worker has begun it yet (`demiarch-flow worker` takes it)"
    )
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    """The journal of one run: every transition with its time, model, attempt and wait."""
    store = _open(args.db)
    try:

        async def read() -> tuple[StoredRun | None, tuple[JournalEntry, ...]]:
            return await store.load_run(args.run_id), await store.journal(args.run_id)

        from ._common import run_trio

        run, events = run_trio(read)
        stored = run
        if run is None:  # submitted to the workers' queue and not begun yet?
            from ..queue.listing import queued_run

            with store.engine.connect() as conn:
                queued = queued_run(conn, args.run_id)
            if queued is not None:
                return _show_queued(queued, json_out=args.json)
    finally:
        store.close()
    if run is None:
        raise UsageError(f"no run with id {args.run_id!r} in this database")
    if args.json:
        attempts = [
            {"number": a.number, "model": a.model, "status": a.status, "error_class": a.error_class,
             "generation_id": a.generation_id, "latency_ms": a.latency_ms,
             "partial_chars": len(a.partial_text) if a.partial_text is not None else None,
             "partial_text": a.partial_text, "finish_reason": a.finish_reason,
             "response_model": a.response_model, "error_message": a.error_message}
            for a in (stored.attempts if stored else ())
        ]  # fmt: skip
        print(json.dumps({
            "run_id": run.run_id, "workflow": run.workflow, "workflow_sha256": run.workflow_sha256,
            "conversation_id": run.conversation_id, "status": run.status,
            "current_state": run.current_state, "model": run.model,
            "error_class": run.error_class, "error_message": run.error_message,
            "started_at": run.started_at.isoformat(),
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "events": [{"seq": e.seq, "from": e.from_state, "event": e.event, "to": e.to_state, "model": e.model,
                        "attempt": e.attempt, "error_class": e.error_class, "wait_s": e.wait_s, "wait_source": e.wait_source,
                        "at": e.at.isoformat()} for e in events],
            "attempts": attempts,
        }))  # fmt: skip
        return 0
    print(f"run {run.run_id} — workflow {run.workflow} ({run.workflow_sha256[:12]}), {run.status}")
    print(
        f"conversation {run.conversation_id}, started {_when(run.started_at)}, finished {_when(run.finished_at)}"
    )
    if run.error_class:
        print(f"error: {run.error_class}: {run.error_message}")
    start = events[0].at if events else run.started_at
    rows = [
        (
            e.seq,
            f"+{(e.at - start).total_seconds():.3f}s",
            e.from_state,
            e.event,
            e.to_state,
            e.model or "",
            e.attempt or "",
            e.error_class or "",
            f"{e.wait_s:.2f}" if e.wait_s is not None else "",
        )
        for e in events
    ]
    print(
        table(
            ["#", "at", "from", "event", "to", "model", "attempt", "error", "wait s"],
            rows,
            numeric=[0, 6, 8],
        )
    )
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    """Spend and tokens grouped by model, day or conversation."""
    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            raise UsageError(f"--since {args.since!r} is not a date (use YYYY-MM-DD)") from None
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
    warning, rows = read_report(args.db, lambda r: (unimported_warning(r), r.usage(since, args.by)))
    warn(warning)
    total = sum((r.cost_usd for r in rows), Decimal(0))
    interrupted = sum((r.interrupted_usd for r in rows), Decimal(0))
    if args.json:
        print(
            json.dumps(
                {
                    "by": args.by,
                    "rows": [
                        {
                            "key": r.key,
                            "calls": r.calls,
                            "prompt_tokens": r.prompt_tokens,
                            "completion_tokens": r.completion_tokens,
                            "cost_usd": plain(r.cost_usd),
                            "interrupted_calls": r.interrupted_calls,
                            "interrupted_cost_usd": plain(r.interrupted_usd),
                        }
                        for r in rows
                    ],
                    "total_cost_usd": plain(total),
                    "interrupted_cost_usd": plain(interrupted),
                }
            )
        )
        return 0
    if not rows:
        print("no usage recorded yet")
        return 0
    body = [
        (r.key, r.calls, r.prompt_tokens, r.completion_tokens, f"{r.cost_usd:.6f}") for r in rows
    ]
    body.append(
        (
            "total",
            sum(r.calls for r in rows),
            sum(r.prompt_tokens for r in rows),
            sum(r.completion_tokens for r in rows),
            f"{total:.6f}",
        )
    )
    print(
        table(
            [args.by, "calls", "prompt tokens", "completion tokens", "cost USD"],
            body,
            numeric=[1, 2, 3, 4],
        )
    )
    if interrupted or any(r.interrupted_calls for r in rows):
        calls = sum(r.interrupted_calls for r in rows)
        print(
            f"of which interrupted streams (billed, no reply): {calls} call"
            f"{'s' if calls != 1 else ''}, {interrupted:.6f} USD"
        )
    return 0
