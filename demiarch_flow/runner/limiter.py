"""The process's side of rate limits and budgets: where buckets and reservations are kept
(the database's ledger, or this process's), the ``concurrency`` permits per bucket, and the
writing of an attempt's books (:class:`~.state.Settlement`).

Apart from :mod:`.limits` (which admits an attempt and decides its books) so that
:class:`~.context.RunEnv` can hold a :class:`Limiter` without importing the admission code
that reads a ``RunEnv``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import trio

from ..definition.limits import RateBucket
from ..gcra import BucketRule, make_rule
from ..store.limits import Ledger, MemoryLedger
from .state import Settlement


def rule_of(bucket: RateBucket) -> BucketRule:
    """The GCRA rule of a bucket of the format."""
    return make_rule(bucket.key, bucket.rpm, bucket.burst, bucket.tpm)


class Limiter:
    """The process's side of limits: where buckets and reservations are kept, and the
    ``concurrency`` permits per bucket.

    Args:
        shared: the database's ledger (every process on it shares budgets and ``shared``
            buckets); ``None`` keeps everything in this process on trio's clock (``simulate``
            and tests).
    """

    def __init__(self, shared: Ledger | None = None) -> None:
        self.local = MemoryLedger()
        self.shared: Ledger = shared if shared is not None else self.local
        self._permits: dict[str, trio.Semaphore] = {}
        self._stamping = trio.Lock()
        """One stamp at a time in this process: a model paced by a shared and a process
        bucket is counted in both or in neither."""

    def permits(self, bucket: RateBucket) -> trio.Semaphore | None:
        if bucket.concurrency is None:
            return None
        sem = self._permits.get(bucket.key)
        if sem is None:
            sem = self._permits[bucket.key] = trio.Semaphore(bucket.concurrency)
        return sem

    def split(self, buckets: Sequence[RateBucket]) -> tuple[list[BucketRule], list[BucketRule]]:
        """(shared rules, in-process rules) of ``buckets``."""
        shared = [rule_of(b) for b in buckets if b.scope == "shared" and (b.rpm or b.tpm)]
        local = [rule_of(b) for b in buckets if b.scope == "process" and (b.rpm or b.tpm)]
        if self.shared is self.local:
            return [], shared + local
        return shared, local

    async def take(
        self, buckets: Sequence[RateBucket], tokens: int, max_wait_s: float = math.inf
    ) -> tuple[float, str | None]:
        """The wait for the next slot of every bucket and the bucket that made it, taken; a
        wait over ``max_wait_s`` is returned as soon as one ledger answers it, and that
        ledger's slot is not taken (a slot the other ledger gave stays used)."""
        shared, local = self.split(buckets)
        wait, blocking = 0.0, None
        for ledger, rules in ((self.shared, shared), (self.local, local)):
            if rules:
                w, b = await ledger.take(rules, tokens, max_wait_s)
                if w > max_wait_s:
                    return w, b
                if w > wait:
                    wait, blocking = w, b
        return wait, blocking

    async def stamp(self, buckets: Sequence[RateBucket]) -> tuple[float, str | None]:
        """Count a request sent now in every bucket's record of sends, or return the seconds
        until it may be and the bucket, counting nothing (see :meth:`Ledger.stamp`)."""
        shared, local = self.split(buckets)
        async with self._stamping:
            if shared and local:
                # the process's record is asked first without counting: the shared stamp
                # cannot be taken back if it refused after
                wait, blocking = self.local.stamp_wait(local)
                if wait > 0:
                    return wait, blocking
            if shared:
                wait, blocking = await self.shared.stamp(shared)
                if wait > 0:
                    return wait, blocking
            if local:
                # nothing else stamps meanwhile (the lock), and time only moved on
                return await self.local.stamp(local)
        return 0.0, None

    async def apply(self, settlement: Settlement) -> None:
        """Write an attempt's books (:meth:`Gate.settlement`)."""
        s = settlement
        if s.reservation_id is not None:
            await self.shared.settle(
                s.reservation_id, s.amount_usd, s.expires_at, unbooked=s.unbooked
            )
        if not s.buckets:
            return
        if s.delta_tokens is not None:
            await self.correct(s.buckets, s.delta_tokens)
        if s.pause_s is not None:
            await self.pause(s.buckets, s.pause_s)

    async def correct(self, buckets: Sequence[RateBucket], delta_tokens: int) -> None:
        shared, local = self.split(buckets)
        for ledger, rules in ((self.shared, shared), (self.local, local)):
            rules = [r for r in rules if r.token_interval_s is not None]
            if rules:
                await ledger.correct(rules, delta_tokens)

    async def pause(self, buckets: Sequence[RateBucket], seconds: float) -> None:
        shared, local = self.split(buckets)
        for ledger, rules in ((self.shared, shared), (self.local, local)):
            if rules:
                await ledger.pause(rules, seconds)
