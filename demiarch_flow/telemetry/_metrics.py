"""Metrics as plain sums in this process, exported as OTLP by a background thread — the direct
path's meter (see :mod:`._direct`).

The SDK's ``Histogram.record`` costs about 0.1 M instructions a point: the attributes cleaned,
copied, frozen and hashed, a view matched, an exemplar filter asked, a lock per aggregation.
What the tracer records needs none of that: :class:`LightHistogram` finds the point by the
attribute dict it is given (the tracer passes the same few dicts again and again), and adds the
value into explicit buckets under a lock. The export is what the SDK's
``PeriodicExportingMetricReader`` with the OTLP exporter sends by default: cumulative
temporality, every ``OTEL_METRIC_EXPORT_INTERVAL`` ms and once more at shutdown; histograms
with count, sum, min, max and the buckets; observable counters as monotonic sums.
"""

from __future__ import annotations

import struct
import threading
import time
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, CallbackT, Observation
from opentelemetry.util import types

from ._direct import Sender, Worker, _env_int
from ._otlp import _DOUBLE, _FIXED64, _Encoder, _field

_CUMULATIVE = b"\x10\x02"  # aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE


class _Point:
    """One attribute set of a histogram: its cumulative count, sum, extremes and buckets."""

    __slots__ = ("attrs", "buckets", "count", "max", "min", "start", "sum")

    def __init__(self, attrs: dict[str, Any], size: int) -> None:
        self.attrs = attrs
        self.start = time.time_ns()
        self.count = 0
        self.sum: float = 0
        self.min = float("inf")
        self.max = float("-inf")
        self.buckets = [0] * size


class LightHistogram(metrics.Histogram):
    """An explicit-bucket histogram (the advised boundaries, else the SDK's defaults)."""

    DEFAULT_BOUNDS = (0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0,
                      2500.0, 5000.0, 7500.0, 10000.0)  # fmt: skip

    def __init__(self, name: str, unit: str, description: str, bounds: Sequence[float]) -> None:
        self.meta = (name, unit, description)
        self.bounds = tuple(bounds)
        self._lock = threading.Lock()
        self._by_id: dict[int, tuple[object, _Point]] = {}
        self._by_set: dict[frozenset[tuple[str, Any]], _Point] = {}

    def _point(self, attributes: Mapping[str, Any]) -> _Point:
        """The point of this attribute set. Found by the dict's identity first (the tracer
        gives the same dicts and never changes them), else by its items."""
        key = frozenset(attributes.items())
        point = self._by_set.get(key)
        if point is None:
            point = self._by_set[key] = _Point(dict(attributes), len(self.bounds) + 1)
        if len(self._by_id) > 4096:
            self._by_id.clear()
        self._by_id[id(attributes)] = (attributes, point)
        return point

    def record(
        self,
        amount: int | float,
        attributes: types.Attributes = None,
        context: Any = None,
    ) -> None:
        attrs = attributes or {}
        with self._lock:
            found = self._by_id.get(id(attrs))
            point = found[1] if found is not None and found[0] is attrs else self._point(attrs)
            point.count += 1
            point.sum += amount
            if amount < point.min:
                point.min = amount
            if amount > point.max:
                point.max = amount
            point.buckets[bisect_left(self.bounds, amount)] += 1

    def encode(self, now: int, encoder: _Encoder) -> bytes:
        """The ``Metric`` message of every point so far (empty: no point)."""
        with self._lock:
            points = [
                (p.attrs, p.start, p.count, p.sum, p.min, p.max, list(p.buckets))
                for p in self._by_set.values()
            ]  # fmt: skip
        if not points:
            return b""
        bounds = b"".join(_DOUBLE(b) for b in self.bounds)
        out = []
        for attrs, start, count, total, low, high, buckets in points:
            body = (
                b"\x11" + _FIXED64(start) + b"\x19" + _FIXED64(now)
                + b"\x21" + _FIXED64(count) + b"\x29" + _DOUBLE(total)
                + _field(b"\x32", b"".join(_FIXED64(n) for n in buckets))
                + (_field(b"\x3a", bounds) if bounds else b"")
                + encoder._attributes(b"\x4a", attrs)
                + b"\x59" + _DOUBLE(low) + b"\x61" + _DOUBLE(high)
            )  # fmt: skip
            out.append(_field(b"\x0a", body))
        return _metric(self.meta, _field(b"\x4a", b"".join(out) + _CUMULATIVE))


