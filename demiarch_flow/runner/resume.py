"""Resuming a run from its last checkpoint, without paying twice.

Like a Step Functions redrive, a failed, cancelled or stale run goes on under the same run id,
in the same conversation, from the state it stopped in (a failed run from the state that
failed), with fresh per-model retry counters and ``resume_count`` one higher; the journal shows
the resume as a transition. Nothing that was already paid for is paid for again:

* a run that saved its reply is only reported;
* a reply waiting in the recovery file is stored from there;
* a request that was sent but never recorded (the process died), or a stream cancelled after
  its generation was named (the provider may bill what it generated), is looked up by its
  generation id (``GET /generation``, retried a few times: the record appears late) and booked
  in ``llm_usage`` as a billed attempt, once; without a generation id the journal says the
  earlier attempt may have been billed, and the request is sent again;
* a completion that was checkpointed but not stored is persisted without a request;
* so is a stream's answer that was kept with its attempt when its ``finish_reason`` arrived,
  the process dying (or cancelled) before the attempt returned it: the run re-enters the state
  an answer leads to (Persist), which books it as the reply — at ``GET /generation``'s figure,
  once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from ..client.classify import Completion
from ..client.openrouter import GenerationCost
from ..definition import Workflow, parse_workflow
from ..errors import DefinitionError, ErrorClass, UsageError
from ..pricing import Cost
from ..store.base import (
    AttemptRow,
    BilledAttempt,
    Checkpoint,
    Definition,
    JournalEntry,
    StoredRun,
)
from .attempt import answer_cost
from .context import RunEnv, model_chain, new_id
from .engine import RunOutcome, drive
from .limits import UNBOOKED_KEPT
from .owner import STALE_AFTER_S, effective_status
from .recovery import read_recovery, recovery_path
from .state import AttemptInfo, RunState

#: Look-ups of a generation's cost (0.5 s, then doubling: OpenRouter's record appears late).
LOOKUP_TRIES = 5
RESUMABLE = frozenset({"failed", "cancelled", "stale"})


class NotResumable(UsageError):
    """The run cannot be resumed (exit 2): it is running, unknown, or has no checkpoint."""


@dataclass(frozen=True, slots=True)
class Resumed:
    """What ``runs resume`` did: the run's outcome, and whether anything ran again."""

    outcome: RunOutcome
    ran: bool
    """``False``: the run had its reply already (stored, or recovered from the file)."""
    recovered: bool = False


def saved_outcome(run: StoredRun) -> RunOutcome:
    """The outcome of a run whose reply is stored, as ``run --json`` reports it."""
    reply = run.reply
    assert reply is not None
    state = RunState.from_json(run.state_json) if run.state_json else None
    return RunOutcome(
        run_id=run.run_id,
        conversation_id=run.conversation_id,
        status="succeeded",
        final_state=run.current_state or "",
        model=reply.model,
        content=reply.content,
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
        cost_usd=reply.cost_usd,
        cost_source=reply.cost_source,
        attempts=state.attempts if state else (),
        transitions=(),
        error=None,
        virtual_wait_s=0.0,
        resume_count=run.resume_count,
    )


