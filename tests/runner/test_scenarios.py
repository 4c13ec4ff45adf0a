"""The issue's scenarios: exact request sequences and exact virtual time waited."""

from __future__ import annotations

import httpx
import pytest
import trio

from demiarch_flow.errors import AllModelsFailed, ProviderError
from demiarch_flow.testing import FAKE_KEY

from .helpers import GPT4O, HAIKU, SONNET, Harness, default_workflow, edited


async def test_three_500s_then_success_waits_1_2_4(autojump_clock: object) -> None:
    """500 ×3 then 200: waits 1, 2, 4 s and succeeds on attempt 4 with the default model."""
    h = Harness(f"{SONNET}=500*3")
    out = await h.run()
    assert out.status == "succeeded"
    assert h.models == [SONNET] * 4
    assert h.waits() == [1.0, 2.0, 4.0]
    assert h.times == [0.0, 1.0, 3.0, 7.0]
    assert out.attempts[-1].outcome == "ok"
    assert len(out.attempts) == 4
    assert out.model == SONNET
    assert trio.current_time() == 7.0


async def test_headers_are_sent_and_key_stays_out_of_repr(autojump_clock: object) -> None:
    """Every request carries the bearer key, JSON content type and attribution headers."""
    h = Harness()
    env = h.env()
    from demiarch_flow.runner import RunRequest, run_workflow

    await run_workflow(default_workflow(), RunRequest("Hi"), env)
    headers = httpx.Headers(h.fake.requests[0].headers)
    assert headers["Authorization"] == f"Bearer {FAKE_KEY}"
    assert headers["Content-Type"] == "application/json"
    assert headers["HTTP-Referer"]
    assert headers["X-OpenRouter-Title"] == "demiarch-flow"
    assert FAKE_KEY not in repr(env)
    assert FAKE_KEY not in repr(env.client)


async def test_503_everywhere_tries_each_model_four_times_then_fails(
    autojump_clock: object,
) -> None:
    """503 on every attempt: 4 attempts per model, then the next; all fail → all-models-failed."""
    h = Harness("*=503*")
    out = await h.run()
    assert out.status == "failed"
    assert out.final_state == "Failed"
    assert h.models == [SONNET] * 4 + [HAIKU] * 4 + [GPT4O] * 4
    assert h.waits() == [1.0, 2.0, 4.0] * 3
    assert trio.current_time() == 21.0
    assert isinstance(out.error, AllModelsFailed)
    assert set(out.error.last_errors) == {SONNET, HAIKU, GPT4O}
    for model in (SONNET, HAIKU, GPT4O):
        assert model in str(out.error)
    assert [r.next_model for r in h.listener.of_kind("fallback")] == [HAIKU, GPT4O]


@pytest.mark.parametrize(
    ("fault", "expected_wait"),
    [
        ("429@2", 2.0),
        ("429@1500ms", 1.5),
        ("429@garbage", 1.0),
        ("429@-5", 1.0),
        ("429@1e400", 1.0),
        ("429", 1.0),
    ],
)
async def test_429_retry_after_is_honoured(
    autojump_clock: object, fault: str, expected_wait: float
) -> None:
    """429 waits what the server asked (Retry-After or retry-after-ms); unusable hints use the
    schedule. (Which of the two headers wins when both come: tests/test_backoff.py.)"""
    h = Harness(f"{SONNET}={fault}")
    out = await h.run()
    assert out.status == "succeeded"
    assert h.waits() == [expected_wait]
    assert h.models == [SONNET, SONNET]
    assert trio.current_time() == pytest.approx(expected_wait)


async def test_429_retry_after_http_date(autojump_clock: object) -> None:
    """An HTTP-date Retry-After is turned into seconds from now."""
    h = Harness(f"{SONNET}=429@date+5")
    await h.run()
    (wait,) = h.waits()
    assert 3.0 <= wait <= 5.0


