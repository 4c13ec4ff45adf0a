"""The shared per-model cooldown: across runs of one process, in virtual time."""

from __future__ import annotations

import trio

from demiarch_flow.definition import CooldownPolicy
from demiarch_flow.runner import RunRequest, run_workflow
from demiarch_flow.runner.cooldown import CooldownRegistry
from demiarch_flow.testing import FakeOpenRouter, RecordingListener, make_env

from .helpers import GPT4O, HAIKU, SONNET, edited

COOL = "cooldown: {after_failures: 3, window_s: 60, cool_s: 30}\n"


def _wf(extra: str = COOL, **replacements: str):  # type: ignore[no-untyped-def]
    replacements = {"initial: LoadContext": extra + "initial: LoadContext", **replacements}
    return edited(**replacements)


def test_registry_counts_failures_in_a_window() -> None:
    """3 failures within 60 s start a 30 s cooldown; older failures fall out of the window."""
    reg, policy = CooldownRegistry(), CooldownPolicy(3, 60, 30)
    assert reg.failure("m", 0, policy, None) is None
    assert reg.failure("m", 70, policy, None) is None
    assert reg.failure("m", 80, policy, None) is None
    assert reg.remaining("m", 80) == 0
    assert reg.failure("m", 90, policy, None) == 30
    assert reg.remaining("m", 100) == 20
    assert reg.remaining("m", 121) == 0


def test_registry_retry_after_starts_a_cooldown_at_once() -> None:
    """A Retry-After cools the model for that long, even on the first failure."""
    reg = CooldownRegistry()
    assert reg.failure("m", 5, CooldownPolicy(3, 60, 30), 12.0) == 12.0
    assert reg.remaining("m", 10) == 7


def test_success_clears_failures() -> None:
    """An answer resets the failure count."""
    reg, policy = CooldownRegistry(), CooldownPolicy(2, 60, 30)
    reg.failure("m", 0, policy, None)
    reg.success("m")
    assert reg.failure("m", 1, policy, None) is None


async def test_cooling_model_is_skipped_by_later_runs(autojump_clock: object) -> None:
    """Run 1 fails sonnet 4 times (cooldown starts at the 3rd); run 2 goes straight to haiku."""
    fake = FakeOpenRouter(f"{SONNET}=500*")
    rec = RecordingListener()
    env = make_env(fake, listeners=[rec])
    wf = _wf()
    first = await run_workflow(wf, RunRequest("one"), env)
    assert first.status == "succeeded"
    assert fake.models_called == [SONNET, SONNET, SONNET, HAIKU]
    second = await run_workflow(wf, RunRequest("two"), env)
    assert second.model == HAIKU
    assert fake.models_called[4:] == [HAIKU]
    kinds = [(r.event, r.model) for r in rec.of_kind("cooldown")]
    assert kinds == [("started", SONNET), ("skipped", SONNET), ("skipped", SONNET)]
    assert second.attempts[0].outcome == "skipped"
    assert second.transitions[1].error_class == "cooling"


async def test_concurrent_runs_share_the_cooldown(autojump_clock: object) -> None:
    """50 concurrent runs against a rate-limiting model: far fewer than 50×4 requests to it."""
    fake = FakeOpenRouter(f"{SONNET}=429*")
    env = make_env(fake)
    wf = _wf()

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(run_workflow, wf, RunRequest(f"m{i}"), env)
    assert fake.models_called.count(SONNET) < 60
    assert fake.models_called.count(HAIKU) == 50


async def test_last_model_cooling_waits_within_the_cap(autojump_clock: object) -> None:
    """On the last model a cooling model is waited out (Backoff), not skipped."""
    wf = _wf(
        "cooldown: {after_failures: 1, window_s: 60, cool_s: 5}\n",
        **{"  - anthropic/claude-sonnet-4\n  - anthropic/claude-3.5-haiku\n": ""},
    )
    fake = FakeOpenRouter(f"{GPT4O}=500,ok")
    out = await run_workflow(wf, RunRequest("hi"), make_env(fake))
    assert out.status == "succeeded"
    assert fake.request_times() == [0.0, 5.0]


async def test_without_cooldown_block_nothing_is_shared(autojump_clock: object) -> None:
    """The default workflow (no cooldown) lets each run try sonnet itself."""
    fake = FakeOpenRouter(f"{SONNET}=500*")
    env = make_env(fake)
    wf = edited()
    await run_workflow(wf, RunRequest("one"), env)
    await run_workflow(wf, RunRequest("two"), env)
    assert fake.models_called.count(SONNET) == 8
