"""The run as a value: :class:`RunState`, what a handler returns (:class:`Step`), and their JSON.

A run's progress is one frozen, typed value. A handler never pokes a shared object: it gets the
current :class:`RunState` and returns a :class:`Step` — the event for the machine, the new
state, the records to report, and the wait the engine must sleep before sending the event. The
engine applies the step, so the same reduction drives a live run, one step under test
(:func:`demiarch_flow.testing.run_state`) and a run resumed from its last checkpoint.

Everything here round-trips through JSON (:meth:`RunState.to_json` / :meth:`RunState.from_json`),
which is how a checkpoint is stored in ``workflow_runs.state_json``. Pure data: no I/O.
"""

from __future__ import annotations

import dataclasses
import json
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from .._frozen import evolve, quick
from ..client.classify import Completion
from ..definition.limits import RateBucket
from ..errors import AllModelsFailed, ErrorClass, FlowError, ProviderError, RunError
from ..store.base import Reply
from .records import FlowRecord, WaitSource

#: Bumped when the JSON layout of :class:`RunState` changes incompatibly.
STATE_FORMAT = 1

__all__ = ["evolve"]  # re-exported: the runner's modules copy values through it


@dataclass(frozen=True, slots=True)
class Wait:
    """A sleep the engine performs before sending a step's event."""

    seconds: float
    source: WaitSource
    bucket: str | None = None
    """A throttle wait: the rate bucket it waits for (journalled with it)."""


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A failure as data: what the run keeps of an exception, so it can be checkpointed."""

    error_class: ErrorClass
    message: str
    """The full, redacted one-line message (``str`` of the error)."""
    detail: str = ""
    """The provider's own words, for provider classes."""
    model: str | None = None
    status: int | None = None
    retry_after_s: float | None = None
    unreachable: bool = False
    """The endpoint could not be reached (every model behind it fails alike)."""

    @classmethod
    def of(cls, exc: FlowError) -> ErrorInfo:
        """The data of a :class:`FlowError` that carries an ``error_class``."""
        if isinstance(exc, ProviderError):
            return cls(
                exc.error_class, str(exc), exc.detail, exc.model or None, exc.status,
                exc.retry_after_s, exc.unreachable,
            )  # fmt: skip
        error_class = getattr(exc, "error_class", None) or ErrorClass.INTERNAL
        return cls(ErrorClass(error_class), str(exc))

    def to_error(self, last_errors: tuple[tuple[str, ErrorInfo], ...] = ()) -> FlowError:
        """The exception this stands for (what :class:`RunOutcome` reports)."""
        if self.error_class is ErrorClass.ALL_MODELS_FAILED and last_errors:
            return AllModelsFailed({m: e.provider_error() for m, e in last_errors})
        if self.detail or self.status is not None:
            return self.provider_error()
        return RunError(self.message, error_class=self.error_class)

    def provider_error(self) -> ProviderError:
        return ProviderError(
            self.error_class, self.detail or self.message, model=self.model or "",
            status=self.status, retry_after_s=self.retry_after_s,
        )  # fmt: skip


@quick
@dataclass(frozen=True)
class AttemptInfo:
    """One Request attempt (or a skip of a cooling model), as ``run --json`` reports it."""

    number: int
    """1-based over the whole run (the attempt id within the run)."""
    model: str
    outcome: Literal["ok", "error", "skipped"]
    error_class: ErrorClass | None
    status: int | None
    wait_s: float | None
    """The wait that followed this attempt, if Backoff waited."""
    latency_ms: int
    generation_id: str | None = None
    partial_chars: int | None = None
    """A streamed attempt that broke: the characters received (the text is in run_attempts)."""
    first_token_ms: int | None = None


