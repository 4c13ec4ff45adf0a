"""One paid attempt, from "may we ask?" to its books: :func:`open_attempt`."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass

import trio

from ..._frozen import quick
from ...client import Attempt, Completion
from ...definition import Workflow
from ...errors import ErrorClass, FlowError, ProviderError, RunTakenOver
from ...pricing import Cost
from ...store.base import AttemptRow
from ..context import RunEnv
from ..limits import Gate, admit
from ..records import FlowRecord
from ..state import AttemptInfo, ErrorInfo, RunState, Settlement, Step, evolve
from ._send import send
from .books import book_interrupted, interrupted_cost

log = logging.getLogger("demiarch_flow")

_NO_ANSWER = Completion("", "", None, None, None, None, None, None, None)


@quick
@dataclass(frozen=True)
class AttemptResult:
    """What one attempt did, as data: the request handler turns it into an event.

    Either nothing was sent — ``not_sent`` is the step to take instead (a cooling model is
    skipped, a budget refuses, the attempt could not be recorded) — or the request went out
    and ``sent`` is what came back, ``state`` the run with the attempt counted and ``record``
    the ``attempt`` record to report.
    """

    state: RunState
    not_sent: Step | None = None
    sent: Attempt | None = None
    record: FlowRecord | None = None
    settlement: Settlement | None = None
    """The books of an attempt that brought an answer, not written yet: the first commit after
    an answer arrives must carry the answer, so a process death in between cannot lose it
    (and a resume buy it again). The step hands them to the engine, which writes them once
    the move that carries the answer is durable (a death before: the reservation stays held
    at the worst case until the run ends — counted too much, never too little)."""


async def open_attempt(state: RunState, env: RunEnv, wf: Workflow) -> AttemptResult:
    """Admit, record, send and settle one attempt with ``state``'s current model.

    In order: the shared cooldown (a cooling model is not asked); the rate slot, concurrency
    permit and budget reservation (:func:`~demiarch_flow.runner.limits.admit`); the attempt
    recorded durably under a number the store allocates, only while this process owns the run
    (:class:`~demiarch_flow.errors.RunTakenOver` otherwise: a process that lost its run sends
    nothing); the request; then, shielded (the attempt may have cost money, so its books are
    kept whatever happens now), the reservation settled, the attempt row completed and an
    interrupted stream booked. The gate's permits and reservation are given back in exactly
    one of three places: ``settle`` after an answer or failure, ``abandoned`` on a
    cancellation while the request was out, ``release`` when nothing was sent.
    """
    model = state.model
    if wf.cooldown is not None:
        skipped = await _skip_cooling(state, env, model)
        if skipped is not None:
            return AttemptResult(skipped.state, not_sent=skipped)
    gate: Gate | None = None
    if wf.limits is not None:
        admitted = await admit(state, env, wf, stamp=False)
        if isinstance(admitted, Step) and admitted.stay:  # a rate slot to wait for
            return AttemptResult(admitted.state, not_sent=admitted)
        if isinstance(admitted, Step):  # refused (a budget, a rate slot too far): nothing sent
            last = admitted.state.last_error
            why = last.error_class if last is not None else ErrorClass.BUDGET_EXCEEDED
            await env.store.attempt_unsent(state.run_id, why, env.now())
            return AttemptResult(admitted.state, not_sent=admitted)
        gate, state = admitted, admitted.state
    started_at = env.now()
    try:
        number = await env.store.attempt_started(
            AttemptRow(state.run_id, state.total_attempts + 1, model, started_at), env.owner
        )
    except RunTakenOver:
        if gate is not None:
            gate.release()
        raise
    except FlowError as exc:  # nothing was sent: the run fails before it could cost anything
        if gate is not None:
            gate.release()
        return AttemptResult(state, not_sent=Step("fatal", state.failed(ErrorInfo.of(exc))))
    except BaseException:  # cancelled before the request left: give the permits back
        if gate is not None:
            gate.release()
        raise
    row = AttemptRow(state.run_id, number, model, started_at)
    payload = env.client.build_payload(
        model, state.request_messages, temperature=wf.request.temperature,
        max_tokens=wf.request.max_tokens,
    )  # fmt: skip
    if gate is not None:
        # Counted as sent in each rpm bucket the moment before it leaves (after the attempt's
        # own commit), so no 60 s at the provider holds more than the rule.
        try:
            await gate.stamp()
        except BaseException as exc:  # nothing has left: give the permits back
            gate.release()
            await _never_sent(env, row, exc)
            raise
    try:
        result = await send(state, env, wf, payload, row)
    except trio.Cancelled:
        if gate is not None:
            with trio.CancelScope(shield=True):
                try:
                    await gate.abandoned()
                except FlowError as exc:  # the cancellation goes on; the budget may undercount
                    log.warning("could not keep the cancelled attempt's budget: %s", exc)
        raise
    except BaseException:
        if gate is not None:
            gate.release()
        raise
    with trio.CancelScope(shield=True):
        # A few short writes; Ctrl-C goes on once they are done.
        settlement = await _settle(state, env, gate, row, result)
    return _counted(state, env, row, result, settlement)


async def _settle(
    state: RunState, env: RunEnv, gate: Gate | None, row: AttemptRow, result: Attempt
) -> Settlement | None:
    """Complete the attempt's row and its books; an answer's books are returned instead, for
    the engine to write once the answer is durable (see :class:`AttemptResult`)."""
    err, partial = result.error, result.partial
    cost: Cost | None = None
    if partial is None and err is not None and result.streamed and result.generation_id:
        # a stream that broke before its first token was still a generation: its prompt
        # may have been billed (what it cost is looked up; else the prompt's estimate)
        partial = Completion(
            "", row.model, result.generation_id, None, None, None, None, None, None
        )
    if partial is not None and err is not None:
        partial, cost = await interrupted_cost(state, env, partial)
    await env.store.attempt_ended(
        evolve(
            row,
            ended_at=env.now(),
            status=result.status,
            error_class=err.error_class if err else None,
            generation_id=(result.completion or partial or _NO_ANSWER).generation_id,
            latency_ms=result.latency_ms,
            partial_text=partial.content if partial is not None and partial.content else None,
            finish_reason=result.completion.finish_reason if result.completion else None,
            response_model=(result.completion or partial or _NO_ANSWER).model or None,
            error_message=err.detail if err else None,
        )
    )
    booked = False
    if partial is not None and cost is not None:
        # the row first: a crash before the ledger's write leaves it counted twice, not never
        booked = await book_interrupted(state, env, row, partial, cost)
    if gate is None:
        return None
    if result.completion is not None:
        gate.release()
        return gate.settlement(result)
    try:
        await gate.settle(result, interrupted=cost, booked=booked)
    except FlowError as exc:  # what the attempt did matters more than the books
        log.warning("could not settle the attempt's budget reservation: %s", exc)
    return None


async def _never_sent(env: RunEnv, row: AttemptRow, exc: BaseException) -> None:
    """Close the row of an attempt stopped before its request left (Ctrl-C in a throttle
    wait), so that a resume does not take it for a request that may have been billed."""
    why = ErrorClass.CANCELLED if isinstance(exc, trio.Cancelled) else ErrorClass.INTERNAL
    with trio.CancelScope(shield=True), contextlib.suppress(FlowError):
        await env.store.attempt_ended(
            dataclasses.replace(row, ended_at=env.now(), error_class=why, error_message="not sent")
        )


def _counted(
    state: RunState,
    env: RunEnv,
    row: AttemptRow,
    result: Attempt,
    settlement: Settlement | None = None,
) -> AttemptResult:
    """The run with the attempt counted (and its answer, if it brought one), its record and
    the books ``settlement`` to hand on."""
    err, partial = result.error, result.partial
    info = AttemptInfo(
        number=row.number,
        model=row.model,
        outcome="ok" if err is None else "error",
        error_class=err.error_class if err else None,
        status=result.status,
        wait_s=None,
        latency_ms=result.latency_ms,
        generation_id=(result.completion or partial or _NO_ANSWER).generation_id
        or result.generation_id,
        partial_chars=len(partial.content) if partial is not None and err else None,
        first_token_ms=result.first_token_ms,
    )
    answer = result.completion or partial
    rec = FlowRecord(
        "attempt", state.run_id, trio.current_time(), env.now(), model=row.model,
        attempt=state.attempt + 1, status=result.status, error_class=info.error_class,
        latency_ms=result.latency_ms, message=err.detail if err else None,
        partial_chars=info.partial_chars, cause=result.cause,
        first_token_ms=result.first_token_ms, response_id=info.generation_id,
        response_model=(answer.model or None) if answer else None,
        finish_reason=answer.finish_reason if answer else None,
        input_tokens=answer.prompt_tokens if answer else None,
        output_tokens=answer.completion_tokens if answer else None,
        cost_usd=answer.cost_usd if answer else None, streamed=result.streamed,
        text=result.completion.content if result.completion else None,
    )  # fmt: skip
    tried = evolve(
        state,
        attempt=state.attempt + 1,
        total_attempts=row.number,
        attempts=(*state.attempts, info),
        completion=result.completion if err is None else state.completion,
    )
    return AttemptResult(tried, sent=result, record=rec, settlement=settlement)


async def _skip_cooling(state: RunState, env: RunEnv, model: str) -> Step | None:
    """A cooling model is not asked: Fallback (or, on the last model, Backoff waits it out).

    Returns the step, or ``None`` when the model may be asked.
    """
    left = env.cooldowns.remaining(model, trio.current_time())
    if left <= 0:
        return None
    err = ProviderError(
        ErrorClass.COOLING, f"{model} is cooling down for {left:.1f} s more (shared cooldown)",
        model=model, retry_after_s=left,
    )  # fmt: skip
    error = ErrorInfo.of(err)
    await env.store.attempt_unsent(state.run_id, ErrorClass.COOLING, env.now())
    known = dict(state.last_errors)
    skipped = dataclasses.replace(
        state,
        last_error=error,
        last_errors=state.last_errors if model in known else (*state.last_errors, (model, error)),
        attempts=(
            *state.attempts,
            AttemptInfo(state.total_attempts, model, "skipped", ErrorClass.COOLING, None, None, 0),
        ),
    )
    note = FlowRecord(
        "cooldown", state.run_id, trio.current_time(), env.now(), event="skipped", model=model,
        wait_s=left, error_class=ErrorClass.COOLING, message=err.detail,
    )  # fmt: skip
    if state.model_index + 1 < len(state.chain):
        return Step("model_failed", skipped, (note,))
    return Step("retryable", skipped, (note,))
