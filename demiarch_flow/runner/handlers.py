"""The state handlers: ``async (RunState, RunEnv, Workflow) -> Step``, one per action.

A handler reads the run state it is given and returns a :class:`~.state.Step`: the event for the
machine, the new state and the records to report. It never picks its own target (the machine
does, in the engine), never sleeps (a :class:`~.state.Wait` in the step asks the engine to, after
the checkpoint), and never signals another handler through a side channel: what Fallback needs
to know — why the model is being left — is the event that entered it (``RunState.entered_by``)
and the last error, both plain data. Handlers do the I/O of their state: LoadContext and Persist
write through the store, Request calls the provider after recording that it is about to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio

from ..backoff import plan_wait
from ..client import Attempt, Completion
from ..definition import ALWAYS_FATAL, Workflow
from ..definition.model import RequestSettings
from ..errors import ErrorClass, FlowError, PersistenceError, ProviderError, RunTakenOver
from ..pricing import NANO
from ..store.base import AttemptRow, BilledAttempt, Checkpoint, NewRun, Reply, RunEnd
from .context import RunEnv, new_id
from .limits import admit
from .records import FlowRecord, RecordKind, WaitSource
from .recovery import recovery_path, recovery_row
from .state import AttemptInfo, ErrorInfo, Message, RunState, Step, Wait
from .transition import journal_entry, moved

log = logging.getLogger("demiarch_flow")

Handler = Callable[[RunState, RunEnv, Workflow], Awaitable[Step]]

#: The smallest step between two messages of a conversation (keeps their order strict).
_TICK = timedelta(microseconds=1)


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
    loaded = dataclasses.replace(
        state,
        conversation_id=began.conversation_id,
        user_message_at=began.user_message_at,
        messages=tuple(messages),
    )
    return Step("loaded", loaded)


async def request(state: RunState, env: RunEnv, wf: Workflow) -> Step:
    """One attempt with the current model.

    The attempt is recorded as started (durably, with every queued checkpoint) before the
    request leaves, so a crash can never hide a request that may have been billed. Emits
    ``succeeded``; ``retryable`` (class in ``retry.when``); ``model_failed`` (class in
    ``fallback.when``); or ``fatal`` (anything else, and ``auth``/``payment_required`` always).
    """
    model = state.model
    if wf.cooldown is not None:
        skipped = await _skip_cooling(state, env, model)
        if skipped is not None:
            return skipped
    gate = await admit(state, env, wf) if wf.limits is not None else None
    if isinstance(gate, Step):  # refused by a budget: nothing is sent
        await _not_sent(gate.state, env, model, ErrorClass.BUDGET_EXCEEDED)
        return gate
    state = gate.state if gate is not None else state
    number = state.total_attempts + 1
    started_at = env.now()
    try:
        await env.store.attempt_started(AttemptRow(state.run_id, number, model, started_at))
    except FlowError as exc:
        # Nothing was sent: the run fails before it could cost anything.
        if gate is not None:
            gate.release()  # its reservation goes with the failed run
        return Step("fatal", state.failed(ErrorInfo.of(exc)))
    except BaseException:  # cancelled before the request left: give the permits back
        if gate is not None:
            gate.release()
        raise
    client = env.client
    payload = client.build_payload(
        model,
        state.request_messages,
        temperature=wf.request.temperature,
        max_tokens=wf.request.max_tokens,
    )
    row = AttemptRow(state.run_id, number, model, started_at)
    streamed = wf.request.stream if state.stream is None else state.stream
    try:
        if streamed:
            result = await _stream(state, env, wf, payload, row)
        else:
            result = await client.complete(payload, timeout_s=wf.request.timeout_s)
    except trio.Cancelled:
        if gate is not None:
            with trio.CancelScope(shield=True):
                try:
                    await gate.abandoned()
                except FlowError as exc:  # the cancellation goes on; the budget may undercount
                    log.warning("could not keep the cancelled attempt's budget: %s", exc)
        raise
    finally:
        if gate is not None:
            gate.release()
    err = result.error
    partial = result.partial
    generation_id = (result.completion or partial or _NO_ANSWER).generation_id
    with trio.CancelScope(shield=True):
        # The attempt is over and may have cost money: its books are kept whatever happens
        # now (a few short writes; Ctrl-C goes on once they are done).
        if gate is not None:
            try:
                await gate.settle(result)
            except FlowError as exc:  # an answer that arrived matters more than the books
                log.warning("could not settle the attempt's budget reservation: %s", exc)
        await env.store.attempt_ended(
            dataclasses.replace(
                row,
                ended_at=env.now(),
                status=result.status,
                error_class=err.error_class if err else None,
                generation_id=generation_id,
                latency_ms=result.latency_ms,
                partial_text=partial.content if partial is not None else None,
            )
        )
        if partial is not None and err is not None:
            await _book_interrupted(state, env, row, partial, result.latency_ms)
    info = AttemptInfo(
        number=number,
        model=model,
        outcome="ok" if err is None else "error",
        error_class=err.error_class if err else None,
        status=result.status,
        wait_s=None,
        latency_ms=result.latency_ms,
        generation_id=generation_id,
        partial_chars=len(partial.content) if partial is not None and err else None,
        first_token_ms=result.first_token_ms,
    )
    attempt_record = record(
        env, state, "attempt", model=model, attempt=state.attempt + 1, status=result.status,
        error_class=info.error_class, latency_ms=result.latency_ms,
        message=err.detail if err else None, partial_chars=info.partial_chars,
        cause=result.cause, first_token_ms=result.first_token_ms,
    )  # fmt: skip
    tried = dataclasses.replace(
        state,
        attempt=state.attempt + 1,
        total_attempts=number,
        attempts=(*state.attempts, info),
    )
    if err is None:
        if wf.cooldown is not None:
            env.cooldowns.success(model)
        completion = result.completion
        if result.streamed and completion is not None and completion.cost_usd is None:
            try:
                completion = await _looked_up(env, completion)
            except trio.Cancelled as exc:  # the answer is paid for: keep it
                rescue_reply(env, wf, dataclasses.replace(tried, completion=completion), exc)
                raise
        done = dataclasses.replace(tried, completion=completion)
        return Step("succeeded", done, (attempt_record,))
    error = ErrorInfo.of(err)
    tried = tried.with_error(error)
    cls = err.error_class
    if cls in ALWAYS_FATAL:
        return Step("fatal", tried.failed(error), (attempt_record,))
    if cls in wf.retry.when:
        records = [attempt_record]
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
        return Step("model_failed", tried, (attempt_record,))
    return Step("fatal", tried.failed(error), (attempt_record,))


async def _not_sent(state: RunState, env: RunEnv, model: str, why: ErrorClass) -> None:
    """Close the record of the next request if LoadContext recorded it ahead and it is not sent
    after all (a cooling model, a budget), so a resume does not take it for a lost one (the
    store ignores it when there is no such record)."""
    now = env.now()
    number = state.total_attempts + 1
    await env.store.attempt_ended(AttemptRow(state.run_id, number, model, now, now, None, why))


_NO_ANSWER = Completion("", "", None, None, None, None, None, None, None)


async def _stream(
    state: RunState, env: RunEnv, wf: Workflow, payload: dict[str, Any], row: AttemptRow
) -> Attempt:
    """A streamed attempt: each piece of text goes to the listeners as a ``delta`` record as it
    arrives, and the generation id to the store (durably) as soon as a chunk names it.

    Ctrl-C (any cancellation) closes the connection at once; the text received so far is kept
    with the attempt, under a shield, before the cancellation goes on.
    """
    parts: list[str] = []
    listeners = env.listeners
    generation: list[str] = []

    async def on_delta(text: str) -> None:
        parts.append(text)
        if listeners:
            rec = record(env, state, "delta", model=row.model, text=text)
            for listener in listeners:
                await listener.on_record(rec)

    async def progress(generation_id: str) -> None:
        # Shielded: one short commit, and the only handle on what a cancelled stream cost.
        with trio.CancelScope(shield=True), contextlib.suppress(FlowError):
            await env.store.attempt_progress(dataclasses.replace(row, generation_id=generation_id))

    req = wf.request
    try:
        return await _stream_beside(env, req, payload, on_delta, progress, generation, parts, row)
    except BaseExceptionGroup as group:
        # The nursery wraps what its body raised; the engine expects the bare Cancelled (or
        # error), as a blocking attempt would raise it.
        cancels = [e for e in group.exceptions if isinstance(e, trio.Cancelled)]
        if len(group.exceptions) == 1 or len(cancels) == len(group.exceptions):
            raise group.exceptions[0] from None
        raise


async def _stream_beside(
    env: RunEnv,
    req: RequestSettings,
    payload: dict[str, Any],
    on_delta: Callable[[str], Awaitable[None]],
    progress: Callable[[str], Awaitable[None]],
    generation: list[str],
    parts: list[str],
    row: AttemptRow,
) -> Attempt:
    async with trio.open_nursery() as nursery:
        # The generation id is committed beside the stream, not in its way (nor on its clocks).

        async def on_generation(generation_id: str) -> None:
            generation.append(generation_id)
            nursery.start_soon(progress, generation_id)

        try:
            return await env.client.stream(
                payload, timeout_s=req.timeout_s, first_token_timeout_s=req.first_token_timeout_s,
                idle_timeout_s=req.idle_timeout_s, on_delta=on_delta, on_generation=on_generation,
            )  # fmt: skip
        except trio.Cancelled:
            with trio.CancelScope(shield=True), contextlib.suppress(FlowError):
                await env.store.attempt_ended(
                    dataclasses.replace(
                        row, ended_at=env.now(), error_class=ErrorClass.CANCELLED,
                        generation_id=generation[0] if generation else None,
                        partial_text="".join(parts) if parts else None,
                    )
                )  # fmt: skip
            raise


async def _looked_up(env: RunEnv, done: Completion) -> Completion:
    """A streamed reply without ``usage.cost``: its cost from ``GET /generation``, if known."""
    if done.generation_id is None:
        return done
    found = await env.client.generation_cost(done.generation_id)
    if found is None or found.cost_usd is None:
        return done
    return dataclasses.replace(
        done,
        cost_usd=found.cost_usd,
        prompt_tokens=done.prompt_tokens if done.prompt_tokens is not None else found.prompt_tokens,
        completion_tokens=done.completion_tokens
        if done.completion_tokens is not None
        else found.completion_tokens,
    )


async def _book_interrupted(
    state: RunState, env: RunEnv, row: AttemptRow, partial: Completion, latency_ms: int
) -> None:
    """Book an interrupted (billed) stream in ``llm_usage`` with no message: its cost from the
    usage chunk, else ``GET /generation``, else the price table over what was received."""
    if state.conversation_id is None:
        return
    partial = await _looked_up(env, partial)
    prompt, completion = partial.prompt_tokens, partial.completion_tokens
    if prompt is None:
        prompt = sum(len(m.content) for m in state.messages) // 4
    if completion is None:
        completion = max(1, len(partial.content) // 4)
    cost = env.prices.cost(partial.model, prompt, completion, partial.cost_usd, row.model)
    try:
        await env.store.book_billed(
            BilledAttempt(
                usage_id=new_id(), run_id=state.run_id, conversation_id=state.conversation_id,
                project_id=state.project_id, model=partial.model,
                generation_id=partial.generation_id or f"interrupted-{state.run_id}-{row.number}",
                prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost.usd,
                cost_source=cost.source, attempt=row.number, at=env.now(),
                outcome="interrupted",
            )
        )  # fmt: skip
    except FlowError as exc:
        log.error("could not book the interrupted attempt %s of run %s: %s",
                  row.number, state.run_id, exc)  # fmt: skip


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
    await _not_sent(state, env, model, ErrorClass.COOLING)
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
    note = record(
        env, state, "cooldown", event="skipped", model=model, wait_s=left,
        error_class=ErrorClass.COOLING, message=err.detail,
    )  # fmt: skip
    if state.model_index + 1 < len(state.chain):
        return Step("model_failed", skipped, (note,))
    return Step("retryable", skipped, (note,))


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
        attempts = (*attempts[:-1], dataclasses.replace(attempts[-1], wait_s=plan.delay_s))
    note = record(
        env, state, "wait", model=state.model, attempt=state.attempt + 1, wait_s=plan.delay_s,
        wait_source=source, error_class=last.error_class if last else None,
    )  # fmt: skip
    waited = dataclasses.replace(state, retries=state.retries + 1, wait=wait, attempts=attempts)
    return Step("retry", waited, (note,), wait)


def leaving_reason(state: RunState) -> ErrorClass:
    """Why the current model is being left: Backoff gave it up, or its last error's class."""
    if state.entered_by == "exhausted" or state.last_error is None:
        return ErrorClass.RETRIES_EXHAUSTED
    return state.last_error.error_class