async def test_429_retry_after_beyond_cap_moves_on_without_waiting(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    """Retry-After: 45 exceeds max_delay_s (30): no wait at all, the next model at once."""
    h = Harness(f"{SONNET}=429@45*")
    with caplog.at_level("WARNING", logger="demiarch_flow"):
        out = await h.run()
    assert (
        f"falling back from {SONNET} to {HAIKU} after 1 attempt: the server asked to wait 45 s,"
        " over max_delay_s (30 s)"
    ) in caplog.text
    assert out.status == "succeeded"
    assert h.models == [SONNET, HAIKU]
    assert h.waits() == []
    assert trio.current_time() == 0.0
    assert out.model == HAIKU


@pytest.mark.parametrize("status", [401, 402])
async def test_auth_and_credit_errors_are_fatal_after_one_request(
    autojump_clock: object, status: int
) -> None:
    """401 / 402: exactly one request, Failed, no retry and no fallback."""
    h = Harness(f"{SONNET}={status}*")
    out = await h.run()
    assert out.status == "failed"
    assert h.models == [SONNET]
    assert isinstance(out.error, ProviderError)
    assert out.error.error_class == ("auth" if status == 401 else "payment_required")
    assert trio.current_time() == 0.0


async def test_in_flight_budget_402_waits_and_retries(autojump_clock: object) -> None:
    """402 with limit_source openrouter_in_flight_budget and Retry-After is temporary."""
    h = Harness(f"{SONNET}=inflight@3")
    out = await h.run()
    assert out.status == "succeeded"
    assert h.waits() == [3.0]
    assert h.models == [SONNET, SONNET]


async def test_400_wrapping_502_is_retried_as_server_error(autojump_clock: object) -> None:
    """A 400 whose error.code is "502" is a transient server error: retried on the same model."""
    h = Harness(f"{SONNET}=400:502")
    out = await h.run()
    assert out.status == "succeeded"
    assert h.models == [SONNET, SONNET]
    assert out.attempts[0].error_class == "server_error"
    assert h.waits() == [1.0]


@pytest.mark.parametrize(
    ("status", "cls"), [(400, "bad_request"), (403, "forbidden"), (404, "model_unavailable")]
)
async def test_model_errors_fall_back_without_retry(
    autojump_clock: object, status: int, cls: str
) -> None:
    """Plain 400 / 403 / 404: the next model at once, no retry, no wait."""
    h = Harness(f"{SONNET}={status}*")
    out = await h.run()
    assert out.status == "succeeded"
    assert h.models == [SONNET, HAIKU]
    assert out.attempts[0].error_class == cls
    assert trio.current_time() == 0.0


@pytest.mark.parametrize(
    ("fault", "cls"),
    [
        ("error200", "server_error"),
        ("html", "server_error"),
        ("truncated", "server_error"),
        ("reset", "network_error"),
        ("refused", "network_error"),
        ("hang", "timeout"),
    ],
)
async def test_broken_answers_are_classified_and_retried(
    autojump_clock: object, fault: str, cls: str
) -> None:
    """200-with-error, HTML, truncated JSON, reset, refused, no answer within timeout_s (10 s
    here): one class each, retried."""
    h = Harness(f"{SONNET}={fault}")
    out = await h.run(edited(**{"timeout_s: 120": "timeout_s: 10"}))
    assert out.attempts[0].error_class == cls
    assert out.status == "succeeded"
    assert h.models == [SONNET, SONNET]
    assert h.waits() == [1.0]


async def test_hanging_provider_times_out_per_attempt(autojump_clock: object) -> None:
    """A provider that never answers costs timeout_s per attempt (virtual), then a retry."""
    h = Harness(f"{SONNET}=hang")
    out = await h.run(edited(**{"timeout_s: 120": "timeout_s: 10"}))
    assert out.attempts[0].error_class == "timeout"
    assert h.times == [0.0, 11.0]
    assert out.status == "succeeded"
    assert default_workflow().request.timeout_s == 120


async def test_max_retries_1_from_yaml(autojump_clock: object) -> None:
    """max_retries: 1 → two attempts per model, one wait."""
    h = Harness(f"{SONNET}=500*")
    out = await h.run(edited(**{"max_retries: 3": "max_retries: 1"}))
    assert h.models == [SONNET, SONNET, HAIKU]
    assert h.waits() == [1.0]
    assert out.status == "succeeded"


async def test_backoff_rate_3_from_yaml(autojump_clock: object) -> None:
    """backoff_rate: 3 → waits 1, 3, 9 s."""
    h = Harness(f"{SONNET}=500*")
    await h.run(edited(**{"backoff_rate: 2": "backoff_rate: 3"}))
    assert h.waits() == [1.0, 3.0, 9.0]
    assert h.times[:4] == [0.0, 1.0, 4.0, 13.0]


async def test_full_jitter_from_yaml_is_seeded_and_bounded(autojump_clock: object) -> None:
    """jitter: full → each wait uniform in [0, computed], reproducible with the same seed."""
    import random

    wf = edited(**{"jitter: none": "jitter: full"})
    h1, h2 = Harness(f"{SONNET}=500*"), Harness(f"{SONNET}=500*")
    await h1.run(wf, seed=7)
    await h2.run(wf, seed=7)
    assert h1.waits() == h2.waits()
    rng = random.Random(7)
    assert h1.waits() == [rng.uniform(0, 1), rng.uniform(0, 2), rng.uniform(0, 4)]
    for wait, cap in zip(h1.waits(), [1, 2, 4], strict=True):
        assert 0 <= wait <= cap


async def test_two_model_chain_from_yaml(autojump_clock: object) -> None:
    """A two-model chain: after both fail the run fails, and gpt-4o is never called."""
    wf = edited(**{"  - openai/gpt-4o\n": ""})
    h = Harness(f"{SONNET}=404*;{HAIKU}=404*")
    out = await h.run(wf)
    assert h.models == [SONNET, HAIKU]
    assert out.status == "failed"
    assert isinstance(out.error, AllModelsFailed)


async def test_retry_after_off_uses_the_schedule(autojump_clock: object) -> None:
    """respect_retry_after: false → the schedule's 1 s even when the server asks for 20 s."""
    h = Harness(f"{SONNET}=429@20")
    await h.run(edited(**{"respect_retry_after: true": "respect_retry_after: false"}))
    assert h.waits() == [1.0]


async def test_retries_exhausted_not_in_fallback_when_fails_the_run(autojump_clock: object) -> None:
    """Without retries_exhausted in fallback.when, giving up on a model fails the run."""
    wf = edited(**{"when: [retries_exhausted, model_unavailable": "when: [model_unavailable"})
    h = Harness(f"{SONNET}=500*")
    out = await h.run(wf)
    assert out.status == "failed"
    assert h.models == [SONNET] * 4


async def test_model_override_replaces_the_first_model(autojump_clock: object) -> None:
    """--model replaces the first model; the rest of the chain still applies."""
    h = Harness(f"{GPT4O}=404*")
    out = await h.run(model=GPT4O)
    assert h.models == [GPT4O, HAIKU]
    assert out.model == HAIKU


async def test_answering_model_is_recorded(autojump_clock: object) -> None:
    """The model in the response (server-side fallback) is the one recorded."""
    h = Harness(edit_success=lambda body: {**body, "model": HAIKU})
    out = await h.run(stream=False)
    assert out.model == HAIKU
    assert h.store.usage[0].requested_model == SONNET