class LightObservableCounter(metrics.ObservableCounter):
    """A monotonic cumulative sum read from its callbacks at each collection."""

    def __init__(
        self,
        name: str,
        callbacks: Sequence[CallbackT],
        unit: str,
        description: str,
        start: int,
    ) -> None:
        self.meta = (name, unit, description)
        self._callbacks = list(callbacks)
        self._start = start

    def encode(self, now: int, encoder: _Encoder) -> bytes:
        observations: list[Observation] = []
        for callback in self._callbacks:
            observations.extend(callback(CallbackOptions()))  # type: ignore[operator]
        out = []
        for o in observations:
            value = o.value
            body = b"\x11" + _FIXED64(self._start) + b"\x19" + _FIXED64(now)
            if isinstance(value, int):
                body += b"\x31" + struct.pack("<q", value)
            else:
                body += b"\x21" + _DOUBLE(value)
            body += encoder._attributes(b"\x3a", o.attributes)
            out.append(_field(b"\x0a", body))
        if not out:
            return b""
        return _metric(self.meta, _field(b"\x3a", b"".join(out) + _CUMULATIVE + b"\x18\x01"))


def _metric(meta: tuple[str, str, str], data: bytes) -> bytes:
    name, unit, description = meta
    head = _field(b"\x0a", name.encode())
    if description:
        head += _field(b"\x12", description.encode())
    if unit:
        head += _field(b"\x1a", unit.encode())
    return _field(b"\x12", head + data)


class LightMeter(metrics.Meter):
    """Histograms and observable counters (what the tracer uses); other instruments are not
    made here — a program wanting them has its own meter provider."""

    def __init__(self, name: str, version: str | None, start: int) -> None:
        super().__init__(name, version)
        self.instruments: list[LightHistogram | LightObservableCounter] = []
        self._start = start

    def create_histogram(
        self,
        name: str,
        unit: str = "",
        description: str = "",
        *,
        explicit_bucket_boundaries_advisory: Sequence[float] | None = None,
    ) -> LightHistogram:
        bounds = explicit_bucket_boundaries_advisory
        made = LightHistogram(
            name, unit, description, LightHistogram.DEFAULT_BOUNDS if bounds is None else bounds
        )
        self.instruments.append(made)
        return made

    def create_observable_counter(
        self,
        name: str,
        callbacks: Sequence[CallbackT] | None = None,
        unit: str = "",
        description: str = "",
    ) -> LightObservableCounter:
        made = LightObservableCounter(name, callbacks or (), unit, description, self._start)
        self.instruments.append(made)
        return made

    def _unsupported(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the direct path's meter makes histograms and observable"
                                  " counters only")  # fmt: skip

    create_counter = create_up_down_counter = create_gauge = _unsupported
    create_observable_gauge = create_observable_up_down_counter = _unsupported


class LightMeterProvider(metrics.MeterProvider):
    """One meter (ours), collected and sent as OTLP by a background thread every
    ``OTEL_METRIC_EXPORT_INTERVAL`` ms, and once more at :meth:`shutdown`."""

    def __init__(self, resource: Any, sender: Sender) -> None:
        self._sender = sender
        self._encoder = _Encoder()
        self._head = self._encoder._resource(resource)
        self._schema = _field(b"\x1a", resource.schema_url.encode()) if resource.schema_url else b""
        self._start = time.time_ns()
        self._meters: list[tuple[bytes, LightMeter]] = []
        interval = _env_int("OTEL_METRIC_EXPORT_INTERVAL", 60000) / 1000
        self._worker = Worker("demiarch-flow-metrics", interval, self.collect_and_send)

    def get_meter(
        self,
        name: str,
        version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes = None,
    ) -> LightMeter:
        meter = LightMeter(name, version, self._start)
        scope = _field(b"\x0a", name.encode()) if name else b""
        if version:
            scope += _field(b"\x12", version.encode())
        self._meters.append((_field(b"\x0a", scope), meter))
        return meter

    def encode(self) -> bytes:
        """The ``ExportMetricsServiceRequest`` of every point so far (empty: none)."""
        now = time.time_ns()
        scopes = []
        for scope, meter in list(self._meters):
            parts = [i.encode(now, self._encoder) for i in meter.instruments]
            if any(parts):
                scopes.append(_field(b"\x12", scope + b"".join(parts)))
        if not scopes:
            return b""
        return _field(b"\x0a", self._head + b"".join(scopes) + self._schema)

    def collect_and_send(self) -> None:
        data = self.encode()
        if data:
            self._sender.send(data, "metrics")

    def shutdown(self) -> None:
        try:
            self._worker.stop()
        finally:
            self._sender.shutdown()