async def fallback(state: RunState, env: RunEnv, wf: Workflow) -> Step:
    """Move to the next model of the chain (retry counter reset), or give up.

    Emits ``next_model``, or ``exhausted`` when the chain is used up or the reason for leaving
    the model is not in ``fallback.when`` (a cooling model is always left).
    """
    reason = leaving_reason(state)
    last = state.last_error
    if reason is not ErrorClass.COOLING and reason not in wf.fallback.when:
        return Step("exhausted", state.failed(last or _all_failed(state)))
    if state.model_index + 1 >= len(state.chain):
        return Step("exhausted", state.failed(_all_failed(state)))
    current = state.model
    moved = dataclasses.replace(state, model_index=state.model_index + 1, attempt=0, retries=0)
    tries = f"{state.attempt} attempt{'s' if state.attempt != 1 else ''}"
    if last is None:
        why = str(reason)
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


def build_reply(state: RunState, cost_usd: Decimal, cost_source: str, now: datetime) -> Reply:
    """The assistant message and usage row of ``state``'s completion: what Persist stores, and
    what the recovery file keeps when it cannot.

    A token count the response did not give believably (``None``) is stored as 0 for now, as
    the token columns are NOT NULL; ``cost_source`` still says whether the cost is known.
    """
    done = state.completion
    assert done is not None, "Persist without a completion"
    assert state.conversation_id is not None
    asked = state.attempts[-1].model if state.attempts else done.model
    latency = state.attempts[-1].latency_ms if state.attempts else 0
    asked_at = state.user_message_at
    return Reply(
        run_id=state.run_id,
        conversation_id=state.conversation_id,
        project_id=state.project_id,
        message_id=new_id(),
        usage_id=new_id(),
        content=done.content,
        model=done.model,
        requested_model=asked,
        generation_id=done.generation_id,
        prompt_tokens=done.prompt_tokens or 0,
        completion_tokens=done.completion_tokens or 0,
        total_tokens=done.total_tokens or 0,
        cached_tokens=done.cached_tokens or 0,
        cost_usd=cost_usd,
        cost_source=cost_source,
        latency_ms=latency,
        attempts=state.total_attempts,
        request_timestamp=now,
        created_at=max(now, asked_at + _TICK) if asked_at is not None else now,
    )


