"""The generic cell rate algorithm (GCRA), as a pure function over plain numbers.

Each rate bucket keeps a *theoretical arrival time* (``tat``): the moment its schedule is next
free. A request arriving at ``now`` may start at ``tat - tau`` (``tau``: how far ahead of the
schedule a burst may run); starting it moves ``tat`` on by one emission interval (``60/rpm``).
Here a request does not ask "may I go now?" and poll: it *takes* the next slot at once and
learns how long to wait for it, so N waiting requests cost N updates, not N × polls, and the
spacing is exact. Tokens (``tpm``) run a second schedule in which a request of ``n`` tokens
occupies ``n · 60/tpm`` seconds: a request starts once the tokens before it have drained.

Pure: the caller supplies the clock (trio's for buckets kept in memory, the database's for
shared ones) and stores the new states, atomically, where it keeps them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BucketRule:
    """The limits of one bucket, in seconds."""

    key: str
    interval_s: float | None = None
    """``60 / rpm`` (``None``: no request rate)."""
    tau_s: float = 0.0
    """``(burst - 1) · interval_s``: how many requests may go back to back, as time."""
    token_interval_s: float | None = None
    """``60 / tpm`` (``None``: no token rate)."""


@dataclass(frozen=True, slots=True)
class BucketState:
    """A bucket's schedule: when its request and token schedules are next free, and until
    when a server's 429 paused it."""

    tat: float = 0.0
    tat_tokens: float = 0.0
    paused_until: float = 0.0


@dataclass(frozen=True, slots=True)
class Slot:
    """What taking a slot gives: when the request may start, which bucket made it wait (the
    one with the latest start), and every bucket's new state, in the order given."""

    start: float
    blocking: str | None
    states: tuple[BucketState, ...]


def take(buckets: Sequence[tuple[BucketRule, BucketState]], now: float, tokens: int = 0) -> Slot:
    """Take the next slot of every bucket at once (a model may match several): the request
    starts when all of them allow it, and each schedule moves on from that start."""
    start, blocking = now, None
    for rule, state in buckets:
        at = state.paused_until
        if rule.interval_s is not None:
            at = max(at, state.tat - rule.tau_s)
        if rule.token_interval_s is not None:
            at = max(at, state.tat_tokens)
        if at > start:
            start, blocking = at, rule.key
    states = []
    for rule, state in buckets:
        tat, tat_tokens = state.tat, state.tat_tokens
        if rule.interval_s is not None:
            tat = max(tat, start) + rule.interval_s
        if rule.token_interval_s is not None:
            tat_tokens = max(tat_tokens, start) + tokens * rule.token_interval_s
        states.append(BucketState(tat, tat_tokens, state.paused_until))
    return Slot(start, blocking, tuple(states))


def correct(rule: BucketRule, state: BucketState, delta_tokens: int) -> BucketState:
    """Move the token schedule by the difference between real and estimated tokens."""
    if rule.token_interval_s is None or delta_tokens == 0:
        return state
    return BucketState(
        state.tat, state.tat_tokens + delta_tokens * rule.token_interval_s, state.paused_until
    )


def pause(state: BucketState, until: float) -> BucketState:
    """No request of the bucket before ``until`` (a later pause is kept)."""
    return BucketState(state.tat, state.tat_tokens, max(state.paused_until, until))
