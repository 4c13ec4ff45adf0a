"""Reading a streamed chat completion (Server-Sent Events): pure parsing, no I/O.

:class:`StreamReader` is fed the bytes of the body as they arrive and hands back the content
deltas of each read; at the end it says what the stream amounts to — a :class:`Completion`, the
error the stream stood for before its first token (classified exactly as a blocking answer), or
``stream_interrupted`` once text had arrived. The client (:meth:`OpenRouterClient.stream
<demiarch_flow.client.OpenRouterClient.stream>`) runs the clocks and the connection around it.

The parser is our own rather than ``httpx-sse``: the idle clock must see every byte, keep-alive
comments included, which an event-level iterator swallows; and splitting the body at ``\\n``
*bytes* before decoding means a multi-byte character cut across two network reads is always
whole again when its line is decoded (``\\n`` never occurs inside a UTF-8 sequence). Text is
kept as a list of parts joined once, so a 10,000-chunk reply costs linear time and memory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import ErrorClass, ProviderError
from ..pricing import to_usd
from .classify import (
    Completion,
    _clean,
    _name,
    _parse_int,
    classify_error_body,
    usage_counts,
)


class StreamReader:
    """The state of one streamed answer, fed bytes by the client.

    Attributes:
        started: a non-empty content delta has arrived (the first-token clock has stopped).
        ended: the stream said it is over (``[DONE]``, or an ``error`` chunk): stop reading.
        generation_id: the ``id`` of the first chunk that carried one.
        chars: characters of content received so far.
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
        self.chars = 0
        self.deltas = 0
        self._parts: list[str] = []
        self._tail = b""
        self._data: list[bytes] = []

    # ------------------------------------------------------------------ feeding

    def feed(self, data: bytes) -> list[str]:
        """Take one network read; returns the content deltas it completed (often none)."""
        end = data.rfind(b"\n")
        if end < 0:
            self._tail += data
            return []
        block = self._tail + data[:end] if self._tail else data[:end]
        self._tail = data[end + 1 :]
        out: list[str] = []
        for line in block.split(b"\n"):
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    text = self._event(b"\n".join(self._data))
                    self._data.clear()
                    if text:
                        out.append(text)
                    if self.ended:
                        break
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
            # ``: comment`` lines (keep-alives) and other fields (event:, id:, retry:) are skipped
        return out

    def close(self) -> list[str]:
        """The body ended: an event not followed by a blank line still counts."""
        if self._tail:
            self.feed(b"\n")
        if self._data and not self.ended:
            text = self._event(b"\n".join(self._data))
            self._data.clear()
            return [text] if text else []
        return []

    def _event(self, data: bytes) -> str | None:
        if data == b"[DONE]":
            self.done = self.ended = True
            return None
        try:
            chunk = json.loads(data, parse_int=_parse_int)
        except (ValueError, RecursionError):
            self.error = {"message": "a stream chunk is not JSON"}
            self.ended = True
            return None
        if not isinstance(chunk, Mapping):
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
            reason = first.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish_reason = _name(reason)
        if chunk.get("error") is not None or self.finish_reason == "error":
            self.error = (
                chunk if chunk.get("error") is not None else {"message": "finish_reason error"}
            )
            self.ended = True
        return text

    # ------------------------------------------------------------------ outcome

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def outcome(self, status: int, retry_after_s: float | None) -> Completion | ProviderError:
        """What the stream amounts to once its body has ended (or it said it is over)."""
        if self.error is not None:
            cause = classify_error_body(200, self.error, self.model, retry_after_s)
            if not self.started:
                return cause
            return self.broken(cause.error_class, cause.detail, status, cause.retry_after_s)
        if self.done or self.finish_reason is not None:
            return self.completion(self.finish_reason)
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
    ) -> ProviderError:
        """The ``stream_interrupted`` error of a stream that broke after its first token
        (``cause`` is kept as :attr:`cause`)."""
        self.cause = ErrorClass(cause)
        return ProviderError(
            ErrorClass.STREAM_INTERRUPTED,
            f"interrupted after {self.chars} characters ({ErrorClass(cause)}): {detail}",
            model=self.model, status=status, retry_after_s=retry_after_s,
        )  # fmt: skip

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