async def resume_run(
    run_id: str,
    env: RunEnv,
    *,
    workflow: Workflow | None = None,
    stale_after_s: float = STALE_AFTER_S,
) -> Resumed:
    """Continue run ``run_id`` from its last checkpoint (see the module doc).

    Args:
        workflow: run the rest under this definition instead of the stored one.
        stale_after_s: how old an owner's heartbeat must be for the run to be taken from it.

    Raises:
        NotResumable: no such run, it is still running, or it cannot be continued.
    """
    run = await env.store.load_run(run_id)
    if run is None:
        raise NotResumable(f"no run with id {run_id!r} in this database")
    if run.reply is not None:
        return Resumed(saved_outcome(run), ran=False)
    status = effective_status(run, env.now(), stale_after_s=stale_after_s)
    if status == "running":
        raise NotResumable(
            f"run {run_id} is still running (owner {run.owner}, heartbeat"
            f" {run.heartbeat_at.isoformat() if run.heartbeat_at else 'never'}); it becomes"
            " resumable once its process is gone"
        )
    if await _recover_from_file(run, env):
        again = await env.store.load_run(run_id)
        assert again is not None
        assert again.reply is not None
        return Resumed(saved_outcome(again), ran=False, recovered=True)
    if status not in RESUMABLE:
        raise NotResumable(
            f"run {run_id} is {status}; only failed, cancelled and stale runs resume"
        )
    if not run.state_json:
        raise NotResumable(
            f"run {run_id} has no checkpoint (it was written by an earlier release, or failed"
            " before it began); start a new run instead"
        )
    state = RunState.from_json(run.state_json)
    if run.conversation_id is None:
        raise NotResumable(
            f"run {run_id} never stored its message ({run.error_class or 'no conversation'});"
            " start a new run instead"
        )
    # LoadContext's own commit carries the checkpoint taken before it ran: a run killed
    # before its next commit has the conversation on its row only.
    state = dataclasses.replace(state, conversation_id=run.conversation_id)
    wf = workflow or _stored_workflow(run)
    if workflow is not None:
        state = _rechained(state, run, workflow)
    point = resume_point(wf, state)
    entries: list[JournalEntry] = []
    seq = state.seq
    kept = _unkept_answer(wf, run, state)
    for attempt in await _unbooked_attempts(env, run):
        if kept is not None and attempt.number == kept[0].number:
            continue  # booked as the reply
        seq += 1
        entries.append(await _settle_lost_attempt(env, run, state, attempt, seq))
    now = env.now()  # after the look-ups: the journal's times go forward with its rows
    if kept is not None:
        seq += 1
        state, point, entry = await _take_answer(env, state, kept, seq, now)
        entries.append(entry)
    seq += 1
    entries.append(
        JournalEntry(
            run.run_id, seq, state.state, "resume", point, state.model, None, None, None, now
        )
    )
    resumed = dataclasses.replace(
        state,
        state=point,
        attempt=0,
        retries=0,
        # Attempt numbers go on after every request the run is known to have sent.
        total_attempts=max([state.total_attempts, *(a.number for a in run.attempts)]),
        failure=None,
        wait=None,
        entered_by="resume",
        came_from=state.state,
        seq=seq,
        resume_count=run.resume_count + 1,
    )
    edited = workflow is not None and workflow.text and workflow.sha256 != run.workflow_sha256
    taken = await env.store.reopen_run(
        Checkpoint(run.run_id, point, resumed.model, resumed, tuple(entries)),
        env.owner,
        now,
        expect=(run.status, run.owner),
        # the rest runs under the edited definition, and so will a later resume without one
        definition=Definition(wf.name, wf.sha256, wf.text) if edited else None,
    )
    if not taken:
        raise NotResumable(f"run {run_id} was resumed by another process just now")
    return Resumed(await drive(wf, resumed, env, resumed=True), ran=True)


def resume_point(wf: Workflow, state: RunState) -> str:
    """The state a resumed run re-enters.

    A run that stopped mid-way (cancelled, stale) goes on where it stood. A run that ended in a
    final state goes back to the state that failed (``came_from``); when that was Backoff or
    Fallback — the chain was used up — it re-enters the state they lead on to, on its last
    model with fresh counters (a redrive of the failed step, not of the whole chain).
    """
    spec = wf.state(state.state) if state.state in wf.state_names else None
    if spec is not None and not spec.final:
        return state.state
    back = state.came_from
    if back is None or back not in wf.state_names:
        raise NotResumable(
            f"run {state.run_id} ended in {state.state} and its checkpoint does not say which"
            " state failed"
        )
    action = wf.state(back).action
    onward = {"backoff": "retry", "fallback": "next_model"}.get(action or "")
    if onward is not None:
        return wf.state(back).target(onward) or back
    return back


def _rechained(state: RunState, run: StoredRun, wf: Workflow) -> RunState:
    """A run resumed under another definition takes that definition's model chain (a
    ``--model`` the run started with stays its first model), and goes on with the model it
    stood on if the new chain has it, else from the new chain's start. Without the run's own
    definition to tell a ``--model`` apart, its chain is kept."""
    if not run.definition:
        return state
    try:
        started = parse_workflow(run.definition).models
    except DefinitionError:
        return state
    override = state.chain[0] if state.chain and state.chain[0] != started[0] else None
    chain = model_chain(wf, override)
    if chain == state.chain:
        return state
    index = chain.index(state.model) if state.model in chain else 0
    return dataclasses.replace(state, chain=chain, model_index=index)


def _stored_workflow(run: StoredRun) -> Workflow:
    if run.definition is None:
        raise NotResumable(
            f"run {run.run_id} has no stored definition (workflow {run.workflow!r}, sha256"
            f" {run.workflow_sha256[:12]}): pass --workflow FILE to resume it under a file"
        )
    try:
        return parse_workflow(run.definition, source=f"<definition of run {run.run_id}>")
    except DefinitionError as exc:
        raise NotResumable(
            f"the stored definition of run {run.run_id} no longer validates: {exc}; pass"
            " --workflow FILE"
        ) from None


async def _recover_from_file(run: StoredRun, env: RunEnv) -> bool:
    """Store this run's reply from the recovery file, if it is there."""
    path = recovery_path(env.recovery_dir)
    if not path.is_file():
        return False
    entries, _bad = read_recovery(path)
    for entry in reversed(entries):
        if entry.reply.run_id == run.run_id:
            result = await env.store.import_reply(entry.reply, entry.final_state)
            return result in ("imported", "present")
    return False


