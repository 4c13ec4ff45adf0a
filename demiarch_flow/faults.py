"""Scripted provider behaviour: the fault language shared by ``simulate``, the bundled
simulator server and :class:`demiarch_flow.fake.FakeOpenRouter`.

A script maps each model to the outcomes of its successive requests; once a model's list is used
up it answers ``ok``. Syntax: ``MODEL=ITEM,ITEM,...;MODEL=...`` where an ITEM is

* ``ok`` — a normal completion (real response shape, ``usage.cost`` included);
* ``NNN`` — HTTP status NNN with OpenRouter's error envelope; ``NNN@S`` adds ``Retry-After: S``
  (``@Sms`` sends ``retry-after-ms``, ``@date+S`` an HTTP date S seconds ahead, ``@date+-S``
  one in the past, ``@reset+S`` only OpenRouter's ``X-RateLimit-Reset`` — the epoch in ms — S
  seconds ahead, ``@junk`` an unparsable value); ``400:NNN`` is a 400 wrapping inner
  ``error.code`` NNN;
* ``inflight@S`` — 402 from OpenRouter's in-flight budget, with ``Retry-After: S``;
* ``error200`` — HTTP 200 with an ``error`` body (code 500) and no choices;
* ``html`` / ``truncated`` / ``nochoices`` — broken 200 answers;
* ``reset`` — the connection is dropped; ``hang`` — no answer at all (the client times out);
* ``refused`` — the connection is refused: :class:`~demiarch_flow.fake.FakeOpenRouter` raises
  ``httpx.ConnectError`` (the request never left). The simulator has already accepted the
  connection when it reads which model is asked for, so it can only drop it, as ``reset``;
* ``slow:S`` — answers ``ok`` after S seconds;
* streams (a request with ``"stream": true``): ``cut:N`` — an ``error`` chunk
  (``finish_reason: "error"``) after N content chunks; ``ratecut:N`` — the same as a mid-stream
  429; ``drop:N`` — the connection is reset after N chunks; ``stall:N`` — nothing more after N
  chunks; ``end:N`` — the body ends after N chunks with neither ``finish_reason`` nor
  ``[DONE]``; ``quiet`` — the whole reply and its ``finish_reason``, then silence (no usage
  chunk, no ``[DONE]``: only ``GET /generation`` knows the cost); ``slowfirst:S`` — keep-alive
  comments for S seconds before the first token;
  ``pause:S`` — keep-alive comments for S seconds after the first token; ``chunks:N`` — a reply
  of N chunks. A blocking request meets their nearest blocking kin (``reset``, ``hang``,
  ``error200``, ``truncated``, ``slow``, ``ok``); a streamed request meets every other item
  as a blocking one would (``refused`` included);
* ``ITEM*N`` repeats an item N times; ``ITEM*`` repeats it forever.

A model absent from the script always answers ``ok``; ``*=...`` sets the script of every model
not named otherwise.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

from .answers import StreamBreak, completion_body
from .errors import UsageError
from .pricing import PriceTable

__all__ = ["completion_body"]  # re-exported: it lived here first

_ITEM = re.compile(
    r"^(?:(?P<status>\d{3})(?::(?P<inner>\w+))?|(?P<word>[a-z][a-z0-9]*)(?::(?P<arg>[\d.]+))?)"
    r"(?:@(?P<ra>[^*]+))?(?:\*(?P<rep>\d*))?$"
)
_STREAM_COUNTED = {"cut", "ratecut", "drop", "stall", "end", "chunks"}
_STREAM_TIMED = {"slowfirst", "pause"}
_WORDS = {
    "ok", "inflight", "error200", "html", "truncated", "nochoices", "reset", "refused", "hang",
    "slow", "quiet", *_STREAM_COUNTED, *_STREAM_TIMED,
}  # fmt: skip
_HEADER_SAFE = re.compile(r"[!-~]+")
MAX_REPEAT = 10_000
"""The largest ``ITEM*N``: a script stands for a test, not for billions of requests."""
MAX_STEPS = 100_000
"""The most outcomes one model's list may hold (``ITEM*`` repeats without a list)."""
_MAX_DATE_OFFSET_S = 10_000_000.0


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted outcome."""

    kind: str
    """``ok``, ``status`` or one of the words above."""
    status: int = 200
    inner: str | None = None
    retry_after: str | None = None
    delay_s: float = 0.0
    count: int = 0
    """N of the stream faults (``cut:N`` …)."""

    def label(self) -> str:
        if self.kind == "status":
            base = f"{self.status}" + (f":{self.inner}" if self.inner else "")
        else:
            base = self.kind
        return base + (f"@{self.retry_after}" if self.retry_after else "")


OK = Fault("ok")


def parse_item(text: str) -> tuple[Fault, int | None]:
    """One ITEM → (fault, repetitions; ``None`` = forever)."""
    m = _ITEM.match(text.strip())
    if not m or (m["word"] and m["word"] not in _WORDS):
        raise UsageError(
            f"bad fault {text.strip()!r}: expected ok, a status like 429 or 429@2, 400:502,"
            " inflight@S, error200, html, truncated, nochoices, reset, refused, hang, slow:S, or a"
            " stream fault: cut:N, ratecut:N, drop:N, stall:N, end:N, chunks:N, slowfirst:S,"
            " pause:S"
        )
    rep = m["rep"]
    if rep and (len(rep) > 9 or int(rep) > MAX_REPEAT):
        raise UsageError(
            f"bad fault {text.strip()!r}: a repetition count is at most {MAX_REPEAT:,}"
            " (ITEM* repeats an item forever)"
        )
    count = None if rep == "" else int(rep) if rep else 1
    _check_retry_after(text, m["ra"])
    if m["status"]:
        if not 200 <= int(m["status"]) <= 599:
            raise UsageError(f"bad fault {text.strip()!r}: a status is from 200 to 599")
        fault = Fault("status", int(m["status"]), m["inner"], m["ra"])
    elif m["word"] == "slow":
        fault = Fault("slow", delay_s=_seconds(text, m["arg"] or "1"))
    elif m["word"] in _STREAM_TIMED:
        fault = Fault(m["word"], delay_s=_seconds(text, m["arg"] or "1"))
    elif m["word"] in _STREAM_COUNTED:
        arg = m["arg"] or "1"
        if not arg.isdigit() or len(arg) > 6:
            raise UsageError(f"bad fault {text.strip()!r}: N is a whole number up to 999,999")
        fault = Fault(m["word"], count=int(arg))
    elif m["word"] == "inflight":
        fault = Fault("inflight", 402, retry_after=m["ra"] or "1")
    else:
        fault = Fault(m["word"], retry_after=m["ra"])
    return fault, count


def _seconds(item: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(
            f"bad fault {item.strip()!r}: {text!r} is not a number of seconds"
        ) from None
    if not 0 <= value <= _MAX_DATE_OFFSET_S:
        raise UsageError(f"bad fault {item.strip()!r}: seconds must be from 0 to 10,000,000")
    return value


def _check_retry_after(item: str, value: str | None) -> None:
    """``@…`` goes into a header as it is: it must be sendable, and ``date+S`` or ``reset+S``
    a number.
    (``@junk`` stays allowed: an unparsable value is a fault worth scripting.)"""
    if value is None:
        return
    if not _HEADER_SAFE.fullmatch(value):
        raise UsageError(
            f"bad fault {item.strip()!r}: the Retry-After value must be printable ASCII"
        )
    prefix = next((p for p in ("date+", "reset+") if value.startswith(p)), None)
    if prefix is not None:
        try:
            offset = float(value[len(prefix) :])
        except ValueError:
            offset = float("nan")
        if not abs(offset) <= _MAX_DATE_OFFSET_S:
            raise UsageError(
                f"bad fault {item.strip()!r}: {prefix}S takes a number of seconds"
                " (at most 10,000,000)"
            )


@dataclass(frozen=True)
class FaultScript:
    """Per-model lists of outcomes; ``forever`` holds each model's repeating last item."""

    steps: Mapping[str, tuple[Fault, ...]]
    forever: Mapping[str, Fault]

    @classmethod
    def parse(cls, text: str) -> FaultScript:
        """Parse ``MODEL=ITEM,...;MODEL=...`` (empty text: every model answers ok).

        Raises:
            UsageError: the script is malformed.
        """
        steps: dict[str, tuple[Fault, ...]] = {}
        forever: dict[str, Fault] = {}
        for part in filter(None, (p.strip() for p in text.split(";"))):
            model, sep, items = part.partition("=")
            if not sep or not model.strip():
                raise UsageError(f"bad fault script part {part!r}: expected MODEL=ITEM,ITEM")
            seq: list[Fault] = []
            for item in filter(None, (i.strip() for i in items.split(","))):
                fault, count = parse_item(item)
                if count is None:
                    forever[model.strip()] = fault
                    break
                seq.extend([fault] * count)
                if len(seq) > MAX_STEPS:
                    raise UsageError(
                        f"bad fault script part for {model.strip()!r}: more than {MAX_STEPS:,}"
                        " outcomes (ITEM* repeats an item forever)"
                    )
            steps[model.strip()] = tuple(seq)
        return cls(steps, forever)