async def persist(state: RunState, env: RunEnv, wf: Workflow) -> Step:
    """Store the reply and its usage in one transaction and mark the run succeeded.

    The move to the next state commits with them (its journal row and checkpoint), so one
    transaction ends the run. A database error is retried (``RunEnv.persist_tries`` in all);
    if it still fails the reply is written to a recovery file, so a paid-for answer is never
    lost. Emits ``saved`` or ``failed``.
    """
    done = state.completion
    assert done is not None, "Persist without a completion"
    asked = state.attempts[-1].model if state.attempts else done.model
    cost = env.prices.cost(
        done.model, done.prompt_tokens, done.completion_tokens, done.cost_usd, asked
    )
    if cost.source == "unknown":
        log.warning(
            "no cost for %s: the response had no usable usage.cost, and no token counts and"
            " price to compute it from (run `demiarch-flow models sync`); recorded as 0 USD",
            done.model,
        )
    costed = dataclasses.replace(state, cost_usd=cost.usd, cost_source=cost.source)
    now = env.now()
    reply = build_reply(costed, cost.usd, cost.source, now)
    final = wf.state(state.state).target("saved") or state.state
    end = RunEnd(state.run_id, "succeeded", final, reply.model, None, None, now, env.owner)
    error: Exception | None = None
    for _ in range(max(env.persist_tries, 1)):
        step = Step("saved", dataclasses.replace(costed, saved_message_id=reply.message_id))
        after = moved(state, step, final)
        entry = journal_entry(state, step, after, now)
        try:
            saved_id = await env.store.save_reply(
                reply,
                end,
                Checkpoint(state.run_id, final, after.model, after, (entry,), env.owner),
            )
        except RunTakenOver:  # not ours to write any more: no retry, no recovery file
            raise
        except FlowError as exc:
            error = exc
            continue
        return Step(
            "saved", dataclasses.replace(costed, saved_message_id=saved_id), journaled=entry
        )
    path = write_recovery(env, reply, final, error)
    failure = PersistenceError(
        f"could not store the reply: {error}", recovery_file=str(path) if path else None
    )
    return Step("failed", costed.failed(ErrorInfo.of(failure)))


