"""Keeping an answer that was paid for and could not be stored: the recovery file.

Between the moment an answer arrives and the moment its checkpoint is durable, anything — a
Ctrl-C, a store that fails, a bug — could lose it, and the next resume would buy it again. The
engine calls :func:`keep_paid_answer` (shielded) when that happens, and stores Persist's reply
through :func:`store_reply`, which keeps it in the recovery file when the database keeps
refusing it. The row format, its reader
(``demiarch-flow recover``, ``runs resume``) and these writers are in
:mod:`~demiarch_flow.runner.recovery`.
"""

from __future__ import annotations

import json
import logging
import os
from decimal import Decimal
from pathlib import Path

from ...client import Completion
from ...definition import Workflow
from ...errors import FlowError, PersistenceError, RunTakenOver
from ...pricing import NANO, Cost
from ...store.base import Checkpoint, Reply, RunEnd
from ..context import RunEnv
from ..recovery import recovery_path, recovery_row
from ..state import RunState
from .books import answer_cost, book_taken_over, reply_of

log = logging.getLogger("demiarch_flow")


def write_recovery(
    env: RunEnv, reply: Reply, final_state: str | None, error: Exception | None
) -> Path | None:
    """Append the reply as one JSON line to ``recovery.jsonl`` (fsynced), in the row format
    that ``demiarch-flow recover`` reads back; ``None`` if even that fails."""
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


async def store_reply(env: RunEnv, reply: Reply, end: RunEnd, checkpoint: Checkpoint) -> str:
    """Store ``reply`` with the run's ``end`` and its last ``checkpoint`` in one transaction,
    retrying a database that fails (``env.persist_tries`` in all); returns the stored message's
    id. A paid-for answer is never lost: when the database keeps failing, the reply goes to
    the recovery file and :class:`PersistenceError` names it.

    Raises:
        RunTakenOver: another process owns the run now (nothing written, no recovery file:
            the engine books the answer as a billed generation of the run).
        PersistenceError: the reply could not be stored (it is in the recovery file, if even
            that could be written).
    """
    error: FlowError | None = None
    for _ in range(max(env.persist_tries, 1)):
        try:
            return await env.store.save_reply(reply, end, checkpoint)
        except RunTakenOver:
            raise
        except FlowError as exc:
            error = exc
    path = write_recovery(env, reply, end.current_state, error)
    raise PersistenceError(
        f"could not store the reply: {error}", recovery_file=str(path) if path else None
    )


def _unstored_answer(state: RunState) -> Completion | None:
    """The paid-for answer ``state`` holds and the store does not (``None`` also when there is
    no conversation to keep it in)."""
    if state.saved_message_id is not None or state.conversation_id is None:
        return None
    return state.completion


def _cost(env: RunEnv, state: RunState, done: Completion) -> Cost:
    """Persist's figure if it got that far, else the books' — 0 USD, ``unknown``, when the
    price table is what broke."""
    if state.cost_usd is not None and state.cost_source is not None:
        return Cost(state.cost_usd, state.cost_source)  # type: ignore[arg-type]
    try:
        return answer_cost(env, state, done)
    except Exception:
        return Cost(Decimal(0).quantize(NANO), "unknown")


def _final_state(wf: Workflow, state: RunState) -> str | None:
    """Where a stored answer leaves its run: Persist's ``saved`` target, when the run stands in
    Persist (``None``: it keeps the state it stands in)."""
    return wf.state(state.state).target("saved") if state.state in wf.state_names else None


def rescue_reply(env: RunEnv, wf: Workflow, state: RunState, exc: BaseException) -> None:
    """Write a paid-for reply that an unexpected error or a cancellation kept out of the store
    to the recovery file; nothing when ``state`` holds no answer, or its answer is stored.
    Synchronous: it runs in a cancelled scope too."""
    done = _unstored_answer(state)
    if done is None:
        return
    final = _final_state(wf, state)
    try:
        error = exc if isinstance(exc, Exception) else FlowError("cancelled before it was stored")
        write_recovery(env, reply_of(state, _cost(env, state, done), env.now()), final, error)
    except Exception:  # the original error is the one to report
        log.exception("could not write the reply to the recovery file:\n%s", done.content)


async def keep_paid_answer(env: RunEnv, wf: Workflow, state: RunState, exc: BaseException) -> None:
    """Keep a paid-for answer that ``exc`` (Ctrl-C, an error, a bug) kept out of the store.
    Call it shielded.

    The answer is stored as the run's reply at once, owner-fenced, so its spend is in
    ``llm_usage`` and every budget counts it now (a recovery file is invisible to the books
    until someone imports it). When the database refuses, or the answer's cost cannot be
    worked out (a broken price table), it goes to the recovery file; when
    another process has taken the run over (it stores its own reply), it is booked as a
    billed generation of the run, so its spend is still counted.
    """
    done = _unstored_answer(state)
    if done is None:
        return
    cost = _cost(env, state, done)
    if not isinstance(exc, RunTakenOver) and cost.source == "unknown":
        rescue_reply(env, wf, state, exc)  # what broke is the costing: a person decides
        return
    if not isinstance(exc, RunTakenOver):
        reply = reply_of(state, cost, env.now())
        final = _final_state(wf, state)
        end = RunEnd(
            state.run_id, "succeeded", final or state.state, reply.model, None, None,
            reply.request_timestamp, env.owner,
        )  # fmt: skip
        try:
            await env.store.save_reply(reply, end)
            return
        except RunTakenOver as taken:
            exc = taken
        except Exception as refused:  # a database error, or a bug in the store
            log.warning("could not store the reply of run %s: %s", state.run_id, refused)
            rescue_reply(env, wf, state, exc)
            return
    await book_taken_over(env, state, done, cost)
