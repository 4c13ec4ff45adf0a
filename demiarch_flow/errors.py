"""The one exception tree of demiarch-flow.

Every error the package raises on purpose derives from :class:`FlowError`, grouped by cause so
that a caller (the CLI above all) can map a class to an exit code and a one-paragraph message
without parsing text::

    FlowError                        exit_code
    ├── DefinitionError                  2   a workflow file is not valid
    │   ├── YamlSyntaxError                  not YAML at all
    │   ├── SchemaError                      valid YAML, breaks workflows.schema.json
    │   └── GraphError                       well-typed, but a run of it could get stuck
    ├── UsageError                       2   bad command-line input (empty message, bad flag)
    ├── EnvironmentProblem               3   the machine is not set up for the call
    │   ├── SecretsError                     no API key / unusable keyring
    │   │   └── UnusableKey                      the key cannot be sent in a header
    │   └── StoreUnavailable                 database URL cannot be opened
    │       └── SchemaMismatch                   its tables are not what this release needs
    ├── ProviderError                    1   one failed attempt at OpenRouter (has .error_class,
    │                                        and .upstream: the provider's own error)
    ├── AllModelsFailed                  1   every model of the chain failed
    ├── UnknownConversation              2   --conversation names no conversation (input)
    ├── PersistenceError                 1   a database write failed after its retries
    ├── RunTakenOver                     1   another process resumed this run meanwhile
    ├── RunError                         1   a run's failure as read back from its checkpoint
    ├── RunFailed                        1   a run ended in a final failure state
    ├── BudgetExceeded                   1   an attempt's worst case does not fit a budget
    └── Terminated                     143   SIGTERM: the work in progress was cancelled

Errors carry their context as attributes (file, line, field, model, status, attempt) so that
tests assert on data, and messages never include the API key: every message that could echo
request data is passed through :func:`redact` first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"']+")
_KEYLIKE = re.compile(r"sk-or-[A-Za-z0-9_\-]{4,}")

MIN_SECRET_LENGTH = 8
"""Shorter values are not registered: replacing a one-letter key would garble every message."""

_SECRETS: set[str] = set()


def register_secret(value: str) -> bool:
    """Make every later :func:`redact` call remove ``value``, wherever it appears, in this process.

    The key is registered where it becomes known (when it is resolved, and by the client that
    sends it), so a key of any shape that a server echoes back is cleaned from error messages,
    logs and the database alike, not only keys that look like ``sk-or-…``.

    Returns:
        ``False`` (nothing registered) when ``value`` is shorter than
        :data:`MIN_SECRET_LENGTH`; such a key still works, it is only not searched for.
    """
    if len(value) < MIN_SECRET_LENGTH:
        return False
    _SECRETS.add(value)
    return True


def secrets_registered() -> int:
    """How many secrets :func:`redact` removes: a cache of redacted text is stale once this
    changes."""
    return len(_SECRETS)


def redact(text: str, *secrets: str | None) -> str:
    """Remove API keys from ``text``: the registered secrets, the given ones, bearer tokens and
    OpenRouter-style keys."""
    for secret in sorted(_SECRETS.union(s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    text = _BEARER.sub(r"\1[redacted]", text)
    return _KEYLIKE.sub("[redacted]", text)


class ErrorClass(StrEnum):
    """Every reason a step can fail for, as one vocabulary.

    The provider classes and ``retries_exhausted`` are the words a workflow file may name in
    ``retry.when`` / ``fallback.when``; the rest are produced by the runner itself and appear in
    records, the journal and ``workflow_runs.error_class``. A ``StrEnum``, so a member equals its
    text (the database and JSON keep plain strings) while code never string-matches.
    """

    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    SERVER_ERROR = "server_error"
    NETWORK_ERROR = "network_error"
    BAD_REQUEST = "bad_request"
    AUTH = "auth"
    PAYMENT_REQUIRED = "payment_required"
    FORBIDDEN = "forbidden"
    MODEL_UNAVAILABLE = "model_unavailable"
    STREAM_INTERRUPTED = "stream_interrupted"
    """A streamed reply broke after its first token (error chunk, reset, idle timeout, a body
    that ended without ``finish_reason``): the partial text is never the reply."""
    RETRIES_EXHAUSTED = "retries_exhausted"
    """Backoff gave the model up (its retries are used up, or the server asked too long a wait)."""
    BUDGET_EXCEEDED = "budget_exceeded"
    """The attempt's worst-case cost does not fit a budget window: nothing was sent."""
    COOLING = "cooling"
    """The model was skipped: the shared cooldown says it is failing for every run."""
    ALL_MODELS_FAILED = "all_models_failed"
    UNKNOWN_CONVERSATION = "unknown_conversation"
    PERSISTENCE = "persistence"
    """The database could not be written."""
    CANCELLED = "cancelled"
    """Ctrl-C, SIGTERM or an outer cancel scope."""
    INTERNAL = "internal"
    """A bug: an exception nobody expected."""
    UNRECORDED = "unrecorded"
    """A request was sent but its outcome never recorded (the process died); found on resume."""