def write_recovery(
    env: RunEnv, reply: Reply, final_state: str | None, error: Exception | None
) -> Path | None:
    """Append the reply as one JSON line to ``recovery.jsonl`` (fsynced), in the row format of
    :mod:`~demiarch_flow.runner.recovery` that ``demiarch-flow recover`` reads back; ``None`` if
    even that fails."""
    path = recovery_path(env.recovery_dir)
    row = recovery_row(reply, final_state, error)
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


def _unstored_answer(state: RunState) -> Completion | None:
    """The paid-for answer ``state`` holds and the store does not (``None`` also when there is
    no conversation to keep it in)."""
    if state.saved_message_id is not None or state.conversation_id is None:
        return None
    return state.completion


def _answer_cost(env: RunEnv, state: RunState, done: Completion) -> tuple[Decimal, str]:
    """What ``done`` cost: Persist's figure if it got that far, else the price table's — 0 USD,
    ``unknown``, when the price table is what broke."""
    if state.cost_usd is not None and state.cost_source is not None:
        return state.cost_usd, state.cost_source
    asked = state.attempts[-1].model if state.attempts else done.model
    try:
        cost = env.prices.cost(
            done.model, done.prompt_tokens, done.completion_tokens, done.cost_usd, asked
        )
    except Exception:
        return Decimal(0).quantize(NANO), "unknown"
    return cost.usd, cost.source


