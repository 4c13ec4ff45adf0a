"""The OpenRouter client and the classification of its answers.

Public: :class:`OpenRouterClient`, :class:`ApiKey`, :class:`Attempt`, :class:`Completion`,
:func:`parse_completion`, :data:`DEFAULT_BASE_URL`. They are imported on first use, so that a
command that needs only the key or the base URL (``key status``) does not import httpx.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_BASE_URL": "_endpoint",
    "ApiKey": "_endpoint",
    "Attempt": "openrouter",
    "Completion": "classify",
    "OpenRouterClient": "openrouter",
    "parse_completion": "classify",
}

__all__ = [
    "DEFAULT_BASE_URL",
    "ApiKey",
    "Attempt",
    "Completion",
    "OpenRouterClient",
    "parse_completion",
]

if TYPE_CHECKING:  # pragma: no cover
    from ._endpoint import DEFAULT_BASE_URL, ApiKey
    from .classify import Completion, parse_completion
    from .openrouter import Attempt, OpenRouterClient


__getattr__ = lazy_exports(__name__, _EXPORTS)
