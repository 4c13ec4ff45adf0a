"""Backoff as a pure function: the schedule, Retry-After parsing and the wait decision."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from demiarch_flow.backoff import (
    IMPLAUSIBLE_RETRY_AFTER_S,
    computed_delay,
    parse_retry_after,
    plan_wait,
)
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
        ({"Retry-After": "2", "retry-after-ms": "500"}, 0.5),
        ({"retry-after-ms": "junk", "Retry-After": "9"}, 9.0),
        ({"Retry-After": "Thu, 01 Jan 2026 12:00:07 GMT"}, 7.0),
        ({"Retry-After": "Thu, 01 Jan 2026 11:00:00 GMT"}, None),
        ({"Retry-After": "Thu, 01 Jan 2026 12:00:00 GMT"}, None),
        ({"Retry-After": "0"}, None),
        ({"Retry-After": "0.0"}, None),
        ({"retry-after-ms": "0"}, None),
        ({"retry-after-ms": "-250", "Retry-After": "3"}, 3.0),
        ({"retry-after-ms": "0", "Retry-After": "3"}, 3.0),
        ({"retry-after-ms": "nan", "Retry-After": "3"}, 3.0),
        ({"Retry-After": "3.5"}, 3.5),
        ({"Retry-After": " \t3 "}, 3.0),
        ({"Retry-After": "3, 5"}, 5.0),
        ({"Retry-After": "junk, 2"}, 2.0),
        ({"Retry-After": "+3"}, None),
        ({"Retry-After": "3e1"}, None),
        ({"Retry-After": "1_0"}, None),
        ({"Retry-After": "\u0663"}, None),
        ({"Retry-After": "Infinity"}, None),
        ({"Retry-After": "9" * 400}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "Thu, 99 Foo 2026 99:99:99 GMT"}, None),
        ({"Retry-After": "Fri, 01 Jan 9999 12:00:00 GMT"}, None),
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


def test_a_repeated_header_counts_with_its_longest_value() -> None:
    """Two Retry-After headers (httpx joins them) → the longer usable wait."""
    headers = httpx.Headers([("Retry-After", "2"), ("Retry-After", "4"), ("Retry-After", "x")])
    assert parse_retry_after(headers, NOW) == 4.0


_HEADER_NAMES = st.sampled_from(["Retry-After", "retry-after", "RETRY-AFTER", "retry-after-ms"])
_HEADER_VALUES = st.one_of(
    st.text(max_size=40),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT")),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_HEADER_NAMES, _HEADER_VALUES, max_size=4))
def test_parse_retry_after_is_none_or_a_positive_plausible_wait(headers: dict[str, str]) -> None:
    """Whatever the headers say: None, or 0 < wait <= the implausible cap (never NaN)."""
    wait = parse_retry_after(headers, NOW)
    assert wait is None or 0 < wait <= IMPLAUSIBLE_RETRY_AFTER_S


def test_plan_ignores_a_non_positive_hint() -> None:
    """A hint of 0 (or below) that reaches plan_wait anyway is ignored: the schedule applies."""
    for hint in (0.0, -1.0):
        plan = plan_wait(2, DEFAULT, hint, random.Random(0))
        assert (plan.delay_s, plan.source) == (2.0, "schedule")


def test_plan_uses_hint_within_cap_and_gives_up_beyond() -> None:
    """A hint within max_delay_s is waited; above it the model is given up without waiting."""
    rng = random.Random(0)
    assert plan_wait(1, DEFAULT, 2.0, rng).delay_s == 2.0
    beyond = plan_wait(1, DEFAULT, 45.0, rng)
    assert beyond.delay_s is None
    assert beyond.reason == "retry_after_too_long"


def test_plan_exhausted_after_max_retries() -> None:
    """Retry number max_retries + 1 is refused."""
    assert plan_wait(4, DEFAULT, None, random.Random(0)).reason == "retries_exhausted"
    assert plan_wait(1, RetryPolicy(max_retries=0), None, random.Random(0)).delay_s is None


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
