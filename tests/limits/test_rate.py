"""Rate buckets (GCRA) under trio's MockClock: pacing, burst, tokens, 429 pauses, the journal."""

from __future__ import annotations

import pytest
import trio

from demiarch_flow.gcra import BucketRule, BucketState, take
from demiarch_flow.runner import RunRequest, WaitSource, run_workflow
from demiarch_flow.store import MemoryStore
from demiarch_flow.testing import FakeOpenRouter, make_env

from .helpers import HAIKU, SONNET, with_limits


async def _batch(wf, env, n: int, concurrency: int, model: str | None = None) -> list:  # type: ignore[no-untyped-def]
    outcomes: list = []  # type: ignore[type-arg]
    limiter = trio.CapacityLimiter(concurrency)

    async def one(i: int) -> None:
        async with limiter:
            outcomes.append(await run_workflow(wf, RunRequest(f"line {i}", model=model), env))

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return outcomes


def test_gcra_spaces_requests_and_allows_a_burst() -> None:
    """burst 1 spaces requests 60/rpm apart; burst 3 lets three go at once, then spaces."""
    rule = BucketRule("b", interval_s=1.0)
    state, starts = BucketState(), []
    for _ in range(3):
        slot = take([(rule, state)], 10.0)
        state, starts = slot.states[0], [*starts, slot.start]
    assert starts == [10.0, 11.0, 12.0]
    rule3 = BucketRule("b", interval_s=1.0, tau_s=2.0)
    state, starts = BucketState(), []
    for _ in range(5):
        slot = take([(rule3, state)], 10.0)
        state, starts = slot.states[0], [*starts, slot.start]
    assert starts == [10.0, 10.0, 10.0, 11.0, 12.0]


async def test_1000_runs_at_concurrency_100_are_paced_within_2_percent(
    autojump_clock: object,
) -> None:
    """rpm 600: a 1,000-run batch takes 99.9 s of virtual time (±2 %), and a provider that
    enforces the same rpm over any 60 s never answers 429."""
    wf = with_limits('  rate:\n    "*": {rpm: 600}\n')
    provider = FakeOpenRouter(rpm=600)
    env = make_env(provider)
    outcomes = await _batch(wf, env, 1000, 100)
    assert all(o.succeeded for o in outcomes)
    assert provider.rate.refused == 0
    times = provider.request_times()
    assert len(times) == 1000
    span = times[-1] - times[0]
    assert abs(span - 99.9) / 99.9 < 0.02


async def test_without_a_bucket_the_provider_refuses(autojump_clock: object) -> None:
    """The control: the same batch without limits runs into the provider's 429s."""
    wf = with_limits("  budget: {}\n")
    provider = FakeOpenRouter(rpm=600)
    await _batch(wf, make_env(provider), 700, 100)
    assert provider.rate.refused > 0


async def test_burst_lets_requests_go_back_to_back(autojump_clock: object) -> None:
    """rpm 60 with burst 5: five requests at t=0, the sixth one second later."""
    wf = with_limits('  rate:\n    "*": {rpm: 60, burst: 5}\n')
    fake = FakeOpenRouter()
    start = trio.current_time()
    await _batch(wf, make_env(fake), 6, 6)
    times = [t - start for t in fake.request_times()]
    assert times[:5] == [0.0] * 5
    assert abs(times[5] - 1.0) < 1e-9


async def test_concurrency_caps_requests_in_flight(autojump_clock: object) -> None:
    """concurrency 2: never more than two requests of the bucket in flight at once."""
    wf = with_limits('  rate:\n    "*": {concurrency: 2}\n')
    fake = FakeOpenRouter("*=slow:1*")
    start = trio.current_time()
    await _batch(wf, make_env(fake), 6, 6)
    times = sorted(round(t - start, 6) for t in fake.request_times())
    assert times == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]


async def test_tpm_spaces_requests_by_their_tokens(autojump_clock: object) -> None:
    """tpm: a request starts once the tokens before it have drained (tpm/60 per second)."""
    wf = with_limits('  rate:\n    "*": {tpm: 600}\n')
    fake = FakeOpenRouter()
    start = trio.current_time()
    await _batch(wf, make_env(fake), 3, 3)
    times = [t - start for t in fake.request_times()]
    assert times[0] == 0.0
    # each request holds about its tokens / 10 s (estimate corrected by the real usage)
    assert times[1] > 0.5 and times[2] > times[1] + 0.5