class FaultCursor:
    """Hands out each model's next scripted outcome (shared by all requests of a provider)."""

    def __init__(self, script: FaultScript) -> None:
        self.script = script
        self._used: dict[str, int] = {}

    def next(self, model: str) -> Fault:
        key = model if model in self.script.steps or model in self.script.forever else "*"
        steps = self.script.steps.get(key, ())
        i = self._used.get(model, 0)
        self._used[model] = i + 1
        if i < len(steps):
            return steps[i]
        return self.script.forever.get(key, OK)


@dataclass(frozen=True, slots=True)
class Rendered:
    status: int
    headers: dict[str, str]
    body: bytes


def _retry_headers(value: str | None, now: datetime) -> dict[str, str]:
    if value is None:
        return {}
    if value.endswith("ms"):
        return {"retry-after-ms": value[:-2]}
    if value.startswith("date+"):
        when = now + timedelta(seconds=float(value[5:]))
        return {"Retry-After": format_datetime(when.astimezone(UTC), usegmt=True)}
    if value.startswith("reset+"):
        when = now + timedelta(seconds=float(value[6:]))
        return {"X-RateLimit-Reset": str(round(when.timestamp() * 1000))}
    return {"Retry-After": value}


def new_generation_id() -> str:
    """A generation id no other response of any fake provider, in any process, shares.

    Drawn once per request, before any wait: the store de-duplicates replies on this id, so
    two answers with one id would lose one of them.
    """
    return f"gen-sim-{uuid.uuid4().hex}"


