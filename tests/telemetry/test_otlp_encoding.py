"""The direct OTLP encoder writes the request the SDK's encoder writes (equal once decoded)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from demiarch_flow.telemetry import _otlp, _setup
from demiarch_flow.telemetry._setup import sdk_providers

from .receiver import Receiver


def _spans() -> list[ReadableSpan]:
    """Spans with every field the encoder writes: kinds, a remote parent with a trace state,
    events, links, statuses, dropped counts, and attribute values of every type."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource({"service.name": "enc", "n": 3}, schema_url="https://s/1")
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    one = provider.get_tracer("one", "1.2", schema_url="https://scope/1", attributes={"a": "b"})
    two = provider.get_tracer("two")
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
        trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "x"), ("k", "v")]),
    )  # fmt: skip
    values: dict[str, Any] = {
        "s": "text", "u": "ünïcode ✓", "empty": "", "t": True, "f": False, "i": 42, "neg": -7,
        "zero": 0, "big": 2**62, "x": 0.25, "nx": -1.5e300, "b": b"\x00\xff",
        "negzero": -0.0, "strs": ("a", "b"), "ints": [1, -2], "mixed": ["a", 1, 2.5, True], "none": [],
        "long": "y" * 300,
    }  # fmt: skip
    with one.start_as_current_span(
        "root", context=set_span_in_context(NonRecordingSpan(remote)), kind=SpanKind.SERVER,
        attributes=values, links=[Link(remote, {"why": "because"}), Link(remote)],
    ) as root:  # fmt: skip
        root.add_event("e1", {"k": "v", "n": 1}, timestamp=1_700_000_000_000_000_001)
        # the same pairs as the span's and the resource's own, under another field number
        root.add_event("e3", {"s": "text", "i": 42, "t": True, "service.name": "enc"})
        root.add_event("e4", {"i": True, "t": 1, "x": -0.0, "zero": 0.0})
        root.add_event("e2")
        for kind in (SpanKind.CLIENT, SpanKind.INTERNAL, SpanKind.PRODUCER, SpanKind.CONSUMER):
            with two.start_as_current_span(f"child {kind.name}", kind=kind) as child:
                child.set_attribute("s", "text")
                child.set_attribute("s2", "other")
                child.set_status(Status(StatusCode.OK))
        with one.start_as_current_span("failing") as failing:
            failing.set_status(Status(StatusCode.ERROR, "went wrong"))
        with one.start_as_current_span("failing quietly") as quiet:
            quiet.set_status(Status(StatusCode.ERROR))
    bounded = TracerProvider(
        resource=provider.resource,
        span_limits=__import__("opentelemetry.sdk.trace", fromlist=["SpanLimits"]).SpanLimits(
            max_attributes=2, max_events=1, max_links=1, max_event_attributes=1
        ),
    )
    bounded.add_span_processor(SimpleSpanProcessor(memory))
    with bounded.get_tracer("bounded").start_as_current_span(
        "dropping", attributes={"a": 1, "b": 2, "c": 3}, links=[Link(remote), Link(remote)]
    ) as span:
        span.add_event("x", {"p": 1, "q": 2})
        span.add_event("y")
    return list(memory.get_finished_spans())


def _decoded(data: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(data)


def test_the_direct_encoding_decodes_to_what_the_sdk_encodes() -> None:
    spans = _spans()
    assert any(s.dropped_attributes and s.dropped_events and s.dropped_links for s in spans)
    expected = _decoded(sdk_encode(spans).SerializeToString())
    assert _decoded(_otlp.encode_spans(spans)) == expected
    encoder = _otlp._Encoder()
    for _ in range(3):  # remembered pairs, resource and scopes give the same bytes again
        assert _decoded(encoder.encode(spans)) == expected


def test_remembered_pairs_are_forgotten_past_the_limit_and_never_mixed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pair is remembered by key and value: the same key with another value (or another
    key with the same value) is encoded anew, and the memory stays bounded."""
    monkeypatch.setattr(_otlp._Encoder, "LIMIT", 4)
    encoder = _otlp._Encoder()
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    for i in range(10):
        tracer.start_span("s", attributes={"k": f"v{i % 3}", f"k{i}": "v0"}).end()
    spans = list(memory.get_finished_spans())
    assert _decoded(encoder.encode(spans)) == _decoded(sdk_encode(spans).SerializeToString())
    assert len(encoder._pairs) <= 4


def test_the_exporter_sends_the_direct_encoding_to_a_receiver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the providers ``--trace`` builds: the receiver decodes every span, and a batch
    above the exporter's request size limit is dropped by the exporter's own check."""
    receiver = Receiver()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        env = {"OTEL_METRICS_EXPORTER": "none"}
        with sdk_providers(env, flush_s=5.0) as (tracer_provider, _meter):
            (processor,) = tracer_provider._active_span_processor._span_processors
            exporter = processor._batch_processor._exporter  # type: ignore[attr-defined]
            assert isinstance(exporter, _otlp.SpanExporter)
            tracer_provider.get_tracer("t").start_span("sent", attributes={"a": "b"}).end()
            spans = _spans()
            assert exporter.export(spans) is SpanExportResult.SUCCESS
            limit = exporter._max_request_size
            monkeypatch.setattr(_setup._ONCE, "said", True)  # its warning is not this test's
            exporter._max_request_size = 10
            assert exporter.export(spans) is SpanExportResult.FAILURE
            exporter._max_request_size = limit
        names = [s.name for s in receiver.spans()]
        assert sorted(names) == sorted([s.name for s in spans] + ["sent"])
    finally:
        receiver.close()
