"""The direct path (light spans and in-process metrics, encoded by us) exports what the SDK's
path exports: the same run traced both ways at once, both decoded by a real OTLP receiver."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict

from demiarch_flow.runner import RunRequest, run_workflow
from demiarch_flow.runner.records import RunStart
from demiarch_flow.telemetry import _setup, open_tracer
from demiarch_flow.telemetry._direct import LightSpan, LightTracerProvider
from demiarch_flow.telemetry._listener import OtelTracer
from demiarch_flow.telemetry._metrics import LightMeterProvider
from demiarch_flow.testing import FakeOpenRouter, make_env

from ..runner.helpers import SONNET, default_workflow
from .receiver import Receiver

WF = default_workflow()
SERVER = "https://openrouter.ai/api/v1"


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    pair = Receiver(), Receiver()
    yield pair
    for r in pair:
        r.close()


class Both:
    """Opens the run's trace in both tracers (the first one's traceparent is kept)."""

    def __init__(self, first: OtelTracer, second: OtelTracer) -> None:
        self.tracers = first, second

    def start_run(self, start: RunStart) -> str | None:
        kept = self.tracers[0].start_run(start)
        self.tracers[1].start_run(start)
        return kept


def _value(v: Any) -> Any:
    return MessageToDict(v)


def _spans(receiver: Receiver) -> list[tuple[Any, ...]]:
    """Each span as comparable values: its parent by name, ids left out (random); every
    trace has one root."""
    spans = receiver.spans()
    roots = [s for s in spans if not s.parent_span_id]
    assert sorted(s.trace_id for s in spans) == sorted(r.trace_id for r in roots for _ in range(5))
    assert all(len(s.trace_id) == 16 and any(s.trace_id) and any(s.span_id) for s in spans)
    names = {s.span_id: s.name for s in spans}
    out = []
    for s in spans:
        out.append((
            s.name, s.kind, names.get(s.parent_span_id) if s.parent_span_id else None,
            s.start_time_unix_nano, s.end_time_unix_nano, s.flags, s.trace_state,
            sorted((kv.key, _value(kv.value)) for kv in s.attributes),
            [(e.name, e.time_unix_nano, sorted((kv.key, _value(kv.value)) for kv in e.attributes))
             for e in s.events],
            (s.status.code, s.status.message), s.dropped_events_count, len(s.links),
        ))  # fmt: skip
    return sorted(out, key=repr)


def _metrics(receiver: Receiver) -> dict[str, Any]:
    """The last export's metrics by name: unit, description, temporality and points (their
    attributes and values; the times are checked, not compared)."""
    (request, *_) = receiver.metrics[-1:]
    out: dict[str, Any] = {}
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                data = MessageToDict(m)
                kind = next(k for k in ("histogram", "sum", "gauge") if k in data)
                points = data[kind].pop("dataPoints")
                for p in points:
                    start, now = int(p.pop("startTimeUnixNano", 0)), int(p.pop("timeUnixNano"))
                    assert 0 < start <= now
                    p["attributes"] = sorted(p["attributes"], key=repr)
                points.sort(key=repr)
                out[m.name] = (sm.scope.name, sm.scope.version, data, points)
    return out


async def test_the_direct_path_exports_what_the_sdk_path_exports(
    receivers: tuple[Receiver, Receiver], monkeypatch: pytest.MonkeyPatch, autojump_clock: object
) -> None:
    """A run that retries (500), falls back (404) and succeeds, told to a tracer on the SDK's
    providers and to one on the direct path's, each exporting to its own receiver: the same
    spans (names, kinds, parents, times, attributes, events, status), the same resource and
    scope, and the same metrics (names, units, attributes, data points)."""
    sdk_rx, direct_rx = receivers
    env = {"OTEL_METRIC_EXPORT_INTERVAL": "3600000"}
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sdk_rx.url)
    with _setup.sdk_providers(env, flush_s=20.0) as (sdk_tp, sdk_mp):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", direct_rx.url)
        with _setup.own_providers(env, flush_s=20.0) as (direct_tp, direct_mp):
            assert isinstance(direct_tp, LightTracerProvider)
            assert isinstance(direct_mp, LightMeterProvider)
            tracers = [
                OtelTracer(server_url=SERVER, tracer_provider=tp, meter_provider=mp)
                for tp, mp in ((sdk_tp, sdk_mp), (direct_tp, direct_mp))
            ]
            for _ in range(2):  # cumulative points over two runs
                run_env = make_env(
                    FakeOpenRouter(f"{SONNET}=500,404"), listeners=tracers, tracer=Both(*tracers)
                )
                out = await run_workflow(WF, RunRequest("Hi there", stream=False), run_env)
                assert out.succeeded
    expected = _spans(sdk_rx)
    assert len(expected) == 2 * 5  # a root, three chat spans and a wait, twice
    assert _spans(direct_rx) == expected
    assert direct_rx.resources() == sdk_rx.resources()
    scopes = {
        (ss.scope.name, ss.scope.version)
        for rx in receivers
        for req in rx.traces
        for rs in req.resource_spans
        for ss in rs.scope_spans
    }  # fmt: skip
    assert len(scopes) == 1
    sdk_metrics = _metrics(sdk_rx)
    assert set(sdk_metrics) == {
        "gen_ai.client.operation.duration", "gen_ai.client.token.usage", "demiarch_flow.client.cost",
    }  # fmt: skip
    assert _metrics(direct_rx) == sdk_metrics


async def test_a_span_under_a_remote_parent_not_sampled_is_not_exported(
    receivers: tuple[Receiver, Receiver], monkeypatch: pytest.MonkeyPatch, autojump_clock: object
) -> None:
    """As the SDK's parent-based sampler: a job's traceparent that says "not sampled" drops
    the run's spans, and the traceparent kept says so too."""
    rx = receivers[0]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    with open_tracer(True, server_url=SERVER, environ={"OTEL_METRICS_EXPORTER": "none"}) as t:
        assert t is not None
        env = make_env(FakeOpenRouter(""), listeners=(t,), tracer=t)
        out = await run_workflow(WF, RunRequest("Hi", traceparent=parent), env)
        assert out.succeeded
        carried = t.submitted("run-2")
    assert rx.spans() != [] and {s.name for s in rx.spans()} == {"submit"}
    assert carried is not None and carried.endswith("-01")


