"""The fixed words of the workflow format: actions, the events each can emit, error classes.

These are the contract between a workflow file and the runner's handlers, so they live in one
place that the JSON Schema test, the graph checks and the handlers all read.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

#: action name → the events its handler can emit (an empty set: only for final states).
ACTION_EVENTS: Final = MappingProxyType(
    {
        "load_context": frozenset({"loaded", "failed"}),
        "request": frozenset({"succeeded", "retryable", "model_failed", "fatal"}),
        "backoff": frozenset({"retry", "exhausted"}),
        "fallback": frozenset({"next_model", "exhausted"}),
        "persist": frozenset({"saved", "failed"}),
        "fail": frozenset(),
    }
)

#: Edges that use up a bounded budget: a retry of the current model, or the next model of the
#: chain. Every cycle of a valid workflow contains one, which is what makes every run end.
CONSUMING_EDGES: Final = frozenset({("backoff", "retry"), ("fallback", "next_model")})

#: The classes every provider failure is sorted into (see OPENROUTER.md's error table).
PROVIDER_ERROR_CLASSES: Final = (
    "rate_limited",
    "timeout",
    "server_error",
    "network_error",
    "bad_request",
    "auth",
    "payment_required",
    "forbidden",
    "model_unavailable",
    "stream_interrupted",
)

#: Classes that are fatal whatever the policy says: the same key is used for every model.
ALWAYS_FATAL: Final = frozenset({"auth", "payment_required"})

RETRY_CLASSES: Final = PROVIDER_ERROR_CLASSES
FALLBACK_CLASSES: Final = (*PROVIDER_ERROR_CLASSES, "retries_exhausted", "budget_exceeded")
