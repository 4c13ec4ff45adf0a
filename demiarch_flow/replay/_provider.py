"""The provider rebuilt from the record: what each model did, and when.

Every recorded request is an :class:`~._record.Observation`. A replayed run that asks model
``M`` at (virtual) wall time ``w`` is answered, in this order:

1. by one of its **own** unused observations of ``M`` that left within
   :data:`TOLERANCE_S` of ``w`` (the nearest): an unchanged policy asks exactly what and when
   it asked, so it meets exactly what it met — the faithfulness the report rests on;
2. by its own observation of ``M`` that refused the *request* itself (``bad_request``,
   ``forbidden``): that answer belongs to the prompt, whenever it is asked;
3. by **what M was doing then**: the latest observation of ``M`` (any run) that left at or
   before ``w`` — the model is taken to stay as it was last seen, so a 429 storm lasts as long
   as the record saw it last — or, before its first, the first;
4. a model no recorded request asked is answered by the stated :class:`Unrecorded`
   assumption, and the run is marked as resting on it.

The answers come out of :class:`ReplayClient`, an :class:`~demiarch_flow.client.OpenRouterClient`
whose requests are never sent: the recorded error class, status, Retry-After and latency come
back as the :class:`~demiarch_flow.client.Attempt` the real client would have returned, so the
runner's own retry, fallback, cooldown, budget and rate-limit code decides everything else.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import trio

from ..client import Attempt, Completion, OpenRouterClient
from ..client.openrouter import GenerationCost
from ..errors import ErrorClass, ProviderError, UsageError
from ..pricing import PriceTable
from ._record import Observation, RecordedRun, Usage

TOLERANCE_S = 0.5
"""How far from its recorded departure a replayed request may leave and still be answered by
that same recorded request (a real run's own overhead — database commits — shifts its requests
by milliseconds; a changed backoff moves them by seconds)."""
_STICKY = frozenset({ErrorClass.BAD_REQUEST, ErrorClass.FORBIDDEN})


@dataclass(frozen=True, slots=True)
class Unrecorded:
    """How a model the record never asked answers (``--unrecorded``)."""

    kind: Literal["succeed", "fail", "like"]
    like: str | None = None
    """``like``: the recorded model whose behaviour it borrows."""

    @classmethod
    def parse(cls, text: str | None) -> Unrecorded | None:
        """``succeed``, ``fail``, a model, or ``None`` (the default: the closest price)."""
        if text is None:
            return None
        if text in ("succeed", "fail"):
            return cls(text)  # type: ignore[arg-type]
        return cls("like", text)

    def describe(self) -> str:
        if self.kind == "succeed":
            return "answers every request, after the median latency of the recorded answers"
        if self.kind == "fail":
            return "fails every request at once (HTTP 503 server_error)"
        return f"behaves like {self.like}"


def closest_price(model: str, recorded: tuple[str, ...], prices: PriceTable) -> str:
    """The recorded model whose price (prompt + completion, per million tokens) is nearest
    ``model``'s; the first recorded model when either price is unknown."""
    own = prices.prices.get(model)
    known = [m for m in recorded if m in prices.prices]
    if own is None or not known:
        return recorded[0]
    target = own.prompt + own.completion
    return min(
        known,
        key=lambda m: (abs(prices.prices[m].prompt + prices.prices[m].completion - target), m),
    )


