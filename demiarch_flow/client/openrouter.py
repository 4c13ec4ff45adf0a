"""The OpenRouter client: one attempt per call, over an injected ``httpx.AsyncClient``.

The client never retries: retrying is the workflow's business (the Backoff and Fallback
states), so every policy decision is visible in the YAML file and in the journal. The network
sits behind httpx's transport seam, so tests pass ``httpx.MockTransport`` or
:class:`demiarch_flow.fake.FakeOpenRouter` instead of patching. Failures of any kind come out
as one :class:`~demiarch_flow.errors.ProviderError` with its error class; foreign exceptions
are mapped here, at the boundary. The key lives in an :class:`ApiKey`, whose repr hides it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from ..errors import ProviderError, UnusableKey, UsageError, redact, register_secret
from .classify import Completion, Generation, parse_completion, parse_generation
from .retry_after import parse_retry_after

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_APP_URL = "https://github.com/demiarch/demiarch-flow"
DEFAULT_APP_TITLE = "demiarch-flow"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key and where it came from; ``repr`` and ``str`` never show the value."""

    value: str = field(repr=False)
    source: str = "unknown"

    def __str__(self) -> str:
        return f"<API key from {self.source}>"


_HEADER_SAFE = re.compile(r"[\x20-\x7e]*")
KEY_NOT_SENDABLE = "the API key contains characters that cannot be sent in an HTTP header"


def key_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as a bearer token (a newline, a non-ASCII character), or
    ``None``. httpx would raise an encoding error or send nothing, after the run began."""
    if _HEADER_SAFE.fullmatch(value):
        return None
    return f"{KEY_NOT_SENDABLE} (only printable ASCII can be; check for a stray newline)"


def base_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be an API base, or ``None``: only ``http``/``https`` with a host.

    Checked before anything is opened, so that ``ftp://…`` is not retried as a network error
    and ``http://[::1/api`` does not fail deep inside httpx.
    """
    if not url or not _HEADER_SAFE.fullmatch(url) or " " in url:
        return "it contains spaces or characters that cannot appear in a URL"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        return f"it is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "only http:// and https:// URLs can be used"
    if not host:
        return "it has no host name"
    return None


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one call, for the run's attempt list and the journal."""

    model: str
    completion: Completion | None
    error: ProviderError | None
    latency_ms: int
    status: int | None


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
            "Authorization": f"Bearer {key.value}",
            "Content-Type": "application/json",
            "HTTP-Referer": app_url,
            "X-OpenRouter-Title": app_title,
        }

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
        content = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        started = trio.current_time()
        status: int | None = None
        try:
            with trio.move_on_after(timeout_s) as scope:
                if self._limiter is None:
                    response = await self._post(content)
                else:
                    async with self._limiter:
                        response = await self._post(content)
            if scope.cancelled_caught:
                outcome: Completion | ProviderError = ProviderError(
                    "timeout", f"no answer within {timeout_s:g} s", model=model
                )
            else:
                status = response.status_code
                hint = parse_retry_after(response.headers)
                outcome = parse_completion(status, response.content, model, hint)
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

    async def generation(self, generation_id: str, *, timeout_s: float = 10.0) -> Generation | None:
        """``GET /generation?id=…``: what OpenRouter billed for one generation, or ``None``
        while it does not know it (the record appears a little after the last byte) or the
        answer is unusable. Never raises for provider or network failures: the caller retries.
        """
        try:
            with trio.move_on_after(timeout_s):
                response = await self._http.get(
                    f"{self.base_url}/generation",
                    params={"id": generation_id},
                    headers=self._headers,
                )
                return parse_generation(response.status_code, response.content)
        except (httpx.HTTPError, OSError):
            return None
        return None


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return redact(f"{type(exc).__name__}: {text}")[:300]
