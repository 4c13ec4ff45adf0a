"""Sending one request: blocking, or streamed with its text reported as it arrives.

A streamed attempt names its generation as soon as a chunk does, and that id is committed
beside the stream (not in its way, nor on its clocks): after a crash it is the only handle on
what the stream cost. So is the answer, the moment its ``finish_reason`` arrives: the stream
is still read for its usage chunk, and a process that dies meanwhile leaves the whole answer
with its attempt (:attr:`~demiarch_flow.store.base.AttemptRow.answer_unkept`) for the resume
to store. Ctrl-C (any cancellation) closes the connection at once; the text received so far
is kept with the attempt, under a shield, before the cancellation goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import trio

from ...client import Attempt, Completion
from ...definition import Workflow
from ...errors import ErrorClass, FlowError
from ...store.base import AttemptRow
from ..context import RunEnv
from ..records import FlowRecord
from ..state import RunState


async def send(
    state: RunState, env: RunEnv, wf: Workflow, payload: dict[str, Any], row: AttemptRow
) -> Attempt:
    """The request of attempt ``row``, streamed or not as the run asks."""
    streamed = wf.request.stream if state.stream is None else state.stream
    if not streamed:
        return await env.client.complete(payload, timeout_s=wf.request.timeout_s)
    try:
        return await _stream(state, env, wf, payload, row)
    except BaseExceptionGroup as group:
        # The nursery wraps what its body raised; the caller expects the bare Cancelled (or
        # error), as a blocking attempt would raise it.
        cancels = [e for e in group.exceptions if isinstance(e, trio.Cancelled)]
        if len(group.exceptions) == 1 or len(cancels) == len(group.exceptions):
            raise group.exceptions[0] from None
        raise


async def _stream(
    state: RunState, env: RunEnv, wf: Workflow, payload: dict[str, Any], row: AttemptRow
) -> Attempt:
    parts: list[str] = []
    generation: list[str] = []
    answered: list[Completion] = []
    listeners = env.listeners

    async def on_delta(text: str) -> None:
        parts.append(text)
        if listeners:
            rec = FlowRecord(
                "delta", state.run_id, trio.current_time(), env.now(), model=row.model, text=text
            )
            for listener in listeners:
                await listener.on_record(rec)

    async def progress(generation_id: str) -> None:
        # Shielded: one short commit, and the only handle on what a cancelled stream cost.
        with trio.CancelScope(shield=True), contextlib.suppress(FlowError):
            await env.store.attempt_progress(dataclasses.replace(row, generation_id=generation_id))

    async def keep(answer: Completion, latency_ms: int) -> None:
        whole = dataclasses.replace(
            row, status=200, latency_ms=latency_ms,
            generation_id=generation[0] if generation else None,
        )  # fmt: skip
        # Shielded like ``progress``: the answer is paid for, and whole.
        with trio.CancelScope(shield=True), contextlib.suppress(FlowError):
            await env.store.attempt_answered(_with_answer(whole, answer))

    req = wf.request
    sent = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def on_generation(generation_id: str) -> None:
            generation.append(generation_id)
            nursery.start_soon(progress, generation_id)

        async def on_finish(answer: Completion) -> None:
            answered.append(answer)
            nursery.start_soon(keep, answer, round((trio.current_time() - sent) * 1000))

        try:
            return await env.client.stream(
                payload, timeout_s=req.timeout_s, first_token_timeout_s=req.first_token_timeout_s,
                idle_timeout_s=req.idle_timeout_s, on_delta=on_delta, on_generation=on_generation,
                on_finish=on_finish,
            )  # fmt: skip
        except trio.Cancelled:
            ended = dataclasses.replace(
                row, ended_at=env.now(), error_class=ErrorClass.CANCELLED,
                generation_id=generation[0] if generation else None,
                partial_text="".join(parts) if parts else None,
            )  # fmt: skip
            if answered:  # a whole answer stays one: the resume stores it
                ended = _with_answer(ended, answered[0])
            with trio.CancelScope(shield=True), contextlib.suppress(FlowError):
                await env.store.attempt_ended(ended)
            raise


def _with_answer(row: AttemptRow, answer: Completion) -> AttemptRow:
    """``row`` keeping a whole answer its attempt has not returned (``answer_unkept``)."""
    return dataclasses.replace(
        row, generation_id=answer.generation_id or row.generation_id,
        partial_text=answer.content, finish_reason=answer.finish_reason,
        response_model=answer.model,
    )  # fmt: skip
