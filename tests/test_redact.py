"""The key is redacted by its value, whatever its shape, and checked before it is ever sent."""

from __future__ import annotations

import httpx
import pytest
import trio

from demiarch_flow import errors
from demiarch_flow.client import ApiKey, OpenRouterClient
from demiarch_flow.client.openrouter import base_url_problem, key_problem
from demiarch_flow.errors import UnusableKey, UsageError, redact, register_secret

PLAIN_KEY = "plain-key-0123456789"  # not shaped like sk-or-…, so no pattern catches it


@pytest.fixture(autouse=True)
def no_registered_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with an empty process-wide registry."""
    monkeypatch.setattr(errors, "_SECRETS", set())


def test_registered_secret_is_redacted_everywhere() -> None:
    """Once registered, a key of any shape disappears from every redacted text."""
    assert redact(f"bad key {PLAIN_KEY}!") == f"bad key {PLAIN_KEY}!"
    assert register_secret(PLAIN_KEY) is True
    assert redact(f"bad key {PLAIN_KEY}! ({PLAIN_KEY})") == "bad key [redacted]! ([redacted])"


def test_short_secrets_are_not_registered() -> None:
    """A one-letter key would garble every message: below 8 characters nothing is registered."""
    assert register_secret("a") is False
    assert register_secret("1234567") is False
    assert redact("a cat and 1234567") == "a cat and 1234567"


def test_longest_secret_first() -> None:
    """A secret that contains another is removed whole, leaving no tail behind."""
    register_secret("abcdefgh")
    register_secret("abcdefgh-tail-1234")
    assert redact("x abcdefgh-tail-1234 y") == "x [redacted] y"


def _echo_client(key: str) -> OpenRouterClient:
    """A client whose server echoes the bearer token in a 401 error body, as some proxies do."""

    def handler(request: httpx.Request) -> httpx.Response:
        token = request.headers["authorization"].removeprefix("Bearer ")
        return httpx.Response(401, json={"error": {"code": 401, "message": f"key {token} is bad"}})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenRouterClient(http, ApiKey(key, "environment"), base_url="http://sim.test/api/v1")


def test_provider_error_never_carries_the_key() -> None:
    """The client knows its key: an echo of it in the provider's text is redacted."""

    async def main() -> None:
        client = _echo_client(PLAIN_KEY)
        attempt = await client.complete({"model": "m", "messages": []}, timeout_s=5)
        assert attempt.error is not None
        assert attempt.error.error_class == "auth"
        assert PLAIN_KEY not in str(attempt.error)
        assert PLAIN_KEY not in attempt.error.detail
        assert "[redacted]" in attempt.error.detail

    trio.run(main)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://x/api",
        "http://[::1/api",
        "http:///api",
        "http://:80/api",
        "http://host:99999/api",
        "http://a b/api",
        "http://host\n/api",
        "openrouter.ai/api/v1",
        "",
    ],
)
def test_bad_base_urls(url: str) -> None:
    """Only http(s) with a host: anything else is refused when the client is built."""
    assert base_url_problem(url) is not None
    with pytest.raises(UsageError, match="cannot be used"):
        OpenRouterClient(httpx.AsyncClient(), ApiKey(PLAIN_KEY), base_url=url)


@pytest.mark.parametrize(
    "url", ["https://openrouter.ai/api/v1", "http://127.0.0.1:8765/api/v1/", "http://[::1]:80/x"]
)
def test_good_base_urls(url: str) -> None:
    """Ordinary API bases pass."""
    assert base_url_problem(url) is None


@pytest.mark.parametrize("key", ["sk-or-abc\ndef", "sk-or-ab\r", "clé-0123456789", "a\x00b"])
def test_keys_that_cannot_be_sent(key: str) -> None:
    """A newline or a non-ASCII character: refused at once (exit 3), never sent or retried."""
    assert key_problem(key) is not None
    with pytest.raises(UnusableKey, match="cannot be sent in an HTTP header") as info:
        OpenRouterClient(httpx.AsyncClient(), ApiKey(key))
    assert info.value.exit_code == 3
    assert key not in str(info.value)
