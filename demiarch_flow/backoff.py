"""Backoff as pure functions: the schedule, the server's wait hint, and the decision between them.

Nothing here sleeps or reads a clock of its own: the Backoff state calls :func:`plan_wait` with
the retry number, the policy, the parsed hint and an injected ``random.Random``, and sleeps what
it is told. That keeps every wait testable to the millisecond.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

from .definition import RetryPolicy

#: A hint above this is taken as garbage (a clock bug, an overflow), not as a real request to
#: wait a day: the schedule's own delay is used instead.
IMPLAUSIBLE_RETRY_AFTER_S = 86_400.0


def computed_delay(retry_number: int, policy: RetryPolicy) -> float:
    """``min(max_delay_s, initial_delay_s · backoff_rate^(n−1))`` for retry ``n`` ≥ 1.

    Computed in log space, so a retry number of a million neither overflows nor takes long.
    """
    exponent = max(retry_number - 1, 0)
    if policy.backoff_rate == 1 or exponent == 0:
        return min(policy.initial_delay_s, policy.max_delay_s)
    headroom = math.log(policy.max_delay_s / policy.initial_delay_s)
    if exponent * math.log(policy.backoff_rate) >= headroom:
        return policy.max_delay_s
    return min(policy.max_delay_s, policy.initial_delay_s * policy.backoff_rate**exponent)


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """The server's wait hint in seconds, or ``None`` when there is no usable one.

    ``retry-after-ms`` (milliseconds) wins over ``Retry-After`` (seconds or an HTTP date) when
    it is usable; an unusable one does not hide a good ``Retry-After``; without either,
    ``X-RateLimit-Reset`` (an epoch in ms, on OpenRouter's own 429s) gives the wait. A hint of zero, a
    negative one, a date that has passed, an unparsable, non-finite or implausibly large value
    is ignored, so the schedule applies: a server saying "retry now" must not turn the retry
    policy into a burst of back-to-back requests. A header sent twice (``3, 5`` once joined)
    counts with its longest usable value.

    Returns:
        ``None``, or a float with ``0 < value <= IMPLAUSIBLE_RETRY_AFTER_S``.
    """
    values: dict[str, list[str]] = {}
    for key, value in headers.items():
        values.setdefault(key.lower(), []).append(value)
    millis = _longest(values.get("retry-after-ms", []), _number)
    if millis is not None:
        seconds = _plausible(millis / 1000.0)
        if seconds is not None:
            return seconds
    current = now or datetime.now(UTC)
    hint = _longest(values.get("retry-after", []), lambda raw: _seconds_or_date(raw, current))
    if hint is not None:
        return hint
    # OpenRouter's own 429s: X-RateLimit-Reset, the moment the window resets (ms epoch)
    return _longest(values.get("x-ratelimit-reset", []), lambda raw: _reset_in(raw, current))


def _reset_in(raw: str, now: datetime) -> float | None:
    """Seconds until an ``X-RateLimit-Reset`` epoch (milliseconds; seconds if it is small)."""
    epoch = _number(raw)
    if epoch is None:
        return None
    seconds = epoch / 1000.0 if epoch > 1e11 else epoch
    return seconds - now.timestamp()


#: Delay-seconds, with OpenRouter's fractional form allowed; no sign, exponent, ``nan`` or
#: ``1_000`` (which ``float()`` would all accept). ASCII digits only.
_DELAY = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?", re.ASCII)


def _longest(raws: list[str], parse: Callable[[str], float | None]) -> float | None:
    """The largest plausible hint among header values (a repeated header arrives joined)."""
    found: list[float] = []
    for raw in raws:
        whole = _plausible(parse(raw))
        if whole is not None:
            found.append(whole)
            continue
        parts = (_plausible(parse(part)) for part in raw.split(","))
        found.extend(p for p in parts if p is not None)
    return max(found, default=None)


def _seconds_or_date(raw: str, now: datetime) -> float | None:
    seconds = _number(raw)
    if seconds is not None:
        return seconds
    text = raw.strip()
    if not text or len(text) > 64:
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - now).total_seconds()


def _number(raw: str) -> float | None:
    text = raw.strip()
    return float(text) if _DELAY.fullmatch(text) else None


def _plausible(seconds: float | None) -> float | None:
    if seconds is None or not 0 < seconds <= IMPLAUSIBLE_RETRY_AFTER_S:
        return None  # NaN fails the comparison too
    return seconds


@dataclass(frozen=True, slots=True)
class WaitPlan:
    """What the Backoff state should do next.

    ``delay_s`` is ``None`` when it should not wait at all but give up on the current model
    (``reason`` says why: ``retries_exhausted`` or ``retry_after_too_long``).
    """

    delay_s: float | None
    source: Literal["schedule", "retry_after", "none"]
    reason: str

    @property
    def exhausted(self) -> bool:
        return self.delay_s is None


def plan_wait(
    retry_number: int,
    policy: RetryPolicy,
    retry_after_s: float | None,
    rng: random.Random,
) -> WaitPlan:
    """Decide the wait before retry ``retry_number`` (1 = the first retry of this model).

    Args:
        retry_number: which retry is about to be made.
        policy: the workflow's retry policy.
        retry_after_s: the server's parsed hint (see :func:`parse_retry_after`), if any.
        rng: the injected random source used for full jitter.
    """
    if retry_number > policy.max_retries:
        return WaitPlan(None, "none", "retries_exhausted")
    if policy.respect_retry_after and retry_after_s is not None and retry_after_s > 0:
        if retry_after_s > policy.max_delay_s:
            return WaitPlan(None, "none", "retry_after_too_long")
        return WaitPlan(retry_after_s, "retry_after", "server asked to wait")
    delay = computed_delay(retry_number, policy)
    if policy.jitter == "full":
        delay = rng.uniform(0.0, delay)
    return WaitPlan(delay, "schedule", "backoff schedule")
