"""An in-memory :class:`~demiarch_flow.store.base.Store`: ``simulate``, tests and benchmarks.

It follows the same contract as the SQL store (the contract suite runs on both, through the
interface's own read methods), including one reply per run, the unknown-conversation error and
resumable runs. Checkpoints keep the state object itself: nothing is serialised until read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from .._frozen import evolve
from ..errors import RunTakenOver, UnknownConversation
from .base import (
    AttemptRow,
    BeganRun,
    BilledAttempt,
    Checkpoint,
    Definition,
    ImportResult,
    JournalEntry,
    JsonState,
    NewRun,
    Reply,
    RunEnd,
    RunStatus,
    StoredMessage,
    StoredReply,
    StoredRun,
)


@dataclass
class MemoryStore:
    conversations: dict[str, str] = field(default_factory=dict)
    """conversation id → title."""
    messages: list[StoredMessage] = field(default_factory=list)
    usage: list[Reply] = field(default_factory=list)
    billed: list[BilledAttempt] = field(default_factory=list)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """run id → its row, as a dict named like the ``workflow_runs`` columns."""
    events: list[JournalEntry] = field(default_factory=list)
    attempts: dict[tuple[str, int], AttemptRow] = field(default_factory=dict)
    definitions: dict[str, str] = field(default_factory=dict)
    _by_conversation: dict[str, list[StoredMessage]] = field(default_factory=dict, repr=False)
    _reply_of: dict[str, str] = field(default_factory=dict, repr=False)
    """run id → the message id of its reply (one reply per run, found without a scan)."""
    _ahead: dict[str, int] = field(default_factory=dict, repr=False)
    """run id → the number of its next request, recorded with the run (``first_attempt``)."""
    _last_attempt: dict[str, int] = field(default_factory=dict, repr=False)
    """run id → its highest attempt number (numbering without a scan of every attempt: a
    benchmark's thousands of runs would otherwise make each new attempt slower)."""

    def _add(self, message: StoredMessage) -> None:
        self.messages.append(message)
        self._by_conversation.setdefault(message.conversation_id, []).append(message)

    def _new_row(self, run: NewRun, conversation_id: str | None) -> dict[str, Any]:
        return {
            "workflow": run.workflow,
            "workflow_sha256": run.workflow_sha256,
            "conversation_id": conversation_id,
            "status": "running",
            "current_state": run.state,
            "model": None,
            "error_class": None,
            "error_message": None,
            "started_at": run.at,
            "finished_at": None,
            "state": run.state_json,
            "owner": run.owner,
            "heartbeat_at": run.at if run.owner else None,
            "resume_count": 0,
        }

    async def begin_run(self, run: NewRun) -> BeganRun:
        if run.definition:
            self.definitions.setdefault(run.workflow_sha256, run.definition)
        if run.resumed:
            mine = [m for m in self.messages if m.run_id == run.run_id and m.role == "user"]
            if mine:
                earlier = [
                    m
                    for m in self._by_conversation[mine[0].conversation_id]
                    if m.created_at < mine[0].created_at
                ]
                history = tuple(earlier[-run.context_messages :]) if run.context_messages else ()
                number = None
                if run.first_attempt is not None:
                    number = self._insert_attempt(run.first_attempt, run.owner)
                    self._ahead[run.run_id] = number
                return BeganRun(mine[0].conversation_id, history, mine[0].created_at, number)
        created = run.conversation_id is None
        conv = run.create_with_id if created else run.conversation_id
        assert conv is not None
        if not created and conv not in self.conversations:
            self.runs[run.run_id] = self._new_row(run, None)
            raise UnknownConversation(conv)
        if created:
            self.conversations[conv] = run.title
        earlier = self._by_conversation.get(conv, [])
        history = tuple(earlier[-run.context_messages :]) if run.context_messages else ()
        self._add(
            StoredMessage(run.user_message_id, conv, "user", run.content, None, run.at, run.run_id)
        )
        self.runs[run.run_id] = self._new_row(run, conv)
        number = None
        if run.first_attempt is not None:
            number = self._insert_attempt(run.first_attempt, None)
            self._ahead[run.run_id] = number
        return BeganRun(conv, history, run.at, number)

    def _fence(self, run_id: str, owner: str | None) -> None:
        if owner is not None and self.runs.get(run_id, {}).get("owner") != owner:
            raise RunTakenOver(run_id)

    async def checkpoint(self, checkpoint: Checkpoint, *, durable: bool) -> None:
        self._fence(checkpoint.run_id, checkpoint.owner)
        self.runs.setdefault(checkpoint.run_id, {}).update(
            current_state=checkpoint.current_state, model=checkpoint.model, state=checkpoint.state
        )
        self.events.extend(checkpoint.entries)

    def _insert_attempt(self, attempt: AttemptRow, owner: str | None) -> int:
        """As the SQL store: fenced by owner, numbered one above the run's highest."""
        self._fence_running(attempt.run_id, owner)
        number = self._last_attempt[attempt.run_id] = 1 + self._last_attempt.get(attempt.run_id, 0)
        self.attempts[attempt.run_id, number] = evolve(attempt, number=number)
        return number

    def _fence_running(self, run_id: str, owner: str | None) -> None:
        row = self.runs.get(run_id, {})
        if owner is not None and (row.get("owner") != owner or row.get("status") != "running"):
            raise RunTakenOver(run_id)

    async def attempt_started(self, attempt: AttemptRow, owner: str | None = None) -> int:
        ahead = self._ahead.pop(attempt.run_id, None)
        if ahead is not None:
            self._fence_running(attempt.run_id, owner)
            return ahead
        return self._insert_attempt(attempt, owner)

    async def attempt_unsent(self, run_id: str, why: str, at: datetime) -> None:
        ahead = self._ahead.pop(run_id, None)
        if ahead is not None:
            row = self.attempts[run_id, ahead]
            self.attempts[run_id, ahead] = replace(row, ended_at=at, error_class=why)

    async def attempt_ended(self, attempt: AttemptRow) -> None:
        key = (attempt.run_id, attempt.number)
        if key in self.attempts:
            self.attempts[key] = attempt

    async def attempt_progress(self, attempt: AttemptRow) -> None:
        row = self.attempts[(attempt.run_id, attempt.number)]
        self.attempts[attempt.run_id, attempt.number] = replace(
            row, generation_id=attempt.generation_id
        )

    async def attempt_answered(self, attempt: AttemptRow) -> None:
        row = self.attempts[(attempt.run_id, attempt.number)]
        self.attempts[attempt.run_id, attempt.number] = replace(
            row, generation_id=attempt.generation_id or row.generation_id,
            partial_text=attempt.partial_text, finish_reason=attempt.finish_reason,
            response_model=attempt.response_model, status=attempt.status,
            latency_ms=attempt.latency_ms,
        )  # fmt: skip

    async def save_reply(
        self, reply: Reply, end: RunEnd, checkpoint: Checkpoint | None = None
    ) -> str:
        self._fence(end.run_id, end.owner)
        if checkpoint is not None:
            self._fence(checkpoint.run_id, checkpoint.owner)
        saved = self._reply_of.get(reply.run_id)
        if saved is not None:  # one reply per run
            await self.finish_run(end, checkpoint)
            return saved
        self._add(
            StoredMessage(
                reply.message_id, reply.conversation_id, "assistant", reply.content,
                reply.model, reply.created_at, reply.run_id, reply.completion_tokens,
            )
        )  # fmt: skip
        self.usage.append(reply)
        self._reply_of[reply.run_id] = reply.message_id
        await self.finish_run(end, checkpoint, again=True)  # its answer: how the run ended
        return reply.message_id

    async def finish_run(
        self, end: RunEnd, checkpoint: Checkpoint | None = None, *, again: bool = False
    ) -> None:
        self._fence(end.run_id, end.owner)
        if checkpoint is not None:
            await self.checkpoint(checkpoint, durable=True)
        row = self.runs.setdefault(end.run_id, {})
        if not again and row.get("status", "running") != "running":
            return  # an end is never overwritten (as the SQL store)
        row.update(
            status=end.status,
            current_state=end.current_state,
            model=end.model,
            error_class=end.error_class,
            error_message=end.error_message,
            finished_at=end.finished_at,
        )

    async def heartbeat(self, owner: str, at: datetime) -> None:
        for row in self.runs.values():
            if row.get("owner") == owner and row.get("status") == "running":
                row["heartbeat_at"] = at

    async def reopen_run(
        self,
        checkpoint: Checkpoint,
        owner: str | None,
        at: datetime,
        *,
        expect: tuple[RunStatus, str | None] | None = None,
        definition: Definition | None = None,
    ) -> bool:
        row = self.runs[checkpoint.run_id]
        if expect is not None and (row.get("status"), row.get("owner")) != expect:
            return False
        if definition is not None:
            self.definitions.setdefault(definition.sha256, definition.text)
            row.update(workflow=definition.name, workflow_sha256=definition.sha256)
        row.update(
            status="running", current_state=checkpoint.current_state, model=checkpoint.model,
            state=checkpoint.state, owner=owner, heartbeat_at=at,
            resume_count=row.get("resume_count", 0) + 1, error_class=None,
            error_message=None, finished_at=None,
        )  # fmt: skip
        self.events.extend(checkpoint.entries)
        return True

    async def book_billed(self, billed: BilledAttempt) -> None:
        booked: list[BilledAttempt | Reply] = [*self.billed, *self.usage]  # replies count too
        if not any(
            b.run_id == billed.run_id and b.generation_id == billed.generation_id for b in booked
        ):
            self.billed.append(billed)

    async def import_reply(self, reply: Reply, final_state: str | None) -> ImportResult:
        if any(u.run_id == reply.run_id for u in self.usage):
            return "present"
        if reply.conversation_id not in self.conversations:
            return "no_conversation"
        row = self.runs.get(reply.run_id, {})
        state = final_state or row.get("current_state") or ""
        end = RunEnd(reply.run_id, "succeeded", state, reply.model, None, None, reply.created_at)
        await self.save_reply(reply, end)
        return "imported"

    async def load_run(self, run_id: str) -> StoredRun | None:
        row = self.runs.get(run_id)
        return None if row is None else self._stored(run_id, row, with_definition=True)

    async def list_runs(
        self, *, status: RunStatus | None, since: datetime | None, limit: int
    ) -> list[StoredRun]:
        rows = [
            self._stored(run_id, row)
            for run_id, row in self.runs.items()
            if (status is None or row.get("status") == status)
            and (since is None or row["started_at"] >= since)
        ]
        rows.sort(key=lambda r: r.started_at, reverse=True)
        return rows[:limit]

    async def journal(self, run_id: str) -> tuple[JournalEntry, ...]:
        return tuple(sorted((e for e in self.events if e.run_id == run_id), key=lambda e: e.seq))

    def _stored(self, run_id: str, row: dict[str, Any], with_definition: bool = False) -> StoredRun:
        reply = next((u for u in self.usage if u.run_id == run_id), None)
        cost = sum((u.cost_usd for u in self.usage if u.run_id == run_id), Decimal(0))
        cost += sum((b.cost_usd for b in self.billed if b.run_id == run_id), Decimal(0))
        state: JsonState | None = row.get("state")
        sha = row.get("workflow_sha256", "")
        return StoredRun(
            run_id=run_id,
            workflow=row.get("workflow", ""),
            workflow_sha256=sha,
            definition=self.definitions.get(sha) if with_definition else None,
            conversation_id=row.get("conversation_id"),
            status=row.get("status", "running"),
            current_state=row.get("current_state"),
            model=row.get("model"),
            error_class=row.get("error_class"),
            error_message=row.get("error_message"),
            started_at=row["started_at"],
            finished_at=row.get("finished_at"),
            state_json=state.to_json() if state is not None else None,
            owner=row.get("owner"),
            heartbeat_at=row.get("heartbeat_at"),
            resume_count=row.get("resume_count", 0),
            attempts=tuple(
                replace(a) for (rid, _), a in sorted(self.attempts.items()) if rid == run_id
            ),
            reply=None
            if reply is None
            else StoredReply(
                reply.message_id,
                reply.content,
                reply.model,
                reply.prompt_tokens,
                reply.completion_tokens,
                reply.cost_usd,
                reply.cost_source,
            ),
            cost_usd=cost,
        )

    async def count_rows(self) -> dict[str, int]:
        """Rows per table, named as in the SQL schema."""
        return {
            "conversations": len(self.conversations),
            "chat_messages": len(self.messages),
            "llm_usage": len(self.usage) + len(self.billed),
            "workflow_runs": len(self.runs),
            "run_events": len(self.events),
        }