class Provider:
    """Every model's observations in time order, each run's own, and the assumptions used.

    Args:
        runs: the recorded runs (their observations are the provider's behaviour).
        unrecorded: ``--unrecorded`` (``None``: like the recorded model with the closest price).
        prices: the price table (for the closest price).

    Raises:
        UsageError: ``--unrecorded MODEL`` names a model the record never asked.
    """

    def __init__(
        self, runs: tuple[RecordedRun, ...], unrecorded: Unrecorded | None, prices: PriceTable
    ) -> None:
        timeline: dict[str, list[Observation]] = {}
        self._own: dict[tuple[str, str], list[Observation]] = {}
        self._sticky: dict[tuple[str, str], Observation] = {}
        for run in runs:
            for o in run.observations:
                timeline.setdefault(o.model, []).append(o)
                self._own.setdefault((run.run_id, o.model), []).append(o)
                if o.error_class in _STICKY:
                    self._sticky.setdefault((run.run_id, o.model), o)
        self._timeline = {m: sorted(obs, key=lambda o: o.at) for m, obs in timeline.items()}
        self._times = {m: [o.at for o in obs] for m, obs in self._timeline.items()}
        self.recorded = tuple(sorted(self._timeline))
        if (
            unrecorded is not None
            and unrecorded.kind == "like"
            and unrecorded.like not in self._timeline
        ):
            asked = ", ".join(self.recorded) or "none"
            raise UsageError(
                f"--unrecorded {unrecorded.like!r}: the record never asked that model"
                f" (it asked: {asked}); use succeed, fail or one of those"
            )
        self._unrecorded = unrecorded
        self._prices = prices
        answered = [o.latency_ms for obs in self._timeline.values() for o in obs
                    if o.error_class is None]  # fmt: skip
        self.median_latency_ms = int(statistics.median(answered)) if answered else 0
        self.assumed: dict[str, Unrecorded] = {}
        """Unrecorded model → the assumption it was answered by."""
        self.assumed_runs: dict[str, set[str]] = {}
        """Unrecorded model → the runs that asked it."""

    def assumption(self, model: str) -> Unrecorded:
        """How ``model`` (never asked by the record) answers."""
        if model not in self.assumed:
            choice = self._unrecorded
            if choice is None:
                if not self.recorded:
                    choice = Unrecorded("succeed")
                else:
                    choice = Unrecorded("like", closest_price(model, self.recorded, self._prices))
            self.assumed[model] = choice
        return self.assumed[model]

    def answer(self, run_id: str, model: str, at: datetime) -> tuple[Observation | None, bool]:
        """The observation that answers ``run_id``'s request to ``model`` at ``at``, and
        whether it rests on an assumption (``None``: the ``succeed``/``fail`` assumptions)."""
        own = self._own.get((run_id, model))
        if own:
            near = min(own, key=lambda o: abs((o.at - at).total_seconds()))
            if abs((near.at - at).total_seconds()) <= TOLERANCE_S:
                own.remove(near)
                return near, False
        sticky = self._sticky.get((run_id, model))
        if sticky is not None:
            return sticky, False
        if model in self._timeline:
            return self._then(model, at), False
        self.assumed_runs.setdefault(model, set()).add(run_id)
        choice = self.assumption(model)
        if choice.kind == "like":
            assert choice.like is not None
            return self._then(choice.like, at), True
        return None, True

    def _then(self, model: str, at: datetime) -> Observation:
        i = bisect.bisect_right(self._times[model], at)
        return self._timeline[model][max(i - 1, 0)]


