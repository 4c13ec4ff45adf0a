"""Issue 9 #12: absurd figures in a paid answer are unknown, the reply is saved; and any
unexpected error — or a cancellation — after a reply arrived still writes it to the recovery
file, until its checkpoint is durable."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from demiarch_flow.pricing import Cost, PriceTable
from demiarch_flow.store import MemoryStore
from demiarch_flow.store.base import Reply, RunEnd

from .helpers import SONNET, Harness, default_workflow


def _paid(**usage: Any) -> Harness:
    """A provider whose success bodies carry ``usage`` (exactly these fields) and the reply
    "the paid answer"."""

    def edit(body: dict[str, Any]) -> dict[str, Any]:
        body["choices"][0]["message"]["content"] = "the paid answer"
        return {**body, "usage": usage}

    return Harness(edit_success=edit)


async def test_absurd_cost_falls_back_to_the_price_table(autojump_clock: object) -> None:
    """usage.cost 1e30: succeeded, stored, priced from the table (10 + 4 tokens of sonnet-4)."""
    h = _paid(cost=1e30, prompt_tokens=10, completion_tokens=4)
    out = await h.run(stream=False)
    assert out.status == "succeeded"
    (row,) = h.store.usage
    assert (row.cost_usd, row.cost_source) == (Decimal("0.000090000"), "price_table")
    assert (out.cost_usd, out.cost_source) == (row.cost_usd, row.cost_source)


async def test_absurd_token_counts_are_stored_as_unknown(autojump_clock: object) -> None:
    """prompt_tokens 1e23: succeeded and stored; the counts are unknown (None in the outcome,
    NULL in the row) and the cost is estimated from the text, never 0 USD."""
    h = _paid(prompt_tokens=1e23, completion_tokens=10**23)
    out = await h.run(stream=False)
    assert out.status == "succeeded"
    assert (out.prompt_tokens, out.completion_tokens, out.cost_source) == (None, None, "estimated")
    (row,) = h.store.usage
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (None, None, None)
    assert row.cost_usd > 0
    assert row.content == "the paid answer"
    json.dumps(out.to_json())


class ExplodingStore(MemoryStore):
    """A store whose save_reply fails with an error that is not a FlowError (a bug)."""

    async def save_reply(self, reply: Reply, end: RunEnd, checkpoint: Any = None) -> str:
        raise RuntimeError("unexpected driver failure")


class ExplodingPrices(PriceTable):
    def cost(self, *args: Any) -> Cost:
        raise ArithmeticError("price table bug")


@pytest.mark.parametrize("broken", ["store", "prices"])
async def test_unexpected_error_after_the_reply_writes_the_recovery_file(
    broken: str, tmp_path: Path, autojump_clock: object
) -> None:
    """save_reply raising RuntimeError, or cost() raising: the run is recorded failed
    (internal), the error surfaces, and the reply is in recovery.jsonl."""
    h = Harness()
    store = ExplodingStore() if broken == "store" else MemoryStore()
    prices = ExplodingPrices({}) if broken == "prices" else PriceTable.load()
    env = dataclasses.replace(h.env(), store=store, prices=prices, recovery_dir=str(tmp_path))
    from demiarch_flow.runner import RunRequest, run_workflow

    with pytest.raises((RuntimeError, ArithmeticError)):
        await run_workflow(default_workflow(), RunRequest("keep it"), env)
    (row,) = [json.loads(line) for line in (tmp_path / "recovery.jsonl").read_text().splitlines()]
    assert row["content"] == f"[simulated {SONNET}] You said: keep it"
    assert row["model"] == SONNET
    expected_source = "provider" if broken == "store" else "unknown"
    assert row["cost_source"] == expected_source
    (run,) = store.runs.values()
    assert (run["status"], run["error_class"]) == ("failed", "internal")
    assert store.usage == []


class FailingAnswerCheckpoint(MemoryStore):
    """A store that cannot make the answer's checkpoint durable (the database went away just
    as the answer arrived)."""

    async def checkpoint(self, checkpoint: Any, *, durable: bool) -> None:
        if durable and checkpoint.state.completion is not None:
            from demiarch_flow.errors import PersistenceError

            raise PersistenceError("database is locked")
        await super().checkpoint(checkpoint, durable=durable)


class FailingAnswerStore(FailingAnswerCheckpoint):
    """The database is gone for good: the reply cannot be stored either."""

    async def save_reply(self, reply: Reply, end: RunEnd, checkpoint: Any = None) -> str:
        from demiarch_flow.errors import PersistenceError

        raise PersistenceError("database is locked")


async def test_a_store_failing_as_the_answer_arrives_stores_the_reply_at_once(
    tmp_path: Path, autojump_clock: object
) -> None:
    """The answer's checkpoint cannot be committed (a passing lock): the error surfaces, and
    the paid-for answer is stored as the run's reply at once — its spend in llm_usage, where
    every budget sees it — not left in a file nobody's books read."""
    from demiarch_flow.runner import RunRequest, run_workflow

    store = FailingAnswerCheckpoint()
    env = dataclasses.replace(Harness().env(), store=store, recovery_dir=str(tmp_path))
    with pytest.raises(Exception, match="database is locked"):
        await run_workflow(default_workflow(), RunRequest("keep it"), env)
    assert not (tmp_path / "recovery.jsonl").exists()
    (reply,) = store.usage
    assert reply.content == f"[simulated {SONNET}] You said: keep it"
    assert reply.cost_usd > 0
    (run,) = store.runs.values()
    assert run["status"] == "succeeded"  # its answer is how it ended: no later end overwrites it


