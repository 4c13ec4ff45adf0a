"""Reading a streamed chat completion (Server-Sent Events): pure parsing, no I/O.

Three layers, each fed the layer below's output as it arrives:

* :class:`LineSplitter` cuts the body's *bytes* into lines at CR, LF or CRLF — the three ends
  the SSE specification allows — in time linear in the body: each read is scanned once and an
  unfinished line is kept as a list of pieces joined once, when its end arrives (``tail +=
  read`` copied a 20 MB line 5,000 times). Splitting bytes before decoding means a multi-byte
  character cut across two reads is whole again when its line is decoded (CR and LF never
  occur inside a UTF-8 sequence), and U+2028 or U+0085 inside a chunk are not line ends.
* :class:`EventDecoder` reads those lines as the specification's fields (``data``, ``event``,
  ``id``, ``retry``, ``:`` comments) and hands back each :class:`ServerSentEvent`, dispatching
  as httpx-sse and openai-python do (their test suites are tests/test_sse_vectors.py).
* :class:`StreamReader` reads each event's data as a chat-completion chunk and hands back the
  content deltas of each read; at the end it says what the stream amounts to — a
  :class:`Completion`, the error the stream stood for before its first token (classified
  exactly as a blocking answer), or ``stream_interrupted`` once text had arrived.

A reply is whole once a chunk carries a ``finish_reason`` other than ``error``: whatever
follows (a reset, silence, malformed frames, a late error chunk) cannot unmake it, so it is
kept rather than bought again. A ``data:`` line that is not a JSON object is skipped and
counted (:attr:`StreamReader.skipped`), not taken for the end of the stream.

The client (:meth:`OpenRouterClient.stream <demiarch_flow.client.OpenRouterClient.stream>`) runs
the clocks and the connection around the reader; it feeds every read, keep-alive comments
included, so its idle clock sees them (an event-level iterator such as httpx-sse's would
swallow them). Text is kept as a list of parts joined once, so a 10,000-chunk reply costs
linear time and memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ErrorClass, ProviderError, UpstreamError
from ..pricing import to_usd
from .classify import (
    Completion,
    _clean,
    _name,
    _parse_int,
    classify_error_body,
    usage_counts,
)

_EOL = re.compile(rb"\r\n?|\n")
_DECODER = json.JSONDecoder(parse_int=_parse_int)
"""One decoder for every chunk: ``json.loads`` with an option builds a new one (and its
scanner) per call, a fifth of a chunk's own work."""


