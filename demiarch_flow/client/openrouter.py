"""The OpenRouter client: one attempt per call, over an injected ``httpx.AsyncClient``.

The client never retries: retrying is the workflow's business (the Backoff and Fallback
states), so every policy decision is visible in the YAML file and in the journal. The network
sits behind httpx's transport seam, so tests pass ``httpx.MockTransport`` or
:class:`demiarch_flow.fake.FakeOpenRouter` instead of patching. Failures of any kind come out
as one :class:`~demiarch_flow.errors.ProviderError` with its error class; foreign exceptions
are mapped here, at the boundary. The key lives in an :class:`ApiKey`, whose repr hides it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from .._frozen import quick
from ..errors import ErrorClass, ProviderError, UnusableKey, UsageError, redact, register_secret
from ..pricing import to_usd
from ._endpoint import DEFAULT_APP_TITLE as DEFAULT_APP_TITLE
from ._endpoint import DEFAULT_APP_URL as DEFAULT_APP_URL
from ._endpoint import DEFAULT_BASE_URL as DEFAULT_BASE_URL
from ._endpoint import KEY_NOT_SENDABLE as KEY_NOT_SENDABLE
from ._endpoint import ApiKey as ApiKey
from ._endpoint import base_url_problem as base_url_problem
from ._endpoint import key_problem as key_problem
from .classify import Completion, _name, parse_completion, token_count
from .retry_after import parse_retry_after
from .streaming import StreamReader


@quick
@dataclass(frozen=True)
class Attempt:
    """The outcome of one call, for the run's attempt list and the journal."""

    model: str
    completion: Completion | None
    error: ProviderError | None
    latency_ms: int
    status: int | None
    partial: Completion | None = None
    """A streamed attempt that broke after its first token: the text that arrived (never the
    reply), its generation id and usage, if the stream gave them."""
    first_token_ms: int | None = None
    """A streamed attempt: from sending until the first content token."""
    cause: ErrorClass | None = None
    """A ``stream_interrupted`` attempt: what broke it (``server_error``, ``timeout``, …)."""
    streamed: bool = False
    """The answer came as an event stream (a server may answer a streamed request whole)."""
    unsent: bool = False
    """The request never reached the provider (no connection could be made, or none was free
    in time): nothing can have been billed."""
    skipped_frames: int = 0
    """A streamed attempt: ``data:`` frames that were not a chunk (not JSON, or not a JSON
    object) and were skipped rather than taken for the end of the stream."""
    after_finish: ErrorClass | None = None
    """A streamed completion whose body broke after its ``finish_reason`` instead of ending
    cleanly (a reset: ``network_error``; silence or the attempt's clock: ``timeout``; a late
    error chunk: its class). The reply was whole, so it is the answer all the same."""
    generation_id: str | None = None
    """A streamed attempt: the generation the provider named (``X-Generation-Id`` or a chunk's
    ``id``), whatever came of it — a stream that broke before its first token may have been
    billed for its prompt, and this id is how its cost is learnt."""


IDLE_SLACK = 0.001
"""How far (as a share of the idle timeout) a stream's deadline may lag its last read before it
is moved: a deadline moved at every read was a sixth of a chunk's CPU (trio re-files it in
its deadline heap; 10,000-chunk replies, 2026-12-04). So a silence is cut at least 99.9 % of
``idle_timeout_s`` after the last read (29.97 s of 30), never later than the exact limit; a
shorter deadline (the finish grace) and the attempt's own end are always taken exactly."""

FINISH_GRACE_S = 2.0
"""How long a stream whose ``finish_reason`` has arrived is still read for its usage chunk and
``[DONE]`` (they follow at once): the answer is whole (and kept already, through
``on_finish``), so a silent connection must not keep the user waiting for the idle timeout."""

_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""A request body's encoder, made once (``json.dumps`` with options makes one per call)."""
"""Failures before the request could leave: no connection, or none free in time."""


