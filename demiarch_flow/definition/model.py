"""The parsed workflow: frozen values built from a document that passed the JSON Schema.

Raw dicts never reach the runner; these do. Each policy is a value with its own meaning
documented per field (after Temporal's ``RetryPolicy``), and defaults here are the ones the
schema documents, which ``tests/definition/test_workflow.py`` keeps in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .limits import LimitsPolicy, build_limits


@dataclass(frozen=True, slots=True)
class RequestSettings:
    """How each attempt is made."""

    timeout_s: float = 120.0
    """Per-attempt timeout: connect, send, wait and read together."""
    context_messages: int = 50
    """How many *earlier* messages of the conversation are sent along (the new one not counted)."""
    temperature: float | None = None
    """Sampling temperature, omitted from the request when unset."""
    max_tokens: int | None = None
    """Completion token limit, omitted from the request when unset."""
    stream: bool = False
    """Stream the reply (SSE); ``run --stream`` / ``--no-stream`` override it per run."""
    first_token_timeout_s: float | None = None
    """Streaming: from sending until the first content token (``None``: ``timeout_s``)."""
    idle_timeout_s: float = 30.0
    """Streaming: the longest silence between two bytes after the first token."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """What the Backoff state does between attempts on one model."""

    max_retries: int = 3
    """Retries per model after the first attempt (3 → at most 4 attempts per model)."""
    initial_delay_s: float = 1.0
    """Wait before the first retry."""
    backoff_rate: float = 2.0
    """Multiplier per further retry (≥ 1): 1 s, 2 s, 4 s with the defaults."""
    max_delay_s: float = 30.0
    """Cap on any single wait. A Retry-After above it is not waited for: the model is left."""
    jitter: Literal["none", "full"] = "none"
    """``full``: each wait is uniform in [0, computed delay] (spreads out synchronised clients)."""
    respect_retry_after: bool = True
    """Wait what the server asks (``retry-after-ms`` / ``Retry-After``) instead of the schedule."""
    when: frozenset[str] = frozenset({"rate_limited", "timeout", "server_error", "network_error"})
    """Error classes that are retried on the same model."""


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    """What the Fallback state does: which failures move on to the next model of the chain."""

    when: frozenset[str] = frozenset(
        {"retries_exhausted", "model_unavailable", "bad_request", "forbidden"}
    )
    """Error classes that move to the next model (``retries_exhausted``: Backoff gave up)."""


@dataclass(frozen=True, slots=True)
class CooldownPolicy:
    """A per-model circuit breaker shared by every run in the process."""

    after_failures: int = 3
    """Retryable failures of one model within ``window_s`` that start a cooldown."""
    window_s: float = 60.0
    """The sliding window, in seconds, over which failures are counted."""
    cool_s: float = 30.0
    """How long the model is skipped once cooling (a longer Retry-After extends it)."""


@dataclass(frozen=True, slots=True)
class StateSpec:
    """One state: the action its handler runs and where each event it emits leads."""

    name: str
    action: str | None
    final: bool
    transitions: tuple[tuple[str, str], ...]
    """(event, target state) pairs in file order."""

    def target(self, event: str) -> str | None:
        """The state ``event`` leads to from here, or ``None``."""
        for ev, target in self.transitions:
            if ev == event:
                return target
        return None


@dataclass(frozen=True, slots=True)
class Workflow:
    """A validated workflow definition."""

    name: str
    models: tuple[str, ...]
    initial: str
    states: tuple[StateSpec, ...]
    retry: RetryPolicy = RetryPolicy()
    fallback: FallbackPolicy = FallbackPolicy()
    request: RequestSettings = RequestSettings()
    cooldown: CooldownPolicy | None = None
    """``None``: no shared cooldown (each run decides alone)."""
    limits: LimitsPolicy | None = None
    """``None``: no budgets and no rate buckets (nothing is reserved or paced)."""
    version: int = 1
    description: str = ""
    system: str | None = None
    source: str = "<string>"
    """The file it was read from (for messages and the run record)."""
    sha256: str = ""
    """SHA-256 of the file text, recorded on every run so a run names its exact policy."""
    text: str = field(default="", repr=False, compare=False)
    """The file text itself: stored once per ``sha256``, so a run can be resumed under the
    definition it started with even after the file was edited or deleted."""
    _by_name: dict[str, StateSpec] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        self._by_name.update({s.name: s for s in self.states})

    def state(self, name: str) -> StateSpec:
        """The state called ``name`` (KeyError if there is none)."""
        return self._by_name[name]

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.states)


def _frozen_classes(values: Any, default: frozenset[str]) -> frozenset[str]:
    return default if values is None else frozenset(values)


def build_workflow(doc: dict[str, Any], *, source: str, sha256: str, text: str = "") -> Workflow:
    """Turn a schema-valid document into a :class:`Workflow` (no further checks here)."""
    req = doc.get("request", {})
    retry = doc["retry"]
    defaults_r, defaults_q = RetryPolicy(), RequestSettings()
    states = tuple(
        StateSpec(
            name=name,
            action=spec.get("action"),
            final=bool(spec.get("final", False)),
            transitions=tuple((str(k), str(v)) for k, v in spec.get("transitions", {}).items()),
        )
        for name, spec in doc["states"].items()
    )
    return Workflow(
        version=doc["version"],
        name=doc["name"],
        description=doc.get("description", ""),
        system=doc.get("system"),
        models=tuple(doc["models"]),
        request=RequestSettings(
            timeout_s=float(req.get("timeout_s", defaults_q.timeout_s)),
            context_messages=int(req.get("context_messages", defaults_q.context_messages)),
            temperature=req.get("temperature"),
            max_tokens=req.get("max_tokens"),
            stream=bool(req.get("stream", defaults_q.stream)),
            first_token_timeout_s=_opt_float(req.get("first_token_timeout_s")),
            idle_timeout_s=float(req.get("idle_timeout_s", defaults_q.idle_timeout_s)),
        ),
        retry=RetryPolicy(
            max_retries=int(retry["max_retries"]),
            initial_delay_s=float(retry["initial_delay_s"]),
            backoff_rate=float(retry["backoff_rate"]),
            max_delay_s=float(retry["max_delay_s"]),
            jitter=retry.get("jitter", defaults_r.jitter),
            respect_retry_after=bool(
                retry.get("respect_retry_after", defaults_r.respect_retry_after)
            ),
            when=_frozen_classes(retry.get("when"), defaults_r.when),
        ),
        fallback=FallbackPolicy(
            when=_frozen_classes(doc["fallback"].get("when"), FallbackPolicy().when)
        ),
        cooldown=CooldownPolicy(
            after_failures=int(doc["cooldown"]["after_failures"]),
            window_s=float(doc["cooldown"]["window_s"]),
            cool_s=float(doc["cooldown"]["cool_s"]),
        )
        if "cooldown" in doc
        else None,
        limits=build_limits(doc.get("limits")),
        initial=doc["initial"],
        states=states,
        source=source,
        sha256=sha256,
        text=text,
    )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
