"""A provider-side request limit for the bundled simulator and the fake provider: at most
``rpm`` requests in any trailing 60-second window, the strictest reading of "requests per
minute" (a fixed-minute counter would allow twice as many across a minute boundary). What a
client must stay under; both answer 429 with a Retry-After when it does not
(:func:`~demiarch_flow.faults.over_rpm`).
"""

from __future__ import annotations

from collections import deque


class SlidingWindowLimit:
    """Counts admitted requests over a sliding window.

    Args:
        rpm: requests allowed per ``window_s``.
        window_s: the window (60 s for a per-minute limit).
        grace_s: clock rounding forgiven at the window's edge (a request exactly one window
            after another is allowed, whatever the float arithmetic says).
    """

    def __init__(self, rpm: int, window_s: float = 60.0, grace_s: float = 1e-6) -> None:
        self.rpm = rpm
        self.window_s = window_s
        self.grace_s = grace_s
        self._times: deque[float] = deque()
        self.refused = 0

    def admit(self, now: float) -> float | None:
        """Admit a request arriving at ``now``: ``None``, or the seconds until one would be."""
        times = self._times
        while times and times[0] <= now - self.window_s + self.grace_s:
            times.popleft()
        if len(times) >= self.rpm:
            self.refused += 1
            return times[0] + self.window_s - now
        times.append(now)
        return None
