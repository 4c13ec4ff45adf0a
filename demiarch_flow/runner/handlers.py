"""The state handlers: ``async (RunContext) -> event``, one per action of the format.

Handlers do all the I/O; the machine only moves. Each can be run alone (see
:func:`demiarch_flow.testing.run_state`). Only :func:`backoff` sleeps, and only what
:func:`~demiarch_flow.backoff.plan_wait` tells it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import trio

from ..backoff import plan_wait
from ..definition import ALWAYS_FATAL
from ..errors import AllModelsFailed, FlowError, PersistenceError, ProviderError
from ..store.base import NewRun, Reply, RunEnd
from .context import AttemptSummary, RunContext, new_id
from .recovery import recovery_path, recovery_row

log = logging.getLogger("demiarch_flow")

Handler = Callable[[RunContext], Awaitable[str]]

#: The smallest step between two messages of a conversation (keeps their order strict).
_TICK = timedelta(microseconds=1)


def _title(message: str) -> str:
    """A new conversation's title: the first line of its first message, cut to 80 characters."""
    stripped = message.strip()
    return stripped.splitlines()[0][:80] if stripped else ""


async def load_context(ctx: RunContext) -> str:
    """Store the user's message at once and build the request messages.

    Emits ``loaded``, or ``failed`` (unknown conversation, database error).
    """
    wf = ctx.workflow
    try:
        began = await ctx.env.store.begin_run(
            NewRun(
                run_id=ctx.run_id,
                workflow=wf.name,
                workflow_sha256=wf.sha256,
                conversation_id=ctx.request.conversation_id,
                create_with_id=new_id(),
                project_id=ctx.request.project_id,
                user_message_id=new_id(),
                content=ctx.request.message,
                context_messages=wf.request.context_messages,
                at=ctx.env.now(),
                title=_title(ctx.request.message),
            )
        )
    except FlowError as exc:
        ctx.failure = exc
        return "failed"
    ctx.conversation_id = began.conversation_id
    ctx.user_message_at = began.user_message_at
    messages = [{"role": "system", "content": wf.system}] if wf.system else []
    messages += [{"role": m.role, "content": m.content} for m in began.history]
    messages.append({"role": "user", "content": ctx.request.message})
    ctx.messages = messages
    return "loaded"


async def request(ctx: RunContext) -> str:
    """One attempt with the current model.

    Emits ``succeeded``; ``retryable`` (class in ``retry.when``); ``model_failed`` (class in
    ``fallback.when``); or ``fatal`` (anything else, and ``auth``/``payment_required`` always).
    """
    wf, client = ctx.workflow, ctx.env.client
    model = ctx.model
    if wf.cooldown is not None:
        skipped = await _skip_cooling(ctx, model)
        if skipped:
            return skipped
    ctx.attempt += 1
    ctx.total_attempts += 1
    payload = client.build_payload(
        model,
        ctx.messages,
        temperature=wf.request.temperature,
        max_tokens=wf.request.max_tokens,
    )
    result = await client.complete(payload, timeout_s=wf.request.timeout_s)
    ctx.last_attempt = result
    err = result.error
    await ctx.emit(
        "attempt",
        model=model,
        attempt=ctx.attempt,
        status=result.status,
        error_class=err.error_class if err else None,
        latency_ms=result.latency_ms,
        message=err.detail if err else None,
    )
    ctx.attempts.append(
        AttemptSummary(
            model=model,
            outcome="ok" if err is None else "error",
            error_class=err.error_class if err else None,
            status=result.status,
            wait_s=None,
            latency_ms=result.latency_ms,
        )
    )
    if err is None:
        ctx.completion = result.completion
        if wf.cooldown is not None:
            ctx.env.cooldowns.success(model)
        return "succeeded"
    ctx.last_error = err
    ctx.last_errors[model] = err
    cls = err.error_class
    if cls in ALWAYS_FATAL:
        ctx.failure = err
        return "fatal"
    if cls in wf.retry.when:
        if wf.cooldown is not None:
            started = ctx.env.cooldowns.failure(
                model, trio.current_time(), wf.cooldown, err.retry_after_s
            )
            if started is not None:
                await ctx.emit(
                    "cooldown",
                    event="started",
                    model=model,
                    wait_s=started,
                    error_class=cls,
                    message=f"{model} cools down for {started:g} s",
                )
        return "retryable"
    if cls in wf.fallback.when:
        ctx.fallback_reason = cls
        return "model_failed"
    ctx.failure = err
    return "fatal"