@quick
@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@quick
@dataclass(frozen=True)
class RunState:
    """Where one run stands. Frozen: every change is a new value (``dataclasses.replace``)."""

    run_id: str
    state: str
    """The machine's current state."""
    chain: tuple[str, ...]
    """The models to try, in order (``--model`` already applied)."""
    project_id: str | None = None
    conversation_id: str | None = None
    messages: tuple[Message, ...] = ()
    """What Request sends: system prompt, history, the user's message."""
    model_index: int = 0
    attempt: int = 0
    """Attempts made on the current model."""
    retries: int = 0
    """Retries (Backoff ``retry`` events) made on the current model."""
    total_attempts: int = 0
    entered_by: str | None = None
    """The event that led into ``state`` (set by the engine; Fallback reads why it was entered)."""
    came_from: str | None = None
    """The state before ``state`` (a failed run is resumed from the state that failed)."""
    wait: Wait | None = None
    """The wait of the step in progress (journaled on its transition, then cleared)."""
    last_error: ErrorInfo | None = None
    last_errors: tuple[tuple[str, ErrorInfo], ...] = ()
    """Each model's last error, in chain order."""
    failure: ErrorInfo | None = None
    """Why the run is failing (set on the way to a failure state)."""
    completion: Completion | None = None
    saved_message_id: str | None = None
    cost_usd: Decimal | None = None
    cost_source: str | None = None
    user_message_at: datetime | None = None
    attempts: tuple[AttemptInfo, ...] = ()
    seq: int = 0
    """Journal rows written for this run so far."""
    resume_count: int = 0
    slot_for: str | None = None
    """The model whose rate slot this run has taken and waited for (a throttle ``Step``):
    the next attempt with it does not take another."""
    stream: bool | None = None
    """Stream this run's replies (``run --stream`` / ``--no-stream``); ``None``: the workflow's
    ``request.stream``."""
    trace: str | None = None
    """The W3C ``traceparent`` of the run's trace (:class:`~.records.RunTracer`), kept so a
    resumed run continues the same trace."""

    @property
    def model(self) -> str:
        """The model the next Request attempt asks for."""
        return self.chain[min(self.model_index, len(self.chain) - 1)]

    @property
    def request_messages(self) -> list[dict[str, str]]:
        return [m.as_dict() for m in self.messages]

    def with_error(self, error: ErrorInfo) -> RunState:
        """Record ``error`` as the last one, and as its model's last."""
        model = error.model or self.model
        others = tuple((m, e) for m, e in self.last_errors if m != model)
        return evolve(self, last_error=error, last_errors=(*others, (model, error)))

    def failed(self, error: ErrorInfo) -> RunState:
        return evolve(self, failure=error)

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> str:
        """The checkpoint text (compact JSON, stable key order)."""
        # A quick value's __dict__ holds every field in field order (see ``quick``).
        return _ENCODER.encode({"format": STATE_FORMAT, **vars(self)})

    @classmethod
    def from_json(cls, text: str) -> RunState:
        """Read a checkpoint back.

        Raises:
            ValueError: the text is not a run state of a format this release reads.
        """
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.pop("format", None) != STATE_FORMAT:
            raise ValueError("not a run state of a format this release can read")
        return _decode_state(doc)


@quick
@dataclass(frozen=True)
class Step:
    """What one handler did: the event for the machine, the new run state, the records to
    report, and the wait the engine sleeps (after checkpointing) before sending the event."""

    event: str
    state: RunState
    records: tuple[FlowRecord, ...] = ()
    wait: Wait | None = None
    reply: Reply | None = None
    """The reply to store with the move (Persist's): the engine commits it, the run's end, the
    checkpoint of the state the move leads to and its journal row in one transaction."""
    settlement: Settlement | None = None
    """The books of an attempt that brought an answer, applied by the engine once the move
    that carries the answer is durable (the first commit after an answer carries it)."""
    stay: bool = False
    """A wait in place (a throttle: the rate slot is ``wait`` away): the engine journals
    ``event`` without moving, sleeps, and runs the same state again."""


@dataclass(frozen=True, slots=True)
class Settlement:
    """What an attempt's books become, as data (:meth:`~.limits.Gate.settlement` decides it,
    :meth:`~.limits.Limiter.apply` writes it): the reservation replaced by ``amount_usd``
    (``None``: released, nothing was billed; ``unbooked``: kept past the run's end, until
    ``expires_at``), the ``tpm`` schedules moved by ``delta_tokens``, the buckets paused for
    ``pause_s`` (a 429's wait hint)."""

    reservation_id: str | None
    amount_usd: Decimal | None
    expires_at: datetime
    unbooked: bool = False
    booked: bool = False
    """``amount_usd`` is in an ``llm_usage`` row written before (an interrupted stream)."""
    buckets: tuple[RateBucket, ...] = ()
    delta_tokens: int | None = None
    pause_s: float | None = None

    def at_cost(self, usd: Decimal, source: str) -> Settlement:
        """The same books, the reservation replaced by ``usd`` (the reply's cost, as stored,
        known from ``source``): every ledger then books what ``llm_usage`` does. An
        ``unknown`` cost keeps the attempt's figure (its worst case, kept)."""
        if self.reservation_id is None or source == "unknown":
            return self
        return dataclasses.replace(self, amount_usd=usd, unbooked=False)


# ---------------------------------------------------------------------- encoding


