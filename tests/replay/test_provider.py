"""The provider rebuilt from the record: which recorded request answers a replayed one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from demiarch_flow.errors import UsageError
from demiarch_flow.pricing import PriceTable
from demiarch_flow.replay import Unrecorded
from demiarch_flow.replay._provider import Provider, closest_price
from demiarch_flow.replay._record import Journal, Observation, RecordedRun

T0 = datetime(2026, 11, 23, tzinfo=UTC)
A, B = "anthropic/claude-sonnet-4", "anthropic/claude-3.5-haiku"


def obs(run: str, number: int, model: str, at_s: float, error: str | None) -> Observation:
    return Observation(
        run_id=run, number=number, model=model, at=T0 + timedelta(seconds=at_s),
        status=None if error is None else 500, error_class=error, latency_ms=0, seconds=0.0,
        settle_s=0.0, retry_after_s=None, partial_text=None, usage=None,
    )  # fmt: skip


def run(run_id: str, *observations: Observation) -> RecordedRun:
    return RecordedRun(
        run_id=run_id, workflow="chat", owner=None, status="succeeded", error_class=None,
        answered_by=None, started_at=T0, finished_at=T0, message="hi", first_model=None,
        stream=None, observations=observations, usage=(), journal=Journal(),
    )  # fmt: skip


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def provider(unrecorded: Unrecorded | None = None) -> Provider:
    r1 = run("r1", obs("r1", 1, A, 0, "server_error"), obs("r1", 2, A, 10, None))
    r2 = run("r2", obs("r2", 1, A, 5, None), obs("r2", 2, B, 6, "bad_request"))
    return Provider((r1, r2), unrecorded, PriceTable.load())


def test_a_run_meets_its_own_request_when_it_asks_within_the_tolerance() -> None:
    """At 9.7 s run r1 gets its own answer of 10 s (not r2's of 5 s), once; asked again, the
    model as last seen answers."""
    p = provider()
    first, assumed = p.answer("r1", A, at(9.7))
    assert (first, assumed) == (obs("r1", 2, A, 10, None), False)
    again, _ = p.answer("r1", A, at(9.8))
    assert again == obs("r2", 1, A, 5, None)  # its own 10 s is used: the latest at or before


def test_a_model_is_as_it_was_last_seen() -> None:
    """Asked at 3 s, sonnet was last seen failing (r1 at 0 s); at 7 s answering (r2 at 5 s);
    before anything was seen, the first request answers."""
    p = provider()
    assert p.answer("other", A, at(3))[0] == obs("r1", 1, A, 0, "server_error")
    assert p.answer("other", A, at(7))[0] == obs("r2", 1, A, 5, None)
    assert p.answer("other", A, at(-60))[0] == obs("r1", 1, A, 0, "server_error")


def test_a_refused_request_stays_refused() -> None:
    """r2's bad_request from haiku answers r2 whenever it asks; another run meets haiku as
    seen."""
    p = provider()
    assert p.answer("r2", B, at(100))[0] == obs("r2", 2, B, 6, "bad_request")
    assert p.answer("r2", B, at(200))[0] == obs("r2", 2, B, 6, "bad_request")


def test_an_unrecorded_model_follows_the_assumption() -> None:
    """gpt-4o was never asked: by default it behaves like the recorded model with the closest
    price (sonnet: $3 + $15 vs gpt-4o's $2.50 + $10, haiku $0.80 + $4); the run is marked."""
    p = provider()
    answer, assumed = p.answer("r1", "openai/gpt-4o", at(3))
    assert assumed and answer == obs("r1", 1, A, 0, "server_error")
    assert p.assumed == {"openai/gpt-4o": Unrecorded("like", A)}
    assert p.assumed_runs == {"openai/gpt-4o": {"r1"}}
    assert closest_price("openai/gpt-4o", (A, B), PriceTable.load()) == A
    assert provider(Unrecorded("fail")).answer("r1", "openai/gpt-4o", at(3)) == (None, True)


def test_an_unrecorded_like_model_must_be_recorded() -> None:
    """``--unrecorded MODEL`` names a model the record asked, else bad input."""
    with pytest.raises(UsageError, match="never asked that model"):
        provider(Unrecorded("like", "openai/gpt-4o"))
