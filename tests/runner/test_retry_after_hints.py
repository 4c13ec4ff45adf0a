"""Issue 9 #5: a zero or past Retry-After is no reason to retry at once; a bad ms hint hides
nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from .helpers import GPT4O, HAIKU, SONNET, Harness, error, ok_body

_PAST = format_datetime(datetime(2020, 1, 1, tzinfo=UTC), usegmt=True)


@pytest.mark.parametrize("hint", ["0", "0.0", _PAST])
async def test_zero_or_past_retry_after_keeps_the_schedule(
    hint: str, autojump_clock: object
) -> None:
    """429 with Retry-After 0 (or a past date) everywhere: every model waits 1, 2, 4 s, not 0 s."""
    h = Harness({m: [error(429, headers={"Retry-After": hint})] for m in (SONNET, HAIKU, GPT4O)})
    out = await h.run()
    assert out.status == "failed"
    assert len(h.times) == 12
    assert h.waits() == [1.0, 2.0, 4.0] * 3
    assert h.times[-1] == pytest.approx(21.0)


async def test_negative_ms_hint_does_not_hide_retry_after(autojump_clock: object) -> None:
    """retry-after-ms -250 beside Retry-After 3: the run waits 3 s."""
    headers = {"retry-after-ms": "-250", "Retry-After": "3"}
    h = Harness({SONNET: [error(429, headers=headers), httpx.Response(200, json=ok_body(SONNET))]})
    out = await h.run()
    assert out.status == "succeeded"
    assert h.waits() == [3.0]
