"""Issue 9 #12: absurd figures in a paid answer are unknown, the reply is saved; and any
unexpected error after a reply arrived still writes it to the recovery file."""

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
    """prompt_tokens 1e23: succeeded and stored; the count is unknown (None in the outcome,
    0 in the NOT NULL column) and so is the cost."""
    h = _paid(prompt_tokens=1e23, completion_tokens=10**23)
    out = await h.run(stream=False)
    assert out.status == "succeeded"
    assert (out.prompt_tokens, out.completion_tokens, out.cost_source) == (None, None, "unknown")
    (row,) = h.store.usage
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (0, 0, 0)
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
