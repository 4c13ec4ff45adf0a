"""The one rendering of a fake provider's successful answers: a blocking body or an SSE stream.

The bundled simulator (real HTTP) and :class:`demiarch_flow.testing.FakeOpenRouter` (an httpx
transport) both answer through here, so a test, ``simulate`` and the benchmarks see the same
body, the same stream and the same faults. A stream is a *plan*: a list of :class:`Frame`
values (bytes to send, a pause, a reset, a stall) that each server plays its own way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from .pricing import PriceTable

KEEPALIVE = b": OPENROUTER PROCESSING\n\n"


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def reply_text(model: str, messages: list[Any], chunks: int | None = None) -> str:
    """The simulated reply: an echo of the last message (or ``chunks`` words, for length)."""
    if chunks is not None:
        return "".join(f"w{i} " for i in range(chunks))
    last = next((m.get("content", "") for m in reversed(messages) if isinstance(m, Mapping)), "")
    return f"[simulated {model}] You said: {str(last)[:200]}"


def usage_of(model: str, messages: list[Any], content: str, prices: PriceTable) -> dict[str, Any]:
    """A ``usage`` object with token counts derived from the text and ``cost`` from the table."""
    prompt = sum(_tokens(str(m.get("content", ""))) for m in messages if isinstance(m, Mapping))
    completion = _tokens(content)
    cost = prices.cost(model, prompt, completion, None)
    usd = cost.usd if cost.source == "price_table" else Decimal("0.000001")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
        "cost": float(usd),
    }


def completion_body(
    model: str,
    messages: list[Any],
    prices: PriceTable,
    generation_id: str,
    now: datetime,
    content: str | None = None,
) -> dict[str, Any]:
    """A realistic OpenRouter success body (token counts derived from the text)."""
    text = reply_text(model, messages) if content is None else content
    return {
        "id": generation_id,
        "object": "chat.completion",
        "created": int(now.timestamp()),
        "model": model,
        "provider": "Simulator",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "native_finish_reason": "end_turn",
                "message": {"role": "assistant", "content": text},
            }
        ],
        "usage": usage_of(model, messages, text, prices),
    }


@dataclass(frozen=True, slots=True)
class Frame:
    """One step of a streamed answer."""

    kind: Literal["data", "sleep", "reset", "stall"]
    data: bytes = b""
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """The frames to play, and the text they carry (what a generation look-up bills)."""

    frames: list[Frame]
    text: str


@dataclass(frozen=True, slots=True)
class StreamBreak:
    """How a scripted stream goes wrong after ``after`` content chunks (``None``: it doesn't)."""

    after: int | None = None
    how: Literal["error", "rate_limit", "reset", "stall", "end"] = "error"
    first_delay_s: float = 0.0
    """Keep-alive comments, one a second, before the first chunk (a slow first token)."""
    pause_s: float = 0.0
    """Keep-alive comments, one a second, after the first chunk (a slow but live stream)."""
    quiet: bool = False
    """The whole reply and its ``finish_reason``, then silence: no usage chunk, no ``[DONE]``."""


def _pieces(text: str) -> list[str]:
    """The text as deltas: one word (with its following space) per chunk, like tokens."""
    out: list[str] = []
    start = 0
    for i, ch in enumerate(text):
        if ch == " ":
            out.append(text[start : i + 1])
            start = i + 1
    if start < len(text):
        out.append(text[start:])
    return out or [""]


def _keepalives(seconds: float) -> list[Frame]:
    frames: list[Frame] = []
    left = seconds
    while left > 0:
        step = min(1.0, left)
        frames += [Frame("sleep", seconds=step), Frame("data", KEEPALIVE)]
        left -= step
    return frames


def stream_plan(
    model: str,
    messages: list[Any],
    prices: PriceTable,
    generation_id: str,
    now: datetime,
    broken: StreamBreak = StreamBreak(),
    chunks: int | None = None,
) -> StreamPlan:
    """The frames of a streamed answer: chunks of ``choices[0].delta.content``, a chunk with
    ``finish_reason``, the usage chunk, ``data: [DONE]`` — or the scripted break."""
    text = reply_text(model, messages, chunks)
    head = (
        f'{{"id":{json.dumps(generation_id)},"object":"chat.completion.chunk",'
        f'"created":{int(now.timestamp())},"model":{json.dumps(model)},"provider":"Simulator",'
    )
    frames = _keepalives(broken.first_delay_s)
    pieces = _pieces(text)
    if broken.after is not None:
        pieces = pieces[: broken.after]
    for n, piece in enumerate(pieces):
        delta = json.dumps({"content": piece}, ensure_ascii=False)
        line = f'data: {head}"choices":[{{"index":0,"delta":{delta},"finish_reason":null}}]}}\n\n'
        frames.append(Frame("data", line.encode()))
        if n == 0 and broken.pause_s:
            frames += _keepalives(broken.pause_s)
    if broken.after is not None:
        if broken.how in ("error", "rate_limit"):
            code, message = (
                (429, "Rate limit exceeded")
                if broken.how == "rate_limit"
                else ("server_error", "Provider disconnected unexpectedly")
            )
            error = json.dumps({"code": code, "message": message})
            line = (
                f'data: {head}"error":{error},"choices":[{{"index":0,'
                f'"delta":{{"content":""}},"finish_reason":"error"}}]}}\n\n'
            )
            frames.append(Frame("data", line.encode()))
        elif broken.how == "reset":
            frames.append(Frame("reset"))
        elif broken.how == "stall":
            frames.append(Frame("stall"))
        return StreamPlan(frames, "".join(pieces))
    stop = f'data: {head}"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}]}}\n\n'
    usage = json.dumps(usage_of(model, messages, text, prices))
    last = f'data: {head}"choices":[],"usage":{usage}}}\n\n'
    frames.append(Frame("data", stop.encode()))
    if broken.quiet:
        frames.append(Frame("stall"))
        return StreamPlan(frames, text)
    frames += [Frame("data", last.encode()), Frame("data", b"data: [DONE]\n\n")]
    return StreamPlan(frames, text)


def generation_record(
    model: str, messages: list[Any], prices: PriceTable, generation_id: str, content: str
) -> dict[str, Any]:
    """The ``GET /generation`` body of a generation that produced ``content``."""
    usage = usage_of(model, messages, content or " ", prices)
    return {
        "data": {
            "id": generation_id,
            "model": model,
            "total_cost": usage["cost"],
            "tokens_prompt": usage["prompt_tokens"],
            "tokens_completion": usage["completion_tokens"],
            "provider_name": "Simulator",
            "streamed": True,
        }
    }


class GenerationLog:
    """What a fake provider billed, for ``GET /generation?id=…``.

    Like OpenRouter's, a record appears late: the first ``late`` look-ups of an id are 404s.
    """

    def __init__(self, late: int = 1) -> None:
        self.late = late
        self._records: dict[str, dict[str, Any]] = {}
        self._asked: dict[str, int] = {}

    def add(self, generation_id: str, record: dict[str, Any]) -> None:
        self._records[generation_id] = record

    def lookup(self, generation_id: str) -> dict[str, Any] | None:
        """The record, or ``None`` (a 404: unknown, or not there yet)."""
        asked = self._asked.get(generation_id, 0)
        self._asked[generation_id] = asked + 1
        if asked < self.late:
            return None
        return self._records.get(generation_id)


def wants_stream(body: Any) -> bool:
    """Whether a request body asked for a stream."""
    return isinstance(body, Mapping) and body.get("stream") is True
