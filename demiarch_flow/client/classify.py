"""Sorting every provider answer into a result or exactly one error class — pure functions.

The rules follow OpenRouter's error table (shared/OPENROUTER.md): the HTTP status decides,
except that a 400 wrapping a transient inner ``error.code`` (408, 429, 5xx, 524, 529) is that
inner class, a 402 from the in-flight budget is a temporary limit (``rate_limited``), and an
HTTP 200 can carry an ``error`` body, or be no usable answer at all (a broken upstream:
``server_error``, so it is retried).

A body is untrusted input: whatever its shape (wrong types, absurd numbers, nesting too deep
for the JSON parser, lone surrogates), parsing never raises. A figure outside the bounds of
:mod:`demiarch_flow.pricing` is unknown (``None``) rather than a value no column can hold, and
text is made encodable, so the reply that was paid for can always be stored and printed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .._frozen import quick
from ..errors import ProviderError, UpstreamError, redact
from ..pricing import MAX_TOKENS, to_usd


@quick
@dataclass(frozen=True)
class Completion:
    """A successful chat completion, as parsed from the response body."""

    content: str
    model: str
    """The model that answered (``model`` of the response; may differ from the request)."""
    generation_id: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    """Token counts are ``None`` when the response gave none that is believable."""
    completion_tokens: int | None
    total_tokens: int | None
    cached_tokens: int | None
    cost_usd: Decimal | None
    """``usage.cost``: what OpenRouter actually charged, when it said (and it is believable)."""
    provider: str | None = None


def class_for_status(status: int, metadata: Mapping[str, Any] | None = None) -> str:
    """The error class of an HTTP status (or of an ``error.code`` that is a status)."""
    if status == 401:
        return "auth"
    if status == 402:
        if (metadata or {}).get("limit_source") == "openrouter_in_flight_budget":
            return "rate_limited"
        return "payment_required"
    if status == 403:
        return "forbidden"
    if status == 404:
        return "model_unavailable"
    if status in (408, 524):
        return "timeout"
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server_error"
    return "bad_request"


_TRANSIENT_INNER = frozenset({408, 429, 524, 529})
_STATUS = re.compile(r"[0-9]{3}", re.ASCII)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
#: The longest ``model`` or ``id`` taken from a response (the width of their columns).
_MAX_NAME = 200


def _as_status(code: Any) -> int | None:
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code if 100 <= code <= 999 else None
    if isinstance(code, str) and _STATUS.fullmatch(code.strip()):
        return int(code.strip())
    return None


def _clean(text: str) -> str:
    """``text`` made storable: JSON allows lone surrogates and NUL, but UTF-8 (every database
    and terminal) has no surrogates and PostgreSQL's text no NUL; each becomes U+FFFD."""
    return _UNSTORABLE.sub("\ufffd", text)


def _name(value: Any) -> str | None:
    """A short identifier (``model``, ``id``, ``provider``), or ``None`` if it is not one."""
    if isinstance(value, str) and 0 < len(value) <= _MAX_NAME:
        return _clean(value)
    return None


def _error_of(payload: Any) -> Mapping[str, Any] | None:
    if isinstance(payload, Mapping):
        err = payload.get("error")
        if isinstance(err, Mapping):
            return err
        if isinstance(err, str):
            return {"message": err}
    return None


#: The longest text kept of ``metadata.raw`` and ``flagged_input`` (a raw error can be a
#: whole HTML page; one paragraph of it says what went wrong).
_MAX_UPSTREAM_TEXT = 300
_MAX_REASONS = 10
_SPACE = re.compile(r"\s+")


