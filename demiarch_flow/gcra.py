"""The generic cell rate algorithm (GCRA), as pure functions over plain numbers.

Each rate bucket keeps a *theoretical arrival time* (``tat``): the moment its schedule is next
free. A request arriving at ``now`` may start at ``tat - tau`` (``tau``: how far ahead of the
schedule a burst may run); starting it moves ``tat`` on by one emission interval. Here a
request does not ask "may I go now?" and poll: it *takes* the next slot at once and learns how
long to wait for it (:func:`take`), so N waiting requests cost N updates, not N × polls.
Tokens (``tpm``) run a second schedule in which a request of ``n`` tokens occupies
``n · 60/tpm`` seconds: a request starts once the tokens before it have drained.

A slot says when a request *may* start; the provider counts when it *arrives*. Between the two
lie the journal row of the wait, the budget reservation and the attempt's record, whose
durations vary (another process may hold the database). Slots ``60/rpm`` apart leave no slack:
``rpm + 1`` consecutive slots span exactly 60 s, so if the first of them leaves its slot a
little later than the last one does, all ``rpm + 1`` land in one 60 s window. Hence a bucket
keeps a second record, of the moments requests were let go (:func:`stamp`): the same GCRA,
applied at the instant of sending, which answers "not yet, wait w" instead of handing out a
future slot. A request stamps right before it is sent; its slot only spared it the polling.

Burst is bounded the same way: GCRA with a tolerance of ``b - 1`` intervals lets
``60/interval + b - 1`` requests into a sliding 60 s, so :func:`make_rule` spaces a bucket with
``burst: b`` ``60 / (rpm - b + 1)`` apart (``60/rpm`` when ``b`` is 1): ``b`` may still go back
to back, and no 60 s ever holds more than ``rpm``.

Pure: the caller supplies the clock (trio's for buckets kept in memory, the database's for
shared ones) and stores the new states, atomically, where it keeps them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Clock rounding forgiven when a stamp is checked (far below anything a provider measures):
#: a request woken at its slot by a sleep computed as ``slot - now`` may be an ulp early.
EPSILON_S = 1e-9


@dataclass(frozen=True, slots=True)
class BucketRule:
    """The limits of one bucket, in seconds."""

    key: str
    interval_s: float | None = None
    """The emission interval, ``60 / (rpm - burst + 1)`` (``None``: no request rate)."""
    tau_s: float = 0.0
    """``(burst - 1) · interval_s``: how many requests may go back to back, as time."""
    token_interval_s: float | None = None
    """``60 / tpm`` (``None``: no token rate)."""


def make_rule(
    key: str, rpm: float | None = None, burst: int = 1, tpm: float | None = None
) -> BucketRule:
    """The rule of a bucket allowing at most ``rpm`` requests in any sliding 60 s, ``burst``
    of them back to back, and ``tpm`` tokens a minute.

    ``burst`` is held to ``rpm`` (rounded down, at least 1): more than ``rpm`` back to back
    would break the window by itself.
    """
    interval = tau = None
    if rpm:
        b = max(1, min(burst, math.floor(rpm)))
        interval = 60.0 / (rpm - b + 1)
        tau = (b - 1) * interval
    return BucketRule(
        key=key,
        interval_s=interval,
        tau_s=tau or 0.0,
        token_interval_s=60.0 / tpm if tpm else None,
    )


@dataclass(frozen=True, slots=True)
class BucketState:
    """A bucket's schedule: when its request and token schedules are next free, and until
    when a server's 429 paused it. (A bucket's record of sends uses ``tat`` alone.)"""

    tat: float = 0.0
    tat_tokens: float = 0.0
    paused_until: float = 0.0


@dataclass(frozen=True, slots=True)
class Slot:
    """What taking a slot (or stamping a send) gives: when the request may start, which
    bucket made it wait (the one with the latest start), and every bucket's new state, in the
    order given."""

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


def stamp(buckets: Sequence[tuple[BucketRule, BucketState]], now: float) -> Slot:
    """Let a request go at ``now`` if every bucket's record of sends allows it.

    Returns the slot: ``start <= now`` (within :data:`EPSILON_S`) means the request goes now
    and ``states`` are the records with it counted; otherwise ``start`` is when to ask again
    and ``states`` are unchanged (store nothing). A bucket without ``rpm`` records nothing.
    """
    start, blocking = now, None
    for rule, state in buckets:
        at = state.tat - rule.tau_s
        if rule.interval_s is not None and at - now > EPSILON_S and at > start:
            start, blocking = at, rule.key
    if blocking is not None:
        return Slot(start, blocking, tuple(state for _, state in buckets))
    counted = tuple(
        BucketState(max(state.tat, now) + rule.interval_s, state.tat_tokens, state.paused_until)
        if rule.interval_s is not None
        else state
        for rule, state in buckets
    )
    return Slot(now, None, counted)


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
