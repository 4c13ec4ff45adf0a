"""The run journal: a listener that writes every transition to ``run_events``.

Transitions are buffered per run and committed in one durable write before each Backoff wait
(the run is idle then anyway) and when the run finishes, cancelled runs included. A process
killed mid-run (even with SIGKILL) therefore loses at most the transitions since the last wait,
and a finished run's journal is in the database when ``run_workflow`` returns. The durable write
joins the store's group commit, so concurrent runs share their commits; a lone run pays one
commit at its end (the ``finished`` record comes after Persist's transaction).
"""

from __future__ import annotations

import logging

from ..errors import PersistenceError
from ..store.base import JournalEntry, Store
from .records import FlowRecord


class JournalListener:
    """Writes transitions through ``store``; safe to share between concurrent runs."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[str, list[JournalEntry]] = {}
        self._seq: dict[str, int] = {}

    async def on_record(self, record: FlowRecord) -> None:
        if record.kind == "transition":
            seq = self._seq.get(record.run_id, 0) + 1
            self._seq[record.run_id] = seq
            self._pending.setdefault(record.run_id, []).append(journal_entry(record, seq))
        elif record.kind == "wait":
            await self._flush(record.run_id)  # before Backoff sleeps
        elif record.kind == "finished":
            self._seq.pop(record.run_id, None)
            await self._flush(record.run_id)

    async def _flush(self, run_id: str) -> None:
        entries = self._pending.pop(run_id, None)
        if entries:
            try:
                await self._store.append_events(tuple(entries), durable=True)
            except PersistenceError as exc:
                # The journal is an audit trail: losing it must not fail a paid-for run.
                logging.getLogger("demiarch_flow").warning(
                    "could not write %d journal rows of run %s: %s", len(entries), run_id, exc
                )


def journal_entry(record: FlowRecord, seq: int) -> JournalEntry:
    """A transition record as a ``run_events`` row."""
    assert record.from_state is not None
    assert record.event is not None
    assert record.to_state is not None
    return JournalEntry(
        run_id=record.run_id,
        seq=seq,
        from_state=record.from_state,
        event=record.event,
        to_state=record.to_state,
        model=record.model,
        attempt=record.attempt,
        error_class=record.error_class,
        wait_s=record.wait_s,
        at=record.wall,
    )
