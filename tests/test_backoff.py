"""Backoff as a pure function: the schedule, Retry-After parsing and the wait decision."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from demiarch_flow.backoff import computed_delay, parse_retry_after, plan_wait
from demiarch_flow.definition import RetryPolicy

DEFAULT = RetryPolicy()


def test_default_schedule_is_1_2_4_then_capped() -> None:
    """1 s, 2 s, 4 s … capped at 30 s."""
    assert [computed_delay(n, DEFAULT) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize("n", [10**3, 10**6, 10**18])
def test_huge_retry_numbers_do_not_overflow(n: int) -> None:
    """A retry number of 10**18 returns the cap instead of overflowing."""
    assert computed_delay(n, DEFAULT) == 30


def test_rate_one_is_constant() -> None:
    """backoff_rate 1 → every wait is the initial delay."""
    policy = RetryPolicy(initial_delay_s=0.5, backoff_rate=1, max_delay_s=10)
    assert {computed_delay(n, policy) for n in (1, 2, 50)} == {0.5}


NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),
        ({"retry-after-ms": "junk", "Retry-After": "9"}, 9.0),
        ({"Retry-After": "Thu, 01 Jan 2026 12:00:07 GMT"}, 7.0),
        ({"Retry-After": "Thu, 01 Jan 2026 11:00:00 GMT"}, 0.0),
        ({"Retry-After": "-1"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "1e400"}, None),
        ({"Retry-After": "99999999"}, None),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    """Milliseconds first, then seconds or an HTTP date; unusable values are None."""
    assert parse_retry_after(headers, NOW) == expected


def test_plan_uses_hint_within_cap_and_gives_up_beyond() -> None:
    """A hint within max_delay_s is waited; above it the model is given up without waiting."""
    rng = random.Random(0)
    assert plan_wait(1, DEFAULT, 2.0, rng).delay_s == 2.0
    beyond = plan_wait(1, DEFAULT, 45.0, rng)
    assert beyond.exhausted
    assert beyond.reason == "retry_after_too_long"


def test_plan_exhausted_after_max_retries() -> None:
    """Retry number max_retries + 1 is refused."""
    assert plan_wait(4, DEFAULT, None, random.Random(0)).reason == "retries_exhausted"
    assert plan_wait(1, RetryPolicy(max_retries=0), None, random.Random(0)).exhausted


def test_plan_ignores_hint_when_told() -> None:
    """respect_retry_after false → the schedule, whatever the server said."""
    policy = RetryPolicy(respect_retry_after=False)
    assert plan_wait(2, policy, 20.0, random.Random(0)).delay_s == 2.0


def test_full_jitter_is_uniform_below_the_schedule() -> None:
    """Full jitter draws from [0, computed] with the injected generator."""
    policy = RetryPolicy(jitter="full")
    waits = [plan_wait(3, policy, None, random.Random(s)).delay_s for s in range(200)]
    assert all(w is not None and 0 <= w <= 4 for w in waits)
    assert len(set(waits)) == 200
    assert waits[0] == random.Random(0).uniform(0, 4)
