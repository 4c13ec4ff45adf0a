"""The state handlers: ``async (RunState, RunEnv, Workflow) -> Step``, one per action.

A handler reads the run state it is given and returns a :class:`~.state.Step`: the event for the
machine, the new state and the records to report. It never picks its own target (the machine
does, in the engine), never sleeps (a :class:`~.state.Wait` in the step asks the engine to, after
the checkpoint), and never signals another handler through a side channel: what Fallback needs
to know — why the model is being left — is the event that entered it (``RunState.entered_by``)
and the last error, both plain data. Handlers do the I/O of their state: LoadContext stores the
user's message, Request runs one paid attempt (:mod:`.attempt`), Persist costs the answer and
hands its reply to the engine, the only writer of moves, which stores it with the move.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..backoff import plan_wait
from ..definition import ALWAYS_FATAL, Workflow
from ..errors import ErrorClass, FlowError, RunTakenOver
from ..store.base import AttemptRow, NewRun, RunEnd
from .attempt import answer_cost, looked_up, open_attempt, reply_of
from .context import RunEnv, new_id
from .records import FlowRecord, RecordKind, WaitSource
from .state import ErrorInfo, Message, RunState, Step, Wait, evolve

log = logging.getLogger("demiarch_flow")

Handler = Callable[[RunState, RunEnv, Workflow], Awaitable[Step]]


def record(env: RunEnv, state: RunState, kind: RecordKind, **fields: Any) -> FlowRecord:
    """A record of ``kind`` about ``state``'s run, stamped with both clocks."""
    return FlowRecord(kind, state.run_id, trio.current_time(), env.now(), **fields)


def _title(message: str) -> str:
    """A new conversation's title: the first line of its first message, cut to 80 characters."""
    stripped = message.strip()
    return stripped.splitlines()[0][:80] if stripped else ""


async def load_context(state: RunState, env: RunEnv, wf: Workflow) -> Step:
    """Store the user's message at once and build the request messages.

    The user's message is the last of ``state.messages`` (put there by the engine from the
    request). Emits ``loaded``, or ``failed`` (unknown conversation, database error).
    """
    user = state.messages[-1].content
    at = env.now()
    # The next state's first request rides on this commit (one less before it is sent).
    onward = wf.state(state.state).target("loaded")
    first = None
    if onward is not None and wf.state(onward).action == "request":
        first = AttemptRow(state.run_id, state.total_attempts + 1, state.model, at)
    try:
        began = await env.store.begin_run(
            NewRun(
                run_id=state.run_id,
                workflow=wf.name,
                workflow_sha256=wf.sha256,
                conversation_id=state.conversation_id,
                create_with_id=new_id(),
                project_id=state.project_id,
                user_message_id=new_id(),
                content=user,
                context_messages=wf.request.context_messages,
                at=at,
                title=_title(user),
                state=state.state,
                state_json=state,
                definition=wf.text,
                owner=env.owner,
                resumed=state.resume_count > 0,
                first_attempt=first,
            )
        )
    except FlowError as exc:
        return Step("failed", state.failed(ErrorInfo.of(exc)))
    messages = [Message("system", wf.system)] if wf.system else []
    messages += [Message(m.role, m.content) for m in began.history]
    messages.append(Message("user", user))
    loaded = evolve(
        state,
        conversation_id=began.conversation_id,
        user_message_at=began.user_message_at,
        messages=tuple(messages),
    )
    return Step("loaded", loaded)


async def request(state: RunState, env: RunEnv, wf: Workflow) -> Step:
    """One attempt with the current model (:func:`~.attempt.open_attempt`), as an event.

    Emits ``succeeded``; ``retryable`` (class in ``retry.when``); ``model_failed`` (class in
    ``fallback.when``); or ``fatal`` (anything else, and ``auth``/``payment_required``
    always) — or the step the attempt took instead of sending (a cooling model, a budget).
    """
    result = await open_attempt(state, env, wf)
    if result.not_sent is not None:
        return result.not_sent
    sent, tried, model = result.sent, result.state, state.model
    assert sent is not None
    assert result.record is not None
    err = sent.error
    if err is None:
        if wf.cooldown is not None:
            env.cooldowns.success(model)
        # Its cost is looked up by Persist, once the answer is durable (a look-up takes
        # seconds, and a crash in them must not buy the answer again). ``tried`` holds it.
        return Step("succeeded", tried, (result.record,), settlement=result.settlement)
    error = ErrorInfo.of(err)
    tried = tried.with_error(error)
    cls = err.error_class
    if cls in ALWAYS_FATAL:
        return Step("fatal", tried.failed(error), (result.record,))
    if cls in wf.retry.when:
        records = [result.record]
        if wf.cooldown is not None:
            started = env.cooldowns.failure(
                model, trio.current_time(), wf.cooldown, err.retry_after_s
            )
            if started is not None:
                records.append(
                    record(
                        env,
                        state,
                        "cooldown",
                        event="started",
                        model=model,
                        wait_s=started,
                        error_class=cls,
                        message=f"{model} cools down for {started:g} s",
                    )
                )
        return Step("retryable", tried, tuple(records))
    if cls in wf.fallback.when:
        return Step("model_failed", tried, (result.record,))
    return Step("fatal", tried.failed(error), (result.record,))