class FlowError(Exception):
    """Base of every error demiarch-flow raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# ---------------------------------------------------------------- definitions


@dataclass(frozen=True)
class Location:
    """Where in a workflow file a problem sits (1-based line and column; 0 when unknown)."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column}"
        return self.file


class DefinitionError(FlowError):
    """A workflow definition is invalid; ``problems`` lists every finding of the failing check."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        location: Location,
        path: str = "",
        problems: Sequence[DefinitionError] = (),
    ) -> None:
        prefix = f"{location}: {path + ': ' if path else ''}"
        super().__init__(prefix + message)
        self.detail = message
        self.location = location
        self.file = location.file
        self.line = location.line
        self.column = location.column
        self.path = path
        self.problems: tuple[DefinitionError, ...] = tuple(problems) or (self,)

    @classmethod
    def collect(cls, problems: Sequence[DefinitionError]) -> DefinitionError:
        """One error standing for several of the same check, the first one leading."""
        first = problems[0]
        if len(problems) == 1:
            return first
        more = "\n".join(f"  {p.message}" for p in problems[1:])
        return type(first)(
            f"{first.detail}\n(and {len(problems) - 1} more)\n{more}",
            location=first.location,
            path=first.path,
            problems=problems,
        )


class YamlSyntaxError(DefinitionError):
    """The file is not well-formed YAML (or not a mapping at the top)."""


class SchemaError(DefinitionError):
    """The document breaks the JSON Schema: a type, range, required or unknown key."""


class GraphError(DefinitionError):
    """The states and transitions do not form a workflow that always ends."""


# ---------------------------------------------------------------- input and environment


class UsageError(FlowError):
    """Bad input on the command line: an empty message, an unreadable file, a bad option."""

    exit_code = 2


class EnvironmentProblem(FlowError):
    """The machine is not ready for the call: no key, no keyring, a database that won't open."""

    exit_code = 3


class SecretsError(EnvironmentProblem):
    """No API key could be found, or the keyring cannot be used."""


class UnusableKey(SecretsError):
    """The API key holds characters an HTTP header cannot carry (a newline, non-ASCII)."""


class StoreUnavailable(EnvironmentProblem):
    """The database URL cannot be opened."""


class SchemaMismatch(StoreUnavailable):
    """The database's schema is not the one this release needs: at another revision, or a table
    or column missing. Raised when the database is opened, before any request is sent.

    Attributes:
        revision: the database's revision (``None``: unversioned or empty).
        head: the revision this release needs.
        table: the table at fault, when one is.
        column: the column at fault, when one is.
    """

    def __init__(
        self,
        message: str,
        *,
        revision: str | None = None,
        head: str | None = None,
        table: str | None = None,
        column: str | None = None,
    ) -> None:
        super().__init__(message)
        self.revision = revision
        self.head = head
        self.table = table
        self.column = column


# ---------------------------------------------------------------- runs


@dataclass(frozen=True, slots=True)
class UpstreamError:
    """What OpenRouter passes on from behind it, in ``error.metadata``: the upstream
    provider's own error and a moderation block's reasons. OpenRouter's ``message`` is often
    only "Provider returned error"; the why is here, so it is shown with the message and kept
    as data (to be stored with the attempt).

    Every text is bounded and made printable by the parser
    (:func:`demiarch_flow.client.classify.upstream_of`); none is trusted.
    """

    provider_name: str | None = None
    """``metadata.provider_name``: the provider that answered behind OpenRouter."""
    raw: str | None = None
    """``metadata.raw``: the provider's own error (a JSON value is kept as compact JSON text)."""
    reasons: tuple[str, ...] = ()
    """``metadata.reasons``: why a moderation check blocked the request."""
    flagged_input: str | None = None
    """``metadata.flagged_input``: the part of the input that moderation flagged."""

    def describe(self) -> str:
        """One line for the error message, e.g. ``Anthropic said: overloaded; moderation
        reasons: violence; flagged input: '…'``."""
        parts: list[str] = []
        if self.raw:
            parts.append(f"{self.provider_name or 'the provider'} said: {self.raw}")
        elif self.provider_name:
            parts.append(f"from {self.provider_name}")
        if self.reasons:
            parts.append(f"moderation reasons: {', '.join(self.reasons)}")
        if self.flagged_input:
            parts.append(f"flagged input: {self.flagged_input!r}")
        return "; ".join(parts)


