"""Spans as light objects, encoded straight to OTLP and exported in the background — the path a
process takes when it built its own OpenTelemetry set-up from the ``OTEL_*`` variables.

The SDK's span costs a run more than everything else tracing does: a sampler, a ``SpanContext``,
``BoundedAttributes`` checking every value, span processors called at start and end, a lock per
change and a ``ReadableSpan`` copied at the end — about 0.35 M instructions a span. When nobody
else can see our spans (no processor of a program's own: we made the provider, and it exports
OTLP/HTTP), none of it is needed: :class:`LightSpan` keeps the fields the OTLP ``Span`` message
has and :func:`~._otlp.encode_light_spans` writes them, on :class:`Batcher`'s thread.

What the SDK does by default is kept: ids from :func:`random.getrandbits` (valid: never zero),
the parent-based sampler (a remote parent that is not sampled drops its trace), at most
:data:`MAX_EVENTS` events a span (the oldest dropped and counted), the status rules (``OK`` is
final, ``UNSET`` ignored), the batch processor's bounds (``OTEL_BSP_*``: a bounded queue,
spans dropped with one warning when it is full) and the exporter's own HTTP client (endpoint,
headers, compression, timeouts, retries, certificates, as the variables say). A program that
installed a tracer provider of its own never gets here (:func:`~._setup.direct_possible`).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util import types

log = logging.getLogger("demiarch_flow.telemetry")

MAX_EVENTS = 128
"""Events a span keeps (the SDK's default ``OTEL_SPAN_EVENT_COUNT_LIMIT``)."""

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, "") or default)
    except ValueError:
        return default
    return value if value > 0 else default


class Sender:
    """Posts encoded OTLP requests with the SDK exporter's own HTTP client (built from the
    variables as the exporter builds it); a failure is the client's to log, once
    (:mod:`._setup` filters the exporters' loggers)."""

    def __init__(self, exporter: Any) -> None:
        self._exporter = exporter
        self._client = exporter._client
        self._limit = int(getattr(exporter, "_max_request_size", 0) or 0)

    @staticmethod
    def usable(exporter: Any) -> bool:
        """The exporter has the internals this relies on (else: the SDK's own path)."""
        return hasattr(getattr(exporter, "_client", None), "export")

    def send(self, data: bytes, what: str) -> bool:
        if self._limit > 0 and len(data) > self._limit:
            log.warning("telemetry: a batch of %s (%d bytes) is above the exporter's request"
                        " size limit (%d): dropped", what, len(data), self._limit)  # fmt: skip
            return False
        return bool(self._client.export(data).success)

    def shutdown(self) -> None:
        self._exporter.shutdown()


class Worker:
    """A daemon thread that calls ``tick`` every ``period_s`` (sooner when woken), and once
    more when stopped. ``tick`` never raises out of it."""

    def __init__(self, name: str, period_s: float, tick: Callable[[], None]) -> None:
        self._tick = tick
        self._period = period_s
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self._period)
            self._wake.clear()
            stopping = self._stopping
            try:
                self._tick()
            except Exception:  # export never fails anything
                log.debug("telemetry export failed", exc_info=True)
            if stopping:
                return

    def stop(self) -> None:
        """The last ``tick`` is made and waited for (callers bound the wait: see
        :func:`~._setup._within`)."""
        self._stopping = True
        self._wake.set()
        self._thread.join()


class Batcher:
    """The batch span processor's bounds (``OTEL_BSP_SCHEDULE_DELAY``, ``_MAX_QUEUE_SIZE``,
    ``_MAX_EXPORT_BATCH_SIZE``) for light spans: ``add`` is an append, the export happens on
    a :class:`Worker`; a span that finds the queue full is dropped, with one warning."""

    def __init__(self, export: Callable[[Sequence[LightSpan]], object]) -> None:
        self._export = export
        self._max = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self._batch = min(self._max, _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512))
        self._queue: deque[LightSpan] = deque()
        self._dropped = 0
        self._closed = False
        delay = _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self._worker = Worker("demiarch-flow-spans", delay, self._flush)

    def add(self, span: LightSpan) -> None:
        queue = self._queue
        if len(queue) >= self._max or self._closed:
            self._dropped += 1
            if self._dropped == 1:
                log.warning("telemetry: the span queue is full (%d): spans are dropped", self._max)
            return
        queue.append(span)
        if len(queue) == self._batch:
            self._worker.wake()

    def _flush(self) -> None:
        queue = self._queue
        while queue:
            batch: list[LightSpan] = []
            while queue and len(batch) < self._batch:
                batch.append(queue.popleft())
            self._export(batch)

    def shutdown(self) -> None:
        self._closed = True
        self._worker.stop()


