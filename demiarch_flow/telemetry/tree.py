"""A run's trace drawn in the terminal from its journal — ``runs trace RUN_ID`` — pure.

The same tree a trace viewer shows for the run's OpenTelemetry spans (the root
``invoke_workflow``, a ``chat`` span per attempt, a span per wait, the transitions as events),
drawn from what the database already keeps: ``run_attempts`` (start, latency, status, class)
and ``run_events`` (each move, its wait). No collector needed, and nothing of OpenTelemetry
is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ..store.base import JournalEntry, StoredRun

__all__ = ["draw"]


@dataclass(frozen=True, slots=True)
class _Line:
    at: datetime
    order: int
    """Ties: spans before the events that they led to."""
    text: str
    span: bool


def _ms(delta: timedelta) -> str:
    return f"{delta.total_seconds() * 1000:,.0f} ms"


def draw(run: StoredRun, events: tuple[JournalEntry, ...]) -> list[str]:
    """The lines of the tree: the root with the run's status and length, then its spans (with
    their offset from the start and their length) and events, in time order."""
    start = min(
        [run.started_at, *(e.at for e in events[:1]), *(a.started_at for a in run.attempts)]
    )
    ends = [run.finished_at, *(e.at for e in events), *(a.ended_at for a in run.attempts)]
    end = max(t for t in ends if t is not None)
    items: list[_Line] = []
    for a in run.attempts:
        took = (
            timedelta(milliseconds=a.latency_ms)
            if a.latency_ms is not None
            else (a.ended_at - a.started_at if a.ended_at else None)
        )
        # the first attempt's row is written with LoadContext's commit, before it is sent:
        # the request itself went out ``latency_ms`` before it ended
        sent = a.ended_at - took if a.ended_at is not None and took is not None else a.started_at
        outcome = f"HTTP {a.status}" if a.status is not None else "no answer"
        if a.error_class:
            outcome += f" {a.error_class}"
        length = _ms(took) if took is not None else "unfinished"
        items.append(_Line(sent, 0, f"chat {a.model}  #{a.number}  {{at}}  {length}  {outcome}", True))  # fmt: skip
    for e in events:
        if e.wait_s:
            waited = timedelta(seconds=e.wait_s)
            # a move after a wait is journalled when the wait ends; a wait in place before it
            began = e.at if e.from_state == e.to_state else e.at - waited
            source = e.wait_source or "backoff"
            items.append(_Line(began, 0, f"wait {source}  {{at}}  {_ms(waited)}", True))
        cause = f" ({e.error_class})" if e.error_class else ""
        items.append(
            _Line(e.at, 1, f"· {e.from_state} --{e.event}--> {e.to_state}{cause}  {{at}}", False)
        )
    items.sort(key=lambda line: (line.at, line.order))
    out = [
        f"invoke_workflow {run.workflow}  run {run.run_id}  {run.status}  {_ms(end - start)}"
        + (f"  resumed {run.resume_count}×" if run.resume_count else "")
    ]
    for i, line in enumerate(items):
        branch = "└─ " if i == len(items) - 1 else "├─ "
        out.append(branch + line.text.format(at=f"+{_ms(line.at - start)}"))
    return out
