"""An OpenTelemetry SDK that keeps what it is given: spans in memory, metrics on demand — and
the same for the direct path (:mod:`demiarch_flow.telemetry._direct`), what it encodes decoded
back into the SDK's shapes, so that every test of the ``sdk`` fixture runs on both paths."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

otel = pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra is not installed")

from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from demiarch_flow.telemetry._listener import OtelTracer  # noqa: E402

SERVER = "https://openrouter.ai/api/v1"


@dataclass
class Sdk:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer_provider: Any
    meter_provider: Any

    def tracer(self, **environ: str) -> OtelTracer:
        return OtelTracer(
            server_url=SERVER,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            environ=environ,
        )

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if (s.name or "").startswith(prefix)]

    def points(self, metric: str) -> list[Any]:
        """Every data point of ``metric`` collected so far."""
        data = self.metrics.get_metrics_data()
        out: list[Any] = []
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == metric:
                        out.extend(m.data.data_points)
        return out


class Captured:
    """A :class:`~demiarch_flow.telemetry._direct.Sender` that keeps what it is given."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes, what: str) -> bool:
        self.sent.append(data)
        return True

    def shutdown(self) -> None:
        pass


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    return getattr(v, kind)


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


class DirectMetrics:
    """``get_metrics_data()`` of the direct path's meter provider, in the SDK's shape."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider

    def get_metrics_data(self) -> Any:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest,
        )

        request = ExportMetricsServiceRequest.FromString(self.provider.encode())
        ns = SimpleNamespace
        return ns(resource_metrics=[
            ns(scope_metrics=[
                ns(metrics=[
                    ns(name=m.name, data=ns(data_points=[
                        ns(attributes=_attrs(p.attributes), count=getattr(p, "count", None),
                           sum=getattr(p, "sum", None), value=getattr(p, "as_double", None))
                        for p in getattr(m, m.WhichOneof("data")).data_points
                    ]))
                    for m in sm.metrics
                ])
                for sm in rm.scope_metrics
            ])
            for rm in request.resource_metrics
        ])  # fmt: skip


def _readable(span: Any) -> ReadableSpan:
    """A decoded OTLP span as the SDK's ``ReadableSpan``."""
    from opentelemetry.sdk.trace import Event
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

    trace_id = int.from_bytes(span.trace_id, "big")
    parent = None
    if span.parent_span_id:
        remote = bool(span.flags & 0x200)
        parent = SpanContext(trace_id, int.from_bytes(span.parent_span_id, "big"), remote)
    code = StatusCode(span.status.code)
    return ReadableSpan(
        name=span.name,
        context=SpanContext(trace_id, int.from_bytes(span.span_id, "big"), False),
        parent=parent,
        attributes=_attrs(span.attributes),
        events=[Event(e.name, _attrs(e.attributes), e.time_unix_nano) for e in span.events],
        kind=SpanKind(span.kind - 1),
        status=Status(code, span.status.message or None),
        start_time=span.start_time_unix_nano,
        end_time=span.end_time_unix_nano,
    )


class DirectSdk(Sdk):
    """The direct path's providers, their exports captured (no HTTP) and decoded."""

    def finished(self) -> list[ReadableSpan]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        provider: Any = self.tracer_provider
        provider._batcher._flush()
        return [
            _readable(span)
            for data in provider._sender.sent
            for rs in ExportTraceServiceRequest.FromString(data).resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]


@pytest.fixture(params=["sdk", "direct"])
def sdk(request: pytest.FixtureRequest) -> Iterator[Sdk]:
    if request.param == "direct":
        from demiarch_flow import __version__
        from demiarch_flow.telemetry._direct import LightTracerProvider
        from demiarch_flow.telemetry._metrics import LightMeterProvider
        from demiarch_flow.telemetry._setup import resource

        res = resource()
        light_tp = LightTracerProvider(res, Captured(), ("demiarch_flow", __version__))  # type: ignore[arg-type]
        light_mp = LightMeterProvider(res, Captured())  # type: ignore[arg-type]
        yield DirectSdk(InMemorySpanExporter(), DirectMetrics(light_mp), light_tp, light_mp)  # type: ignore[arg-type]
        light_tp.shutdown()
        light_mp.shutdown()
        return
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Sdk(spans, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()