class LightSpan(trace.Span):
    """A span as OTLP sends it, and no more (see the module doc). Not thread-safe: a span is
    made and ended by one run. ``shared``: attributes written before ``attributes``, a dict
    many spans share and nobody changes (the encoder remembers its bytes by its identity)."""

    __slots__ = (
        "_batcher",
        "attributes",
        "dropped_events",
        "end_time",
        "events",
        "kind",
        "name",
        "parent_id",
        "remote_parent",
        "sampled",
        "shared",
        "span_id",
        "start",
        "status_code",
        "status_description",
        "trace_id",
    )  # fmt: skip

    def __init__(
        self,
        batcher: Batcher,
        name: str,
        trace_id: int,
        span_id: int,
        parent_id: int,
        remote_parent: bool,
        sampled: bool,
        kind: int,
        start: int,
        attributes: dict[str, Any],
        shared: Mapping[str, Any] | None = None,
    ) -> None:
        self._batcher = batcher
        self.shared = shared
        self.name = name
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.remote_parent = remote_parent
        self.sampled = sampled
        self.kind = kind
        self.start = start
        self.end_time = 0
        self.attributes = attributes
        self.events: list[tuple[int, str, Mapping[str, Any] | None]] = []
        self.dropped_events = 0
        self.status_code = 0
        self.status_description: str | None = None

    def traceparent(self) -> str:
        """Its W3C ``traceparent``."""
        flags = "01" if self.sampled else "00"
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{flags}"

    def get_span_context(self) -> SpanContext:
        return SpanContext(
            self.trace_id, self.span_id, False, _SAMPLED if self.sampled else _NOT_SAMPLED
        )

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if value is not None and not self.end_time:
            if self.shared is not None and key in self.shared:
                self.attributes = {**self.shared, **self.attributes}
                self.shared = None
            self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if self.end_time:
            return
        known = {k: v for k, v in attributes.items() if v is not None}
        if self.shared is not None and not known.keys().isdisjoint(self.shared):
            self.attributes = {**self.shared, **self.attributes}
            self.shared = None
        self.attributes.update(known)

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if self.end_time:
            return
        events = self.events
        if len(events) >= MAX_EVENTS:
            del events[0]
            self.dropped_events += 1
        events.append((time.time_ns() if timestamp is None else timestamp, name, attributes))

    def update_name(self, name: str) -> None:
        self.name = name

    def is_recording(self) -> bool:
        return self.sampled and not self.end_time

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if isinstance(status, Status):
            description, status = status.description, status.status_code
        if self.status_code == StatusCode.OK.value or status is StatusCode.UNSET:
            return
        self.status_code = status.value
        self.status_description = description if status is StatusCode.ERROR else None

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        self.add_event("exception", {
            "exception.type": type(exception).__name__, "exception.message": str(exception),
            "exception.escaped": str(escaped), **(attributes or {}),
        }, timestamp)  # fmt: skip

    def end(self, end_time: int | None = None) -> None:
        if self.end_time:
            return
        self.end_time = time.time_ns() if end_time is None else end_time
        if self.sampled:
            self._batcher.add(self)


class LightTracer(trace.Tracer):
    """Starts :class:`LightSpan` s under the parent the context holds (a light span, or a
    remote one a ``traceparent`` gave), as the SDK's parent-based sampler would."""

    def __init__(self, batcher: Batcher, bits: Callable[[int], int]) -> None:
        self._batcher = batcher
        self._bits = bits

    def _id(self, size: int) -> int:
        value = self._bits(size)
        while not value:
            value = self._bits(size)
        return value

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        shared: Mapping[str, Any] | None = None,
    ) -> LightSpan:
        parent = trace.get_current_span(context)
        if isinstance(parent, LightSpan):
            trace_id, parent_id, remote, sampled = (
                parent.trace_id, parent.span_id, False, parent.sampled,
            )  # fmt: skip
        else:
            ctx = parent.get_span_context()
            if ctx is INVALID_SPAN_CONTEXT or not ctx.is_valid:
                trace_id, parent_id, remote, sampled = self._id(128), 0, False, True
            else:
                trace_id, parent_id = ctx.trace_id, ctx.span_id
                remote, sampled = ctx.is_remote, ctx.trace_flags.sampled
        # kept, not copied (the tracer's dicts are its spans' own); a None is never exported
        attrs = attributes if type(attributes) is dict else dict(attributes or {})
        return LightSpan(
            self._batcher, name, trace_id, self._id(64), parent_id, remote, sampled, kind.value,
            time.time_ns() if start_time is None else start_time, attrs, shared,
        )  # fmt: skip

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(span, end_on_exit=end_on_exit) as current:
            yield current


class LightTracerProvider(trace.TracerProvider):
    """One scope (ours) exporting its spans through ``sender``; ``bits`` draws the ids
    (:func:`random.getrandbits`, as the SDK's id generator)."""

    def __init__(
        self,
        resource: Any,
        sender: Sender,
        scope: tuple[str, str],
        bits: Callable[[int], int] = random.getrandbits,
    ) -> None:
        from ._otlp import LightEncoder

        self._sender = sender
        self._encoder = LightEncoder(resource, scope)
        self._batcher = Batcher(self._export)
        self._tracer = LightTracer(self._batcher, bits)

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes = None,
    ) -> LightTracer:
        """The one tracer (its scope is the one given when the provider was made)."""
        return self._tracer

    def _export(self, spans: Sequence[LightSpan]) -> None:
        self._sender.send(self._encoder.encode(spans), "spans")

    def shutdown(self) -> None:
        try:
            self._batcher.shutdown()
        finally:
            self._sender.shutdown()
