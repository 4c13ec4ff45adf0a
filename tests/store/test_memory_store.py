"""MemoryStore specifics that the contract tests (tests/store/test_contract.py) do not pin."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import trio

from demiarch_flow.store import MemoryStore, Reply, RunEnd

AT = datetime(2026, 3, 1, tzinfo=UTC)


def _reply(run_id: str) -> Reply:
    return Reply(
        run_id=run_id, conversation_id="c", project_id=None, message_id=str(uuid.uuid4()),
        usage_id=str(uuid.uuid4()), content="answer", model="m", requested_model="m",
        generation_id=f"gen-{uuid.uuid4().hex}", prompt_tokens=1, completion_tokens=1,
        total_tokens=2, cached_tokens=0, cost_usd=Decimal("0.000001"), cost_source="provider",
        latency_ms=1, attempts=1, request_timestamp=AT, created_at=AT,
    )  # fmt: skip


class _NoScan(list[Reply]):
    """A reply list that fails the test if anything walks it."""

    def __iter__(self) -> Iterator[Reply]:
        raise AssertionError("save_reply scanned every stored reply")


def test_save_reply_finds_a_runs_reply_without_scanning_every_reply() -> None:
    """Saving a reply costs the same with 1 or 100,000 replies stored (it used to walk them all,
    which made a long in-memory benchmark quadratic); a second reply of a run is still refused."""
    store = MemoryStore()
    store.usage = _NoScan()

    async def main() -> None:
        end = RunEnd("r1", "succeeded", "Done", "m", None, None, AT)
        first = await store.save_reply(_reply("r1"), end)
        await store.save_reply(_reply("r2"), RunEnd("r2", "succeeded", "Done", "m", None, None, AT))
        again = await store.save_reply(_reply("r1"), end)
        assert again == first
        assert len(store.usage) == 2

    trio.run(main)
