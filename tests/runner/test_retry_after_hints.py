"""Issue 9 #5: a zero or past Retry-After is no reason to retry at once; a bad ms hint hides
nothing."""

from __future__ import annotations

import pytest

from .helpers import SONNET, Harness


@pytest.mark.parametrize("hint", ["0", "0.0", "date+-60"])
async def test_zero_or_past_retry_after_keeps_the_schedule(
    hint: str, autojump_clock: object
) -> None:
    """429 with Retry-After 0 (or a past date) everywhere: every model waits 1, 2, 4 s, not 0 s."""
    h = Harness(f"*=429@{hint}*")
    out = await h.run()
    assert out.status == "failed"
    assert len(h.times) == 12
    assert h.waits() == [1.0, 2.0, 4.0] * 3
    assert h.times[-1] == pytest.approx(21.0)


async def test_negative_ms_hint_falls_back_to_the_schedule(autojump_clock: object) -> None:
    """retry-after-ms -250 alone: no hint, the schedule's 1 s. (Beside a usable Retry-After,
    the bad ms hint does not hide it: tests/test_backoff.py.)"""
    h = Harness(f"{SONNET}=429@-250ms")
    out = await h.run()
    assert out.status == "succeeded"
    assert h.waits() == [1.0]
