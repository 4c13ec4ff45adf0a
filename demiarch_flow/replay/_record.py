"""Reading the record: the runs to replay and what the provider did on each of their attempts.

A few bulk ``SELECT`` statements over a read-only engine (never a write, never a per-run
query: ten thousand runs take about two seconds of CPU), turned into frozen values. What a
row cannot say is collected as :attr:`Record.missing`, in words, for the report: runs of the
first release have no attempts or definition, and no release records a Retry-After that was
not waited.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import Engine, Select, select
from sqlalchemy.exc import SQLAlchemyError

from ..definition import Workflow, parse_workflow
from ..errors import DefinitionError, ErrorClass, StoreUnavailable
from ..store.tables import (
    ChatMessage,
    LlmUsage,
    RunAttempt,
    RunEvent,
    WorkflowDefinition,
    WorkflowRun,
)

#: Classes of rows the runner writes for a request it did not send (no provider behaviour).
UNSENT = frozenset(
    {ErrorClass.COOLING, ErrorClass.BUDGET_EXCEEDED, ErrorClass.CANCELLED, ErrorClass.UNRECORDED}
)
#: Statuses of a run that has ended (a running or stale run is not replayed).
ENDED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class Usage:
    """One ``llm_usage`` row: a billed generation."""

    model: str
    outcome: str
    generation_id: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: Decimal
    cost_source: str
    latency_ms: int = 0


@dataclass(frozen=True, slots=True)
class Observation:
    """What the provider did on one recorded request: the replay's unit of provider behaviour."""

    run_id: str
    number: int
    model: str
    at: datetime
    """When the request left (``run_attempts.started_at``)."""
    status: int | None
    error_class: str | None
    """``None``: it answered."""
    latency_ms: int
    seconds: float
    """How long the answer took (the row's ``ended_at − started_at``, exact to the
    microsecond; the latency alone for an attempt whose cost was then looked up)."""
    settle_s: float
    """How long its generation's cost look-up took after it (``GET /generation``)."""
    retry_after_s: float | None
    """The server's wait hint, as the journal shows it was honoured (``None``: none known)."""
    partial_text: str | None
    usage: Usage | None
    """The generation's ``llm_usage`` row (a reply, or an interrupted stream), if billed."""
    content: str | None = None
    """The reply's text (a successful request whose answer the run stored)."""
    unreachable: bool = False
    """A network error of a host that could not be reached at all (the run's checkpoint says
    so): the request never left, and no model behind that host is asked next."""


@dataclass(frozen=True, slots=True)
class Journal:
    """The facts of a run's journal the report counts."""

    retries: int = 0
    fallbacks: int = 0
    waits: tuple[float, ...] = ()
    """Every wait of the run, in order (backoff, Retry-After, cooldown, throttle), seconds."""


@dataclass(frozen=True, slots=True)
class RecordedRun:
    """One recorded run: how it ended, what it asked and what it was answered."""

    run_id: str
    workflow: str
    owner: str | None
    status: str
    error_class: str | None
    answered_by: str | None
    started_at: datetime
    finished_at: datetime | None
    message: str
    first_model: str | None
    """The model the run asked first when it was not its workflow's first (``run --model``)."""
    stream: bool | None
    """``run --stream``/``--no-stream`` as the checkpoint kept it (``None``: the file's)."""
    observations: tuple[Observation, ...]
    usage: tuple[Usage, ...]
    journal: Journal


@dataclass(frozen=True)
class Record:
    """The runs picked for a replay, oldest first, and what the record could not say."""

    runs: tuple[RecordedRun, ...]
    missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Selection:
    """Which recorded runs to replay (see ``simulate --replay``)."""

    workflow: str | None
    since: datetime | None
    until: datetime | None
    run_ids: tuple[str, ...] = ()
    limit: int | None = None


class _Attempt(NamedTuple):
    run_id: str
    number: int
    model: str
    started_at: datetime
    ended_at: datetime | None
    status: int | None
    error_class: str | None
    generation_id: str | None
    latency_ms: int | None
    partial_text: str | None


class _Event(NamedTuple):
    run_id: str
    from_state: str
    event: str
    model: str | None
    attempt: int | None
    error_class: str | None
    wait_s: float | None
    wait_source: str | None


#: The journal rows the replay reads (with every row that waited): the rest say nothing of
#: the provider, and skipping them halves the rows of a large record.
_COUNTED = ("retry", "next_model", "exhausted")


def _picked(sel: Selection) -> Select[Any]:
    q = select(WorkflowRun.id).where(WorkflowRun.status.in_(ENDED))
    if sel.run_ids:
        q = q.where(WorkflowRun.id.in_(sel.run_ids))
    if sel.workflow is not None:
        q = q.where(WorkflowRun.workflow == sel.workflow)
    if sel.since is not None:
        q = q.where(WorkflowRun.started_at >= sel.since)
    if sel.until is not None:
        q = q.where(WorkflowRun.started_at < sel.until)
    if sel.limit is not None:  # the latest N
        q = q.order_by(WorkflowRun.started_at.desc(), WorkflowRun.id).limit(sel.limit)
    return q