def _bounded(value: Any, limit: int = _MAX_UPSTREAM_TEXT) -> str | None:
    """``value`` as one short printable line (JSON text for anything but a string), or
    ``None`` when empty; never raises, whatever the value."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
        except (ValueError, TypeError, RecursionError):
            return None
    text = _SPACE.sub(" ", _clean(text[: limit * 4])).strip()
    if not text:
        return None
    return redact(text if len(text) <= limit else f"{text[: limit - 1]}…")


def upstream_of(metadata: Mapping[str, Any]) -> UpstreamError | None:
    """What ``error.metadata`` says of the provider behind OpenRouter (``raw``,
    ``provider_name``, moderation ``reasons`` and ``flagged_input``), or ``None``."""
    reasons = metadata.get("reasons")
    found = UpstreamError(
        provider_name=_bounded(_name(metadata.get("provider_name")), 100),
        raw=_bounded(metadata.get("raw")),
        reasons=tuple(
            text
            for text in (_bounded(r, 100) for r in reasons[:_MAX_REASONS] if isinstance(r, str))
            if text is not None
        )
        if isinstance(reasons, list)
        else (),
        flagged_input=_bounded(metadata.get("flagged_input"), 100),
    )
    return found if found != UpstreamError() else None


def classify_error_body(
    status: int, payload: Any, model: str, retry_after_s: float | None
) -> ProviderError:
    """The :class:`ProviderError` for a non-2xx response, or a 200 that carries ``error``
    (with what ``error.metadata`` passes on from the provider behind, as ``upstream``)."""
    err = _error_of(payload) or {}
    found = err.get("metadata")
    metadata: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    message = _clean(str(err.get("message") or f"HTTP {status}")[:300])
    inner = _as_status(err.get("code"))
    if status == 400 and inner is not None and (inner in _TRANSIENT_INNER or inner >= 500):
        error_class = class_for_status(inner, metadata)
    elif status == 200:
        if inner is not None and inner >= 400:
            error_class = class_for_status(inner, metadata)
        else:
            error_class = "server_error"  # e.g. code "server_error": a broken upstream answer
    else:
        error_class = class_for_status(status, metadata)
    return ProviderError(
        error_class, message, model=model, status=status, retry_after_s=retry_after_s,
        upstream=upstream_of(metadata),
    )  # fmt: skip


_LONG_DIGITS = re.compile(rb"[0-9]{100}")
"""A run of digits long enough that an integer of it (with a sign) may reach 101 characters."""


def _parse_int(text: str) -> int | float:
    """A JSON integer; one too long for ``int()`` (over 4300 digits raises) is infinite, so an
    absurd figure is refused by the bounds instead of the whole answer being lost."""
    return int(text) if len(text) <= 100 else float("-inf" if text.startswith("-") else "inf")


def usage_counts(
    usage: Mapping[str, Any],
) -> tuple[int | None, int | None, int | None, int | None]:
    """Prompt, completion, total and cached tokens of a ``usage`` object, each ``None`` when
    missing or not believable (the total is the sum when not given)."""
    prompt, completion = (
        token_count(usage.get("prompt_tokens")),
        token_count(usage.get("completion_tokens")),
    )
    total = token_count(usage.get("total_tokens"))
    if not total and prompt is not None and completion is not None:
        total = token_count(prompt + completion)
    details = usage.get("prompt_tokens_details")
    cached = token_count(details.get("cached_tokens")) if isinstance(details, Mapping) else None
    return prompt, completion, total, cached


def token_count(value: Any) -> int | None:
    """A token count, or ``None``: not a whole number, negative, or beyond ``MAX_TOKENS``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    return None


def parse_completion(
    status: int, body: bytes, model: str, retry_after_s: float | None
) -> Completion | ProviderError:
    """Parse a response body into a :class:`Completion`, or the error it stands for."""
    try:
        # ``_parse_int`` differs from ``int`` only on an integer of over 100 characters: a body
        # without a run of 100 digits (every answer) is parsed without a call per integer.
        if _LONG_DIGITS.search(body) is None:
            payload = json.loads(body)
        else:
            payload = json.loads(body, parse_int=_parse_int)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        if status >= 400:
            return ProviderError(
                class_for_status(status), f"HTTP {status} with a non-JSON body",
                model=model, status=status, retry_after_s=retry_after_s,
            )  # fmt: skip
        return ProviderError(
            "server_error", "the response body is not JSON (truncated or an HTML page)",
            model=model, status=status, retry_after_s=retry_after_s,
        )  # fmt: skip
    if status >= 400 or (_error_of(payload) is not None and not _choices(payload)):
        return classify_error_body(status, payload, model, retry_after_s)
    choices = _choices(payload)
    if not choices:
        return ProviderError(
            "server_error", "the response has neither choices nor an error",
            model=model, status=status, retry_after_s=retry_after_s,
        )  # fmt: skip
    first = choices[0]
    message = first.get("message") if isinstance(first, Mapping) else None
    content = message.get("content") if isinstance(message, Mapping) else None
    if not isinstance(content, str):
        return ProviderError(
            "server_error", "the first choice has no message content",
            model=model, status=status, retry_after_s=retry_after_s,
        )  # fmt: skip
    usage = payload.get("usage") if isinstance(payload.get("usage"), Mapping) else {}
    prompt, completion, total, cached = usage_counts(usage)
    return Completion(
        content=_clean(content),
        model=_name(payload.get("model")) or model,
        generation_id=_name(payload.get("id")),
        finish_reason=_name(first.get("finish_reason")),
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        cached_tokens=cached,
        cost_usd=to_usd(usage.get("cost")),
        provider=_name(payload.get("provider")),
    )


def _choices(payload: Any) -> list[Any]:
    choices = payload.get("choices") if isinstance(payload, Mapping) else None
    return list(choices) if isinstance(choices, list) else []
