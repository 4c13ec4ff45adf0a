"""Spend and rate control around each Request attempt: :func:`admit` before, :meth:`Gate.settle`
after.

:func:`admit` runs, in order: the per-process ``concurrency`` permits of the model's buckets;
the next slot of every rate bucket the model matches (GCRA, :mod:`demiarch_flow.gcra`) — when
that slot is not due yet, the wait is journalled as a ``run_events`` row with event
``throttled`` (Request → Request, its ``wait_s``, source ``throttle`` and the bucket), made
durable, and slept here on trio's clock (so ``MockClock`` drives it, and a throttle wait is
neither an attempt nor a retry); then the budget reservation of the attempt's worst case. A
reservation that does not fit gives back a step with class ``budget_exceeded`` instead: fatal,
or the next model when ``fallback.when`` lists it — and no request is sent.

The slot comes before the reservation, so a run waiting for a slot holds no budget: reserving
first would hold a batch's worst cases through its throttle waits and refuse runs the budget
could still pay for (a refused run still used its slot; ``simulate --batch`` shows both).

Why the wait is slept inside the handler and not as a ``Step.wait``: the machine only knows the
workflow's own events, and a ``throttled`` self-transition is not in users' files; the journal
row is written through the same checkpoint path as every transition, with its own ``seq``.

Nothing of this runs for a workflow without ``limits`` (the handler does not call it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

import trio

from ..client.openrouter import Attempt
from ..definition import Workflow
from ..definition.limits import RateBucket
from ..errors import BudgetExceeded, ErrorClass
from ..gcra import BucketRule
from ..store.base import Checkpoint, JournalEntry
from ..store.limits import Ledger, MemoryLedger, Reservation
from .budget import budget_windows, estimate_tokens, worst_case_usd
from .records import FlowRecord, WaitSource
from .state import AttemptInfo, ErrorInfo, RunState, Step

if TYPE_CHECKING:
    from .context import RunEnv

#: How long past its attempt's timeout a reservation outlives a process that died.
RESERVATION_GRACE = timedelta(seconds=60)
#: How long the worst case of an attempt that may have been billed, with no ``llm_usage`` row,
#: stays counted: longer than the longest budget window (a month).
UNBOOKED_KEPT = timedelta(days=32)
#: Classes after which the provider may have billed (the answer was lost, not refused).
_MAYBE_BILLED = frozenset({ErrorClass.TIMEOUT, ErrorClass.NETWORK_ERROR})


def rule_of(bucket: RateBucket) -> BucketRule:
    """The GCRA rule of a bucket of the format."""
    interval = 60.0 / bucket.rpm if bucket.rpm else None
    return BucketRule(
        key=bucket.key,
        interval_s=interval,
        tau_s=(bucket.burst - 1) * interval if interval else 0.0,
        token_interval_s=60.0 / bucket.tpm if bucket.tpm else None,
    )


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

    async def take(self, buckets: Sequence[RateBucket], tokens: int) -> tuple[float, str | None]:
        shared, local = self.split(buckets)
        wait, blocking = 0.0, None
        for ledger, rules in ((self.shared, shared), (self.local, local)):
            if rules:
                w, b = await ledger.take(rules, tokens)
                if w > wait:
                    wait, blocking = w, b
        return wait, blocking

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


@dataclass
class Gate:
    """An admitted attempt: its run state (with any ``throttled`` row counted in ``seq``),
    the permits it holds and the reservation to settle."""

    state: RunState
    env: RunEnv
    wf: Workflow
    model: str
    buckets: tuple[RateBucket, ...] = ()
    tokens: int = 0
    reservation: Reservation | None = None
    held: list[trio.Semaphore] = field(default_factory=list)

    def release(self) -> None:
        """Give back the ``concurrency`` permits (also when the attempt was cancelled)."""
        while self.held:
            self.held.pop().release()

    async def abandoned(self) -> None:
        """The attempt was cancelled while its request was out (Ctrl-C, SIGTERM): it may
        have been billed — a blocking request in full, a stream for what was generated where
        the provider does not stop — and nothing books it now, so its worst case is kept like
        a timeout's. ``runs resume`` replaces it by the real cost if it finds the generation.
        Call it shielded."""
        self.release()
        if self.reservation is not None:
            expires = self.env.now() + UNBOOKED_KEPT
            await self.env.limits.shared.settle(
                self.reservation.id, self.reservation.amount_usd, expires, unbooked=True
            )

    async def settle(self, result: Attempt) -> None:
        """Book what the attempt really did: its cost replaces the reservation (released when
        nothing was billed), its real tokens correct the ``tpm`` schedules, and a 429 with a
        wait hint pauses every bucket of the model until then."""
        self.release()
        limiter = self.env.limits
        err, done = result.error, result.completion
        if self.reservation is not None:
            now = self.env.now()
            expires = now + timedelta(seconds=self.wf.request.timeout_s) + RESERVATION_GRACE
            amount: Decimal | None
            unbooked = False
            if done is not None:
                cost = self.env.prices.cost(
                    done.model, done.prompt_tokens, done.completion_tokens, done.cost_usd,
                    self.model,
                )  # fmt: skip
                amount = cost.usd if cost.source != "unknown" else self.reservation.amount_usd
            elif err is not None and err.error_class in _MAYBE_BILLED and not result.unsent:
                # may have been billed, and nothing will ever book it: keep the worst case
                # for as long as a window it falls in lasts
                amount, unbooked, expires = self.reservation.amount_usd, True, now + UNBOOKED_KEPT
            else:
                amount = None
            await limiter.shared.settle(self.reservation.id, amount, expires, unbooked=unbooked)
        if not self.buckets:
            return
        if done is not None and done.total_tokens is not None:
            await limiter.correct(self.buckets, done.total_tokens - self.tokens)
        if err is not None and err.error_class is ErrorClass.RATE_LIMITED and err.retry_after_s:
            await limiter.pause(self.buckets, err.retry_after_s)


async def admit(state: RunState, env: RunEnv, wf: Workflow) -> Step | Gate:
    """Wait for the model's rate slot and reserve the attempt's worst case.

    Returns:
        The :class:`Gate` to settle after the attempt, or the step to emit instead of sending
        (``budget_exceeded``).
    """
    assert wf.limits is not None
    model = state.model
    limits = wf.limits
    buckets = limits.buckets_for(model)
    tokens = estimate_tokens(state.messages)
    gate = Gate(state, env, wf, model, buckets, tokens)
    for bucket in sorted(buckets, key=lambda b: b.key):
        sem = env.limits.permits(bucket)
        if sem is not None:
            await sem.acquire()
            gate.held.append(sem)
    try:
        if buckets:
            wait, blocking = await env.limits.take(buckets, tokens)
            if wait > 0:
                gate.state = await _throttle(gate.state, env, wait, blocking or buckets[0].key)
        if limits.budget.any:
            refused = await _reserve(gate, env, wf)
            if refused is not None:
                gate.release()
                return refused
    except BaseException:
        gate.release()
        raise
    return gate


async def _throttle(state: RunState, env: RunEnv, wait: float, bucket: str) -> RunState:
    """Journal the throttle wait (durably: the run is about to be idle), then sleep it."""
    at = env.now()
    after = dataclasses.replace(state, seq=state.seq + 1)
    entry = JournalEntry(
        run_id=state.run_id, seq=after.seq, from_state=state.state, event="throttled",
        to_state=state.state, model=state.model, attempt=state.attempt + 1, error_class=None,
        wait_s=wait, at=at, wait_source=WaitSource.THROTTLE, bucket=bucket,
    )  # fmt: skip
    await env.store.checkpoint(
        Checkpoint(state.run_id, state.state, state.model, after, (entry,), env.owner),
        durable=True,
    )
    note = FlowRecord(
        "wait", state.run_id, trio.current_time(), at, model=state.model,
        attempt=state.attempt + 1, wait_s=wait, wait_source=WaitSource.THROTTLE,
        message=f"rate bucket {bucket!r}: waiting {wait:.3f} s for a slot",
    )  # fmt: skip
    for listener in env.listeners:
        await listener.on_record(note)
    await trio.sleep(wait)
    return after


async def _reserve(gate: Gate, env: RunEnv, wf: Workflow) -> Step | None:
    """Reserve the worst case of the attempt; the refusing step if it does not fit."""
    assert wf.limits is not None
    state, model = gate.state, gate.model
    estimate = worst_case_usd(env.prices, model, gate.tokens, wf.request.max_tokens)
    now = env.now()
    if estimate is None:
        err = BudgetExceeded(
            f"{model}: no price (or largest completion) is known, so the budget cannot bound"
            " what an attempt costs; run `demiarch-flow models sync` or set request.max_tokens",
            window="unknown", model=model,
        )  # fmt: skip
        return _refused(state, wf, err)
    reservation = Reservation(
        id=_new_id(), run_id=state.run_id, attempt=state.total_attempts + 1, model=model,
        amount_usd=estimate, at=now,
        expires_at=now + timedelta(seconds=wf.request.timeout_s) + RESERVATION_GRACE,
    )  # fmt: skip
    windows = budget_windows(wf.limits.budget, now)
    use = await env.limits.shared.reserve(reservation, windows)
    if use is None:
        gate.reservation = reservation
        return None
    err = BudgetExceeded(
        f"{model}: the {use.window} budget would be exceeded — spent {use.spent_usd:f} USD,"
        f" reserved {use.reserved_usd:f} USD, limit {use.limit_usd:f} USD, this attempt's worst"
        f" case {estimate:f} USD; no request was sent",
        window=use.window, spent_usd=use.spent_usd, reserved_usd=use.reserved_usd,
        limit_usd=use.limit_usd, estimate_usd=estimate, model=model,
    )  # fmt: skip
    return _refused(state, wf, err)


def _refused(state: RunState, wf: Workflow, err: BudgetExceeded) -> Step:
    error = dataclasses.replace(ErrorInfo.of(err), model=err.model or None)
    skipped = dataclasses.replace(
        state.with_error(error),
        attempts=(
            *state.attempts,
            AttemptInfo(
                state.total_attempts, err.model, "skipped", ErrorClass.BUDGET_EXCEEDED,
                None, None, 0,
            ),
        ),
    )  # fmt: skip
    if ErrorClass.BUDGET_EXCEEDED in wf.fallback.when:
        return Step("model_failed", skipped)
    return Step("fatal", skipped.failed(error))


def _new_id() -> str:
    import uuid

    return str(uuid.uuid4())