def read_record(engine: Engine, sel: Selection) -> Record:
    """The runs ``sel`` picks, with their attempts, usage, journal and messages.

    Raises:
        StoreUnavailable: the database could not be read.
    """
    try:
        with engine.connect() as conn:
            picked = _picked(sel).subquery()
            ids = select(picked.c.id)
            runs = conn.execute(
                select(WorkflowRun)
                .where(WorkflowRun.id.in_(ids))
                .order_by(WorkflowRun.started_at, WorkflowRun.id)
            ).all()
            attempts = [
                _Attempt._make(row)
                for row in conn.execute(
                    select(*(getattr(RunAttempt, f) for f in _Attempt._fields))
                    .where(RunAttempt.run_id.in_(ids))
                    .order_by(RunAttempt.run_id, RunAttempt.number)
                )
            ]
            usage = conn.execute(select(LlmUsage).where(LlmUsage.run_id.in_(ids))).all()
            events = [
                _Event._make(row)
                for row in conn.execute(
                    select(*(getattr(RunEvent, f) for f in _Event._fields))
                    .where(
                        RunEvent.run_id.in_(ids),
                        RunEvent.event.in_(_COUNTED) | RunEvent.wait_s.is_not(None),
                    )
                    .order_by(RunEvent.run_id, RunEvent.seq)
                )
            ]
            messages = conn.execute(
                select(
                    ChatMessage.run_id, ChatMessage.role, ChatMessage.content, ChatMessage.id
                ).where(ChatMessage.run_id.in_(ids))
            ).all()
            shas = {r.workflow_sha256 for r in runs}
            texts = dict(
                conn.execute(
                    select(WorkflowDefinition.sha256, WorkflowDefinition.text).where(
                        WorkflowDefinition.sha256.in_(shas)
                    )
                ).all()
            )
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"cannot read the recorded runs: {type(exc).__name__}") from None
    return _assemble(runs, attempts, usage, events, messages, texts)


def _assemble(
    runs: Sequence[Any],
    attempts: Sequence[_Attempt],
    usage: Sequence[Any],
    events: Sequence[_Event],
    messages: Sequence[Any],
    texts: dict[str, str],
) -> Record:
    by_run: dict[str, list[_Attempt]] = {}
    for a in attempts:
        by_run.setdefault(a.run_id, []).append(a)
    usage_of: dict[str, list[Usage]] = {}
    for u in usage:
        row = Usage(u.model, u.outcome, u.generation_id, u.prompt_tokens, u.completion_tokens,
                    u.cost_usd, u.cost_source, u.latency_ms)  # fmt: skip
        usage_of.setdefault(u.run_id or "", []).append(row)
    events_of: dict[str, list[_Event]] = {}
    for e in events:
        events_of.setdefault(e.run_id, []).append(e)
    user: dict[str, str] = {}
    reply_text: dict[str, str] = {}
    for m in messages:
        if m.role == "user":
            user[m.run_id] = m.content
        elif m.role == "assistant":
            reply_text[m.run_id] = m.content
    definitions: dict[str, Workflow | None] = {}
    missing: Counter[str] = Counter()
    out: list[RecordedRun] = []
    for run in runs:
        if run.status == "cancelled":
            missing["cancelled (Ctrl-C, SIGTERM): not replayed — an interruption is not the"
                    " provider's behaviour"] += 1  # fmt: skip
            continue
        if run.resume_count:
            missing["resumed after a crash: replayed as one uninterrupted run"] += 1
        sha = run.workflow_sha256
        if sha not in definitions:
            definitions[sha] = _definition(texts.get(sha))
        wf = definitions[sha]
        if wf is None:
            missing["no stored workflow definition (first-release runs): a Retry-After they"
                    " did not wait is not guessed"] += 1  # fmt: skip
        runs_events = events_of.get(run.id, [])
        hints, guessed = _hints(runs_events, wf)
        if guessed:
            missing["a Retry-After over max_delay_s that was not waited, so not recorded:"
                    " replayed as max_delay_s + 1 s"] += guessed  # fmt: skip
        rows = by_run.get(run.id, [])
        observations = _observations(run.id, rows, usage_of.get(run.id, []), hints,
                                     reply_text.get(run.id),
                                     _UNREACHABLE in (run.state_json or ""))  # fmt: skip
        if not rows:
            reply = next((u for u in usage_of.get(run.id, []) if u.outcome == "reply"), None)
            if reply is not None:
                missing[
                    "no recorded attempts (first-release runs): only their answer is known"
                    " (its model, latency and cost), not what failed before it"
                ] += 1
                observations = (_answer_only(run, reply, reply_text.get(run.id)),)
            else:
                missing["no recorded attempts and no answer (first-release runs): replayed"
                        " from the other runs of their models"] += 1  # fmt: skip
        first, stream = _asked(run.state_json, wf)
        out.append(
            RecordedRun(
                run_id=run.id,
                workflow=run.workflow,
                owner=run.owner,
                status=run.status,
                error_class=run.error_class,
                answered_by=next(
                    (u.model for u in usage_of.get(run.id, []) if u.outcome == "reply"), None
                ),
                started_at=run.started_at,
                finished_at=run.finished_at,
                message=user.get(run.id, ""),
                first_model=first,
                stream=stream,
                observations=observations,
                usage=tuple(usage_of.get(run.id, [])),
                journal=_journal(runs_events),
            )
        )
    notes = tuple(f"{n} run{'s' if n != 1 else ''}: {what}" for what, n in missing.items())
    return Record(tuple(out), notes)


