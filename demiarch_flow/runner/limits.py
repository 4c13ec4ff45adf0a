"""Spend and rate control around each Request attempt: :func:`admit` before, :meth:`Gate.settle`
after.

:func:`admit` runs, in order: the per-process ``concurrency`` permits of the model's buckets;
the next slot of every rate bucket the model matches (GCRA, :mod:`demiarch_flow.gcra`) — when
that slot is not due yet, the wait is journalled as a ``run_events`` row with event
``throttled`` (Request → Request, its ``wait_s``, source ``throttle`` and the bucket), made
durable, and slept here on trio's clock (so ``MockClock`` drives it, and a throttle wait is
neither an attempt nor a retry); then the budget reservation of the attempt's worst case; then
the send is stamped in each bucket's record of sends (:meth:`Gate.stamp`), the last thing
before the request leaves, so that no sliding 60 s holds more than ``rpm`` of them however long
the steps in between took (a stamp may wait, at most one emission interval, for a request of
the bucket that left late). A reservation that does not fit gives back a step with class
``budget_exceeded`` instead: fatal, or the next model when ``fallback.when`` lists it — and no
request is sent.

A slot further away than :data:`LONGEST_QUEUE_S` (or ``retry.max_delay_s`` if larger) is not
taken and not slept: the attempt is refused with class ``rate_limited`` (its wait as the hint),
which ``retry.when`` and Backoff treat as a server's Retry-After that long — the model is given
up, and Fallback moves on when ``fallback.when`` lists ``retries_exhausted`` — or, without
``rate_limited`` in ``retry.when``, ``fallback.when`` decides as for a budget. Why not
``max_delay_s`` alone: a throttle wait is a queue, not a server's refusal — ``batch
--concurrency 100`` under ``rpm: 60`` rightly queues its last run 100 s — while a wait of hours
is a schedule gone wrong (a rule fixed since; a bucket's rows are keyed by their rule now).

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
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

import trio

from ..client.openrouter import Attempt
from ..definition import Workflow
from ..definition.limits import RateBucket
from ..errors import BudgetExceeded, ErrorClass, ProviderError
from ..pricing import Cost
from ..store.limits import Reservation
from .budget import budget_windows, estimate_tokens, worst_case_usd
from .context import RunEnv
from .records import FlowRecord, WaitSource
from .state import AttemptInfo, ErrorInfo, RunState, Settlement, Step, Wait

#: How long past its attempt's timeout a reservation outlives a process that died.
RESERVATION_GRACE = timedelta(seconds=60)
#: How long the worst case of an attempt that may have been billed, with no ``llm_usage`` row,
#: stays counted: longer than the longest budget window (a month).
UNBOOKED_KEPT = timedelta(days=32)
#: The longest throttle wait a run queues for (unless ``retry.max_delay_s`` is longer).
LONGEST_QUEUE_S = 3600.0
#: Classes after which the provider may have billed (the answer was lost, not refused).
_MAYBE_BILLED = frozenset({ErrorClass.TIMEOUT, ErrorClass.NETWORK_ERROR})


@dataclass
class Gate:
    """An admitted attempt: its run state, the permits it holds and the reservation to
    settle."""

    state: RunState
    env: RunEnv
    wf: Workflow
    model: str
    buckets: tuple[RateBucket, ...] = ()
    tokens: int = 0
    reservation: Reservation | None = None
    held: list[trio.Semaphore] = field(default_factory=list)
    stamped: bool = False

    def release(self) -> None:
        """Give back the ``concurrency`` permits (also when the attempt was cancelled)."""
        while self.held:
            self.held.pop().release()

    async def stamp(self) -> None:
        """Count the request as sent in each rate bucket's record of sends; call it right
        before the request leaves (once: a second call does nothing).

        A stamp that must wait does so here — each time at most one emission interval, for
        a request of the bucket that left later than its slot — and says so to the listeners
        (it is not journalled: the journal row would itself delay the send).
        """
        if self.stamped or not self.buckets:
            return
        while True:
            wait, bucket = await self.env.limits.stamp(self.buckets)
            if wait <= 0:
                break
            note = FlowRecord(
                "wait", self.state.run_id, trio.current_time(), self.env.now(),
                model=self.model, attempt=self.state.attempt + 1, wait_s=wait,
                wait_source=WaitSource.THROTTLE,
                message=f"rate bucket {bucket!r}: waiting {wait:.3f} s to send (a request of"
                " the bucket left late, and no 60 s may hold more than its rpm)",
            )  # fmt: skip
            for listener in self.env.listeners:
                await listener.on_record(note)
            await trio.sleep(wait)
        self.stamped = True

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

    async def settle(
        self, result: Attempt, interrupted: Cost | None = None, *, booked: bool = False
    ) -> None:
        """Give the permits back and write the attempt's books now (:meth:`settlement`)."""
        self.release()
        await self.env.limits.apply(self.settlement(result, interrupted, booked=booked))

    def settlement(
        self, result: Attempt, interrupted: Cost | None = None, *, booked: bool = False
    ) -> Settlement:
        """What the attempt's books become: its cost replaces the reservation (released when
        nothing was billed), its real tokens correct the ``tpm`` schedules, and a 429 with a
        wait hint pauses every bucket of the model until then.

        Args:
            interrupted: what a stream that broke is booked at, so every ledger counts it as
                spend and none releases it as unbilled.
            booked: its ``llm_usage`` row, written before this, holds that figure (a ledger
                whose spend is ``llm_usage`` then holds no reservation for it).
        """
        err, done = result.error, result.completion
        now = self.env.now()
        expires = now + timedelta(seconds=self.wf.request.timeout_s) + RESERVATION_GRACE
        amount: Decimal | None = None
        unbooked = False
        if self.reservation is not None:
            cost = interrupted
            if done is not None:
                cost = self.env.prices.answer_cost(
                    done.model, done.prompt_tokens, done.completion_tokens, done.cost_usd,
                    self.model, prompt_estimate=self.tokens, text=done.content,
                )  # fmt: skip
            if cost is not None:
                amount = cost.usd
                if cost.source == "unknown":
                    # paid for, at a price nobody knows: the worst case stays counted for as
                    # long as a window it falls in lasts (never 0 USD)
                    amount, unbooked = self.reservation.amount_usd, True
                    expires = now + UNBOOKED_KEPT
            elif err is not None and err.error_class in _MAYBE_BILLED and not result.unsent:
                # may have been billed, and nothing will ever book it: keep the worst case
                # for as long as a window it falls in lasts
                amount, unbooked, expires = self.reservation.amount_usd, True, now + UNBOOKED_KEPT
        delta = None
        if done is not None and done.total_tokens is not None:
            delta = done.total_tokens - self.tokens
        pause_s = None
        if err is not None and err.error_class is ErrorClass.RATE_LIMITED and err.retry_after_s:
            pause_s = err.retry_after_s
        booked = booked and done is None and interrupted is not None and not unbooked
        return Settlement(
            self.reservation.id if self.reservation is not None else None,
            amount, expires, unbooked, booked, self.buckets, delta, pause_s,
        )  # fmt: skip