async def _unbooked_attempts(env: RunEnv, run: StoredRun) -> list[AttemptRow]:
    """The requests that may have cost money no ``llm_usage`` row shows yet: those sent and
    never recorded (a crash), and streams cancelled after their generation was named (Ctrl-C:
    the provider may bill what it generated, and only ``GET /generation`` knows what) that
    no earlier resume has settled."""
    settled = {
        e.attempt
        for e in await env.store.journal(run.run_id)
        if e.event in ("attempt_billed", "attempt_unrecorded")
    }
    return [
        a
        for a in run.attempts
        if a.ended_at is None
        or (a.error_class == ErrorClass.CANCELLED and a.generation_id and a.number not in settled)
    ]


async def _settle_lost_attempt(
    env: RunEnv, run: StoredRun, state: RunState, attempt: AttemptRow, seq: int
) -> JournalEntry:
    """Book what a request that was sent but never recorded (or cancelled) cost, and journal
    it; a request never recorded is closed as ``unrecorded``, a cancelled one stays as it is.

    A named generation was billed: it is booked at ``GET /generation``'s figure, or — when the
    record cannot be found — at an estimate (the prompt and the text received, at the price
    table's rates: ``estimated``), never left out of ``llm_usage``. The budget keeps the
    attempt's worst case in all unless the provider's figure is known.
    """
    now = env.now()
    event = "attempt_unrecorded"
    booked, certain = Decimal(0), False
    if attempt.generation_id and run.conversation_id is not None:
        found = await _look_up(env, attempt.generation_id)
        if found is not None and found.cost_usd is not None:
            cost = Cost(found.cost_usd, "provider")
            tokens = found.prompt_tokens, found.completion_tokens
            certain = True
        else:
            received = Completion(
                attempt.partial_text or "", attempt.model, attempt.generation_id,
                None, None, None, None, None, None,
            )  # fmt: skip
            cost, tokens = answer_cost(env, state, received), (None, None)
        await env.store.book_billed(
            BilledAttempt(
                usage_id=new_id(), run_id=run.run_id, conversation_id=run.conversation_id,
                project_id=state.project_id, model=attempt.model,
                generation_id=attempt.generation_id, prompt_tokens=tokens[0],
                completion_tokens=tokens[1], cost_usd=cost.usd, cost_source=cost.source,
                attempt=attempt.number, at=now,
            )
        )  # fmt: skip
        booked, event = cost.usd, "attempt_billed"
    await env.limits.shared.settle_lost(
        run.run_id, attempt.number, booked, now + UNBOOKED_KEPT, certain=certain
    )
    cls = ErrorClass.CANCELLED
    if attempt.ended_at is None:
        cls = ErrorClass.UNRECORDED
        await env.store.attempt_ended(dataclasses.replace(attempt, ended_at=now, error_class=cls))
    return JournalEntry(
        run.run_id, seq, state.state, event, state.state, attempt.model, attempt.number,
        cls, None, now,
    )  # fmt: skip


def _unkept_answer(wf: Workflow, run: StoredRun, state: RunState) -> tuple[AttemptRow, str] | None:
    """The whole answer a stream delivered and its attempt never returned (the process died or
    was cancelled while the usage chunk was awaited), with the state it leads to; ``None`` when
    there is none, the checkpoint holds an answer already, or the definition has no way from
    the run's Request state to a state that stores it (the request is then sent again)."""
    if state.completion is not None:
        return None
    answered = [a for a in run.attempts if a.answer_unkept]
    if not answered:
        return None
    asking = [n for n in wf.state_names if wf.state(n).action == "request"]
    here = state.state if state.state in asking else (asking[0] if len(asking) == 1 else None)
    onward = wf.state(here).target("succeeded") if here is not None else None
    if onward is None:
        return None
    return answered[-1], onward


async def _take_answer(
    env: RunEnv, state: RunState, kept: tuple[AttemptRow, str], seq: int, now: datetime
) -> tuple[RunState, str, JournalEntry]:
    """The run holding the kept answer, the state it re-enters, and the journal row that says
    so; the attempt row is closed as answered (in the commit that reopens the run)."""
    row, onward = kept
    assert row.partial_text is not None
    done = Completion(
        row.partial_text, row.response_model or row.model, row.generation_id, row.finish_reason,
        None, None, None, None, None,
    )  # fmt: skip
    info = AttemptInfo(
        number=row.number, model=row.model, outcome="ok", error_class=None, status=row.status,
        wait_s=None, latency_ms=row.latency_ms or 0, generation_id=row.generation_id,
    )  # fmt: skip
    await env.store.attempt_ended(
        dataclasses.replace(
            row, ended_at=row.ended_at or now, status=200, error_class=None, partial_text=None
        )
    )
    answered = dataclasses.replace(
        state, completion=done, attempts=(*state.attempts, info), last_error=None
    )
    entry = JournalEntry(
        state.run_id, seq, state.state, "attempt_answered", onward, row.model, row.number,
        None, None, now,
    )  # fmt: skip
    return answered, onward, entry


async def _look_up(env: RunEnv, generation_id: str) -> GenerationCost | None:
    """What OpenRouter billed for the generation (retried: the record appears late)."""
    found = await env.client.generation_cost(generation_id, tries=LOOKUP_TRIES)
    return found if found is not None and found.cost_usd is not None else None
