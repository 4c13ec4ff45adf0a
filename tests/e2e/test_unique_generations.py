"""Issue 9 #15 end to end: a concurrent batch against a simulator with latency stores every reply."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from .conftest import FAST, Cli, SimThread

pytestmark = pytest.mark.e2e


def test_batch_with_latency_stores_every_reply(
    cli: Cli, simulator: Callable[..., SimThread]
) -> None:
    """200 lines at --concurrency 50, 50 ms latency: 200 replies, 200 distinct generation ids."""
    sim = simulator("", latency_s=0.05)
    inp = cli.home / "in.jsonl"
    inp.write_text(
        "".join(json.dumps({"id": f"q{i}", "message": f"m{i}"}) + "\n" for i in range(200))
    )
    res = cli("batch", str(inp), FAST, "--concurrency", "50", "--base-url", sim.url)
    assert res.code == 0, res.stderr
    assert len(res.stdout.splitlines()) == 200
    assert cli.rows("select count(*) from chat_messages where role = 'assistant'") == [(200,)]
    assert cli.rows("select count(*), count(distinct generation_id) from llm_usage") == [(200, 200)]