async def _skip_cooling(ctx: RunContext, model: str) -> str | None:
    """A cooling model is not asked: Fallback (or, on the last model, Backoff waits it out).

    Returns the event to emit, or ``None`` when the model may be asked.
    """
    left = ctx.env.cooldowns.remaining(model, trio.current_time())
    if left <= 0:
        return None
    err = ProviderError(
        "cooling", f"{model} is cooling down for {left:.1f} s more (shared cooldown)",
        model=model, retry_after_s=left,
    )  # fmt: skip
    ctx.last_error = err
    ctx.last_errors.setdefault(model, err)
    ctx.attempts.append(AttemptSummary(model, "skipped", "cooling", None, None, 0))
    await ctx.emit("cooldown", event="skipped", model=model, wait_s=left, error_class="cooling",
                   message=err.detail)  # fmt: skip
    if ctx.model_index + 1 < len(ctx.chain):
        ctx.fallback_reason = "cooling"
        return "model_failed"
    return "retryable"


async def backoff(ctx: RunContext) -> str:
    """Wait before the next retry of the same model, or give the model up.

    Emits ``retry`` after sleeping, or ``exhausted`` at once when the retries of this model are
    used up or the server asks for a wait longer than ``max_delay_s``.
    """
    policy = ctx.workflow.retry
    hint = ctx.last_error.retry_after_s if ctx.last_error else None
    plan = plan_wait(ctx.retries + 1, policy, hint, ctx.env.rng)
    ctx.gave_up_because = None
    if plan.delay_s is None:
        ctx.fallback_reason = "retries_exhausted"
        ctx.gave_up_because = plan.reason
        return "exhausted"
    await ctx.emit(
        "wait",
        model=ctx.model,
        attempt=ctx.attempt + 1,
        wait_s=plan.delay_s,
        error_class=ctx.last_error.error_class if ctx.last_error else None,
        message=plan.source,
    )
    if ctx.attempts:
        last = ctx.attempts[-1]
        ctx.attempts[-1] = dataclasses.replace(last, wait_s=plan.delay_s)
    await trio.sleep(plan.delay_s)
    ctx.retries += 1
    ctx.pending_wait_s = plan.delay_s
    return "retry"


async def fallback(ctx: RunContext) -> str:
    """Move to the next model of the chain (retry counter reset), or give up.

    Emits ``next_model``, or ``exhausted`` when the chain is used up or the reason for leaving
    the model is not in ``fallback.when``.
    """
    reason = ctx.fallback_reason or "retries_exhausted"
    current = ctx.model
    last = ctx.last_error
    if reason != "cooling" and reason not in ctx.workflow.fallback.when:
        ctx.failure = last or AllModelsFailed(ctx.last_errors)
        return "exhausted"
    if ctx.model_index + 1 >= len(ctx.chain):
        ctx.failure = AllModelsFailed(ctx.last_errors) if ctx.last_errors else last
        return "exhausted"
    attempts = ctx.attempt
    ctx.model_index += 1
    ctx.attempt = 0
    ctx.retries = 0
    nxt = ctx.model
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    if last is None:
        why = reason
    elif ctx.gave_up_because == "retry_after_too_long" and last.retry_after_s is not None:
        why = (
            f"{tries}: the server asked to wait {last.retry_after_s:g} s,"
            f" over max_delay_s ({ctx.workflow.retry.max_delay_s:g} s)"
        )
    else:
        why = f"{tries}: {last.error_class} ({last.detail})"
    text = f"falling back from {current} to {nxt} after {why}"
    log.warning(text)
    await ctx.emit(
        "fallback",
        model=current,
        next_model=nxt,
        error_class=last.error_class if last else None,
        message=text,
    )
    return "next_model"