@dataclass(frozen=True, slots=True)
class GenerationCost:
    """What ``GET /generation`` says a generation cost."""

    cost_usd: Decimal | None
    prompt_tokens: int | None
    completion_tokens: int | None


OnDelta = Callable[[str], Awaitable[None]]
OnGeneration = Callable[[str], Awaitable[None]]
OnFinish = Callable[[Completion], Awaitable[None]]


class OpenRouterClient:
    """Chat completions against an OpenAI-compatible API (OpenRouter by default).

    Args:
        http: the shared ``httpx.AsyncClient`` (its transport is the test seam).
        key: the API key.
        base_url: API base, e.g. ``https://openrouter.ai/api/v1``.
        app_url, app_title: attribution headers (``HTTP-Referer``, ``X-OpenRouter-Title``).
        limiter: optional cap on HTTP requests in flight, shared across runs.

    Raises:
        UsageError: ``base_url`` is not an http(s) URL with a host.
        UnusableKey: the key cannot be sent in an HTTP header.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        key: ApiKey,
        *,
        base_url: str = DEFAULT_BASE_URL,
        app_url: str = DEFAULT_APP_URL,
        app_title: str = DEFAULT_APP_TITLE,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        if problem := base_url_problem(base_url):
            raise UsageError(f"base URL {redact(base_url)!r} cannot be used: {problem}")
        if problem := key_problem(key.value):
            raise UnusableKey(problem)
        register_secret(key.value)
        self._http = http
        self._url = f"{base_url.rstrip('/')}/chat/completions"
        self._key = key
        self.base_url = base_url.rstrip("/")
        self._limiter = limiter
        self._headers = {
            "Content-Type": "application/json",
            "HTTP-Referer": app_url,
            "X-OpenRouter-Title": app_title,
        }
        if key.value:  # `models sync` asks without a key: "Bearer " alone is no valid header
            self._headers["Authorization"] = f"Bearer {key.value}"

        self._stream_headers = {**self._headers, "Accept-Encoding": "identity"}

    def __repr__(self) -> str:
        return f"OpenRouterClient(base_url={self.base_url!r}, key={self._key})"

    def build_payload(
        self,
        model: str,
        messages: Sequence[Mapping[str, str]],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> dict[str, Any]:
        """The JSON body of one chat completion request."""
        body: dict[str, Any] = {"model": model, "messages": list(messages)}
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return body

    async def complete(self, payload: Mapping[str, Any], *, timeout_s: float) -> Attempt:
        """Make one attempt; never raises for provider or network failures.

        The whole attempt (waiting for a pool slot included) is bounded by ``timeout_s``
        through trio's clock, so a hang costs no real time under ``MockClock``.
        """
        model = str(payload.get("model", ""))
        content = _JSON.encode(payload).encode()
        started = trio.current_time()
        status: int | None = None
        try:
            with trio.move_on_after(timeout_s) as scope:
                if self._limiter is None:
                    response = await self._post(content)
                else:
                    async with _Slot(self._limiter):
                        response = await self._post(content)
            if scope.cancelled_caught:
                outcome: Completion | ProviderError = ProviderError(
                    "timeout", f"no answer within {timeout_s:g} s", model=model
                )
            else:
                status = response.status_code
                outcome = parse_completion(status, response.content, model, None)
                if isinstance(outcome, ProviderError):
                    # The wait hint only matters to an error; reading it walks every header,
                    # so an answer skips it (parsing is pure: the error is parsed again with it).
                    hint = parse_retry_after(response.headers)
                    if hint is not None:
                        outcome = parse_completion(status, response.content, model, hint)
        except _UNSENT as exc:
            outcome = self._unsent(exc, model)
            latency_ms = round((trio.current_time() - started) * 1000)
            return Attempt(model, None, outcome, latency_ms, status, unsent=True)
        except httpx.TimeoutException as exc:
            outcome = ProviderError("timeout", _describe(exc), model=model)
        except httpx.DecodingError as exc:  # e.g. Content-Encoding: gzip on a plain body
            outcome = ProviderError("server_error", _describe(exc), model=model)
        except (httpx.TransportError, OSError) as exc:
            outcome = ProviderError("network_error", _describe(exc), model=model)
        latency_ms = round((trio.current_time() - started) * 1000)
        if isinstance(outcome, ProviderError):
            return Attempt(model, None, outcome, latency_ms, status)
        return Attempt(model, outcome, None, latency_ms, status)

    async def stream(
        self,
        payload: Mapping[str, Any],
        *,
        timeout_s: float,
        first_token_timeout_s: float | None = None,
        idle_timeout_s: float = 30.0,
        on_delta: OnDelta | None = None,
        on_generation: OnGeneration | None = None,
        on_finish: OnFinish | None = None,
    ) -> Attempt:
        """Make one streamed attempt; never raises for provider or network failures.

        Three clocks, all trio's (so ``MockClock`` sees them): ``first_token_timeout_s`` from
        sending until the first content delta (or a ``finish_reason``), then ``idle_timeout_s``
        between any two reads (keep-alive comments count), and ``timeout_s`` over the whole
        attempt. Before the first token every failure is classified as for :meth:`complete`;
        after it, any break is ``stream_interrupted`` and the text so far comes back as
        ``Attempt.partial`` — unless a ``finish_reason`` had arrived: that reply is whole, so a
        reset, silence or the clock running out after it is a completion (``after_finish``
        says what broke), not a reason to buy it again.

        Args:
            on_delta: awaited with each piece of content, as it arrives.
            on_generation: awaited once with the generation id, as soon as a chunk names it.
            on_finish: awaited once with the whole answer (no usage yet) as soon as its
                ``finish_reason`` arrives, before the usage chunk is read: the moment to keep
                it, since the attempt returns only once usage and ``[DONE]`` have come (or
                ``FINISH_GRACE_S`` has passed).

        Cancellation (Ctrl-C) propagates; leaving the ``async with`` closes the connection at
        once, which stops generation (and billing) at the providers that support it.
        """
        model = str(payload.get("model", ""))
        body = {**payload, "stream": True}
        content = _JSON.encode(body).encode()
        started = trio.current_time()
        overall = started + timeout_s
        first_wait = min(first_token_timeout_s or timeout_s, timeout_s)
        reader = StreamReader(model)
        status: int | None = None
        hint: float | None = None
        first_at: float | None = None
        reported = False
        whole = False  # on_finish has been told
        is_stream = False
        outcome: Completion | ProviderError | None = None
        broke: tuple[ErrorClass, str] | None = None  # what ended the body before its end

        async def named() -> None:
            # The generation is reported before any text: it is the only handle on what the
            # stream cost, and a cancellation may come at the first delta.
            nonlocal reported
            if not reported and reader.generation_id is not None:
                reported = True
                if on_generation is not None:
                    await on_generation(reader.generation_id)

        async def take(deltas: list[str]) -> None:
            nonlocal first_at
            await named()
            if deltas:
                if first_at is None:
                    first_at = trio.current_time()
                if on_delta is not None:
                    for text in deltas:
                        await on_delta(text)

        slot = _Slot(self._limiter) if self._limiter is not None else contextlib.nullcontext()
        try:
            with trio.CancelScope(deadline=started + first_wait) as scope:
                async with (
                    slot,
                    self._http.stream(
                        "POST", self._url, content=content, headers=self._stream_headers
                    ) as response,
                ):
                    status = response.status_code
                    hint = parse_retry_after(response.headers)
                    kind = response.headers.get("content-type", "")
                    if status != 200 or "text/event-stream" not in kind:
                        # An error before the stream began, or a server that answered whole.
                        outcome = parse_completion(status, await response.aread(), model, hint)
                    else:
                        is_stream = True
                        # Named by the headers before a byte of the body (``X-Generation-Id``;
                        # else the first chunk's ``id``).
                        reader.generation_id = _name(response.headers.get("x-generation-id"))
                        await named()
                        # The body's own iterator, held so that it is closed however the loop
                        # ends (httpx's aiter_* generators would be left to the GC). Streams
                        # are asked for uncompressed (Accept-Encoding: identity), so the raw
                        # bytes are the text.
                        body_stream = response.stream
                        assert isinstance(body_stream, httpx.AsyncByteStream)
                        reads = body_stream.__aiter__()
                        try:
                            async for data in reads:
                                await take(reader.feed(data))
                                if reader.finished and not reader.ended and not whole:
                                    # Whole, but the usage chunk and [DONE] are still to
                                    # come: the moment to keep it (see ``on_finish``).
                                    whole = True
                                    if on_finish is not None:
                                        await on_finish(reader.completion(reader.finish_reason))
                                if first_at is not None or reader.finished:
                                    idle = idle_timeout_s
                                    if reader.finished:  # whole: only usage and [DONE] to come
                                        idle = min(idle, FINISH_GRACE_S)
                                    due = min(overall, trio.current_time() + idle)
                                    lag = due - scope.deadline
                                    if lag and (
                                        due == overall or not 0 <= lag <= idle * IDLE_SLACK
                                    ):
                                        scope.deadline = due  # see IDLE_SLACK
                                if reader.ended:
                                    break
                        finally:
                            with trio.CancelScope(shield=True):
                                await _aclose(reads)
            if scope.cancelled_caught and outcome is None and not reader.ended:
                if first_at is None and not reader.finished:
                    what = "first token" if first_wait < timeout_s else "answer"
                    outcome = ProviderError(
                        "timeout", f"no {what} within {first_wait:g} s", model=model, status=status
                    )
                elif trio.current_time() >= overall:
                    broke = ErrorClass.TIMEOUT, f"the attempt's {timeout_s:g} s ran out"
                else:
                    broke = ErrorClass.TIMEOUT, f"nothing arrived for {idle_timeout_s:g} s"
        except _UNSENT as exc:
            latency_ms = round((trio.current_time() - started) * 1000)
            error = self._unsent(exc, model)
            return Attempt(model, None, error, latency_ms, status, unsent=True)
        except httpx.TimeoutException as exc:
            broke = ErrorClass.TIMEOUT, _describe(exc)
        except httpx.DecodingError as exc:
            broke = ErrorClass.SERVER_ERROR, _describe(exc)
        except (httpx.TransportError, OSError) as exc:
            broke = ErrorClass.NETWORK_ERROR, _describe(exc)
        after_finish: ErrorClass | None = None
        if is_stream and outcome is None:
            if not reader.ended:
                # The body ended or broke: what it had sent so far is all there is (a chunk
                # not followed by its blank line included).
                await take(reader.close())
            if broke is None or reader.finished:
                outcome = reader.outcome(200, hint)
                after_finish = broke[0] if broke is not None else reader.late_error
        if outcome is None:
            assert broke is not None
            cls, detail = broke
            if reader.started:
                outcome = reader.broken(cls, detail, status)
            else:
                outcome = ProviderError(cls, detail, model=model, status=status)
        latency_ms = round((trio.current_time() - started) * 1000)
        first_ms = round((first_at - started) * 1000) if first_at is not None else None
        if isinstance(outcome, Completion):
            return Attempt(
                model, outcome, None, latency_ms, status, first_token_ms=first_ms,
                    streamed=is_stream, skipped_frames=reader.skipped, after_finish=after_finish,
                generation_id=reader.generation_id,
            )  # fmt: skip
        partial = reader.completion(None) if reader.started or reader.usage else None
        return Attempt(
            model, None, outcome, latency_ms, status, partial, first_ms, reader.cause,
            streamed=is_stream, skipped_frames=reader.skipped, generation_id=reader.generation_id,
        )  # fmt: skip

    def _unsent(self, exc: Exception, model: str) -> ProviderError:
        """A request that never left. No connection to the host (a name that does not
        resolve, a refusal, a TLS failure, a connect timeout) is the endpoint's failure, not
        the model's: it says which host, and marks the error ``unreachable``. No connection
        free in this process's pool in time is neither."""
        cls = "timeout" if isinstance(exc, httpx.TimeoutException) else "network_error"
        if isinstance(exc, httpx.PoolTimeout):
            return ProviderError(cls, _describe(exc), model=model)
        host = urlsplit(self._url).hostname or self._url
        return ProviderError(
            cls, f"cannot reach {host} — are you offline? ({_describe(exc)})", model=model,
            unreachable=True,
        )  # fmt: skip

    async def generation_cost(
        self, generation_id: str, *, tries: int = 4, first_delay_s: float = 0.5
    ) -> GenerationCost | None:
        """``GET /generation?id=…``: what a generation cost, or ``None`` if it cannot be learnt.

        The record appears late (often a 404 half a second after the last byte), so the look-up
        is retried ``tries`` times, doubling the wait from ``first_delay_s`` (trio's clock).
        """
        delay = first_delay_s
        for i in range(tries):
            try:
                with trio.move_on_after(30):
                    response = await self._http.get(
                        f"{self.base_url}/generation",
                        params={"id": generation_id},
                        headers=self._headers,
                    )
                    if response.status_code == 200:
                        data = response.json().get("data")
                        if isinstance(data, dict):
                            return GenerationCost(
                                to_usd(data.get("total_cost")),
                                token_count(data.get("tokens_prompt")),
                                token_count(data.get("tokens_completion")),
                            )
                    elif response.status_code != 404:
                        return None
            except (httpx.HTTPError, OSError, ValueError, AttributeError, RecursionError):
                pass
            if i + 1 < tries:
                await trio.sleep(delay)
                delay *= 2
        return None

    async def _post(self, content: bytes) -> httpx.Response:
        # The attempt's deadline is trio's (move_on_after above), one clock for real runs and
        # MockClock alike; the httpx client's own timeout is only a backstop.
        return await self._http.post(self._url, content=content, headers=self._headers)

    async def list_models(self) -> list[dict[str, Any]]:
        """``GET /models`` → its ``data`` list.

        Raises:
            ProviderError: the listing could not be fetched or read.
        """
        try:
            response = await self._http.get(
                f"{self.base_url}/models", headers=self._headers, timeout=60
            )
        except httpx.TimeoutException as exc:
            raise ProviderError("timeout", _describe(exc)) from None
        except httpx.DecodingError as exc:
            raise ProviderError("server_error", _describe(exc)) from None
        except (httpx.TransportError, OSError) as exc:
            raise ProviderError("network_error", _describe(exc)) from None
        try:
            data = response.json().get("data")
        except (ValueError, AttributeError, RecursionError):
            data = None
        if response.status_code != 200 or not isinstance(data, list):
            raise ProviderError(
                "server_error", "GET /models did not return a model list",
                status=response.status_code,
            )  # fmt: skip
        return [d for d in data if isinstance(d, dict)]


class _Slot:
    """A place under the in-flight cap, for one request: taken at once when one is free.

    ``async with limiter`` always passes through trio's scheduler (``acquire`` ends with a
    ``cancel_shielded_checkpoint``), a whole loop turn per request even when nothing waits;
    the request that follows is itself full of checkpoints, so a free place is taken without
    one (a cancellation already pending still stops the request before it is sent, as
    ``acquire`` would). Only a full limiter waits, in ``acquire``.
    """

    __slots__ = ("_limiter",)

    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self._limiter = limiter

    async def __aenter__(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()  # no loop turn unless cancelled
        try:
            self._limiter.acquire_nowait()
        except trio.WouldBlock:
            await self._limiter.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._limiter.release()


async def _aclose(it: Any) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return redact(f"{type(exc).__name__}: {text}")[:300]
