"""The trio runner: handler → event → ``machine.send(event)`` → next state, until a final one.

The machine (python-statemachine, 2.x semantics) is the single source of truth for where the
run goes next: the runner never computes a target itself, it asks the machine after ``send``.
A handler returning an event its state cannot send raises ``TransitionNotAllowed`` — a bug,
surfaced, never swallowed. Cancellation at any await (Ctrl-C, an outer ``move_on_after``)
records the run as ``cancelled`` under a shielded scope and re-raises.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import trio

from ..definition import Workflow, machine_class
from ..errors import FlowError, redact
from ..pricing import NANO
from ..store.base import RunEnd, RunStatus
from .context import AttemptSummary, RunContext, RunEnv, RunRequest
from .handlers import HANDLERS, build_reply, write_recovery
from .records import FlowRecord

log = logging.getLogger("demiarch_flow")


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: what ``run --json`` prints and what the CLI's exit code comes from."""

    run_id: str
    conversation_id: str | None
    status: str
    final_state: str
    model: str | None
    content: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: Decimal | None
    cost_source: str | None
    attempts: tuple[AttemptSummary, ...]
    transitions: tuple[FlowRecord, ...]
    error: FlowError | None
    virtual_wait_s: float

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def error_class(self) -> str | None:
        return getattr(self.error, "error_class", None) if self.error else None

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object (same fields for failed runs)."""
        return {
            "run_id": self.run_id,
            "conversation_id": self.conversation_id,
            "status": self.status,
            "final_state": self.final_state,
            "model": self.model,
            "content": self.content,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": str(self.cost_usd) if self.cost_usd is not None else None,
            "cost_source": self.cost_source,
            "attempts": [
                {
                    "model": a.model,
                    "outcome": a.outcome,
                    "error_class": a.error_class,
                    "status": a.status,
                    "wait_s": a.wait_s,
                    "latency_ms": a.latency_ms,
                }
                for a in self.attempts
            ],
            "transitions": [
                {
                    "from": t.from_state,
                    "event": t.event,
                    "to": t.to_state,
                    "model": t.model,
                    "attempt": t.attempt,
                    "error_class": t.error_class,
                    "wait_s": t.wait_s,
                    "at": t.wall.isoformat(),
                }
                for t in self.transitions
            ],
            "error_class": self.error_class,
            "error_message": str(self.error) if self.error else None,
        }


async def run_workflow(workflow: Workflow, request: RunRequest, env: RunEnv) -> RunOutcome:
    """Drive one run of ``workflow`` from its initial state to a final one.

    Raises:
        trio.Cancelled: re-raised after the run is recorded as cancelled.
    """
    ctx = RunContext(workflow=workflow, env=env, request=request)
    return await drive(ctx)


async def drive(ctx: RunContext) -> RunOutcome:
    """Run ``ctx`` to completion (exposed for tests that prepare a context themselves)."""
    wf = ctx.workflow
    machine = machine_class(wf)()
    ctx.state = machine.current_state_value
    transitions: list[FlowRecord] = []
    started = trio.current_time()
    status = "failed"
    try:
        while True:
            spec = wf.state(ctx.state)
            if spec.final:
                if spec.action:
                    await HANDLERS[spec.action](ctx)
                break
            assert spec.action is not None
            event = await HANDLERS[spec.action](ctx)
            before = ctx.state
            machine.send(event)
            ctx.state = machine.current_state_value
            wait, ctx.pending_wait_s = ctx.pending_wait_s, None
            record = await ctx.emit(
                "transition",
                from_state=before,
                event=event,
                to_state=ctx.state,
                model=ctx.model,
                attempt=ctx.attempt or None,
                error_class=_cause(ctx, event),
                wait_s=wait,
            )
            transitions.append(record)
            if event == "saved":
                status = "succeeded"
        if status != "succeeded" and not ctx.failure_recorded:
            # A user's workflow may end a failed run in a final state without the fail action.
            await HANDLERS["fail"](ctx)
    except trio.Cancelled:
        with trio.CancelScope(shield=True):
            await _record_end(ctx, "cancelled", "cancelled", f"cancelled in state {ctx.state}")
            await ctx.emit("finished", run_status="cancelled", to_state=ctx.state)
        raise
    except Exception as exc:
        # A bug or an unexpected error: the run must not stay 'running' in the database, and a
        # reply that arrived but was not stored must not be lost.
        with trio.CancelScope(shield=True):
            _rescue_reply(ctx, exc)
            await _record_end(ctx, "failed", "internal", f"{type(exc).__name__}: {exc}")
            await ctx.emit("finished", run_status="failed", to_state=ctx.state)
        raise
    await ctx.emit("finished", run_status=status, to_state=ctx.state, model=_answered(ctx))
    done = ctx.completion if status == "succeeded" else None
    return RunOutcome(
        run_id=ctx.run_id,
        conversation_id=ctx.conversation_id,
        status=status,
        final_state=ctx.state,
        model=_answered(ctx),
        content=done.content if done else None,
        prompt_tokens=done.prompt_tokens if done else None,
        completion_tokens=done.completion_tokens if done else None,
        cost_usd=ctx.cost_usd if done else None,
        cost_source=ctx.cost_source if done else None,
        attempts=tuple(ctx.attempts),
        transitions=tuple(transitions),
        error=None if status == "succeeded" else ctx.failure,
        virtual_wait_s=trio.current_time() - started,
    )


def _rescue_reply(ctx: RunContext, exc: Exception) -> None:
    """Write a paid-for reply that an unexpected error kept out of the store to the recovery
    file (the cost Persist computed, if it got that far)."""
    if ctx.completion is None or ctx.saved_message_id is not None:
        return
    if ctx.last_attempt is None or ctx.conversation_id is None:
        return
    usd, source = ctx.cost_usd, ctx.cost_source
    if usd is None or source is None:
        usd, source = Decimal(0).quantize(NANO), "unknown"
    try:
        write_recovery(ctx, build_reply(ctx, usd, source, ctx.env.now()), exc)
    except Exception:  # the original error is the one to report
        log.exception("could not write the reply to the recovery file:\n%s", ctx.completion.content)


def _answered(ctx: RunContext) -> str | None:
    return ctx.completion.model if ctx.completion and ctx.saved_message_id else None


def _cause(ctx: RunContext, event: str) -> str | None:
    """The error class behind a transition (``None`` for the happy-path events)."""
    if event in ("loaded", "succeeded", "saved"):
        return None
    if event == "failed":
        return getattr(ctx.failure, "error_class", None)
    return ctx.last_error.error_class if ctx.last_error else None


async def _record_end(ctx: RunContext, status: RunStatus, error_class: str, message: str) -> None:
    with contextlib.suppress(FlowError):
        await ctx.env.store.finish_run(
            RunEnd(ctx.run_id, status, ctx.state, None, error_class, redact(message), ctx.env.now())
        )
