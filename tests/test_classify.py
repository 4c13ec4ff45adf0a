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
        (200, {"error": {"code": 401, "message": "No auth credentials found"}}, "auth"),
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


def _ok(usage: Any, **fields: Any) -> Completion:
    body = {"id": "gen-1", "model": "m/x", "choices": [{"message": {"content": "hi"}}]}
    body.update(usage=usage, **fields)
    out = parse_completion(200, json.dumps(body).encode(), "m/x", None)
    assert isinstance(out, Completion)
    return out


@pytest.mark.parametrize("cost", [1e30, "1e40", 1_000_000.01, -0.5, "NaN", "Infinity", [1], {}])
def test_an_absurd_cost_is_unknown(cost: Any) -> None:
    """usage.cost beyond $1,000,000 a call, negative, non-finite or not a number → unknown."""
    assert _ok({"prompt_tokens": 1, "completion_tokens": 1, "cost": cost}).cost_usd is None


@pytest.mark.parametrize("tokens", [1e23, 10**23, 2**31, -1, 1.5, "10", True, None, float("inf")])
def test_an_absurd_token_count_is_unknown(tokens: Any) -> None:
    """Token counts beyond 2^31-1, negative, fractional or not numbers → None, not 0 or a crash."""
    usage = {"prompt_tokens": tokens, "completion_tokens": tokens, "total_tokens": tokens,
             "prompt_tokens_details": {"cached_tokens": tokens}}  # fmt: skip
    out = _ok(usage)
    assert (out.prompt_tokens, out.completion_tokens, out.total_tokens, out.cached_tokens) == (
        None, None, None, None,
    )  # fmt: skip


def test_token_counts_at_the_bound_and_whole_floats_are_kept() -> None:
    """2^31-1 is a count; 12.0 is 12; the total is summed when absent but never overflows."""
    out = _ok({"prompt_tokens": 2**31 - 1, "completion_tokens": 12.0})
    assert (out.prompt_tokens, out.completion_tokens, out.total_tokens) == (2**31 - 1, 12, None)
    assert _ok({"prompt_tokens": 3, "completion_tokens": 4}).total_tokens == 7


@pytest.mark.parametrize(
    ("fields", "model", "generation_id"),
    [
        ({"model": {"a": 1}, "id": 5}, "m/x", None),
        ({"model": "", "id": ""}, "m/x", None),
        ({"model": "x" * 201, "id": "g" * 201}, "m/x", None),
        ({"model": "a/b", "id": "gen-2"}, "a/b", "gen-2"),
    ],
)
def test_model_and_id_of_the_wrong_type_or_size_are_ignored(
    fields: dict[str, Any], model: str, generation_id: str | None
) -> None:
    """A model that is not a short string → the requested one; such an id → None."""
    out = _ok({}, **fields)
    assert (out.model, out.generation_id) == (model, generation_id)


def test_lone_surrogates_and_nul_are_made_storable() -> None:
    """JSON may carry "\\ud800" and "\\u0000"; content, model and error messages come out as
    valid UTF-8 without NUL (which PostgreSQL's text cannot hold)."""
    body = b'{"choices": [{"message": {"content": "a\\ud800b\\u0000c"}}], "model": "m\\udfff"}'
    out = parse_completion(200, body, "m/x", None)
    assert isinstance(out, Completion)
    assert (out.content, out.model) == ("a\ufffdb\ufffdc", "m\ufffd")
    err = parse_completion(500, b'{"error": {"message": "bad \\udc80"}}', "m/x", None)
    assert isinstance(err, ProviderError)
    str(err).encode("utf-8")


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (200, b"[" * 100_000 + b"]" * 100_000, "server_error"),
        (500, b"{" * 100_000, "server_error"),
        (400, b'{"error": {"code": "\\u00b2\\u00b2\\u00b2", "message": "x"}}', "bad_request"),
        (400, json.dumps({"error": {"code": "9" * 5000, "message": "x"}}).encode(), "bad_request"),
        (400, b'{"error": {"code": 1e400, "message": "x"}}', "bad_request"),
        (400, b'{"error": {"code": 100000000000000000000000000502}}', "bad_request"),
        (200, b'{"error": [1, 2]}', "server_error"),
        (200, b'{"choices": "many"}', "server_error"),
        (200, b'{"choices": [{"message": {"content": 42}}]}', "server_error"),
        (200, b'{"choices": [{"message": {"content": ["a"]}}]}', "server_error"),
        (200, b'{"choices": [7]}', "server_error"),
        (200, b"\xff\xfe\xfd", "server_error"),
        (200, b"123", "server_error"),
    ],
)
def test_hostile_bodies_are_classified_not_raised(status: int, body: bytes, cls: str) -> None:
    """Deep nesting, odd codes ('²²²' is isdigit() but no int) and wrong types: one class."""
    assert _err(status, body) == cls


@pytest.mark.parametrize("digits", [98, 99, 100, 101, 150, 5000])
@pytest.mark.parametrize("sign", ["", "-"])
def test_a_body_is_parsed_alike_with_or_without_the_long_integer_guard(
    digits: int, sign: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer without a run of 100 digits skips the per-integer hook: around the bound
    (an integer of 100 or 101 characters, with a sign or not) the result is the hooked one."""
    import re

    from demiarch_flow.client import classify

    number = sign + "7" * digits
    body = (
        '{"choices": [{"message": {"content": "hi"}}], "created": ' + number + ","
        ' "usage": {"prompt_tokens": ' + number + ', "completion_tokens": 3, "cost": 1}}'
    ).encode()
    fast = parse_completion(200, body, "m/x", None)
    monkeypatch.setattr(classify, "_LONG_DIGITS", re.compile(rb""))  # always the hook
    hooked = parse_completion(200, body, "m/x", None)
    assert fast == hooked
    assert isinstance(fast, Completion)
    assert fast.prompt_tokens is None
    assert fast.completion_tokens == 3


async def test_an_error_keeps_its_wait_hint_and_an_answer_is_parsed_without_it() -> None:
    """The blocking client reads ``Retry-After`` only for an error (a 429, a 200 carrying an
    ``error``): the hint is on the error as before."""
    import httpx

    from demiarch_flow.client import ApiKey, OpenRouterClient

    bodies = {
        "429": (429, {"error": {"code": 429, "message": "slow down"}}),
        "200e": (200, {"error": {"code": 429, "message": "slow down"}}),
        "ok": (200, {"choices": [{"message": {"content": "hi"}}]}),
    }

    def answer(request: httpx.Request) -> httpx.Response:
        status, body = bodies[json.loads(request.content)["model"]]
        return httpx.Response(status, json=body, headers={"Retry-After": "7"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        client = OpenRouterClient(http, ApiKey("sk-or-test", "test"), base_url="http://x/api/v1")
        for model in ("429", "200e"):
            attempt = await client.complete({"model": model, "messages": []}, timeout_s=5)
            assert attempt.error is not None
            assert attempt.error.error_class == "rate_limited"
            assert attempt.error.retry_after_s == 7.0
        ok = await client.complete({"model": "ok", "messages": []}, timeout_s=5)
        assert ok.completion is not None
        assert ok.completion.content == "hi"