def rescue_reply(env: RunEnv, wf: Workflow, state: RunState, exc: BaseException) -> None:
    """Write a paid-for reply that an unexpected error or a cancellation kept out of the store
    to the recovery file (at the cost Persist computed, if it got that far); nothing when
    ``state`` holds no answer, or its answer is stored. Synchronous: it runs in a cancelled
    scope too."""
    done = _unstored_answer(state)
    if done is None:
        return
    usd, source = _answer_cost(env, state, done)
    final = wf.state(state.state).target("saved") if state.state in wf.state_names else None
    try:
        error = exc if isinstance(exc, Exception) else FlowError("cancelled before it was stored")
        write_recovery(env, build_reply(state, usd, source, env.now()), final, error)
    except Exception:  # the original error is the one to report
        log.exception("could not write the reply to the recovery file:\n%s", done.content)


async def keep_paid_answer(env: RunEnv, wf: Workflow, state: RunState, exc: BaseException) -> None:
    """Keep a paid-for answer that ``exc`` kept out of the store: in the recovery file — or,
    when another process has taken the run over (it stores its own reply), booked as a billed
    generation of the run, so its spend is still counted. Call it shielded."""
    if not isinstance(exc, RunTakenOver):
        rescue_reply(env, wf, state, exc)
        return
    done = _unstored_answer(state)
    if done is None or state.conversation_id is None:
        return
    usd, source = _answer_cost(env, state, done)
    last = state.attempts[-1] if state.attempts else None
    billed = BilledAttempt(
        usage_id=new_id(), run_id=state.run_id, conversation_id=state.conversation_id,
        project_id=state.project_id, model=done.model,
        generation_id=done.generation_id or new_id(), prompt_tokens=done.prompt_tokens,
        completion_tokens=done.completion_tokens, cost_usd=usd, cost_source=source,
        attempt=last.number if last else state.total_attempts, at=env.now(),
    )  # fmt: skip
    try:
        await env.store.book_billed(billed)
    except FlowError as failed:
        log.error("could not book the answer of a run taken over (%s): %s", failed, done.content)


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
