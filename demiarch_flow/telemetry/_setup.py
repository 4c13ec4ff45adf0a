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
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from ..errors import EnvironmentProblem

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


def _within(seconds: float, calls: list[Callable[[], object]]) -> None:
    """Run ``calls`` at once, each on a daemon thread, and wait for them ``seconds`` at most:
    the SDK's own shutdown waits up to 30 s for a collector that does not answer."""
    threads = [threading.Thread(target=call, daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