async def backoff(state: RunState, env: RunEnv, wf: Workflow) -> Step:
    """Decide the wait before the next retry of the same model, or give the model up.

    Emits ``retry`` with a :class:`Wait` the engine sleeps (after checkpointing), or
    ``exhausted`` at once when the retries of this model are used up or the server asks for a
    wait longer than ``max_delay_s``.
    """
    last = state.last_error
    hint = last.retry_after_s if last else None
    plan = plan_wait(state.retries + 1, wf.retry, hint, env.rng)
    if plan.delay_s is None:
        return Step("exhausted", state)
    if last is not None and last.error_class is ErrorClass.COOLING:
        source = WaitSource.COOLDOWN
    elif plan.source == "retry_after":
        source = WaitSource.RETRY_AFTER
    else:
        source = WaitSource.BACKOFF
    wait = Wait(plan.delay_s, source)
    attempts = state.attempts
    if attempts:
        attempts = (*attempts[:-1], evolve(attempts[-1], wait_s=plan.delay_s))
    note = record(
        env, state, "wait", model=state.model, attempt=state.attempt + 1, wait_s=plan.delay_s,
        wait_source=source, error_class=last.error_class if last else None,
    )  # fmt: skip
    waited = evolve(state, retries=state.retries + 1, wait=wait, attempts=attempts)
    return Step("retry", waited, (note,), wait)


def leaving_reason(state: RunState) -> ErrorClass:
    """Why the current model is being left: Backoff gave it up, or its last error's class."""
    if state.entered_by == "exhausted" or state.last_error is None:
        return ErrorClass.RETRIES_EXHAUSTED
    return state.last_error.error_class


async def fallback(state: RunState, env: RunEnv, wf: Workflow) -> Step:
    """Move to the next model of the chain (retry counter reset), or give up.

    Emits ``next_model``, or ``exhausted`` when the chain is used up, the reason for leaving
    the model is not in ``fallback.when`` (a cooling model is always left), or the endpoint
    itself could not be reached (the next model is behind the same host).
    """
    reason = leaving_reason(state)
    last = state.last_error
    if reason is not ErrorClass.COOLING and reason not in wf.fallback.when:
        return Step("exhausted", state.failed(last or _all_failed(state)))
    if last is not None and last.unreachable:
        # the host, not the model, is down: every model of the chain is behind it
        return Step("exhausted", state.failed(last))
    if state.model_index + 1 >= len(state.chain):
        return Step("exhausted", state.failed(_all_failed(state)))
    current = state.model
    moved = evolve(state, model_index=state.model_index + 1, attempt=0, retries=0)
    tries = f"{state.attempt} attempt{'s' if state.attempt != 1 else ''}"
    if last is None:
        why = str(reason)
    elif last.status is None and last.detail and last.error_class is ErrorClass.RATE_LIMITED:
        why = f"{tries}: {last.detail}"  # refused here (a rate slot too far), not by a server
    elif (
        reason is ErrorClass.RETRIES_EXHAUSTED
        and last.retry_after_s is not None
        and last.retry_after_s > wf.retry.max_delay_s
    ):
        why = (
            f"{tries}: the server asked to wait {last.retry_after_s:g} s,"
            f" over max_delay_s ({wf.retry.max_delay_s:g} s)"
        )
    else:
        why = f"{tries}: {last.error_class} ({last.detail or last.message})"
    text = f"falling back from {current} to {moved.model} after {why}"
    log.warning(text)
    note = record(
        env, state, "fallback", model=current, next_model=moved.model,
        error_class=last.error_class if last else None, message=text,
    )  # fmt: skip
    return Step("next_model", moved, (note,))


def _all_failed(state: RunState) -> ErrorInfo:
    lines = "; ".join(
        f"{m}: {e.error_class} ({e.detail or e.message})" for m, e in state.last_errors
    )
    return ErrorInfo(ErrorClass.ALL_MODELS_FAILED, f"all models failed — {lines}")


async def persist(state: RunState, env: RunEnv, wf: Workflow) -> Step:
    """Cost the answer and hand the reply to the engine, which stores it with the move.

    The answer is durable already (the engine checkpointed it as it arrived), so its cost may
    be looked up here (``GET /generation``, for a stream without ``usage.cost``) and a crash
    meanwhile resumes into Persist again. Emits ``saved`` with the reply: the engine commits
    the reply, its usage row, the run's end and the move in one transaction (or, if the
    database keeps refusing, keeps the reply in the recovery file and moves on ``failed``).
    """
    done = state.completion
    assert done is not None, "Persist without a completion"
    streamed = wf.request.stream if state.stream is None else state.stream
    if streamed and done.cost_usd is None and state.cost_usd is None:
        done = await looked_up(env, done)
        state = evolve(state, completion=done)
    cost = answer_cost(env, state, done)
    if cost.source == "unknown":
        log.warning(
            "no cost for %s: the response had no usable usage.cost and the price table does"
            " not know the model (run `demiarch-flow models sync`); recorded as 0 USD",
            done.model,
        )
    reply = reply_of(state, cost, env.now())
    costed = evolve(
        state, cost_usd=cost.usd, cost_source=cost.source, saved_message_id=reply.message_id
    )
    return Step("saved", costed, reply=reply)


async def fail(state: RunState, env: RunEnv, wf: Workflow) -> Step:
    """Record the failure on the run (the user's message stays; nothing else is written)."""
    failure = state.failure
    try:
        await env.store.finish_run(
            RunEnd(
                state.run_id,
                "failed",
                state.state,
                None,
                failure.error_class if failure else None,
                failure.message if failure else "the run ended in a failure state",
                env.now(),
                env.owner,
            )
        )
    except RunTakenOver:
        raise
    except FlowError as exc:
        log.error("could not record the failed run: %s", exc)
    return Step("", state)


HANDLERS: dict[str, Handler] = {
    "load_context": load_context,
    "request": request,
    "backoff": backoff,
    "fallback": fallback,
    "persist": persist,
    "fail": fail,
}
