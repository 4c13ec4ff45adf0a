"""Backoff as pure functions: the schedule and the decision between it and the server's hint.

Nothing here sleeps or reads a clock of its own: the Backoff state calls :func:`plan_wait` with
the retry number, the policy, the parsed hint and an injected ``random.Random``, and sleeps what
it is told. That keeps every wait testable to the millisecond.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from .client.retry_after import IMPLAUSIBLE_RETRY_AFTER_S, parse_retry_after
from .definition import RetryPolicy

__all__ = [
    "IMPLAUSIBLE_RETRY_AFTER_S",
    "WaitPlan",
    "computed_delay",
    "parse_retry_after",
    "plan_wait",
]


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


@dataclass(frozen=True, slots=True)
class WaitPlan:
    """What the Backoff state should do next.

    ``delay_s`` is ``None`` when it should not wait at all but give up on the current model
    (``reason`` says why: ``retries_exhausted`` or ``retry_after_too_long``).
    """

    delay_s: float | None
    source: Literal["schedule", "retry_after", "none"]
    reason: str


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
