"""The server's wait hint (``Retry-After``, ``retry-after-ms``) as seconds — a pure function.

It lives with the client, which reads it off every failed answer, so importing the client
pulls in neither the workflow definition nor the backoff schedule
(:mod:`demiarch_flow.backoff` re-exports it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

#: A hint above this is taken as garbage (a clock bug, an overflow), not as a real request to
#: wait a day: the schedule's own delay is used instead.
IMPLAUSIBLE_RETRY_AFTER_S = 86_400.0


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """The server's wait hint in seconds, or ``None`` when there is no usable one.

    ``retry-after-ms`` (milliseconds) wins over ``Retry-After`` (seconds or an HTTP date) when
    it is usable; an unusable one does not hide a good ``Retry-After``; without either,
    ``X-RateLimit-Reset`` (an epoch in ms, on OpenRouter's own 429s) gives the wait. A hint of zero, a
    negative one, a date that has passed, an unparsable, non-finite or implausibly large value
    is ignored, so the schedule applies: a server saying "retry now" must not turn the retry
    policy into a burst of back-to-back requests. A header sent twice (``3, 5`` once joined)
    counts with its longest usable value.

    Returns:
        ``None``, or a float with ``0 < value <= IMPLAUSIBLE_RETRY_AFTER_S``.
    """
    values: dict[str, list[str]] = {}
    for key, value in headers.items():
        values.setdefault(key.lower(), []).append(value)
    millis = _longest(values.get("retry-after-ms", []), _number)
    if millis is not None:
        seconds = _plausible(millis / 1000.0)
        if seconds is not None:
            return seconds
    current = now or datetime.now(UTC)
    hint = _longest(values.get("retry-after", []), lambda raw: _seconds_or_date(raw, current))
    if hint is not None:
        return hint
    # OpenRouter's own 429s: X-RateLimit-Reset, the moment the window resets (ms epoch)
    return _longest(values.get("x-ratelimit-reset", []), lambda raw: _reset_in(raw, current))


def _reset_in(raw: str, now: datetime) -> float | None:
    """Seconds until an ``X-RateLimit-Reset`` epoch (milliseconds; seconds if it is small)."""
    epoch = _number(raw)
    if epoch is None:
        return None
    seconds = epoch / 1000.0 if epoch > 1e11 else epoch
    return seconds - now.timestamp()


#: Delay-seconds, with OpenRouter's fractional form allowed; no sign, exponent, ``nan`` or
#: ``1_000`` (which ``float()`` would all accept). ASCII digits only.
_DELAY = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?", re.ASCII)


def _longest(raws: list[str], parse: Callable[[str], float | None]) -> float | None:
    """The largest plausible hint among header values (a repeated header arrives joined)."""
    found: list[float] = []
    for raw in raws:
        whole = _plausible(parse(raw))
        if whole is not None:
            found.append(whole)
            continue
        parts = (_plausible(parse(part)) for part in raw.split(","))
        found.extend(p for p in parts if p is not None)
    return max(found, default=None)


def _seconds_or_date(raw: str, now: datetime) -> float | None:
    seconds = _number(raw)
    if seconds is not None:
        return seconds
    text = raw.strip()
    if not text or len(text) > 64:
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - now).total_seconds()


def _number(raw: str) -> float | None:
    text = raw.strip()
    return float(text) if _DELAY.fullmatch(text) else None


def _plausible(seconds: float | None) -> float | None:
    if seconds is None or not 0 < seconds <= IMPLAUSIBLE_RETRY_AFTER_S:
        return None  # NaN fails the comparison too
    return seconds
