"""The README's "unit-test a state of your own workflow" example, run as part of our suite."""

from __future__ import annotations

from pathlib import Path

# --- README example start
from demiarch_flow.definition import load_workflow
from demiarch_flow.testing import FakeOpenRouter, make_env, run_state, state_for


async def test_my_policy_retries_a_rate_limit_then_succeeds(autojump_clock):
    workflow = load_workflow("workflows/chat.yaml")  # your own file here
    fake = FakeOpenRouter("anthropic/claude-sonnet-4=429@2,ok")
    env = make_env(fake)

    step = await run_state(workflow, state_for(workflow, "Request"), env)
    assert (step.event, step.next_state) == ("retryable", "Backoff")

    step = await run_state(workflow, step.state, env)  # the run state it left behind
    assert (step.event, step.next_state, step.waited_s) == ("retry", "Request", 2.0)

    step = await run_state(workflow, step.state, env)
    assert step.event == "succeeded"
    assert fake.models_called == ["anthropic/claude-sonnet-4"] * 2


# --- README example end


def test_readme_shows_this_example() -> None:
    """The README carries the example above verbatim, so the documented test is a tested test."""
    source = Path(__file__).read_text("utf-8")
    example = source.split("# --- README example start\n")[1].split("# --- README example end")[0]
    readme = (Path(__file__).parent.parent / "README.md").read_text("utf-8")
    assert example.strip() in readme
