"""Rate buckets (GCRA) under trio's MockClock: pacing, burst, tokens, 429 pauses, the journal."""

from __future__ import annotations

import dataclasses

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
    """rpm 60 with burst 5: five requests at t=0, the sixth 60/56 s later (the spacing that
    keeps any 60 s to 60 requests, burst included)."""
    wf = with_limits('  rate:\n    "*": {rpm: 60, burst: 5}\n')
    fake = FakeOpenRouter()
    start = trio.current_time()
    await _batch(wf, make_env(fake), 6, 6)
    times = [t - start for t in fake.request_times()]
    assert times[:5] == [0.0] * 5
    assert abs(times[5] - 60 / 56) < 1e-9


def test_rule_spacing_keeps_every_window_to_rpm() -> None:
    """The rule of rpm r, burst b spaces requests 60/(r-b+1) apart with b-1 of them ahead;
    burst is held to rpm; no rpm gives no request rule."""
    from demiarch_flow.gcra import make_rule

    assert make_rule("k", 600) == BucketRule("k", interval_s=0.1)
    assert make_rule("k", 60, burst=5) == BucketRule("k", 60 / 56, 4 * 60 / 56)
    assert make_rule("k", 3, burst=10) == BucketRule("k", 60.0, 120.0)
    assert make_rule("k", 0.5, burst=3) == BucketRule("k", 120.0)
    assert make_rule("k", tpm=600) == BucketRule("k", token_interval_s=0.1)


def test_a_stamp_refuses_until_its_record_allows_and_counts_nothing_then() -> None:
    """A send stamped at t moves the record on by one interval; one asked earlier than that
    gets the wait and leaves the record as it was; a bucket without rpm records nothing."""
    from demiarch_flow.gcra import stamp

    rule, tokens_only = BucketRule("b", interval_s=1.0), BucketRule("t", token_interval_s=1.0)
    first = stamp([(rule, BucketState()), (tokens_only, BucketState())], 10.0)
    assert (first.start, first.blocking) == (10.0, None)
    assert first.states == (BucketState(tat=11.0), BucketState())
    early = stamp([(rule, first.states[0])], 10.4)
    assert (early.start, early.blocking, early.states) == (11.0, "b", (first.states[0],))
    assert stamp([(rule, first.states[0])], 11.0).states == (BucketState(tat=12.0),)


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

        async def attempt_started(self, attempt, *args, **kwargs):  # type: ignore[no-untyped-def]
            if self.fail:
                self.fail = False
                raise PersistenceError("database is down")
            return await super().attempt_started(attempt, *args, **kwargs)

    wf = with_limits('  rate:\n    "*": {concurrency: 1}\n')
    fake = FakeOpenRouter()
    env = make_env(fake, store=Broken())
    first = await run_workflow(wf, RunRequest("a"), env)
    assert first.status == "failed"
    with trio.fail_after(5):
        assert (await run_workflow(wf, RunRequest("b"), env)).succeeded


async def test_a_slot_further_than_max_delay_is_refused_not_slept(
    autojump_clock: object,
) -> None:
    """tpm 1 on anthropic/*: a second run's slot is hours away, over the longest throttle
    wait (an hour): no sleep and no slot taken — it is refused as rate_limited, Backoff gives
    the model up as for a server's over-long Retry-After, and the run falls back to
    openai/gpt-4o at once."""
    from demiarch_flow.errors import ErrorClass

    wf = with_limits('  rate:\n    "anthropic/*": {tpm: 1}\n')
    records: list = []  # type: ignore[type-arg]

    class Keep:
        async def on_record(self, record) -> None:  # type: ignore[no-untyped-def]
            records.append(record)

    fake = FakeOpenRouter()
    env = make_env(fake, listeners=[Keep()])
    start = trio.current_time()
    assert (await run_workflow(wf, RunRequest("a" * 2000), env)).succeeded
    second = await run_workflow(wf, RunRequest("b"), env)
    assert second.succeeded and second.model == "openai/gpt-4o"
    assert trio.current_time() - start < 1.0
    assert [(a.model, a.outcome, a.error_class) for a in second.attempts[:2]] == [
        (SONNET, "skipped", ErrorClass.RATE_LIMITED),
        (HAIKU, "skipped", ErrorClass.RATE_LIMITED),
    ]
    assert [r.model for r in fake.requests] == [SONNET, "openai/gpt-4o"]
    texts = " ".join(r.message or "" for r in records if r.kind == "fallback")
    assert "rate bucket 'anthropic/*' has no slot for" in texts
    assert "over the longest throttle wait (3600 s)" in texts
    # the refused runs took no slot: once the first run's tokens are paid off, Sonnet answers
    await trio.sleep(100_000)
    third = await run_workflow(wf, RunRequest("c"), env)
    assert third.succeeded and third.model == SONNET