class ProviderError(FlowError):
    """One failed attempt at the provider, classified into exactly one error class.

    Attributes:
        error_class: the class it was sorted into (a provider class, or ``cooling``).
        model: the model the attempt asked for.
        status: the HTTP status, or ``None`` for network errors and timeouts.
        retry_after_s: the server's wait hint in seconds, when it gave a usable one.
        unreachable: the failure belongs to the endpoint, not the model (no connection to
            the base URL's host could be made): every model behind it fails alike, so a run
            does not fall back over it.
        upstream: what OpenRouter passed on from the provider behind it (its own error,
            moderation reasons, its name), or ``None``; :attr:`detail` already says it in
            words, this keeps it as data.
    """

    def __init__(
        self,
        error_class: ErrorClass | str,
        message: str,
        *,
        model: str = "",
        status: int | None = None,
        retry_after_s: float | None = None,
        unreachable: bool = False,
        upstream: UpstreamError | None = None,
    ) -> None:
        where = f"{model}: " if model else ""
        code = f"HTTP {status} " if status is not None else ""
        cls = ErrorClass(error_class)
        if upstream is not None and (said := upstream.describe()):
            message = f"{message} — {said}"
        super().__init__(f"{where}{code}{cls}: {redact(message)}")
        self.error_class = cls
        self.upstream = upstream
        self.detail = redact(message)
        self.model = model
        self.status = status
        self.retry_after_s = retry_after_s
        self.unreachable = unreachable


class AllModelsFailed(FlowError):
    """Every model of the fallback chain failed; ``last_errors`` maps model → its last error."""

    def __init__(self, last_errors: dict[str, ProviderError]) -> None:
        lines = "; ".join(f"{m}: {e.error_class} ({e.detail})" for m, e in last_errors.items())
        super().__init__(f"all models failed — {lines}")
        self.last_errors = dict(last_errors)
        self.error_class = ErrorClass.ALL_MODELS_FAILED


class UnknownConversation(FlowError):
    """A run was asked to continue a conversation id that the database does not hold."""

    exit_code = 2

    def __init__(self, conversation_id: str) -> None:
        super().__init__(
            f"no conversation with id {conversation_id!r} in this database"
            " (see `demiarch-flow history` for the ids; leave out --conversation to start one)"
        )
        self.conversation_id = conversation_id
        self.error_class = ErrorClass.UNKNOWN_CONVERSATION


class PersistenceError(FlowError):
    """A database operation failed (after its retries, where it has any)."""

    def __init__(self, message: str, *, recovery_file: str | None = None) -> None:
        suffix = f" The reply was saved to {recovery_file}." if recovery_file else ""
        super().__init__(message + suffix)
        self.recovery_file = recovery_file
        self.error_class = ErrorClass.PERSISTENCE


class RunTakenOver(FlowError):
    """The run is no longer this process's: it looked stale (this process was paused, or its
    heartbeat could not be seen) and another process resumed it. This process writes nothing
    more to it, so the two cannot overwrite each other."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run {run_id} was taken over by another process (it looked stale and was resumed"
            " there); this process leaves it alone — see `demiarch-flow runs show " + run_id + "`"
        )
        self.run_id = run_id
        self.error_class = ErrorClass.PERSISTENCE


class RunError(FlowError):
    """A run's failure read back from its state (a checkpoint keeps the class and the text)."""

    def __init__(self, message: str, *, error_class: ErrorClass) -> None:
        super().__init__(message)
        self.error_class = error_class


class RunFailed(FlowError):
    """A run ended in a failure state; carries the run id and the error class it ended with."""

    def __init__(self, message: str, *, run_id: str, error_class: ErrorClass | None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.error_class = error_class


class BudgetExceeded(FlowError):
    """An attempt's worst-case cost does not fit a budget window; no request was sent.

    Attributes:
        window: ``run``, ``day`` or ``month``.
        spent_usd, reserved_usd, limit_usd, estimate_usd: the window's books and the estimate.
        model: the model the attempt would have asked.
    """

    def __init__(
        self,
        message: str,
        *,
        window: str,
        spent_usd: object = None,
        reserved_usd: object = None,
        limit_usd: object = None,
        estimate_usd: object = None,
        model: str = "",
    ) -> None:
        super().__init__(message)
        self.error_class = ErrorClass.BUDGET_EXCEEDED
        self.window = window
        self.spent_usd = spent_usd
        self.reserved_usd = reserved_usd
        self.limit_usd = limit_usd
        self.estimate_usd = estimate_usd
        self.model = model


class Terminated(FlowError):
    """SIGTERM arrived: the work in progress was cancelled and recorded, as for Ctrl-C.

    Exit code 143 (128 + SIGTERM), what a process killed by the signal would report.
    """

    exit_code = 143

    def __init__(self, message: str = "terminated by SIGTERM") -> None:
        super().__init__(message)
