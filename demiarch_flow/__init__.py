"""demiarch-flow: dependable, auditable LLM calls through OpenRouter, as a declarative workflow.

Architecture, outside in:

* ``definition`` — YAML text → JSON Schema → frozen :class:`Workflow` → graph checks → a
  python-statemachine class (states and transitions only, no I/O).
* ``runner`` — the trio runner: awaits the current state's handler, ``send()``s the outcome
  event to the machine, reports each transition to listeners as a frozen record;
  ``backoff`` — the wait before a retry as a pure function.
* ``client`` — the OpenRouter client over an injected ``httpx.AsyncClient`` and the pure
  classification of every failure into one error class.
* ``store`` — a small store interface; SQLAlchemy tables behind it, used from trio through
  threads, and an in-memory store.
* ``cli`` — the ``demiarch-flow`` command; ``faults`` — the fault script language, played by
  ``simulator`` (an OpenRouter-compatible server) and ``fake`` (an httpx transport);
  ``testing`` — helpers for users to unit-test their own workflows; ``replay`` — an edited
  workflow replayed on the recorded runs (``simulate --replay``), the provider rebuilt from
  the record; ``telemetry`` — optional OpenTelemetry traces and metrics of runs (one more
  listener; imported only when on); ``queue`` — the workers' queue on procrastinate.

The public names are re-exported here and imported lazily, so ``demiarch-flow --help`` does not
pay for trio, httpx or SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "load_workflow": "definition",
    "parse_workflow": "definition",
    "machine_class": "definition",
    "Workflow": "definition",
    "RetryPolicy": "definition",
    "FallbackPolicy": "definition",
    "RequestSettings": "definition",
    "StateSpec": "definition",
    "FlowError": "errors",
    "DefinitionError": "errors",
    "YamlSyntaxError": "errors",
    "SchemaError": "errors",
    "GraphError": "errors",
    "UsageError": "errors",
    "EnvironmentProblem": "errors",
    "SecretsError": "errors",
    "StoreUnavailable": "errors",
    "ProviderError": "errors",
    "AllModelsFailed": "errors",
    "PersistenceError": "errors",
    "RunFailed": "errors",
    "BudgetExceeded": "errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover
    from .definition import (
        FallbackPolicy,
        RequestSettings,
        RetryPolicy,
        StateSpec,
        Workflow,
        load_workflow,
        machine_class,
        parse_workflow,
    )
    from .errors import (
        AllModelsFailed,
        BudgetExceeded,
        DefinitionError,
        EnvironmentProblem,
        FlowError,
        GraphError,
        PersistenceError,
        ProviderError,
        RunFailed,
        SchemaError,
        SecretsError,
        StoreUnavailable,
        UsageError,
        YamlSyntaxError,
    )


__getattr__ = lazy_exports(__name__, _EXPORTS)