_MESSAGES = {
    400: "Invalid request",
    401: "No auth credentials found",
    402: "Insufficient credits",
    403: "Request blocked by moderation",
    404: "No endpoints found for this model",
    408: "Request timed out",
    429: "Rate limit exceeded",
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "No available provider",
    504: "Gateway timeout",
    524: "Edge timeout",
    529: "Provider overloaded",
}


def _error(code: Any, message: str, metadata: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if metadata:
        body["error"]["metadata"] = metadata
    return json.dumps(body).encode()


def render(
    fault: Fault,
    model: str,
    messages: list[Any],
    prices: PriceTable,
    generation_id: str,
    now: datetime,
) -> Rendered:
    """The HTTP answer of a scripted fault (``reset``, ``refused``, ``hang``, ``slow`` are the
    caller's).

    ``generation_id`` is the id of a success body (see :func:`new_generation_id`).
    """
    headers = {"Content-Type": "application/json"}
    headers.update(_retry_headers(fault.retry_after, now))
    if fault.kind in ("ok", "slow", "slowfirst", "pause", "chunks"):
        body = completion_body(model, messages, prices, generation_id, now)
        headers["X-Generation-Id"] = body["id"]
        return Rendered(200, headers, json.dumps(body).encode())
    if fault.kind == "status":
        if fault.inner is not None:
            inner: Any = fault.inner
            return Rendered(fault.status, headers, _error(inner, f"Upstream error {inner}"))
        message = _MESSAGES.get(fault.status, f"HTTP {fault.status}")
        meta = {"error_type": "rate_limit_exceeded"} if fault.status == 429 else None
        return Rendered(fault.status, headers, _error(fault.status, message, meta))
    if fault.kind == "inflight":
        meta = {"limit_source": "openrouter_in_flight_budget"}
        msg = "This request would exceed your available credits given your in-flight requests."
        return Rendered(402, headers, _error(402, msg, meta))
    if fault.kind in ("error200", "cut", "ratecut"):
        return Rendered(200, headers, _error(500, "Internal Server Error"))
    if fault.kind == "html":
        headers["Content-Type"] = "text/html"
        return Rendered(200, headers, b"<html><body>502 Bad Gateway</body></html>")
    if fault.kind in ("truncated", "end"):
        return Rendered(200, headers, b'{"id": "gen-x", "choices": [{"message": {"con')
    if fault.kind == "nochoices":
        return Rendered(200, headers, b'{"id": "gen-x", "object": "chat.completion"}')
    raise ValueError(f"{fault.kind} has no HTTP rendering")


def over_rpm(wait_s: float) -> Rendered:
    """The 429 of a provider-side requests-per-minute limit, with the seconds until a request
    would be admitted in ``Retry-After`` (the simulator's and the fake's ``rpm``)."""
    headers = {"Content-Type": "application/json", "Retry-After": f"{max(wait_s, 0.001):.3f}"}
    meta = {"error_type": "rate_limit_exceeded"}
    return Rendered(429, headers, _error(429, "Rate limit exceeded: requests per minute", meta))


def blocking_kind(fault: Fault) -> str:
    """What a stream fault does to a blocking request: its nearest blocking kin."""
    return {
        "drop": "reset",
        "stall": "hang",
        "slowfirst": "slow",
        "pause": "slow",
        "quiet": "ok",
    }.get(fault.kind, fault.kind)


def stream_break(fault: Fault) -> StreamBreak:
    """How a scripted fault shapes a streamed success (a plain ``ok``: no break)."""
    hows = {"cut": "error", "ratecut": "rate_limit", "drop": "reset", "stall": "stall",
            "end": "end"}  # fmt: skip
    if fault.kind in hows:
        return StreamBreak(after=fault.count, how=hows[fault.kind])  # type: ignore[arg-type]
    if fault.kind == "quiet":
        return StreamBreak(quiet=True)
    if fault.kind == "slowfirst":
        return StreamBreak(first_delay_s=fault.delay_s)
    if fault.kind == "pause":
        return StreamBreak(pause_s=fault.delay_s)
    return StreamBreak()


STREAMED = frozenset({"ok", "slow", "chunks", "quiet", *_STREAM_COUNTED, *_STREAM_TIMED})
"""Fault kinds a streamed request answers with a stream (the rest answer as blocking)."""


def models_listing(prices: PriceTable) -> dict[str, Any]:
    """A ``GET /models`` body for the models of a price table (prices in USD per token)."""
    million = Decimal(1_000_000)
    return {
        "data": [
            {
                "id": model,
                "name": model,
                "context_length": 200000,
                "pricing": {
                    "prompt": format((p.prompt / million).normalize(), "f"),
                    "completion": format((p.completion / million).normalize(), "f"),
                    "request": "0",
                },
            }
            for model, p in sorted(prices.prices.items())
        ]
    }