async def admit(state: RunState, env: RunEnv, wf: Workflow, *, stamp: bool = True) -> Step | Gate:
    """Take the model's rate slot, reserve the attempt's worst case and stamp the send.

    A slot that is not due yet is taken, and the wait for it is a step like any other: a
    ``throttled`` wait in place (``Step.stay``), journalled, slept and re-entered by the
    engine; the next attempt with the model (``RunState.slot_for``) does not take another.

    Args:
        stamp: stamp the send here (:meth:`Gate.stamp`); ``False`` leaves it to the caller,
            who then calls ``gate.stamp()`` right before the request leaves, after whatever
            it writes first (the closer the stamp to the send, the truer the rpm).

    Returns:
        The :class:`Gate` to settle after the attempt, or the step to emit instead of sending
        (``throttled``, a wait in place; ``budget_exceeded``; ``rate_limited`` for a slot
        further than ``retry.max_delay_s`` away — the class is the last error's of the step's
        state).
    """
    assert wf.limits is not None
    model = state.model
    taken = state.slot_for
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
        if state.slot_for is not None:
            gate.state = state = dataclasses.replace(state, slot_for=None)
        if buckets and taken != model:
            longest = max(wf.retry.max_delay_s, LONGEST_QUEUE_S)
            wait, blocking = await env.limits.take(buckets, tokens, longest)
            key = blocking or buckets[0].key
            if wait > longest:
                gate.release()
                return _refused(state, wf, _too_long(model, key, wait, longest))
            if wait > 0:
                gate.release()
                return _throttled(state, env, wait, key)
        if limits.budget.any:
            refused = await _reserve(gate, env, wf)
            if refused is not None:
                gate.release()
                return refused
        if stamp:
            await gate.stamp()
    except BaseException:
        gate.release()
        raise
    return gate


def _too_long(model: str, bucket: str, wait: float, longest: float) -> ProviderError:
    """The refusal of a slot further away than the workflow would wait for a server."""
    return ProviderError(
        ErrorClass.RATE_LIMITED,
        f"rate bucket {bucket!r} has no slot for {wait:.1f} s, over the longest throttle"
        f" wait ({longest:g} s); no request was sent",
        model=model, retry_after_s=wait,
    )  # fmt: skip


def _throttled(state: RunState, env: RunEnv, wait: float, bucket: str) -> Step:
    """The wait for a slot taken ``wait`` seconds ahead, as a step the engine journals and
    sleeps (the run is idle meanwhile: it holds no ``concurrency`` permit)."""
    note = FlowRecord(
        "wait", state.run_id, trio.current_time(), env.now(), model=state.model,
        attempt=state.attempt + 1, wait_s=wait, wait_source=WaitSource.THROTTLE,
        message=f"rate bucket {bucket!r}: waiting {wait:.3f} s for a slot",
    )  # fmt: skip
    waiting = dataclasses.replace(state, slot_for=state.model)
    wait_for = Wait(wait, WaitSource.THROTTLE, bucket)
    return Step("throttled", waiting, (note,), wait=wait_for, stay=True)


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


def _refused(state: RunState, wf: Workflow, err: BudgetExceeded | ProviderError) -> Step:
    """The step of an attempt refused before sending: a budget's, through ``fallback.when``;
    a rate bucket's, through ``retry.when`` first (Backoff then weighs its wait as a
    Retry-After), as the same class from a server would go."""
    cls = err.error_class
    error = dataclasses.replace(ErrorInfo.of(err), model=err.model or None)
    skipped = dataclasses.replace(
        state.with_error(error),
        attempts=(
            *state.attempts,
            AttemptInfo(state.total_attempts, err.model, "skipped", cls, None, None, 0),
        ),
    )
    if cls is ErrorClass.RATE_LIMITED and cls in wf.retry.when:
        return Step("retryable", skipped)
    if cls in wf.fallback.when:
        return Step("model_failed", skipped)
    return Step("fatal", skipped.failed(error))


def _new_id() -> str:
    import uuid

    return str(uuid.uuid4())