def test_light_span_status_and_event_rules_follow_the_sdk() -> None:
    """OK is final, UNSET is ignored, a description only with ERROR; past 128 events the
    oldest are dropped and counted; nothing changes after the end."""
    from opentelemetry.trace import Status, StatusCode

    ended: list[LightSpan] = []

    class Sink:
        def add(self, span: LightSpan) -> None:
            ended.append(span)

    span = LightSpan(Sink(), "s", 1, 2, 0, False, True, 0, 1, {})  # type: ignore[arg-type]
    span.set_status(Status(StatusCode.UNSET))
    assert span.status_code == 0
    span.set_status(StatusCode.ERROR, "bad")
    assert (span.status_code, span.status_description) == (2, "bad")
    span.set_status(Status(StatusCode.OK))
    span.set_status(Status(StatusCode.ERROR, "again"))
    assert (span.status_code, span.status_description) == (1, None)
    for i in range(130):
        span.add_event(f"e{i}", timestamp=i + 1)
    assert len(span.events) == 128 and span.dropped_events == 2
    assert span.events[0][1] == "e2"
    span.end(end_time=200)
    span.end(end_time=300)
    span.set_attribute("late", 1)
    assert ended == [span] and span.end_time == 200 and "late" not in span.attributes


def test_light_spans_encode_as_the_sdk_encodes_the_same_spans() -> None:
    """Light spans made from SDK spans (their ids, times, attributes, events, status) encode
    to what the SDK's encoder writes for those, with values of every type — a list, tuples of
    strings and of ints, True beside 1 under one key, a float, a None never written — and
    twice over (what is remembered gives the same bytes)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, Status, StatusCode

    from demiarch_flow.telemetry._otlp import LightEncoder

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "light"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("demiarch_flow", "9.9")
    shared = {"s": "text", "n": 7}
    varied: list[dict[str, Any]] = [
        {"flag": True, "list": ["a", "b"], "x": 0.5, "reasons": ("stop",)},
        {"flag": 1, "ints": (1, 2), "x": 1.0, "reasons": ("length", "stop")},
        {"flag": "1", "long": "y" * 200, "n": 8},
    ]
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER) as root:
        for i, attrs in enumerate(varied):
            root.add_event("e", {**attrs, "i": i})
            with tracer.start_as_current_span(f"child {i}", kind=SpanKind.CLIENT) as child:
                child.set_attributes({**shared, **attrs})
                child.add_event("e", attrs)
                child.set_status(Status(StatusCode.ERROR, f"bad {i}"))
    spans = sorted(memory.get_finished_spans(), key=lambda s: s.start_time or 0)

    def light(span: Any) -> LightSpan:
        own = dict(span.attributes or {})
        split = own.get("s") == "text" and own.get("n") == 7
        if split:  # the shared part apart, as the tracer gives it, and a None
            own = {k: v for k, v in own.items() if k not in shared}
            own["none"] = None
        parent = span.parent
        made = LightSpan(
            None,  # type: ignore[arg-type]
            span.name, span.context.trace_id, span.context.span_id,
            parent.span_id if parent else 0, False, True, span.kind.value,
            span.start_time, own, shared if split else None,
        )  # fmt: skip
        for event in span.events:  # the SDK made the list a tuple: a list again (unhashable)
            attrs = {k: list(v) if k == "list" else v for k, v in event.attributes.items()}
            made.events.append((event.timestamp, event.name, attrs))
        made.end_time = span.end_time
        made.status_code = span.status.status_code.value
        made.status_description = span.status.description
        return made

    expected = ExportTraceServiceRequest.FromString(encode_spans(spans).SerializeToString())
    encoder = LightEncoder(provider.resource, ("demiarch_flow", "9.9"))
    lights = [light(s) for s in spans]
    assert any(s.shared for s in lights)
    for _ in range(2):
        assert ExportTraceServiceRequest.FromString(encoder.encode(lights)) == expected