async def test_a_store_gone_as_the_answer_arrives_keeps_it_in_the_recovery_file(
    tmp_path: Path, autojump_clock: object
) -> None:
    """Neither the checkpoint nor the reply can be committed: the run's answer is in
    recovery.jsonl (before, only the state before the Request step was rescued: none)."""
    from demiarch_flow.runner import RunRequest, run_workflow

    store = FailingAnswerStore()
    env = dataclasses.replace(Harness().env(), store=store, recovery_dir=str(tmp_path))
    with pytest.raises(Exception, match="database is locked"):
        await run_workflow(default_workflow(), RunRequest("keep it"), env)
    (row,) = [json.loads(line) for line in (tmp_path / "recovery.jsonl").read_text().splitlines()]
    assert row["content"] == f"[simulated {SONNET}] You said: keep it"
    assert store.usage == []


async def test_ctrl_c_just_after_a_blocking_answer_does_not_pay_twice(
    tmp_path: Path, autojump_clock: object
) -> None:
    """Ctrl-C lands after the answer arrived, before its checkpoint commits (SQLite store):
    the answer is stored as the run's reply at once (no recovery file, which no budget reads),
    and `runs resume` finds nothing to do — one request, one reply, one llm_usage row."""
    import trio

    from demiarch_flow.runner import FlowRecord, RunRequest, run_workflow
    from demiarch_flow.runner.resume import resume_run
    from demiarch_flow.store.sql import SqlStore

    h = Harness()
    store = await SqlStore.open(f"sqlite:///{tmp_path / 'flow.db'}")
    scope = trio.CancelScope()

    class CtrlC:
        async def on_record(self, rec: FlowRecord) -> None:
            if rec.kind == "attempt" and rec.error_class is None:
                scope.cancel()

    env = dataclasses.replace(h.env(), store=store, recovery_dir=str(tmp_path))
    try:
        with scope:
            ctrl_c = dataclasses.replace(env, listeners=(CtrlC(),))
            await run_workflow(default_workflow(), RunRequest("keep it", stream=False), ctrl_c)
        (run,) = await store.list_runs(status=None, since=None, limit=5)
        assert run.status == "succeeded"
        assert not (tmp_path / "recovery.jsonl").exists()
        assert (await store.count_rows())["llm_usage"] == 1
        resumed = await resume_run(run.run_id, env)
        assert not resumed.ran and resumed.outcome.succeeded
        assert len(h.fake.requests) == 1
        assert (await store.count_rows())["llm_usage"] == 1
    finally:
        store.close()
