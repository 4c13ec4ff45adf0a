"""The SDK providers a process builds from the standard ``OTEL_*`` variables, when the program
did not install its own.

Export never gets in a run's way: spans go through the SDK's ``BatchSpanProcessor`` (a bounded
queue, exported by a background thread, dropped when full) and metrics through a periodic
reader on its own thread; a collector that is down costs a run nothing but the queue's append.
Its complaints are logged once, not once per batch. When the block ends (a command's end,
Ctrl-C, SIGTERM), what is pending is flushed for at most :data:`FLUSH_S` seconds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from ..errors import EnvironmentProblem

log = logging.getLogger("demiarch_flow")

FLUSH_S = 2.0
"""The longest a process waits at exit for pending spans and metrics to leave."""

#: Loggers of the SDK and the OTLP exporters whose warnings repeat for every batch.
_NOISY = (
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.sdk.metrics._internal.export",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "demiarch_flow.telemetry",
)


class _Once(logging.Filter):
    """Lets one warning of the exporters through: a dead collector is said once a process
    (their threads run on past the block, so it stays installed)."""

    def __init__(self) -> None:
        super().__init__()
        self.said = False
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        with self.lock:
            said, self.said = self.said, True
        if said:
            return False
        record.msg = f"telemetry export failing (further export warnings are dropped): {record.msg}"
        return True


_ONCE = _Once()


def _quieten() -> None:
    for name in _NOISY:
        logger = logging.getLogger(name)
        if _ONCE not in logger.filters:
            logger.addFilter(_ONCE)


def _names(env: Mapping[str, str], var: str) -> list[str]:
    raw = env.get(var, "otlp") or "otlp"
    return [n.strip().lower() for n in raw.split(",") if n.strip() and n.strip() != "none"]


def _protocol(env: Mapping[str, str], signal: str) -> str:
    return (
        env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()


def _span_exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise EnvironmentProblem(f"OTEL_TRACES_EXPORTER={name!r}: only otlp, console, none")
    if _protocol(env, "TRACES") == "grpc":
        mod = _import("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "grpc")
        exporter: SpanExporter = mod.OTLPSpanExporter()
        return exporter
    _import("opentelemetry.exporter.otlp.proto.http.trace_exporter", "http")
    from ._otlp import SpanExporter as DirectOtlpExporter  # the same, encoding 4x cheaper

    return DirectOtlpExporter()


def _metric_reader(name: str, env: Mapping[str, str]) -> MetricReader:
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return PeriodicExportingMetricReader(ConsoleMetricExporter())
    if name != "otlp":
        raise EnvironmentProblem(f"OTEL_METRICS_EXPORTER={name!r}: only otlp, console, none")
    if _protocol(env, "METRICS") == "grpc":
        mod = _import("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "grpc")
    else:
        mod = _import("opentelemetry.exporter.otlp.proto.http.metric_exporter", "http")
    return PeriodicExportingMetricReader(mod.OTLPMetricExporter())


def _import(module: str, flavour: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = f"opentelemetry-exporter-otlp-proto-{flavour}"
        raise EnvironmentProblem(
            f"OTLP over {flavour} needs {package}: pip install {package} (the otel extra"
            " brings http/protobuf, OTEL_EXPORTER_OTLP_PROTOCOL's default here)"
        ) from None


def resource() -> Resource:
    """``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (read by the SDK), with
    ``demiarch-flow`` as the service name when neither names one."""
    res = Resource.create()
    if str(res.attributes.get("service.name", "")).startswith("unknown_service"):
        res = res.merge(Resource({"service.name": "demiarch-flow"}))
    return res


@contextmanager
def sdk_providers(
    env: Mapping[str, str], flush_s: float | None = None
) -> Iterator[tuple[TracerProvider, MeterProvider]]:
    """A tracer and a meter provider exporting as the variables say; shut down (flushed for
    at most ``flush_s`` seconds, default :data:`FLUSH_S`) when the block ends. Neither is
    made the global one: a program's own instrumentation is not redirected by a library.

    ``env`` chooses the exporters (``OTEL_TRACES_EXPORTER``, ``OTEL_METRICS_EXPORTER``, the
    protocol); the SDK and the exporters read the rest (endpoint, headers, timeouts, batch
    sizes, the resource) from the process environment themselves."""
    _quieten()
    res = resource()
    tracer_provider = TracerProvider(resource=res, shutdown_on_exit=False)
    processors = [
        BatchSpanProcessor(_span_exporter(n, env)) for n in _names(env, "OTEL_TRACES_EXPORTER")
    ]
    for processor in processors:
        tracer_provider.add_span_processor(processor)
    readers = [_metric_reader(n, env) for n in _names(env, "OTEL_METRICS_EXPORTER")]
    meter_provider = MeterProvider(resource=res, metric_readers=readers, shutdown_on_exit=False)
    try:
        yield tracer_provider, meter_provider
    finally:
        _within(
            FLUSH_S if flush_s is None else flush_s,
            [tracer_provider.shutdown, meter_provider.shutdown],
        )


class _NotDirect(Exception):
    """The OTLP/HTTP exporter lacks the internals the direct path uses."""


#: Variables that change what the SDK does with spans and points in ways the direct path does
#: not copy (a sampler, limits, exemplars, another temporality or aggregation): set, the SDK
#: is used.
_SDK_ONLY = (
    "OTEL_TRACES_SAMPLER",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_METRICS_EXEMPLAR_FILTER",
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
    "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
    "OTEL_SDK_DISABLED",
    "OTEL_PYTHON_ID_GENERATOR",
)


def direct_possible(env: Mapping[str, str]) -> bool:
    """Whether this process's providers can be the direct path's (:mod:`._direct`): the
    exporters are OTLP over HTTP/protobuf (or none) and no variable asks the SDK for something
    the direct path does not do. (A program's own provider never comes here.)"""
    environs = (env, os.environ)
    if any(e.get(name, "").strip() for name in _SDK_ONLY for e in environs):
        return False
    for var, signal in (("OTEL_TRACES_EXPORTER", "TRACES"), ("OTEL_METRICS_EXPORTER", "METRICS")):
        names = _names(env, var)
        if names and (names != ["otlp"] or _protocol(env, signal) != "http/protobuf"):
            return False
    return True


@contextmanager
def direct_providers(
    env: Mapping[str, str], flush_s: float | None = None
) -> Iterator[tuple[Any, Any]]:
    """A tracer and a meter provider of the direct path (:mod:`._direct`, :mod:`._metrics`),
    exporting over OTLP/HTTP as the variables say (the SDK exporters' own HTTP clients);
    shut down (flushed for at most ``flush_s`` seconds) when the block ends. Check
    :func:`direct_possible` first.

    Raises:
        EnvironmentProblem: the OTLP/HTTP exporter is not installed."""
    from .. import __version__
    from ._direct import LightTracerProvider, Sender
    from ._metrics import LightMeterProvider

    _quieten()
    exporters = [
        getattr(_import(f"opentelemetry.exporter.otlp.proto.http.{kind}_exporter", "http"), cls)()
        if _names(env, var) else None
        for kind, cls, var in (
            ("trace", "OTLPSpanExporter", "OTEL_TRACES_EXPORTER"),
            ("metric", "OTLPMetricExporter", "OTEL_METRICS_EXPORTER"),
        )
    ]  # fmt: skip
    if not all(e is None or Sender.usable(e) for e in exporters):
        for exporter in exporters:
            if exporter is not None:
                exporter.shutdown()
        raise _NotDirect
    res = resource()
    spans, points = exporters
    tracer_provider = meter_provider = None
    if spans is not None:
        tracer_provider = LightTracerProvider(res, Sender(spans), ("demiarch_flow", __version__))
    if points is not None:
        meter_provider = LightMeterProvider(res, Sender(points))
    try:
        yield tracer_provider, meter_provider
    finally:
        _within(
            FLUSH_S if flush_s is None else flush_s,
            [p.shutdown for p in (tracer_provider, meter_provider) if p is not None],
        )


@contextmanager
def own_providers(
    env: Mapping[str, str], flush_s: float | None = None
) -> Iterator[tuple[Any, Any]]:
    """The providers of a process that configures OpenTelemetry itself: the direct path's
    when :func:`direct_possible` and the exporters have what it uses, else the SDK's."""
    if direct_possible(env):
        with ExitStack() as stack:
            try:
                providers = stack.enter_context(direct_providers(env, flush_s))
            except _NotDirect:
                log.debug("the OTLP exporter lacks what the direct path uses: the SDK's path")
            else:
                yield providers
                return
    with sdk_providers(env, flush_s) as providers:
        yield providers


def _within(seconds: float, calls: list[Callable[[], object]]) -> None:
    """Run ``calls`` at once, each on a daemon thread, and wait for them ``seconds`` at most:
    the SDK's own shutdown waits up to 30 s for a collector that does not answer."""
    threads = [threading.Thread(target=call, daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