async def persist(ctx: RunContext) -> str:
    """Store the reply and its usage in one transaction and mark the run succeeded.

    A database error is retried (``RunEnv.persist_tries`` in all); if it still fails the reply
    is written to a recovery file, so a paid-for answer is never lost. Emits ``saved`` or
    ``failed``.
    """
    done, attempt = ctx.completion, ctx.last_attempt
    assert done is not None
    assert attempt is not None
    cost = ctx.env.prices.cost(
        done.model, done.prompt_tokens, done.completion_tokens, done.cost_usd, attempt.model
    )
    ctx.cost_usd, ctx.cost_source = cost.usd, cost.source
    if cost.source == "unknown":
        log.warning(
            "no cost for %s: the response had no usable usage.cost, and no token counts and"
            " price to compute it from (run `demiarch-flow models sync`); recorded as 0 USD",
            done.model,
        )
    now = ctx.env.now()
    reply = build_reply(ctx, cost.usd, cost.source, now)
    final = ctx.workflow.state(ctx.state).target("saved") or ctx.state
    end = RunEnd(ctx.run_id, "succeeded", final, done.model, None, None, now)
    error: Exception | None = None
    for _ in range(max(ctx.env.persist_tries, 1)):
        try:
            ctx.saved_message_id = await ctx.env.store.save_reply(reply, end)
            return "saved"
        except FlowError as exc:
            error = exc
    path = write_recovery(ctx, reply, error)
    ctx.failure = PersistenceError(
        f"could not store the reply: {error}", recovery_file=str(path) if path else None
    )
    return "failed"


def build_reply(ctx: RunContext, cost_usd: Decimal, cost_source: str, now: datetime) -> Reply:
    """The assistant message and usage row of ``ctx.completion``: what Persist stores, and what
    the recovery file keeps when it cannot.

    A token count the response did not give believably (``None``) is stored as 0 for now, as
    the token columns are NOT NULL; ``cost_source`` still says whether the cost is known.
    """
    done, attempt = ctx.completion, ctx.last_attempt
    assert done is not None
    assert attempt is not None
    assert ctx.conversation_id is not None
    asked_at = ctx.user_message_at
    return Reply(
        run_id=ctx.run_id,
        conversation_id=ctx.conversation_id,
        project_id=ctx.request.project_id,
        message_id=new_id(),
        usage_id=new_id(),
        content=done.content,
        model=done.model,
        requested_model=attempt.model,
        generation_id=done.generation_id,
        prompt_tokens=done.prompt_tokens or 0,
        completion_tokens=done.completion_tokens or 0,
        total_tokens=done.total_tokens or 0,
        cached_tokens=done.cached_tokens or 0,
        cost_usd=cost_usd,
        cost_source=cost_source,
        latency_ms=attempt.latency_ms,
        attempts=ctx.total_attempts,
        request_timestamp=now,
        created_at=max(now, asked_at + _TICK) if asked_at is not None else now,
    )


def write_recovery(ctx: RunContext, reply: Reply, error: Exception | None) -> Path | None:
    """Append the reply as one JSON line to ``recovery.jsonl`` (fsynced), in the row format of
    :mod:`~demiarch_flow.runner.recovery` that ``demiarch-flow recover`` reads back; ``None`` if
    even that fails."""
    path = recovery_path(ctx.env.recovery_dir)
    known = ctx.state in ctx.workflow.state_names
    row = recovery_row(
        reply, ctx.workflow.state(ctx.state).target("saved") if known else None, error
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        log.error("could not write the recovery file %s; the reply was:\n%s", path, reply.content)
        return None
    log.error(
        "the reply could not be stored and was saved to %s (import it with `demiarch-flow recover`)",
        path,
    )
    return path


async def fail(ctx: RunContext) -> str:
    """Record the failure on the run (the user's message stays; nothing else is written)."""
    failure = ctx.failure
    error_class = getattr(failure, "error_class", None) if failure else None
    ctx.failure_recorded = True
    try:
        await ctx.env.store.finish_run(
            RunEnd(
                ctx.run_id,
                "failed",
                ctx.state,
                None,
                error_class,
                str(failure) if failure else "the run ended in a failure state",
                ctx.env.now(),
            )
        )
    except FlowError as exc:
        log.error("could not record the failed run: %s", exc)
    return ""


HANDLERS: dict[str, Handler] = {
    "load_context": load_context,
    "request": request,
    "backoff": backoff,
    "fallback": fallback,
    "persist": persist,
    "fail": fail,
}
