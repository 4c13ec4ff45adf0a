"""The default workflow, the parsed model, the machine and the drawings."""

from __future__ import annotations

import dataclasses

import pytest
from statemachine.exceptions import TransitionNotAllowed

from demiarch_flow.definition import (
    ACTION_EVENTS,
    FALLBACK_CLASSES,
    RETRY_CLASSES,
    CooldownPolicy,
    FallbackPolicy,
    RequestSettings,
    RetryPolicy,
    Workflow,
    load_workflow,
    machine_class,
    parse_workflow,
    workflow_schema,
)
from demiarch_flow.definition.render import to_dot, to_mermaid
from demiarch_flow.errors import GraphError, SchemaError

from ..conftest import DEFAULT_WORKFLOW


def test_default_workflow_parses_to_the_documented_policy() -> None:
    """workflows/chat.yaml carries exactly the policy of the brief."""
    wf = load_workflow(DEFAULT_WORKFLOW)
    assert wf.name == "chat"
    assert wf.models == (
        "anthropic/claude-sonnet-4",
        "anthropic/claude-3.5-haiku",
        "openai/gpt-4o",
    )
    assert wf.request == RequestSettings(
        timeout_s=120,
        context_messages=50,
        stream=True,
        first_token_timeout_s=30,
        idle_timeout_s=20,
    )
    assert wf.retry == RetryPolicy(
        max_retries=3,
        initial_delay_s=1,
        backoff_rate=2,
        max_delay_s=30,
        jitter="none",
        respect_retry_after=True,
        when=frozenset(
            {"rate_limited", "timeout", "server_error", "network_error", "stream_interrupted"}
        ),
    )
    assert wf.fallback == FallbackPolicy(
        when=frozenset({"retries_exhausted", "model_unavailable", "bad_request", "forbidden"})
    )
    assert wf.initial == "LoadContext"
    assert wf.state("Request").target("retryable") == "Backoff"
    assert wf.state("Done").final and wf.state("Failed").action == "fail"
    assert len(wf.sha256) == 64


def test_models_are_frozen(default_text: str) -> None:
    """A parsed workflow cannot be changed behind the runner's back."""
    wf = parse_workflow(default_text)
    with pytest.raises(dataclasses.FrozenInstanceError):
        wf.retry.max_retries = 10  # type: ignore[misc]


def test_machine_follows_the_table_and_raises_on_foreign_events(default_text: str) -> None:
    """The generated machine moves per the YAML and refuses an event its state does not accept."""
    machine = machine_class(parse_workflow(default_text))()
    assert machine.current_state_value == "LoadContext"
    machine.send("loaded")
    assert machine.current_state_value == "Request"
    machine.send("retryable")
    assert machine.current_state_value == "Backoff"
    with pytest.raises(TransitionNotAllowed):
        machine.send("saved")
    with pytest.raises(TransitionNotAllowed):
        machine.send("no_such_event")
    machine.send("exhausted")
    machine.send("next_model")
    machine.send("succeeded")
    machine.send("saved")
    assert machine.current_state_value == "Done"
    assert machine.is_terminated


def test_user_states_may_reuse_actions(default_text: str) -> None:
    """State names are free: a second Backoff state with its own edges is valid."""
    text = default_text.replace(
        "fatal: Failed}}",
        "fatal: Failed}}\n  Cool:        {action: backoff, transitions: {retry: Request, exhausted: Failed}}",
    ).replace("model_failed: Fallback", "model_failed: Cool")
    wf = parse_workflow(text)
    machine = machine_class(wf)()
    machine.send("loaded")
    machine.send("model_failed")
    assert machine.current_state_value == "Cool"


def test_extra_state_changes_the_built_machine(default_text: str) -> None:
    """A cycle through a Backoff 'exhausted' edge only is rejected even though it passes Backoff."""
    text = default_text.replace("exhausted: Fallback}", "exhausted: Request}")
    with pytest.raises(GraphError, match="loop forever"):
        parse_workflow(text)


def test_every_schema_field_reaches_the_model() -> None:
    """The schema and the model do not drift apart: each schema property has a model field."""
    schema = workflow_schema()
    props = schema["properties"]
    assert set(props["retry"]["properties"]) == {f.name for f in dataclasses.fields(RetryPolicy)}
    assert set(props["request"]["properties"]) == {
        f.name for f in dataclasses.fields(RequestSettings)
    }
    assert set(props["fallback"]["properties"]) == {
        f.name for f in dataclasses.fields(FallbackPolicy)
    }
    assert set(props["cooldown"]["properties"]) == {
        f.name for f in dataclasses.fields(CooldownPolicy)
    }
    assert set(props) <= {f.name for f in dataclasses.fields(Workflow)}
    assert set(schema["$defs"]["state"]["properties"]) - {"description"} == {
        "action",
        "final",
        "transitions",
    }
    assert props["retry"]["properties"]["when"]["items"]["enum"] == list(RETRY_CLASSES)
    assert props["fallback"]["properties"]["when"]["items"]["enum"] == list(FALLBACK_CLASSES)
    assert schema["$defs"]["state"]["properties"]["action"]["enum"] == list(ACTION_EVENTS)


def test_schema_defaults_match_model_defaults() -> None:
    """Optional fields left out of the file take the model's documented defaults."""
    text = """
version: 1
name: tiny
models: [m/a]
retry: {max_retries: 2, initial_delay_s: 0.5, backoff_rate: 1, max_delay_s: 0.5}
fallback: {}
initial: Req
states:
  Req: {action: request, transitions: {succeeded: Done, retryable: Wait, model_failed: Next, fatal: Done}}
  Wait: {action: backoff, transitions: {retry: Req, exhausted: Next}}
  Next: {action: fallback, transitions: {next_model: Req, exhausted: Done}}
  Done: {final: true}
"""
    wf = parse_workflow(text)
    assert wf.request == RequestSettings()
    assert wf.retry.jitter == "none" and wf.retry.respect_retry_after
    assert wf.retry.when == RetryPolicy().when
    assert wf.fallback == FallbackPolicy()


def test_several_problems_are_all_listed(default_text: str) -> None:
    """Two schema faults in one file: the first by position leads, the other is listed too."""
    text = default_text.replace("backoff_rate: 2", "backoff_rate: 0").replace(
        "timeout_s: 120", "timeout_s: -1"
    )
    with pytest.raises(SchemaError) as info:
        parse_workflow(text, "w.yaml")
    assert len(info.value.problems) == 2
    assert info.value.path == "request.timeout_s"
    assert "retry.backoff_rate" in str(info.value)


def test_mermaid_and_dot_name_every_transition(default_text: str) -> None:
    """Both drawings list each (state, event, target) of the file."""
    wf = parse_workflow(default_text)
    mermaid, dot = to_mermaid(wf), to_dot(wf)
    assert mermaid.startswith("stateDiagram-v2\n    [*] --> LoadContext")
    for s in wf.states:
        for event, target in s.transitions:
            assert f"{s.name} --> {target} : {event}" in mermaid
            assert f'"{s.name}" -> "{target}" [label="{event}"];' in dot
    assert '"Done" [shape=doublecircle' in dot
