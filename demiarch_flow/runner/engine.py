"""The trio runner: handler → :class:`Step` → ``machine.send(event)`` → checkpoint, until final.

One reduction drives every run (:func:`advance`): the current state's handler returns a step;
the engine reports its records, sleeps the step's wait (after a durable checkpoint, so a run
killed while it waits is found where it was), sends the event to the machine — the transition
table read off the workflow's python-statemachine class, the single source of truth for where
the run goes (:mod:`.table`; ``DEMIARCH_FLOW_MACHINE=statemachine`` drives an instance of the
class instead) — and queues a checkpoint of the new :class:`RunState` with its journal row.
Checkpoints ride on the next commit, and a commit always happens before the next thing that
costs money or time: Request records its attempt durably before sending, Backoff's wait is
preceded by one, Persist and Failed commit the end.

A handler returning an event its state cannot send raises ``TransitionNotAllowed`` — a bug,
surfaced, never swallowed. Cancellation at any await (Ctrl-C, SIGTERM, an outer
``move_on_after``) records the run as ``cancelled`` under a shielded scope and re-raises; any
other exception records it ``failed`` with class ``internal`` — and a reply that had arrived but
was not stored goes to the recovery file first.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import trio

from .._frozen import quick
from ..definition import Workflow
from ..errors import ErrorClass, FlowError, PersistenceError, redact
from ..store.base import Checkpoint, JournalEntry, RunEnd, RunStatus
from .attempt import keep_paid_answer, store_reply
from .context import RunEnv, RunRequest, model_chain, new_id
from .handlers import HANDLERS, record
from .records import FlowRecord, RunStart
from .state import AttemptInfo, ErrorInfo, Message, RunState, Settlement, Step, evolve
from .table import Machine, start_machine, table_for
from .transition import cause, journal_entry, moved, stay_entry

log = logging.getLogger("demiarch_flow")


@quick
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
    attempts: tuple[AttemptInfo, ...]
    transitions: tuple[FlowRecord, ...]
    error: FlowError | None
    virtual_wait_s: float
    resume_count: int = 0

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def error_class(self) -> ErrorClass | None:
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
                    "partial_chars": a.partial_chars,
                    "first_token_ms": a.first_token_ms,
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


def initial_state(workflow: Workflow, request: RunRequest, run_id: str | None = None) -> RunState:
    """The state a new run starts in: the workflow's initial state, the user's message."""
    return RunState(
        run_id=run_id or new_id(),
        state=workflow.initial,
        chain=model_chain(workflow, request.model),
        project_id=request.project_id,
        conversation_id=request.conversation_id,
        messages=(Message("user", request.message),),
        stream=request.stream,
        trace=request.traceparent,
    )


async def run_workflow(
    workflow: Workflow, request: RunRequest, env: RunEnv, *, run_id: str | None = None
) -> RunOutcome:
    """Drive one run of ``workflow`` from its initial state to a final one.

    Args:
        run_id: the new run's id (default: a fresh one), for a caller that must be able to
            name the run before it ends (``batch`` notes it as the run starts).

    Raises:
        trio.Cancelled: re-raised after the run is recorded as cancelled.
    """
    return await drive(workflow, initial_state(workflow, request, run_id), env)


async def emit(env: RunEnv, records: Iterable[FlowRecord]) -> None:
    """Send records to every listener, in order."""
    for r in records:
        for listener in env.listeners:
            await listener.on_record(r)


def checkpoint(env: RunEnv, state: RunState, entries: tuple[JournalEntry, ...] = ()) -> Checkpoint:
    """The store's view of ``state``: its JSON and the journal rows written with it, by this
    process (refused if another has taken the run over)."""
    return Checkpoint(
        run_id=state.run_id,
        current_state=state.state,
        model=state.model,
        state=state,
        entries=entries,
        owner=env.owner,
    )


async def advance(
    machine: Machine, wf: Workflow, state: RunState, env: RunEnv, books: Books | None = None
) -> tuple[Step, RunState, FlowRecord | None]:
    """Run one step of ``state``: its handler, its records, its wait, the machine's move.

    Returns the handler's step, the run state afterwards (moved to the machine's new state and
    checkpointed — queued, to ride on the next commit) and the transition record (``None`` for
    the action of a final state, which does not move).
    """
    spec = wf.state(state.state)
    assert spec.action is not None, f"state {state.state} has no action"
    step = await HANDLERS[spec.action](state, env, wf)
    if state.completion is None and step.state.completion is not None:
        # This step brought a paid-for answer: until its checkpoint is durable, nothing
        # (Ctrl-C, a store that fails, a bug) may take it away.
        own = books is None
        books = books or Books(env)
        try:
            applied = await _apply(machine, wf, state, step, env)
        except (Exception, trio.Cancelled) as exc:
            with trio.CancelScope(shield=True):
                await keep_paid_answer(env, wf, step.state, exc)
                books.hold(step)
                await books.settle()
            raise
        books.hold(step)
        if own:  # stepped alone (``testing``): nothing later would write them
            await books.settle()
        return applied
    return await _apply(machine, wf, state, step, env, books)


async def _apply(
    machine: Machine,
    wf: Workflow,
    state: RunState,
    step: Step,
    env: RunEnv,
    books: Books | None = None,
) -> tuple[Step, RunState, FlowRecord | None]:
    """The rest of :func:`advance`, once the handler has returned ``step``."""
    if step.stay:
        # A wait in place (a throttle): journalled durably — the run is about to be idle —
        # reported, slept; the machine does not move and the state's handler runs again.
        after, entry = stay_entry(state, step, env.now())
        await env.store.checkpoint(checkpoint(env, after, (entry,)), durable=True)
        await emit(env, step.records)
        assert step.wait is not None
        await trio.sleep(step.wait.seconds)
        return step, after, None
    spec = wf.state(state.state)
    if step.wait is not None:
        # The run is about to be idle for a while: make where it stands durable first.
        await env.store.checkpoint(checkpoint(env, step.state), durable=True)
    if env.listeners:
        await emit(env, step.records)
    if spec.final:
        return step, step.state, None
    if step.wait is not None:
        await trio.sleep(step.wait.seconds)
    committed: JournalEntry | None = None
    stored: RunState | None = None
    if step.reply is not None:
        cost = step.reply.cost_usd, step.reply.cost_source
        step, committed, stored = await _store_reply(wf, state, step, env)
        if books is not None:
            await books.settle(*cost)
    machine.send(step.event)
    target = machine.current_state_value
    after = stored if stored is not None and stored.state == target else moved(state, step, target)
    entry = committed or journal_entry(state, step, after, env.now())
    if entry.to_state != after.state:
        raise AssertionError(
            f"{state.state} --{step.event}--> the machine went to {after.state}, but the"
            f" table it was committed by says {entry.to_state}"
        )
    rec = FlowRecord(
        "transition", after.run_id, trio.current_time(), entry.at, from_state=state.state,
        event=step.event, to_state=after.state, model=entry.model, attempt=entry.attempt,
        error_class=cause(step), wait_s=entry.wait_s,
        wait_source=step.wait.source if step.wait else None,
    )  # fmt: skip
    if committed is None:
        # A paid-for answer not stored yet is made durable at once: after a crash before
        # Persist commits, resume stores it instead of paying for the request again.
        paid = after.completion is not None and after.saved_message_id is None
        await env.store.checkpoint(checkpoint(env, after, (entry,)), durable=paid)
    if env.listeners:
        await emit(env, (rec,))
    return step, after, rec


class Books:
    """The books of the attempt whose answer the run holds, until the answer's cost is known.

    The reservation of an attempt that brought an answer is settled at the cost the reply is
    stored with (Persist's: ``usage.cost``, else ``GET /generation``, else the price table),
    so every ledger books what ``llm_usage`` books — and only once the answer is durable: the
    first commit after an answer arrives carries the answer, so a process death in between
    cannot lose it. Until then the worst case stays reserved (counted too much, never too
    little); a run that ends otherwise settles at the attempt's own figure.
    """

    def __init__(self, env: RunEnv) -> None:
        self.env = env
        self.held: Settlement | None = None

    def hold(self, step: Step) -> None:
        if step.settlement is not None:
            if self.held is not None:  # a second answer in one run: never left unsettled
                raise AssertionError("two attempts' books held at once")
            self.held = step.settlement

    async def settle(self, usd: Decimal | None = None, source: str = "") -> None:
        """Write the held books (at the reply's cost ``usd`` from ``source``, when known);
        shielded: one short write, after money was spent."""
        held, self.held = self.held, None
        if held is None:
            return
        if usd is not None:
            held = held.at_cost(usd, source)
        with trio.CancelScope(shield=True):
            try:
                await self.env.limits.apply(held)
            except FlowError as exc:  # the answer matters more than the books
                log.warning("could not settle the attempt's budget reservation: %s", exc)


async def _store_reply(
    wf: Workflow, state: RunState, step: Step, env: RunEnv
) -> tuple[Step, JournalEntry | None, RunState | None]:
    """Commit a step's reply with its move: the reply, its usage row, the run's end, the
    checkpoint of the state the move leads to and its journal row, in one transaction (one
    commit ends a run). The target comes from the workflow's transition table, before the
    machine moves; a database that keeps failing turns the step into ``failed`` (the reply is
    in the recovery file). Returns the step to send, the journal row committed with it and the
    state it committed (``None``: the engine works it out from the step)."""
    reply = step.reply
    assert reply is not None
    target = table_for(wf).target(state.state, step.event)
    after = moved(state, step, target)
    now = env.now()
    entry = journal_entry(state, step, after, now)
    end = RunEnd(state.run_id, "succeeded", target, reply.model, None, None, now, env.owner)
    try:
        saved_id = await store_reply(env, reply, end, checkpoint(env, after, (entry,)))
    except PersistenceError as exc:
        unsaved = evolve(step.state, saved_message_id=None)
        return Step("failed", unsaved.failed(ErrorInfo.of(exc)), step.records), None, None
    if saved_id != step.state.saved_message_id:  # the run had a reply already: that one
        saved = evolve(step.state, saved_message_id=saved_id)
        return evolve(step, state=saved, reply=None), entry, None
    return evolve(step, reply=None), entry, after


async def drive(wf: Workflow, state: RunState, env: RunEnv, *, resumed: bool = False) -> RunOutcome:
    """Run ``state`` to a final state (a new run, or one resumed from its checkpoint)."""
    machine = start_machine(wf, state.state if resumed else None)
    transitions: list[FlowRecord] = []
    started = trio.current_time()
    if env.tracer is not None:  # before the first checkpoint, which keeps what it answers
        state = evolve(state, trace=env.tracer.start_run(_run_start(wf, state, env)))
    status: RunStatus = "failed"
    books = Books(env)
    try:
        while True:
            spec = wf.state(state.state)
            if spec.final and not spec.action:
                break
            step, state, rec = await advance(machine, wf, state, env, books)
            if step.stay:
                continue
            if rec is None:
                break
            transitions.append(rec)
            if step.event == "saved":
                status = "succeeded"
        if status != "succeeded" and wf.state(state.state).action != "fail":
            # A user's workflow may end a failed run in a final state without the fail action.
            _, state, _ = await _run_action("fail", wf, state, env)
    except trio.Cancelled as exc:
        with trio.CancelScope(shield=True):
            # an answer the run holds (in Persist, say) is stored now: a cancelled run's
            # reservations go with it, and its spend must not go with them
            await keep_paid_answer(env, wf, state, exc)
            await books.settle()
            await _record_end(env, state, "cancelled", ErrorClass.CANCELLED, "cancelled")
            await emit(env, [_finished(env, state, "cancelled", error=ErrorClass.CANCELLED)])
        raise
    except Exception as exc:
        # A bug or an unexpected error: the run must not stay 'running' in the database, and
        # a reply that had arrived must not be lost.
        with trio.CancelScope(shield=True):
            await keep_paid_answer(env, wf, state, exc)
            await books.settle()
            await _record_end(
                env, state, "failed", ErrorClass.INTERNAL, f"{type(exc).__name__}: {exc}"
            )
            await emit(env, [_finished(env, state, "failed", error=ErrorClass.INTERNAL)])
        raise
    await books.settle()  # a run that ended without storing its answer (a recovery file)
    answered = state.completion.model if state.completion and state.saved_message_id else None
    failed = state.failure.error_class if state.failure and status != "succeeded" else None
    if env.listeners:  # the record is theirs alone
        await emit(env, [_finished(env, state, status, answered, failed)])
    done = state.completion if status == "succeeded" else None
    failure = state.failure
    return RunOutcome(
        run_id=state.run_id,
        conversation_id=state.conversation_id,
        status=status,
        final_state=state.state,
        model=answered,
        content=done.content if done else None,
        prompt_tokens=done.prompt_tokens if done else None,
        completion_tokens=done.completion_tokens if done else None,
        cost_usd=state.cost_usd if done else None,
        cost_source=state.cost_source if done else None,
        attempts=state.attempts,
        transitions=tuple(transitions),
        error=None
        if status == "succeeded" or failure is None
        else failure.to_error(state.last_errors),
        virtual_wait_s=trio.current_time() - started,
        resume_count=state.resume_count,
    )


def _run_start(wf: Workflow, state: RunState, env: RunEnv) -> RunStart:
    return RunStart(
        state.run_id, wf.name, wf.sha256, state.conversation_id, state.resume_count,
        state.messages[-1].content if state.messages else None, state.trace,
        trio.current_time(), env.now(),
    )  # fmt: skip


def _finished(
    env: RunEnv,
    state: RunState,
    status: str,
    model: str | None = None,
    error: ErrorClass | None = None,
) -> FlowRecord:
    """The ``finished`` record: how the run ended, and what a trace's root span reports."""
    return record(
        env, state, "finished", run_status=status, to_state=state.state, model=model,
        cost_usd=state.cost_usd, conversation_id=state.conversation_id,
        attempts=state.total_attempts, error_class=error,
    )  # fmt: skip


async def _run_action(
    action: str, wf: Workflow, state: RunState, env: RunEnv
) -> tuple[Step, RunState, None]:
    step = await HANDLERS[action](state, env, wf)
    await emit(env, step.records)
    return step, step.state, None


async def _record_end(
    env: RunEnv, state: RunState, status: RunStatus, error_class: ErrorClass, message: str
) -> None:
    with contextlib.suppress(FlowError):
        await env.store.finish_run(
            RunEnd(state.run_id, status, state.state, None, error_class, redact(message),
                   env.now(), env.owner)
        )  # fmt: skip
