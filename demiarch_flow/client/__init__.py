"""The OpenRouter client and the classification of its answers.

Public: :class:`OpenRouterClient`, :class:`ApiKey`, :class:`Attempt`, :class:`Completion`,
:func:`parse_completion`, :func:`class_for_status`, :data:`DEFAULT_BASE_URL`.
"""

from .classify import Completion, class_for_status, parse_completion
from .openrouter import DEFAULT_BASE_URL, ApiKey, Attempt, OpenRouterClient

__all__ = [
    "DEFAULT_BASE_URL",
    "ApiKey",
    "Attempt",
    "Completion",
    "OpenRouterClient",
    "class_for_status",
    "parse_completion",
]