async def test_throttle_wait_is_journaled_and_is_not_an_attempt(autojump_clock: object) -> None:
    """A run that waits for a slot writes a `throttled` row Request → Request with its wait,
    source `throttle` and the bucket; the journal's seq stays contiguous; one attempt."""
    wf = with_limits('  rate:\n    "anthropic/*": {rpm: 60}\n')
    store = MemoryStore()
    env = make_env(FakeOpenRouter(), store=store)
    outcomes = await _batch(wf, env, 2, 2)
    assert all(o.succeeded and len(o.attempts) == 1 for o in outcomes)
    throttled = [e for e in store.events if e.event == "throttled"]
    assert len(throttled) == 1
    row = throttled[0]
    assert (row.from_state, row.to_state, row.bucket) == ("Request", "Request", "anthropic/*")
    assert row.wait_source == WaitSource.THROTTLE and abs((row.wait_s or 0) - 1.0) < 1e-9
    seqs = [e.seq for e in store.events if e.run_id == row.run_id]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_a_model_outside_every_bucket_is_not_paced(autojump_clock: object) -> None:
    """Only the models a key matches share its bucket."""
    wf = with_limits('  rate:\n    "openai/*": {rpm: 1}\n')
    fake = FakeOpenRouter()
    start = trio.current_time()
    await _batch(wf, make_env(fake), 5, 5)
    assert [t - start for t in fake.request_times()] == [0.0] * 5


@pytest.mark.parametrize(
    ("fault", "at_least"),
    [
        ("429@5", 5.0),
        # X-RateLimit-Reset is an epoch in ms, so a little of its 5 s passes on the wall clock
        ("429@reset+5", 4.0),
    ],
)
async def test_429_with_a_wait_hint_pauses_every_model_of_the_bucket(
    fault: str, at_least: float, autojump_clock: object
) -> None:
    """A 429 on one model with a wait hint — Retry-After: 5, or OpenRouter's X-RateLimit-Reset
    alone 5 s ahead — pauses the bucket: a run on another model of the same bucket waits
    until then."""
    wf = with_limits('  rate:\n    "anthropic/*": {rpm: 6000}\n')
    fake = FakeOpenRouter(f"{SONNET}={fault}")
    env = make_env(fake)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_workflow, wf, RunRequest("a"), env)
        await trio.sleep(1)
        nursery.start_soon(run_workflow, wf, RunRequest("b", model=HAIKU), env)
    haiku = [r.at - start for r in fake.requests if r.model == HAIKU]
    assert haiku and haiku[0] >= at_least


def test_x_ratelimit_reset_is_a_wait_hint() -> None:
    """OpenRouter's 429s carry X-RateLimit-Reset (ms epoch): the wait until then, when no
    Retry-After is given (which wins)."""
    from datetime import UTC, datetime

    from demiarch_flow.backoff import parse_retry_after

    now = datetime(2026, 1, 1, tzinfo=UTC)
    reset = str(int(now.timestamp() * 1000) + 4500)
    assert parse_retry_after({"X-RateLimit-Reset": reset}, now) == 4.5
    assert parse_retry_after({"X-RateLimit-Reset": reset, "Retry-After": "2"}, now) == 2.0
    assert parse_retry_after({"X-RateLimit-Reset": "0"}, now) is None


async def test_live_progress_names_a_throttle_wait(autojump_clock: object) -> None:
    """`run`'s progress lines (and `simulate`'s timeline) know the throttle wait source."""
    import io

    from demiarch_flow.cli._run import Progress

    stream = io.StringIO()
    wf = with_limits('  rate:\n    "*": {rpm: 60}\n')
    env = make_env(FakeOpenRouter(), listeners=[Progress(stream)])
    await _batch(wf, env, 2, 2)
    assert "(rate limit: waiting for a slot)" in stream.getvalue()


async def test_a_failed_attempt_record_gives_its_permit_back(autojump_clock: object) -> None:
    """When the attempt cannot be recorded (database down) the run fails before sending, and
    the bucket's concurrency permit is given back for the next run."""
    from demiarch_flow.errors import PersistenceError

    class Broken(MemoryStore):
        fail = True

        async def attempt_started(self, attempt):  # type: ignore[no-untyped-def]
            if self.fail:
                self.fail = False
                raise PersistenceError("database is down")
            await super().attempt_started(attempt)

    wf = with_limits('  rate:\n    "*": {concurrency: 1}\n')
    fake = FakeOpenRouter()
    env = make_env(fake, store=Broken())
    first = await run_workflow(wf, RunRequest("a"), env)
    assert first.status == "failed"
    with trio.fail_after(5):
        assert (await run_workflow(wf, RunRequest("b"), env)).succeeded