class LineSplitter:
    """Bytes in, lines (without their ends) out, at CR, LF or CRLF, in linear time.

    A CR that ends one read may be the first half of a CRLF: its line is given at once (an
    event is not held back waiting for the next read) and an LF that opens the next read is
    then skipped.
    """

    def __init__(self) -> None:
        self._tail: list[bytes] = []
        self._after_cr = False

    def feed(self, data: bytes) -> list[bytes]:
        """Take one read; returns the lines it completed."""
        if not data:
            return []
        start = 1 if self._after_cr and data[0] == 0x0A else 0
        lines: list[bytes] = []
        for end in _EOL.finditer(data, start):
            line = data[start : end.start()]
            if self._tail:
                self._tail.append(line)
                line = b"".join(self._tail)
                self._tail.clear()
            lines.append(line)
            start = end.end()
        if start < len(data):
            self._tail.append(data[start:] if start else data)
        self._after_cr = data[-1] == 0x0D
        return lines

    def close(self) -> list[bytes]:
        """The body ended: a last line without its end is still a line."""
        self._after_cr = False
        if not self._tail:
            return []
        line = b"".join(self._tail)
        self._tail.clear()
        return [line]


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event; ``data`` is its ``data:`` lines joined with LF."""

    event: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None


class EventDecoder:
    """Lines in, :class:`ServerSentEvent` out, following the SSE specification's field rules.

    As in httpx-sse and openai-python, a blank line dispatches an event if any field was set
    (an ``event: ping`` with no data is an event), and the last ``id`` carries over to later
    events. Lines are decoded as UTF-8 (a bad byte becomes U+FFFD, as the specification
    says), and one byte order mark opening the stream is ignored.
    """

    def __init__(self) -> None:
        self._lines = LineSplitter()
        self._first = True
        self._event = ""
        self._data: list[str] = []
        self._id = ""
        self._retry: int | None = None

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Take one read; returns the events it completed."""
        return self._decode(self._lines.feed(data))

    def close(self) -> tuple[list[ServerSentEvent], ServerSentEvent | None]:
        """The body ended: the events its last line completed, and the event it ended in the
        middle of (fields read but no blank line), which the specification drops."""
        events = self._decode(self._lines.close())
        begun = self._data or self._event or self._retry is not None
        return events, self._dispatch() if begun else None

    def _decode(self, lines: list[bytes]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if self._first:
                self._first = False
                line = line.removeprefix("\ufeff")
            if not line:
                if (event := self._dispatch()) is not None:
                    events.append(event)
            elif line[0] != ":":  # ``: comment`` lines (keep-alives) are skipped
                self._field(*line.partition(":")[::2])
        return events

    def _field(self, name: str, value: str) -> None:
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        # any other field (and a retry that is not a number) is ignored

    def _dispatch(self) -> ServerSentEvent | None:
        if not (self._event or self._data or self._id or self._retry is not None):
            return None
        event = ServerSentEvent(
            self._event or "message", "\n".join(self._data), self._id, self._retry
        )
        self._event, self._data, self._retry = "", [], None
        return event


class StreamReader:
    """The state of one streamed answer, fed bytes by the client.

    Attributes:
        started: a non-empty content delta has arrived (the first-token clock has stopped).
        ended: the stream said it is over (``[DONE]``, an ``error`` chunk, or the end of the
            body once :meth:`close` has read it): stop reading.
        generation_id: the ``id`` of the first chunk that carried one.
        chars: characters of content received so far.
        skipped: ``data:`` frames that were not a chunk (not JSON, or not a JSON object).
        late_error: an error chunk that came after the reply had finished (its class).
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False
        self.ended = False
        self.done = False
        self.generation_id: str | None = None
        self.answered_by: str | None = None
        self.provider: str | None = None
        self.finish_reason: str | None = None
        self.usage: Mapping[str, Any] | None = None
        self.error: Any = None
        self.cause: ErrorClass | None = None
        self.late_error: ErrorClass | None = None
        self.chars = 0
        self.deltas = 0
        self.skipped = 0
        self._parts: list[str] = []
        self._events = EventDecoder()

    @property
    def finished(self) -> bool:
        """A chunk gave a ``finish_reason`` other than ``error``: the reply is whole, and no
        later break can make it anything but a completion."""
        return self.finish_reason is not None and self.finish_reason != "error"

    # ------------------------------------------------------------------ feeding

    def feed(self, data: bytes) -> list[str]:
        """Take one network read; returns the content deltas it completed (often none)."""
        return self._read(self._events.feed(data))

    def close(self) -> list[str]:
        """The body ended (or broke): an event not followed by a blank line still counts —
        a JSON object is self-delimiting, so a cut one is skipped rather than misread."""
        events, unfinished = self._events.close()
        if unfinished is not None:
            events.append(unfinished)
        out = self._read(events)
        self.ended = True
        return out

    def _read(self, events: list[ServerSentEvent]) -> list[str]:
        out: list[str] = []
        for event in events:
            if self.ended:
                break
            text = self._chunk(event.data)
            if text:
                out.append(text)
        return out

    def _chunk(self, data: str) -> str | None:
        payload = data.strip()
        if not payload:
            return None  # a bare ``data:``: an event with nothing in it
        if payload == "[DONE]":
            self.done = self.ended = True
            return None
        try:
            chunk = _DECODER.decode(payload)
        except (ValueError, RecursionError):
            chunk = None
        if not isinstance(chunk, Mapping):
            self.skipped += 1
            return None
        if self.generation_id is None:
            self.generation_id = _name(chunk.get("id"))
        if self.answered_by is None:
            self.answered_by = _name(chunk.get("model"))
            self.provider = _name(chunk.get("provider"))
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            self.usage = usage  # sent once, last; a repeat replaces rather than adds
        text: str | None = None
        reason: str | None = None
        choices = chunk.get("choices")
        first = choices[0] if isinstance(choices, list) and choices else None
        if isinstance(first, Mapping):
            delta = first.get("delta")
            content = delta.get("content") if isinstance(delta, Mapping) else None
            if isinstance(content, str) and content:
                text = _clean(content)
                self._parts.append(text)
                self.chars += len(text)
                self.deltas += 1
                self.started = True
            finish = first.get("finish_reason")
            reason = _name(finish) if isinstance(finish, str) else None
        failed = chunk.get("error") is not None or reason == "error"
        if failed:
            error = chunk if chunk.get("error") is not None else {"message": "finish_reason error"}
            if self.finished:  # the reply was whole before it: kept, the error noted
                self.late_error = classify_error_body(200, error, self.model, None).error_class
            else:
                self.error = error
                self.finish_reason = "error"
            self.ended = True
        elif reason is not None:
            self.finish_reason = reason
        return text

    # ------------------------------------------------------------------ outcome

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def outcome(self, status: int, retry_after_s: float | None) -> Completion | ProviderError:
        """What the stream amounts to once its body has ended (or it said it is over)."""
        if self.finished:
            return self.completion(self.finish_reason)
        if self.error is not None:
            cause = classify_error_body(200, self.error, self.model, retry_after_s)
            if not self.started:
                return cause
            return self.broken(
                cause.error_class, cause.detail, status, cause.retry_after_s, cause.upstream
            )
        if self.done:
            return self.completion(None)
        if self.started:
            return self.broken(
                ErrorClass.SERVER_ERROR, "the stream ended with neither finish_reason nor [DONE]",
                status,
            )  # fmt: skip
        return ProviderError(
            "server_error", "the stream ended before any answer",
            model=self.model, status=status, retry_after_s=retry_after_s,
        )  # fmt: skip

    def broken(
        self,
        cause: ErrorClass | str,
        detail: str,
        status: int | None = None,
        retry_after_s: float | None = None,
        upstream: UpstreamError | None = None,
    ) -> ProviderError:
        """The ``stream_interrupted`` error of a stream that broke after its first token
        (``cause`` is kept as :attr:`cause`; ``detail`` already says what ``upstream`` holds)."""
        self.cause = ErrorClass(cause)
        error = ProviderError(
            ErrorClass.STREAM_INTERRUPTED,
            f"interrupted after {self.chars} characters ({ErrorClass(cause)}): {detail}",
            model=self.model, status=status, retry_after_s=retry_after_s,
        )  # fmt: skip
        error.upstream = upstream
        return error

    def completion(self, finish_reason: str | None) -> Completion:
        """The text so far with the usage (if any) as a :class:`Completion`."""
        usage = self.usage or {}
        prompt, completion, total, cached = usage_counts(usage)
        return Completion(
            content=self.text,
            model=self.answered_by or self.model,
            generation_id=self.generation_id,
            finish_reason=finish_reason,
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total,
            cached_tokens=cached,
            cost_usd=to_usd(usage.get("cost")),
            provider=self.provider,
        )
