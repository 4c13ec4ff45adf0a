"""Every answer is sorted into a completion or exactly one error class (OPENROUTER.md's table)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from demiarch_flow.client import Completion, parse_completion
from demiarch_flow.errors import ProviderError


def _err(status: int, body: Any) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    out = parse_completion(status, raw, "m/x", None)
    assert isinstance(out, ProviderError)
    return out.error_class


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (
            400,
            {
                "error": {
                    "code": 400,
                    "message": "bad",
                    "metadata": {"error_type": "context_length_exceeded"},
                }
            },
            "bad_request",
        ),
        (400, {"error": {"code": "502", "message": "wrapped"}}, "server_error"),
        (400, {"error": {"code": 429, "message": "wrapped"}}, "rate_limited"),
        (400, {"error": {"code": "408", "message": "wrapped"}}, "timeout"),
        (400, {"error": {"code": 524, "message": "wrapped"}}, "timeout"),
        (400, {"error": {"code": 529, "message": "wrapped"}}, "server_error"),
        (401, {"error": {"code": 401, "message": "bad key"}}, "auth"),
        (402, {"error": {"code": 402, "message": "no credits"}}, "payment_required"),
        (
            402,
            {
                "error": {
                    "code": 402,
                    "message": "busy",
                    "metadata": {"limit_source": "openrouter_in_flight_budget"},
                }
            },
            "rate_limited",
        ),
        (
            403,
            {"error": {"code": 403, "message": "blocked", "metadata": {"reasons": ["x"]}}},
            "forbidden",
        ),
        (404, {"error": {"code": 404, "message": "no model"}}, "model_unavailable"),
        (408, {"error": {"code": 408, "message": "t"}}, "timeout"),
        (429, {"error": {"code": 429, "message": "slow down"}}, "rate_limited"),
        (500, {"error": {"code": 500, "message": "x"}}, "server_error"),
        (502, b"<html>bad gateway</html>", "server_error"),
        (503, {"error": {"code": 503, "message": "x"}}, "server_error"),
        (504, {"error": {"code": 504, "message": "x"}}, "server_error"),
        (524, {"error": {"code": 524, "message": "x"}}, "timeout"),
        (529, {"error": {"code": 529, "message": "x"}}, "server_error"),
        (
            200,
            {"error": {"message": "Internal Server Error", "code": 500}, "user_id": "org_abc123"},
            "server_error",
        ),
        (200, {"error": {"code": 429, "message": "limited"}}, "rate_limited"),
        (
            200,
            {"error": {"code": "server_error", "message": "Provider disconnected"}},
            "server_error",
        ),
        (200, b"<!DOCTYPE html><html></html>", "server_error"),
        (200, b'{"choices": [{"message": {"conte', "server_error"),
        (200, {"id": "gen-1"}, "server_error"),
        (200, {"choices": []}, "server_error"),
        (200, {"choices": [{"message": {"role": "assistant"}}]}, "server_error"),
        (200, b"", "server_error"),
    ],
)
def test_classification(status: int, body: Any, cls: str) -> None:
    """One class per answer."""
    assert _err(status, body) == cls


def test_success_is_parsed_fully() -> None:
    """Content, answering model, generation id, finish reason, tokens and cost are read."""
    body = {
        "id": "gen-abc123", "model": "anthropic/claude-3.5-haiku", "provider": "Anthropic",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hello there!"}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
                  "prompt_tokens_details": {"cached_tokens": 3}, "cost": 0.00009},
    }  # fmt: skip
    out = parse_completion(200, json.dumps(body).encode(), "anthropic/claude-sonnet-4", None)
    assert out == Completion(
        content="Hello there!", model="anthropic/claude-3.5-haiku", generation_id="gen-abc123",
        finish_reason="stop", prompt_tokens=10, completion_tokens=4, total_tokens=14,
        cached_tokens=3, cost_usd=Decimal("0.000090000"), provider="Anthropic",
    )  # fmt: skip


def test_error_messages_never_carry_the_key() -> None:
    """A provider echoing the bearer token has it redacted from the error."""
    body = {"error": {"code": 401, "message": "Invalid key Bearer sk-or-v1-abcdef123456 given"}}
    out = parse_completion(401, json.dumps(body).encode(), "m/x", None)
    assert isinstance(out, ProviderError)
    assert "sk-or-v1-abcdef123456" not in str(out)
    assert "sk-or-v1-abcdef123456" not in repr(out.args)
