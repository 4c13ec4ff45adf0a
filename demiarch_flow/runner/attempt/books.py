"""The books of a paid attempt: what each generation cost, booked in ``llm_usage`` once.

A generation is booked exactly once, as one of the :class:`Booking` kinds: the run's
``reply`` (Persist, with its message), a stream ``interrupted`` after its first token (at once,
with no message), or ``billed`` — found lost in a crash by a resume, or the answer of a process
that lost its run to another (taken over). The store keys each booking by run and generation,
so a second booking of one generation writes nothing.

What a generation is counted as comes from :meth:`~demiarch_flow.pricing.PriceTable.answer_cost`:
the provider's figure when it is believable, the price table's over its tokens otherwise, and
an estimate from the text when the token counts are missing — never 0 USD for an answer that
was paid for, unless the model is unknown to the price table (``unknown``; a budget then keeps
the attempt's worst case).
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta
from enum import StrEnum

from ...client import Completion
from ...errors import FlowError
from ...pricing import Cost
from ...store.base import AttemptRow, BilledAttempt, Reply
from ..budget import estimate_tokens
from ..context import RunEnv, new_id
from ..state import RunState

log = logging.getLogger("demiarch_flow")

#: The smallest step between two messages of a conversation (keeps their order strict).
_TICK = timedelta(microseconds=1)


class Booking(StrEnum):
    """How a generation is booked (the ``llm_usage.outcome`` it is written with)."""

    REPLY = "reply"
    """The run's answer, with its message (Persist, or an import from the recovery file)."""
    INTERRUPTED = "interrupted"
    """A stream that broke after its first token: billed for what was generated."""
    BILLED = "billed"
    """Billed with no stored answer: lost in a crash (a resume books it), or the answer of a
    process whose run was taken over (the run stores the taker's answer)."""


def answer_cost(env: RunEnv, state: RunState, done: Completion) -> Cost:
    """What ``done`` (an answer of ``state``'s run) is counted as (see the module doc)."""
    asked = state.attempts[-1].model if state.attempts else done.model
    return env.prices.answer_cost(
        done.model, done.prompt_tokens, done.completion_tokens, done.cost_usd, asked,
        prompt_estimate=estimate_tokens(state.messages), text=done.content,
    )  # fmt: skip


async def looked_up(env: RunEnv, done: Completion) -> Completion:
    """An answer without ``usage.cost``: its cost from ``GET /generation``, if known. Call it
    only once the answer is durable (the record appears late: the look-up can take seconds)."""
    if done.cost_usd is not None or done.generation_id is None:
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


def reply_of(state: RunState, cost: Cost, now: datetime) -> Reply:
    """The assistant message and usage row of ``state``'s answer: what Persist stores, and what
    the recovery file keeps when it cannot. A token count the response did not give
    believably stays ``None`` (NULL); ``cost.source`` says how the cost is known."""
    done = state.completion
    assert done is not None, "no answer to book"
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
        prompt_tokens=done.prompt_tokens,
        completion_tokens=done.completion_tokens,
        total_tokens=done.total_tokens,
        cached_tokens=done.cached_tokens or 0,
        cost_usd=cost.usd,
        cost_source=cost.source,
        latency_ms=latency,
        attempts=state.total_attempts,
        request_timestamp=now,
        created_at=max(now, asked_at + _TICK) if asked_at is not None else now,
    )


async def interrupted_cost(
    state: RunState, env: RunEnv, partial: Completion
) -> tuple[Completion, Cost]:
    """What an interrupted (billed) stream is counted as: its cost from the usage chunk, else
    ``GET /generation``, else the price table over what was received. One figure serves the
    budget ledger and the ``llm_usage`` row."""
    partial = await looked_up(env, partial)
    return partial, answer_cost(env, state, partial)


async def book_interrupted(
    state: RunState, env: RunEnv, row: AttemptRow, partial: Completion, cost: Cost
) -> bool:
    """Book an interrupted stream with no message, at ``cost`` (:func:`interrupted_cost`);
    whether its row was written."""
    if state.conversation_id is None:
        return False
    return await _book(env, state, partial, cost, row.number, Booking.INTERRUPTED)


async def book_taken_over(env: RunEnv, state: RunState, done: Completion, cost: Cost) -> None:
    """The answer of a run another process took over: booked as billed (the taker stores its
    own answer), so its spend is still counted."""
    last = state.attempts[-1] if state.attempts else None
    number = last.number if last else state.total_attempts
    await _book(env, state, done, cost, number, Booking.BILLED)


async def _book(
    env: RunEnv, state: RunState, done: Completion, cost: Cost, number: int, kind: Booking
) -> bool:
    assert state.conversation_id is not None
    billed = BilledAttempt(
        usage_id=new_id(), run_id=state.run_id, conversation_id=state.conversation_id,
        project_id=state.project_id, model=done.model,
        generation_id=done.generation_id or f"{kind}-{state.run_id}-{number}",
        prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
        cost_usd=cost.usd, cost_source=cost.source, attempt=number, at=env.now(),
        outcome="interrupted" if kind is Booking.INTERRUPTED else "billed",
    )  # fmt: skip
    try:
        await env.store.book_billed(billed)
    except FlowError as exc:
        log.error(
            "could not book the %s attempt %s of run %s (%s USD): %s",
            kind, number, state.run_id, cost.usd, exc,
        )  # fmt: skip
        return False
    return True
