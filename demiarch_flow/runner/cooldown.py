"""The shared per-model cooldown (a circuit breaker across runs of one process).

When a model keeps failing with retryable errors — ``after_failures`` within ``window_s`` —
or answers with a Retry-After, it is marked cooling for every run sharing this registry, so a
hundred concurrent runs do not each hammer a provider that is already struggling. Time is trio's
clock, so ``MockClock`` drives it in tests. Pure bookkeeping: no waiting happens here.
"""

from __future__ import annotations

from collections import deque

from ..definition import CooldownPolicy


class CooldownRegistry:
    """Failure counts and cooling deadlines per model."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}
        self._until: dict[str, float] = {}

    def remaining(self, model: str, now: float) -> float:
        """Seconds until ``model`` may be asked again (0 when it is not cooling)."""
        until = self._until.get(model)
        if until is None:
            return 0.0
        if now >= until:
            del self._until[model]
            return 0.0
        return until - now

    def failure(
        self, model: str, now: float, policy: CooldownPolicy, retry_after_s: float | None
    ) -> float | None:
        """Record a retryable failure; returns the cooldown length if this one starts one."""
        window = self._failures.setdefault(model, deque())
        window.append(now)
        while window and window[0] <= now - policy.window_s:
            window.popleft()
        length = None
        if len(window) >= policy.after_failures:
            length = policy.cool_s
            window.clear()
        if retry_after_s is not None and retry_after_s > 0:
            length = max(length or 0.0, retry_after_s)
        if length is None:
            return None
        until = now + length
        if until > self._until.get(model, 0.0):
            self._until[model] = until
        return length

    def success(self, model: str) -> None:
        """A model that answers is healthy again: forget its recent failures."""
        self._failures.pop(model, None)
