"""Cost to the micro-dollar, the price table and `models sync`, and the recovery file."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy.exc import OperationalError

from demiarch_flow.client import ApiKey, OpenRouterClient
from demiarch_flow.definition import parse_workflow
from demiarch_flow.pricing import PriceTable, write_synced_table
from demiarch_flow.runner import RunRequest, run_workflow
from demiarch_flow.runner.recovery import recovery_dir_for
from demiarch_flow.store import MemoryStore
from demiarch_flow.store.sql import SqlStore
from demiarch_flow.testing import FAKE_BASE_URL, FakeOpenRouter, make_env

from ..conftest import DEFAULT_WORKFLOW

WF = parse_workflow(DEFAULT_WORKFLOW.read_text("utf-8"))
SONNET = "anthropic/claude-sonnet-4"


def _answer(model: str, usage: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The fake's success body as answered by ``model`` with exactly this ``usage``."""
    return lambda body: {**body, "model": model, "usage": usage}


async def _cost_of(
    answer: Callable[[dict[str, Any]], dict[str, Any]], model: str | None = None
) -> tuple[Decimal, str]:
    """What a blocking run stores as the cost of ``answer`` (the edit of the success body)."""
    store = MemoryStore()
    env = make_env(FakeOpenRouter(edit_success=answer), store=store)
    out = await run_workflow(WF, RunRequest("hi", model=model, stream=False), env)
    assert out.status == "succeeded"
    (row,) = store.usage
    assert (out.cost_usd, out.cost_source) == (row.cost_usd, row.cost_source)
    return row.cost_usd, row.cost_source


async def test_provider_cost_is_used_exactly() -> None:
    """usage.cost 0.00009 is stored as 0.000090000 USD, source provider."""
    cost = await _cost_of(
        _answer(SONNET, {"prompt_tokens": 10, "completion_tokens": 4, "cost": 0.00009})
    )
    assert cost == (Decimal("0.000090000"), "provider")


async def test_price_table_cost_to_the_micro_dollar() -> None:
    """No usage.cost: 1234 prompt + 567 completion tokens of sonnet-4 at 3/15 USD per M."""
    cost = await _cost_of(_answer(SONNET, {"prompt_tokens": 1234, "completion_tokens": 567}))
    assert cost == (Decimal("0.012207000"), "price_table")


async def test_price_table_uses_the_answering_model() -> None:
    """The model that answered (haiku, 0.80/4) is billed, not the one asked for."""
    cost = await _cost_of(
        _answer("anthropic/claude-3.5-haiku", {"prompt_tokens": 1000, "completion_tokens": 1000})
    )
    assert cost == (Decimal("0.004800000"), "price_table")


async def test_unknown_model_costs_zero_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A model in no table: cost 0, source unknown, and a warning."""
    with caplog.at_level("WARNING", logger="demiarch_flow"):
        cost = await _cost_of(
            _answer("acme/mystery", {"prompt_tokens": 5, "completion_tokens": 5}),
            model="acme/mystery",
        )
    assert cost == (Decimal("0E-9"), "unknown")
    assert "no cost for acme/mystery" in caplog.text


async def test_models_sync_writes_a_table_that_prices_like_the_listing(tmp_path: Path) -> None:
    """`models sync`: GET /models (USD per token) → our table (USD per million), then used."""
    listing = {
        "data": [
            {"id": "acme/fast", "pricing": {"prompt": "0.0000005", "completion": "0.0000015"}},
            {"id": "acme/free", "pricing": {"prompt": "0", "completion": "0"}},
            {"id": "acme/broken", "pricing": {"prompt": "n/a"}},
            {"id": "acme/absurd", "pricing": {"prompt": "1e40", "completion": "1"}},
            {"id": "acme/negative", "pricing": {"prompt": "-0.000001", "completion": "0"}},
            {"id": "acme/nan", "pricing": {"prompt": "NaN", "completion": "Infinity"}},
            {"id": "acme/odd", "pricing": "free"},
            {"pricing": {"prompt": "0", "completion": "0"}},
        ]
    }
    router = respx.Router()
    route = router.get(f"{FAKE_BASE_URL}/models").mock(
        return_value=httpx.Response(200, json=listing)
    )
    client = OpenRouterClient(
        httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)),
        ApiKey("sk-or-x", "test"),
        base_url=FAKE_BASE_URL,
    )
    path = tmp_path / "prices.json"
    written = write_synced_table(await client.list_models(), path)
    assert route.called
    assert (written.written, written.skipped) == (2, 6)
    saved = json.loads(path.read_text())
    assert saved["acme/fast"] == {"prompt": "0.5", "completion": "1.5"}
    table = PriceTable.load(path)
    assert table.cost("acme/fast", 1_000_000, 2_000_000, None).usd == Decimal("3.500000000")
    assert "anthropic/claude-sonnet-4" not in table.prices


def test_shipped_prices_match_openrouter_md() -> None:
    """The shipped table holds the published prices of the default chain."""
    table = PriceTable.load()
    assert {m: (p.prompt, p.completion) for m, p in table.prices.items()} == {
        "anthropic/claude-sonnet-4": (Decimal(3), Decimal(15)),
        "anthropic/claude-3.5-haiku": (Decimal("0.8"), Decimal(4)),
        "openai/gpt-4o": (Decimal("2.5"), Decimal(10)),
    }


async def test_failing_session_writes_the_recovery_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: object
) -> None:
    """Persist against a database that keeps failing: the run fails, the reply is in the
    recovery file beside the database, and the user's message is still stored."""
    import demiarch_flow.store.sql as sql

    store = SqlStore.open_sync(f"sqlite:///{tmp_path / 'flow.db'}")
    calls = {"n": 0}

    def failing_save(session: Any, reply: Any, end: Any, cp: Any = None) -> str:
        calls["n"] += 1
        raise OperationalError("INSERT INTO chat_messages", {}, Exception("disk I/O error"))

    monkeypatch.setattr(sql, "_save_reply", failing_save)
    tries = {"n": 0}
    save_reply = store.save_reply

    async def counted(reply: Any, end: Any, checkpoint: Any = None) -> str:
        tries["n"] += 1
        return await save_reply(reply, end, checkpoint)

    monkeypatch.setattr(store, "save_reply", counted)
    env = make_env(
        FakeOpenRouter(),
        store=store,
        recovery_dir=recovery_dir_for(store.url),
    )
    out = await run_workflow(WF, RunRequest("keep my answer"), env)
    assert out.status == "failed"
    assert out.error_class == "persistence"
    assert tries["n"] == 3  # persist_tries
    assert calls["n"] >= 3  # a failing group commit is retried write by write
    recovery = tmp_path / "recovery.jsonl"
    assert str(recovery) in str(out.error)
    row = json.loads(recovery.read_text().splitlines()[0])
    assert row["content"].startswith("[simulated anthropic/claude-sonnet-4]")
    assert row["run_id"] == out.run_id
    counts = await store.count_rows()
    assert (counts["chat_messages"], counts["llm_usage"], counts["workflow_runs"]) == (1, 0, 1)
    run = await store.load_run(out.run_id)
    assert run is not None
    assert (run.status, run.error_class) == ("failed", "persistence")
    store.close()
