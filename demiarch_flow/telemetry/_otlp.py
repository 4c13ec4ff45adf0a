"""The OTLP/HTTP span exporter, with the request's protobuf written directly as bytes.

The SDK's encoder (``opentelemetry.exporter.otlp.proto.common``) builds a Python protobuf
object per span, per attribute and per value, and hashes the resource (a JSON dump) once per
span to group them: about 225 µs a span, 1.2 M instructions a run — more than the run's own
spans cost to make. :func:`encode_spans` writes the same ``ExportTraceServiceRequest`` (equal
once decoded: tested against the SDK's encoder) straight to the wire format, with the
resource and scope encoded once and the key-value pairs whose value is a string, an int or a
bool (the same few models, states, events and counts come back in every run) remembered as
bytes.

:class:`SpanExporter` is the SDK's OTLP/HTTP exporter with only the encoding changed: its
endpoint, headers, compression, timeouts, retries and certificates are the exporter's own,
read from the standard variables. Should the exporter's internals it relies on ever be
missing, or a span not encode, it falls back to the exporter's own encoding.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

log = logging.getLogger("demiarch_flow")

_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d").pack
_SMALL = [bytes((i,)) for i in range(128)]
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 as protobuf writes it: two's complement, ten bytes
    if n < 0x80:
        return _SMALL[n]
    if n < 0x4000:  # the length of most spans and events
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag (field number and wire type 2), length, bytes."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 0x80 else _varint(n)) + payload


def _any(value: Any) -> bytes:
    """An ``AnyValue`` message (its payload)."""
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if value is None:
        return b""
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any(v)) for v in value))
    if isinstance(value, Mapping):
        pairs = b"".join(_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items())
        return _field(b"\x32", pairs)
    raise TypeError(f"invalid type {type(value).__name__} of an attribute value")


def _key_value(key: str, value: Any) -> bytes:
    return _field(b"\x0a", key.encode()) + _field(b"\x12", _any(value))


class _Encoder:
    """Encodes batches of spans; remembers what repeats (see the module doc)."""

    LIMIT = 4096
    """Remembered key-value pairs at most (then forgotten, all at once)."""

    def __init__(self) -> None:
        self._pairs: dict[tuple[bytes, str, Any, type], bytes] = {}
        self._once: dict[int, tuple[object, bytes]] = {}

    def _attributes(self, tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
        """Each pair as a repeated ``KeyValue`` field numbered by ``tag``; a pair whose value
        is a string, an int or a bool is remembered by its tag, key, value and type (``True``
        and ``1`` are equal keys of a dict, not the same attribute)."""
        if not attributes:
            return b""
        pairs = self._pairs
        out = []
        # the SDK's BoundedAttributes keeps a plain dict: read it, not the slow Mapping view
        for key, value in getattr(attributes, "_dict", attributes).items():
            kind = type(value)
            if kind is str or kind is int or kind is bool:
                memo = (tag, key, value, kind)
                done = pairs.get(memo)
                if done is None:
                    if len(pairs) >= self.LIMIT:
                        pairs.clear()
                    done = pairs[memo] = _field(tag, _key_value(key, value))
                out.append(done)
            elif value is not None:  # a light span's attributes may hold one: never exported
                out.append(_field(tag, _key_value(key, value)))
        return b"".join(out)

    def _remembered(self, obj: Any, build: Any) -> bytes:
        """The encoding of a resource or scope (the same object for every span of a
        provider), made once; the object is held so that its id is not reused."""
        found = self._once.get(id(obj))
        if found is not None and found[0] is obj:
            return found[1]
        if len(self._once) >= 64:
            self._once.clear()
        data: bytes = build(obj)
        self._once[id(obj)] = (obj, data)
        return data

    def _resource(self, resource: Any) -> bytes:
        body = self._attributes(b"\x0a", resource.attributes)
        return _field(b"\x0a", body)

    def _scope(self, scope: Any) -> bytes:
        if scope is None:
            return _field(b"\x0a", b"")
        body = _field(b"\x0a", scope.name.encode()) if scope.name else b""
        if scope.version:
            body += _field(b"\x12", scope.version.encode())
        body += self._attributes(b"\x1a", scope.attributes)
        return _field(b"\x0a", body)

    def _span(self, span: ReadableSpan) -> bytes:
        ctx = span.get_span_context()
        assert ctx is not None
        out = [
            b"\x0a\x10", ctx.trace_id.to_bytes(16, "big"),
            b"\x12\x08", ctx.span_id.to_bytes(8, "big"),
        ]  # fmt: skip
        if ctx.trace_state:
            state = ",".join(f"{k}={v}" for k, v in ctx.trace_state.items())
            out.append(_field(b"\x1a", state.encode()))
        parent = span.parent
        if parent:
            out.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        if span.name:
            out.append(_field(b"\x2a", span.name.encode()))
        out.append(b"\x30" + _SMALL[span.kind.value + 1])
        if span.start_time:
            out.append(b"\x39" + _FIXED64(span.start_time))
        if span.end_time:
            out.append(b"\x41" + _FIXED64(span.end_time))
        # a ReadableSpan's attributes are a read-only view of what it keeps: read that
        out.append(self._attributes(b"\x4a", getattr(span, "_attributes", None) or span.attributes))
        if span.dropped_attributes:
            out.append(b"\x50" + _varint(span.dropped_attributes))
        for event in span.events:
            body = b"\x09" + _FIXED64(event.timestamp) if event.timestamp else b""
            if event.name:
                body += _field(b"\x12", event.name.encode())
            body += self._attributes(b"\x1a", event.attributes)
            if event.dropped_attributes:
                body += b"\x20" + _varint(event.dropped_attributes)
            out.append(_field(b"\x5a", body))
        if span.dropped_events:
            out.append(b"\x60" + _varint(span.dropped_events))
        for link in span.links:
            body = (
                b"\x0a\x10" + link.context.trace_id.to_bytes(16, "big")
                + b"\x12\x08" + link.context.span_id.to_bytes(8, "big")
                + self._attributes(b"\x22", link.attributes)
            )  # fmt: skip
            if link.dropped_attributes:
                body += b"\x28" + _varint(link.dropped_attributes)
            body += b"\x35" + _FIXED32(_flags(link.context))
            out.append(_field(b"\x6a", body))
        if span.dropped_links:
            out.append(b"\x70" + _varint(span.dropped_links))
        status = span.status
        if status is not None:
            body = _field(b"\x12", status.description.encode()) if status.description else b""
            code = status.status_code.value
            out.append(_field(b"\x7a", body + b"\x18" + _SMALL[code] if code else body))
        out.append(b"\x85\x01" + _FIXED32(_flags(parent)))
        return b"".join(out)

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """An ``ExportTraceServiceRequest``: the spans grouped by resource, then by scope,
        in the order they come (grouped by identity: one provider, one resource)."""
        groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
        for span in spans:
            resource = span.resource
            scope = span.instrumentation_scope or None
            by_scope = groups.get(id(resource))
            if by_scope is None:
                by_scope = groups[id(resource)] = (resource, {})
            entry = by_scope[1].get(id(scope))
            if entry is None:
                entry = by_scope[1][id(scope)] = (scope, [])
            entry[1].append(_field(b"\x12", self._span(span)))
        out = []
        for resource, scopes in groups.values():
            body = [self._remembered(resource, self._resource)]
            for scope, encoded in scopes.values():
                part = self._remembered(scope, self._scope) + b"".join(encoded)
                if scope is not None and scope.schema_url:
                    part += _field(b"\x1a", scope.schema_url.encode())
                body.append(_field(b"\x12", part))
            if resource.schema_url:
                body.append(_field(b"\x1a", resource.schema_url.encode()))
            out.append(_field(b"\x0a", b"".join(body)))
        return b"".join(out)


def _flags(parent: Any) -> int:
    if parent is not None and parent.is_remote:
        return _HAS_IS_REMOTE | _IS_REMOTE
    return _HAS_IS_REMOTE


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` of ``spans`` (a fresh encoder: nothing
    remembered; the exporter keeps one)."""
    return _Encoder().encode(spans)


class SpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter, encoding with :class:`_Encoder`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encoder = _Encoder()
        self._direct = all(
            hasattr(self, name) for name in ("_client", "_metrics", "_shutdown")
        ) and hasattr(self._client, "export")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self._direct or self._shutdown:
            return super().export(spans)
        try:
            data = self._encoder.encode(spans)
        except Exception:  # the exporter's own encoder then says what is wrong
            log.debug("could not encode a batch of spans directly", exc_info=True)
            return super().export(spans)
        limit = getattr(self, "_max_request_size", 0)
        if limit > 0 and len(data) > limit:
            return super().export(spans)  # dropped, with the exporter's own warning
        with self._metrics.export_operation(len(spans)) as result:
            sent = self._client.export(data)
            if not sent.success:
                result.error = sent.error
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS


class LightEncoder(_Encoder):
    """Encodes batches of :class:`~._direct.LightSpan` of one resource and one scope (the
    direct path's): the ``ResourceSpans`` head and the scope are encoded once, a key-value
    pair whose value is a string or an int is remembered by key then value (no tuple made to
    look it up), and an event's name and attributes together, when the same event comes
    again (the transitions of a workflow repeat from run to run)."""

    def __init__(self, resource: Any, scope: tuple[str, str | None]) -> None:
        super().__init__()
        self._head = self._resource(resource)
        name, version = scope
        body = _field(b"\x0a", name.encode()) if name else b""
        if version:
            body += _field(b"\x12", version.encode())
        self._scope_field = _field(b"\x0a", body)
        self._schema = _field(b"\x1a", resource.schema_url.encode()) if resource.schema_url else b""
        self._by_key: dict[bytes, dict[str, dict[Any, bytes]]] = {b"\x4a": {}, b"\x1a": {}}
        self._events: dict[tuple[Any, ...], bytes] = {}
        self._shared: dict[int, tuple[object, bytes]] = {}
        self._names: dict[str, bytes] = {}
        self._keys: dict[str, bytes] = {}

    def _pair(self, tag: bytes, key: str, value: Any) -> bytes:
        """One ``KeyValue`` field (the key's own bytes remembered)."""
        head = self._keys.get(key)
        if head is None:
            if len(self._keys) >= 256:
                self._keys.clear()
            head = self._keys[key] = _field(b"\x0a", key.encode())
        kind = type(value)
        if kind is str:
            data: bytes = value.encode()
            n = len(data)
            any_ = b"\x0a" + (_SMALL[n] if n < 0x80 else _varint(n)) + data
        elif kind is int:
            any_ = b"\x18" + _varint(value)
        elif kind is float:
            any_ = b"\x21" + _DOUBLE(value)
        else:
            any_ = _any(value)
        n = len(any_)
        pair = head + b"\x12" + (_SMALL[n] if n < 0x80 else _varint(n)) + any_
        n = len(pair)
        return tag + (_SMALL[n] if n < 0x80 else _varint(n)) + pair

    def _kv(self, tag: bytes, attributes: Mapping[str, Any]) -> bytes:
        """The pairs as repeated ``KeyValue`` fields numbered ``tag``, a ``None`` left out. A
        string, an int (not a bool: ``True == 1``) or a tuple of strings is remembered by key,
        then value."""
        memo = self._by_key[tag]
        out = []
        for key, value in attributes.items():
            kind = type(value)
            if (
                kind is str
                or kind is int
                or (
                    kind is tuple and all([type(v) is str for v in value])
                )  # (True,) == (1,): not these
            ):
                by_value = memo.get(key)
                if by_value is None:
                    if len(memo) >= 256:
                        memo.clear()
                    by_value = memo[key] = {}
                done = by_value.get(value)
                if done is None:
                    if len(by_value) >= self.LIMIT:
                        by_value.clear()
                    done = by_value[value] = self._pair(tag, key, value)
                out.append(done)
            elif value is not None:
                out.append(self._pair(tag, key, value))
        return b"".join(out)

    def _event(self, name: str, attributes: Mapping[str, Any] | None) -> bytes:
        """An event's name and attributes (its timestamp apart), remembered whole."""
        memo = None
        if attributes:
            memo = (name, tuple(attributes.items()), tuple(map(type, attributes.values())))
        try:
            done = self._events.get(memo) if memo is not None else None
        except TypeError:  # a value that is not hashable (a list)
            memo = done = None
        if done is None:
            done = _field(b"\x12", name.encode()) if name else b""
            done += self._kv(b"\x1a", attributes or {})
            if memo is not None:
                if len(self._events) >= self.LIMIT:
                    self._events.clear()
                self._events[memo] = done
        return done

    def _light(self, span: Any) -> bytes:
        out = [
            b"\x0a\x10", span.trace_id.to_bytes(16, "big"),
            b"\x12\x08", span.span_id.to_bytes(8, "big"),
        ]  # fmt: skip
        if span.parent_id:
            out.append(b"\x22\x08" + span.parent_id.to_bytes(8, "big"))
        name = span.name
        if name:
            done = self._names.get(name)
            if done is None:
                if len(self._names) >= 1024:
                    self._names.clear()
                done = self._names[name] = _field(b"\x2a", name.encode())
            out.append(done)
        out.append(b"\x30" + _SMALL[span.kind + 1])
        if span.start:
            out.append(b"\x39" + _FIXED64(span.start))
        if span.end_time:
            out.append(b"\x41" + _FIXED64(span.end_time))
        shared = span.shared
        if shared is not None:
            found = self._shared.get(id(shared))
            if found is None or found[0] is not shared:
                if len(self._shared) >= 1024:
                    self._shared.clear()
                found = self._shared[id(shared)] = (shared, self._kv(b"\x4a", shared))
            out.append(found[1])
        out.append(self._kv(b"\x4a", span.attributes))
        event = self._event
        for timestamp, name, attributes in span.events:
            body = event(name, attributes)
            if timestamp:
                body = b"\x09" + _FIXED64(timestamp) + body
            out.append(_field(b"\x5a", body))
        if span.dropped_events:
            out.append(b"\x60" + _varint(span.dropped_events))
        code = span.status_code
        description = span.status_description
        body = _field(b"\x12", description.encode()) if description else b""
        out.append(_field(b"\x7a", body + b"\x18" + _SMALL[code] if code else body))
        out.append(
            b"\x85\x01\x00\x03\x00\x00" if span.remote_parent else b"\x85\x01\x00\x01\x00\x00"
        )
        return b"".join(out)

    def encode(self, spans: Sequence[Any]) -> bytes:
        """An ``ExportTraceServiceRequest`` of ``spans``, in their order."""
        light = self._light
        scope_spans = _field(
            b"\x12", self._scope_field + b"".join([_field(b"\x12", light(s)) for s in spans])
        )
        return _field(b"\x0a", self._head + scope_spans + self._schema)