async def test_an_over_long_throttle_fails_the_run_when_no_list_takes_it(
    autojump_clock: object,
) -> None:
    """Without rate_limited in retry.when nor fallback.when, the refused slot is fatal at
    once; the error names the bucket, the wait and the longest throttle wait."""
    from demiarch_flow.errors import ErrorClass

    wf = with_limits('  rate:\n    "*": {tpm: 1}\n')
    wf = dataclasses.replace(wf, retry=dataclasses.replace(wf.retry, when=frozenset()))
    env = make_env(FakeOpenRouter())
    start = trio.current_time()
    assert (await run_workflow(wf, RunRequest("a" * 2000), env)).succeeded
    second = await run_workflow(wf, RunRequest("b"), env)
    assert second.status == "failed" and second.error_class == ErrorClass.RATE_LIMITED
    assert trio.current_time() - start < 1.0
    text = str(second.error)
    assert "rate bucket '*' has no slot for" in text
    assert "over the longest throttle wait (3600 s)" in text


async def test_a_batch_queue_longer_than_max_delay_waits_its_turn(autojump_clock: object) -> None:
    """A throttle wait is a queue, not a server's refusal: under rpm 60, forty runs opened at
    once all succeed (the last one waits about 39 s, over max_delay_s 30), none refused."""
    wf = with_limits('  rate:\n    "*": {rpm: 60}\n')
    fake = FakeOpenRouter()
    env = make_env(fake)
    outcomes: list[bool] = []

    async def one(i: int) -> None:
        outcomes.append((await run_workflow(wf, RunRequest(f"m{i}"), env)).succeeded)

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(one, i)
    assert outcomes == [True] * 40
    times = sorted(fake.request_times())
    assert times[-1] - times[0] >= 38


async def test_a_gate_stamps_its_send_once_where_the_caller_says(autojump_clock: object) -> None:
    """admit(stamp=False) leaves the send uncounted until gate.stamp(), for a caller that
    writes its attempt row first; a second stamp counts nothing more."""
    from demiarch_flow.runner.engine import initial_state
    from demiarch_flow.runner.limiter import rule_of
    from demiarch_flow.runner.limits import Gate, admit

    wf = with_limits('  rate:\n    "*": {rpm: 60}\n')
    env = make_env(FakeOpenRouter())
    assert wf.limits is not None
    rule = rule_of(wf.limits.rate[0])
    gate = await admit(initial_state(wf, RunRequest("a")), env, wf, stamp=False)
    assert isinstance(gate, Gate) and not gate.stamped
    assert env.limits.local.stamp_wait([rule]) == (0.0, None)
    await gate.stamp()
    await gate.stamp()
    assert gate.stamped and env.limits.local.stamp_wait([rule]) == (1.0, "*")


async def test_a_throttle_wait_is_a_step_the_engine_sleeps(autojump_clock: object) -> None:
    """Request with the slot a second away: the handler sends nothing and emits `throttled`,
    a wait in place (the engine journals it, sleeps it and stays in Request, holding no
    concurrency permit); run again, the state sends at once on the slot it took — it does
    not take another (that would wait a second more)."""
    from demiarch_flow.testing import run_state, state_for

    wf = with_limits('  rate:\n    "anthropic/*": {rpm: 60, concurrency: 1}\n')
    fake, store = FakeOpenRouter(), MemoryStore()
    env = make_env(fake, store=store)
    buckets = wf.limits.buckets_for(SONNET)  # type: ignore[union-attr]
    await env.limits.take(buckets, 1)  # another run has the slot of now
    start = trio.current_time()
    state = state_for(wf, "Request", conversation_id="c1")
    waited = await run_state(wf, state, env)
    assert (waited.event, waited.next_state) == ("throttled", "Request")
    assert waited.waited_s == 1.0 and fake.requests == []
    assert waited.state.slot_for == SONNET
    (row,) = store.events
    assert (row.event, row.from_state, row.to_state, row.bucket) == (
        "throttled", "Request", "Request", "anthropic/*",
    )  # fmt: skip
    assert env.limits.permits(buckets[0]).value == 1  # type: ignore[union-attr]
    sent = await run_state(wf, waited.state, env)
    assert sent.event == "succeeded" and sent.state.slot_for is None
    assert [t - start for t in fake.request_times()] == [1.0]


async def test_ctrl_c_before_the_send_is_stamped_closes_the_attempt_as_never_sent(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the gate stamps the send (a throttle wait): the attempt row, written just
    before, is closed as cancelled with no generation, nothing was sent, and a resume neither
    books it as a lost request nor journals it as one."""
    from demiarch_flow.runner.limits import Gate
    from demiarch_flow.runner.resume import resume_run

    wf = with_limits('  rate:\n    "*": {rpm: 60}\n')
    fake, store = FakeOpenRouter(), MemoryStore()
    scope = trio.CancelScope()

    async def interrupted(self: Gate) -> None:
        scope.cancel()
        await trio.sleep(1.0)

    with monkeypatch.context() as patch:
        patch.setattr(Gate, "stamp", interrupted)
        with scope:
            await run_workflow(wf, RunRequest("a"), make_env(fake, store=store))
    (run_id,) = store.runs
    [row] = [a for (r, _), a in store.attempts.items() if r == run_id]
    assert (row.error_class, row.generation_id) == ("cancelled", None)
    assert row.ended_at is not None and fake.requests == []
    resumed = await resume_run(run_id, make_env(fake, store=store))
    assert resumed.outcome.status == "succeeded" and len(fake.requests) == 1
    assert not [e for e in store.events if e.event in ("attempt_billed", "attempt_unrecorded")]
