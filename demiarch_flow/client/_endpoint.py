"""The endpoint and the key, without the HTTP stack: what the light commands (``key status``,
the checks every command makes before it opens anything) need of the client, so that they do
not pay for importing httpx and trio. :mod:`.openrouter` re-exports all of it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_APP_TITLE",
    "DEFAULT_APP_URL",
    "DEFAULT_BASE_URL",
    "KEY_NOT_SENDABLE",
    "ApiKey",
    "base_url_problem",
    "is_openrouter",
    "key_problem",
]

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
    import httpx  # its URL parser is the one the request will use; needed by then anyway

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


def is_openrouter(url: str) -> bool:
    """Whether ``url`` is OpenRouter's API (its host is ``openrouter.ai`` or a subdomain), as
    opposed to another OpenAI-compatible endpoint: a proxy, a local server, a test double."""
    host = (urlsplit(url).hostname or "").lower()
    return host == "openrouter.ai" or host.endswith(".openrouter.ai")