class ReplayClient(OpenRouterClient):
    """One replayed run's provider: nothing is sent, the record answers.

    Built per run (the answer depends on which run asks), cheaply: no HTTP client, no key.
    """

    def __init__(
        self,
        provider: Provider,
        run: RecordedRun,
        now: Callable[[], datetime],
    ) -> None:
        # Deliberately not OpenRouterClient.__init__: there is no key, URL or connection.
        self.base_url = "replay:"
        self._provider = provider
        self._run = run
        self._now = now
        self._reply = next((u for u in run.usage if u.outcome == "reply"), None)
        self._reply_text = next((o.content for o in run.observations if o.content), None)
        self._lookups: dict[str, tuple[Usage | None, float]] = {}

    def __repr__(self) -> str:
        return f"ReplayClient(run={self._run.run_id!r})"

    async def complete(self, payload: Mapping[str, Any], *, timeout_s: float) -> Attempt:
        return await self._answer(payload, timeout_s, timeout_s, streamed=False)

    async def stream(
        self,
        payload: Mapping[str, Any],
        *,
        timeout_s: float,
        first_token_timeout_s: float | None = None,
        idle_timeout_s: float = 30.0,
        on_delta: Any = None,
        on_generation: Any = None,
        on_finish: Any = None,
    ) -> Attempt:
        first = first_token_timeout_s if first_token_timeout_s is not None else timeout_s
        return await self._answer(payload, timeout_s, min(first, timeout_s), streamed=True)

    async def generation_cost(
        self, generation_id: str, *, tries: int = 4, first_delay_s: float = 0.5
    ) -> GenerationCost | None:
        """What the record booked for the generation, after as long as its look-up took."""
        usage, took_s = self._lookups.get(generation_id, (None, 0.0))
        if took_s > 0:
            await trio.sleep(took_s)
        if usage is None or usage.cost_source != "provider":
            return None
        return GenerationCost(usage.cost_usd, usage.prompt_tokens, usage.completion_tokens)

    async def _answer(
        self, payload: Mapping[str, Any], timeout_s: float, silent_s: float, *, streamed: bool
    ) -> Attempt:
        model = str(payload.get("model", ""))
        obs, assumed = self._provider.answer(self._run.run_id, model, self._now())
        if obs is None:
            choice = self._provider.assumption(model)
            if choice.kind == "fail":
                err = ProviderError("server_error", "No available provider (assumed: --unrecorded"
                                    " fail)", model=model, status=503)  # fmt: skip
                return Attempt(model, None, err, 0, 503, streamed=streamed)
            await trio.sleep(self._provider.median_latency_ms / 1000)
            done = self._completion(model, None, own=False)
            return Attempt(model, done, None, self._provider.median_latency_ms, 200,
                           streamed=streamed, generation_id=done.generation_id)  # fmt: skip
        own = obs.run_id == self._run.run_id and not assumed
        latency_s = obs.seconds
        if obs.error_class == ErrorClass.TIMEOUT:
            latency_s = silent_s  # no answer came: it comes no sooner under another clock
        if obs.error_class == ErrorClass.TIMEOUT or latency_s > timeout_s:
            wait = min(latency_s, timeout_s)
            await trio.sleep(wait)
            err = ProviderError("timeout", f"no answer within {wait:g} s", model=model)
            return Attempt(model, None, err, round(wait * 1000), None, streamed=streamed)
        await trio.sleep(latency_s)
        if obs.error_class is None:
            done = self._completion(model, obs, own=own)
            return Attempt(model, done, None, obs.latency_ms, obs.status or 200,
                           streamed=streamed, generation_id=done.generation_id)  # fmt: skip
        err = ProviderError(
            obs.error_class, f"as recorded ({obs.run_id} #{obs.number})", model=model,
            status=obs.status, retry_after_s=obs.retry_after_s, unreachable=obs.unreachable,
        )  # fmt: skip
        if obs.unreachable:  # nothing left: nothing can have been billed
            return Attempt(model, None, err, obs.latency_ms, None, streamed=streamed, unsent=True)
        partial = None
        gid = None
        if obs.error_class == ErrorClass.STREAM_INTERRUPTED or obs.usage is not None:
            gid = f"replay-{self._run.run_id}-{obs.run_id}-{obs.number}"
            usage = obs.usage if own else None
            self._lookups[gid] = (usage, obs.settle_s if own else 0.0)
            partial = Completion(
                obs.partial_text or "", model, gid, None,
                usage.prompt_tokens if usage else None,
                usage.completion_tokens if usage else None, None, None, None,
            )  # fmt: skip
        return Attempt(model, None, err, obs.latency_ms, obs.status, partial=partial,
                       streamed=streamed, generation_id=gid)  # fmt: skip

    def _completion(self, model: str, obs: Observation | None, *, own: bool) -> Completion:
        """The answer: as recorded when it is the run's own; else the run's own reply's tokens
        (or the borrowed request's), priced by the table for the model asked."""
        gid = f"replay-{self._run.run_id}-{obs.run_id if obs else 'assumed'}-" + (
            str(obs.number) if obs else model
        )
        if own and obs is not None and obs.usage is not None:
            own_usage = obs.usage
            cost = own_usage.cost_usd if own_usage.cost_source == "provider" else None
            return Completion(
                obs.content or "", own_usage.model, gid, "stop", own_usage.prompt_tokens,
                own_usage.completion_tokens,
                _total(own_usage.prompt_tokens, own_usage.completion_tokens), 0, cost,
            )  # fmt: skip
        u = self._reply or (obs.usage if obs is not None else None)
        text = self._reply_text or (obs.content if obs is not None else None) or ""
        prompt = u.prompt_tokens if u else None
        completion = u.completion_tokens if u else None
        return Completion(
            text, model, gid, "stop", prompt, completion, _total(prompt, completion), 0, None
        )


def _total(prompt: int | None, completion: int | None) -> int | None:
    return None if prompt is None or completion is None else prompt + completion