_AS_DICT: dict[type, Callable[[Any], dict[str, Any]]] = {}


def _fields_of(value: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict, not recursing: the JSON encoder comes back for nested
    values through :func:`_encode`, and handles tuples, strings (``StrEnum`` included) and
    numbers itself, in C."""
    kind = type(value)
    as_dict = _AS_DICT.get(kind)
    if as_dict is None:
        as_dict = _AS_DICT[kind] = _dict_maker(kind)
    return as_dict(value)


def _dict_maker(kind: type) -> Callable[[Any], dict[str, Any]]:
    """``value → {field: value.field}`` for dataclass ``kind``: one ``attrgetter`` call and a
    ``zip``, in C (a comprehension of ``getattr`` cost twice as much per checkpoint)."""
    names = tuple(f.name for f in dataclasses.fields(kind))
    if len(names) == 1:
        (name,) = names
        return lambda value: {name: getattr(value, name)}
    read = operator.attrgetter(*names)
    return lambda value: dict(zip(names, read(value), strict=True))


def _encode(value: Any) -> Any:
    """What ``json`` cannot encode alone: nested dataclasses, amounts, timestamps."""
    convert = _CONVERT.get(type(value))
    if convert is not None:
        return convert(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _fields_of(value)
    raise TypeError(f"{type(value).__name__} is not part of a run state")


_CONVERT: dict[type, Callable[[Any], Any]] = {Decimal: str, datetime: datetime.isoformat}
"""The encoder's callback by exact type, for the values every checkpoint has (the run's own
dataclasses are added below, once :class:`Completion` and the rest are defined)."""


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_encode)
for _kind in (Wait, ErrorInfo, Message):
    _CONVERT[_kind] = _fields_of
_CONVERT[AttemptInfo] = _CONVERT[Completion] = vars  # quick values: their __dict__ (in C)


def _opt(value: Any, fn: Any) -> Any:
    return None if value is None else fn(value)


def _error(doc: dict[str, Any]) -> ErrorInfo:
    return ErrorInfo(
        ErrorClass(doc["error_class"]), doc["message"], doc.get("detail", ""), doc.get("model"),
        doc.get("status"), doc.get("retry_after_s"), doc.get("unreachable", False),
    )  # fmt: skip


def _completion(doc: dict[str, Any]) -> Completion:
    fields = {f.name for f in dataclasses.fields(Completion)}
    values = {k: v for k, v in doc.items() if k in fields}
    values["cost_usd"] = _opt(values.get("cost_usd"), Decimal)
    return Completion(**values)


def _attempt(doc: dict[str, Any]) -> AttemptInfo:
    return AttemptInfo(
        doc["number"], doc["model"], doc["outcome"], _opt(doc.get("error_class"), ErrorClass),
        doc.get("status"), doc.get("wait_s"), doc["latency_ms"], doc.get("generation_id"),
        doc.get("partial_chars"), doc.get("first_token_ms"),
    )  # fmt: skip


def _decode_state(doc: dict[str, Any]) -> RunState:
    return RunState(
        run_id=doc["run_id"],
        state=doc["state"],
        chain=tuple(doc["chain"]),
        project_id=doc.get("project_id"),
        conversation_id=doc.get("conversation_id"),
        messages=tuple(Message(m["role"], m["content"]) for m in doc.get("messages", ())),
        model_index=doc.get("model_index", 0),
        attempt=doc.get("attempt", 0),
        retries=doc.get("retries", 0),
        total_attempts=doc.get("total_attempts", 0),
        entered_by=doc.get("entered_by"),
        came_from=doc.get("came_from"),
        wait=_opt(
            doc.get("wait"),
            lambda w: Wait(w["seconds"], WaitSource(w["source"]), w.get("bucket")),
        ),
        last_error=_opt(doc.get("last_error"), _error),
        last_errors=tuple((m, _error(e)) for m, e in doc.get("last_errors", ())),
        failure=_opt(doc.get("failure"), _error),
        completion=_opt(doc.get("completion"), _completion),
        saved_message_id=doc.get("saved_message_id"),
        cost_usd=_opt(doc.get("cost_usd"), Decimal),
        cost_source=doc.get("cost_source"),
        user_message_at=_opt(doc.get("user_message_at"), datetime.fromisoformat),
        attempts=tuple(_attempt(a) for a in doc.get("attempts", ())),
        seq=doc.get("seq", 0),
        resume_count=doc.get("resume_count", 0),
        stream=doc.get("stream"),
        slot_for=doc.get("slot_for"),
        trace=doc.get("trace"),
    )
