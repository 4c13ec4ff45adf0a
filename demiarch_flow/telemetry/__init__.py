"""OpenTelemetry traces and metrics of runs, with the GenAI semantic conventions — optional.

A run is already told to listeners as frozen records (:mod:`demiarch_flow.runner.records`), so
tracing is one more listener: :class:`~._listener.OtelTracer` turns a run into one trace — a
root ``invoke_workflow {name}`` span with every transition as an event, a ``chat {model}``
CLIENT span per attempt, a child span per wait — and records the ``gen_ai.client.*`` metrics.
It is also the run's :class:`~demiarch_flow.runner.records.RunTracer`: the engine keeps the
root's W3C ``traceparent`` in the run's state, so ``runs resume`` continues the same trace.

This module imports nothing of OpenTelemetry: :func:`tracing_wanted` decides from the flag and
the standard ``OTEL_*`` variables alone, and only a run that is traced pays for the import
(``pip install 'demiarch-flow[otel]'``). Public: :func:`tracing_wanted`, :func:`open_tracer`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..errors import EnvironmentProblem

if TYPE_CHECKING:
    from ._listener import OtelTracer

__all__ = ["open_tracer", "tracing_wanted"]

#: Variables that say "export": any of them set (and the SDK not disabled) turns tracing on.
_EXPORT_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
)


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def user_provider_set() -> bool:
    """A library user has installed a tracer provider of their own (the global one is no
    longer the API's proxy). Imports nothing: a program that set one has imported the API."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return False
    provider = trace.get_tracer_provider()
    return type(provider).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider")


def tracing_wanted(flag: bool | None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether runs are traced: ``--trace`` (``True``) and ``--no-trace`` (``False``) decide;
    without either, a collector named by the standard variables, or a tracer provider the
    program installed itself, turns it on, and ``OTEL_SDK_DISABLED=true`` turns it off."""
    if flag is not None:
        return flag
    env = os.environ if environ is None else environ
    if _true(env.get("OTEL_SDK_DISABLED")):
        return False
    if any(env.get(name, "").strip() and env.get(name) != "none" for name in _EXPORT_VARS):
        return True
    return user_provider_set()


@contextmanager
def open_tracer(
    flag: bool | None, *, server_url: str, environ: Mapping[str, str] | None = None
) -> Iterator[OtelTracer | None]:
    """The tracer of this process's runs, or ``None`` when runs are not traced.

    A program that installed its own tracer (and meter) provider gets the spans in it, through
    the SDK; else providers are built from the ``OTEL_*`` variables (the direct path,
    :mod:`._direct`, when they export OTLP/HTTP: none of the SDK's per-span work), exporting
    in the background, and flushed for at most :data:`~._setup.FLUSH_S` seconds when the
    block ends.

    Raises:
        EnvironmentProblem: tracing is asked for but the ``otel`` extra is not installed, or
            an ``OTEL_*`` variable names an exporter it cannot build.
    """
    env = os.environ if environ is None else environ
    if not tracing_wanted(flag, env):
        yield None
        return
    try:
        from ._listener import OtelTracer
        from ._setup import own_providers
    except ImportError as exc:
        raise EnvironmentProblem(
            f"tracing needs OpenTelemetry ({exc.name} is not installed): pip install"
            " 'demiarch-flow[otel]', or run with --no-trace"
        ) from None
    if user_provider_set():
        yield OtelTracer(server_url=server_url, environ=env)
        return
    with own_providers(env) as (tracer_provider, meter_provider):
        yield OtelTracer(
            server_url=server_url,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            environ=env,
        )