def _definition(text: str | None) -> Workflow | None:
    if text is None:
        return None
    try:
        return parse_workflow(text, "<recorded definition>")
    except DefinitionError:
        return None


def _hints(
    events: Sequence[_Event], wf: Workflow | None
) -> tuple[dict[tuple[str, int], float], int]:
    """(model, attempt on that model) → the Retry-After the run waited after it; and how many
    hints had to be guessed (a model left at once after a retryable error with retries left:
    the server asked for more than ``max_delay_s``, and the journal keeps no figure)."""
    hints: dict[tuple[str, int], float] = {}
    guessed = 0
    for e in events:
        if e.model is None or e.attempt is None:
            continue
        if e.event == "retry" and e.wait_source == "retry_after" and e.wait_s is not None:
            hints[(e.model, e.attempt)] = float(e.wait_s)
        elif (
            e.event == "exhausted"
            and wf is not None
            and e.from_state in wf.state_names
            and wf.state(e.from_state).action == "backoff"
            and wf.retry.respect_retry_after
            and e.error_class in wf.retry.when
            and e.attempt <= wf.retry.max_retries
        ):
            hints[(e.model, e.attempt)] = wf.retry.max_delay_s + 1.0
            guessed += 1
    return hints, guessed


def _observations(
    run_id: str,
    rows: Sequence[_Attempt],
    usage: Sequence[Usage],
    hints: dict[tuple[str, int], float],
    reply_text: str | None,
    unreachable: bool = False,
) -> tuple[Observation, ...]:
    by_generation = {u.generation_id: u for u in usage if u.generation_id}
    reply = next((u for u in usage if u.outcome == "reply"), None)
    on_model: Counter[str] = Counter()
    out: list[Observation] = []
    for a in rows:
        if a.latency_ms is None or a.error_class in UNSENT or not a.model:
            continue  # never sent, or never answered (a crash): no provider behaviour
        on_model[a.model] += 1
        billed = by_generation.get(a.generation_id) if a.generation_id else None
        answered = a.error_class is None
        took = (a.ended_at - a.started_at).total_seconds() if a.ended_at else None
        latency = a.latency_ms / 1000
        looked_up = not answered and billed is not None
        seconds = latency if took is None or looked_up else took
        settle = max(0.0, took - latency) if took is not None and looked_up else 0.0
        if answered and billed is None:
            billed = reply  # the run's one answer (a proxy may rename a generation)
        out.append(
            Observation(
                run_id=run_id, number=a.number, model=a.model, at=a.started_at,
                status=a.status, error_class=a.error_class, latency_ms=a.latency_ms,
                seconds=seconds, settle_s=settle,
                retry_after_s=hints.get((a.model, on_model[a.model])),
                partial_text=a.partial_text, usage=billed,
                content=reply_text if answered and billed is reply else None,
                unreachable=unreachable and a.error_class == ErrorClass.NETWORK_ERROR
                and a.status is None,
            )
        )  # fmt: skip
    return tuple(out)


_UNREACHABLE = '"unreachable":true'
"""How a checkpoint (compact JSON) marks an error of a host that could not be reached."""
_CHAIN = re.compile(r'"chain":\["((?:[^"\\]|\\.)*)"')
_STREAM = re.compile(r'"stream":(true|false)')


def _answer_only(run: Any, reply: Usage, text: str | None) -> Observation:
    """A first-release run's one known request: the answer it stored, asked at its start."""
    return Observation(
        run_id=run.id, number=1, model=reply.model, at=run.started_at, status=200,
        error_class=None, latency_ms=reply.latency_ms, seconds=reply.latency_ms / 1000,
        settle_s=0.0, retry_after_s=None, partial_text=None, usage=reply, content=text,
    )  # fmt: skip


def _asked(state_json: str | None, wf: Workflow | None) -> tuple[str | None, bool | None]:
    """The run's own first model (when it replaced the file's) and stream choice, from its
    checkpoint. Read with two patterns instead of a JSON parse of the whole state (ten
    thousand checkpoints take a second to parse): the checkpoint is compact JSON, so a
    quotation mark outside a string is the key's own."""
    if not state_json:
        return None, None
    chain = _CHAIN.search(state_json)
    first = json.loads(f'"{chain[1]}"') if chain else None
    if wf is not None and first == wf.models[0]:
        first = None
    stream = _STREAM.search(state_json)
    return first, (stream[1] == "true") if stream else None


def _journal(events: Sequence[_Event]) -> Journal:
    return Journal(
        retries=sum(1 for e in events if e.event == "retry"),
        fallbacks=sum(1 for e in events if e.event == "next_model"),
        waits=tuple(float(e.wait_s) for e in events if e.wait_s is not None),
    )
