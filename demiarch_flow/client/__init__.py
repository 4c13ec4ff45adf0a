"""The OpenRouter client and the classification of its answers.

Public: :class:`OpenRouterClient`, :class:`ApiKey`, :class:`Attempt`, :class:`Completion`,
:func:`parse_completion`, :data:`DEFAULT_BASE_URL`.
"""

from .classify import Completion, parse_completion
from .openrouter import DEFAULT_BASE_URL, ApiKey, Attempt, OpenRouterClient

__all__ = [
    "DEFAULT_BASE_URL",
    "ApiKey",
    "Attempt",
    "Completion",
    "OpenRouterClient",
    "parse_completion",
]
