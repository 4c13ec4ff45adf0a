"""An in-memory :class:`~demiarch_flow.store.base.Store`: ``simulate``, tests and benchmarks.

It follows the same contract as the SQL store (the contract suite runs on both), including
idempotency on ``generation_id`` and the unknown-conversation error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UnknownConversation
from .base import (
    AttemptRow,
    BeganRun,
    Checkpoint,
    JournalEntry,
    NewRun,
    Reply,
    RunEnd,
    StoredMessage,
)


@dataclass
class MemoryStore:
    conversations: dict[str, str] = field(default_factory=dict)
    """conversation id → title."""
    messages: list[StoredMessage] = field(default_factory=list)
    usage: list[Reply] = field(default_factory=list)
    runs: dict[str, dict[str, object]] = field(default_factory=dict)
    events: list[JournalEntry] = field(default_factory=list)
    attempts: dict[tuple[str, int], AttemptRow] = field(default_factory=dict)
    _by_conversation: dict[str, list[StoredMessage]] = field(default_factory=dict, repr=False)

    def _add(self, message: StoredMessage) -> None:
        self.messages.append(message)
        self._by_conversation.setdefault(message.conversation_id, []).append(message)

    async def begin_run(self, run: NewRun) -> BeganRun:
        created = run.conversation_id is None
        conv = run.create_with_id if created else run.conversation_id
        assert conv is not None
        if not created and conv not in self.conversations:
            self.runs[run.run_id] = {"workflow": run.workflow, "conversation_id": None}
            raise UnknownConversation(conv)
        if created:
            self.conversations[conv] = run.title
        earlier = self._by_conversation.get(conv, [])
        history = tuple(earlier[-run.context_messages :]) if run.context_messages else ()
        self._add(
            StoredMessage(run.user_message_id, conv, "user", run.content, None, run.at, run.run_id)
        )
        self.runs[run.run_id] = {
            "workflow": run.workflow,
            "conversation_id": conv,
            "status": "running",
            "current_state": run.state,
            "started_at": run.at,
        }
        return BeganRun(conv, created, history, run.at)

    async def checkpoint(self, checkpoint: Checkpoint, *, durable: bool) -> None:
        run = self.runs.setdefault(checkpoint.run_id, {})
        run.update(
            current_state=checkpoint.current_state,
            model=checkpoint.model,
            state_json=checkpoint.state_json,
        )
        self.events.extend(checkpoint.entries)

    async def attempt_started(self, attempt: AttemptRow) -> None:
        self.attempts[(attempt.run_id, attempt.number)] = attempt

    async def attempt_ended(self, attempt: AttemptRow) -> None:
        self.attempts[(attempt.run_id, attempt.number)] = attempt

    async def save_reply(self, reply: Reply, end: RunEnd) -> str:
        if reply.generation_id is not None:
            for row in self.usage:
                if row.generation_id == reply.generation_id:
                    return row.message_id
        self._add(
            StoredMessage(
                reply.message_id, reply.conversation_id, "assistant", reply.content,
                reply.model, reply.created_at, reply.run_id, reply.completion_tokens,
            )
        )  # fmt: skip
        self.usage.append(reply)
        await self.finish_run(end)
        return reply.message_id

    async def finish_run(self, end: RunEnd) -> None:
        self.runs.setdefault(end.run_id, {}).update(
            status=end.status,
            current_state=end.current_state,
            model=end.model,
            error_class=end.error_class,
            error_message=end.error_message,
            finished_at=end.finished_at,
        )

    async def count_rows(self) -> dict[str, int]:
        """Rows per table, named as in the SQL schema."""
        return {
            "conversations": len(self.conversations),
            "chat_messages": len(self.messages),
            "llm_usage": len(self.usage),
            "workflow_runs": len(self.runs),
            "run_events": len(self.events),
        }
