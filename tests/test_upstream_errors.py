"""What OpenRouter passes on from the provider behind it (``error.metadata.raw``,
``provider_name``, moderation ``reasons`` and ``flagged_input``) is shown in the error message
and kept as data on :attr:`ProviderError.upstream` (and so on the attempt's ``error``)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from demiarch_flow.client import ApiKey, OpenRouterClient, parse_completion
from demiarch_flow.client.streaming import StreamReader
from demiarch_flow.errors import ErrorClass, ProviderError, UpstreamError

M = "anthropic/claude-sonnet-4"
RAW = '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'


def _error(status: int, body: Any) -> ProviderError:
    out = parse_completion(status, json.dumps(body).encode(), M, None)
    assert isinstance(out, ProviderError)
    return out


def test_the_providers_own_error_is_in_the_message_and_on_the_error() -> None:
    """A 502 "Provider returned error" says what Anthropic said, and keeps it as data."""
    err = _error(
        502,
        {
            "error": {
                "code": 502,
                "message": "Provider returned error",
                "metadata": {"provider_name": "Anthropic", "raw": RAW},
            }
        },
    )
    assert err.error_class is ErrorClass.SERVER_ERROR
    assert err.upstream == UpstreamError(provider_name="Anthropic", raw=RAW)
    assert f"Provider returned error — Anthropic said: {RAW}" in str(err)
    assert "overloaded_error" in err.detail


def test_moderation_reasons_and_the_flagged_input_are_shown() -> None:
    """A 403 moderation block names its reasons and the flagged input."""
    err = _error(
        403,
        {
            "error": {
                "code": 403,
                "message": "Input was flagged by moderation",
                "metadata": {
                    "reasons": ["violence", "harassment"],
                    "flagged_input": "how do I hurt…",
                    "provider_name": "OpenAI",
                    "model_slug": "openai/gpt-4o",
                },
            }
        },
    )
    assert err.error_class is ErrorClass.FORBIDDEN
    assert err.upstream == UpstreamError(
        provider_name="OpenAI", reasons=("violence", "harassment"), flagged_input="how do I hurt…"
    )
    assert str(err).endswith(
        "Input was flagged by moderation — from OpenAI; moderation reasons: violence,"
        " harassment; flagged input: 'how do I hurt…'"
    )


def test_a_raw_json_value_is_kept_as_compact_json_and_a_long_one_is_bounded() -> None:
    """``raw`` may be an object, or a whole HTML page: one bounded line either way."""
    err = _error(200, {"error": {"code": 500, "message": "x", "metadata": {"raw": {"a": [1, 2]}}}})
    assert err.upstream is not None and err.upstream.raw == '{"a":[1,2]}'
    page = "<html>\n<body>" + "bad gateway " * 200 + "</body></html>"
    err = _error(502, {"error": {"code": 502, "message": "x", "metadata": {"raw": page}}})
    assert err.upstream is not None and err.upstream.raw is not None
    assert len(err.upstream.raw) == 300 and err.upstream.raw.endswith("…")
    assert "\n" not in str(err)


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"error_type": "rate_limit_exceeded", "provider_code": "rate_limited"},
        {"raw": None, "reasons": "violence", "provider_name": 7, "flagged_input": ""},
        {"raw": "   ", "reasons": [None, 3.5, {}], "provider_name": "x" * 500},
    ],
)
def test_metadata_with_nothing_usable_adds_nothing(metadata: dict[str, Any]) -> None:
    """Untrusted shapes never raise; with nothing usable the message is OpenRouter's alone."""
    err = _error(429, {"error": {"code": 429, "message": "limited", "metadata": metadata}})
    assert err.upstream is None
    assert str(err).startswith(f"{M}: HTTP 429 rate_limited: limited")


def test_a_key_the_provider_echoes_is_removed() -> None:
    """``raw`` is the provider's text: a key it echoes back never reaches the message."""
    key = "sk-or-v1-" + "a" * 40
    err = _error(401, {"error": {"code": 401, "message": "no", "metadata": {"raw": f"bad {key}"}}})
    assert key not in str(err) and err.upstream is not None and key not in (err.upstream.raw or "")


def test_a_stream_broken_by_an_error_chunk_keeps_the_upstream_error() -> None:
    """An error chunk after the first token: ``stream_interrupted``, with the provider's error
    in its message and on ``upstream``."""
    reader = StreamReader(M)
    error = {
        "code": "server_error",
        "message": "Provider disconnected",
        "metadata": {"provider_name": "Google", "raw": "upstream connect error"},
    }
    body = (
        b'data: {"id":"gen-1","choices":[{"delta":{"content":"Hi"}}]}\n\n'
        + f"data: {json.dumps({'id': 'gen-1', 'error': error, 'choices': []})}\n\n".encode()
    )
    reader.feed(body)
    reader.close()
    err = reader.outcome(200, None)
    assert isinstance(err, ProviderError)
    assert err.error_class is ErrorClass.STREAM_INTERRUPTED
    assert err.upstream == UpstreamError(provider_name="Google", raw="upstream connect error")
    assert str(err).count("Google said: upstream connect error") == 1


async def test_the_attempt_carries_the_upstream_error() -> None:
    """Through the client: ``Attempt.error.upstream`` is what a store will keep."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            502,
            json={
                "error": {
                    "code": 502,
                    "message": "Provider returned error",
                    "metadata": {"provider_name": "Anthropic", "raw": RAW},
                }
            },
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = OpenRouterClient(http, ApiKey("k" * 20), base_url="http://127.0.0.1:9/api/v1")
        attempt = await client.complete(
            client.build_payload(M, [{"role": "user", "content": "hi"}]), timeout_s=5
        )
    assert attempt.error is not None
    assert attempt.error.upstream == UpstreamError(provider_name="Anthropic", raw=RAW)
