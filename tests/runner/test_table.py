"""The transition table moves a run exactly as the workflow's python-statemachine class would."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from statemachine import State, StateChart, StateMachine
from statemachine.exceptions import InvalidStateValue, TransitionNotAllowed

from demiarch_flow.definition import ACTION_EVENTS, Workflow, load_workflow, parse_workflow
from demiarch_flow.definition import machine_class as definition_machine_class
from demiarch_flow.definition.vocabulary import CONSUMING_EDGES
from demiarch_flow.errors import DefinitionError, EnvironmentProblem
from demiarch_flow.runner import HANDLERS, RunRequest, RunState, Step, run_workflow
from demiarch_flow.runner import table as table_module
from demiarch_flow.runner.table import (
    MACHINE_ENV,
    TableMachine,
    start_machine,
    table_for,
    transition_table,
)
from demiarch_flow.store import MemoryStore
from demiarch_flow.testing import make_env

from ..conftest import DEFAULT_WORKFLOW, ROOT

DEFAULT = DEFAULT_WORKFLOW.read_text("utf-8")
#: Every workflow file of the project that loads: the bundled ones and the tests' own.
FILES = sorted(
    [*(ROOT / "workflows").glob("*.yaml"), *(ROOT / "tests" / "workflows").glob("*.yaml")]
)
#: Every event a handler can emit, and events no state names (one a dotted child of a real one).
EVENTS = sorted({e for events in ACTION_EVENTS.values() for e in events})
STRANGE_EVENTS = ("no_such_event", "loaded.extra", "")


def _graph(states: str, initial: str = "LoadContext") -> str:
    """The default workflow with another ``states`` block (the graphs the tests build)."""
    head = DEFAULT[: DEFAULT.index("initial:")]
    return f"{head}initial: {initial}\nstates:\n{states}"


#: The other graphs built in tests (test_workflow, test_states): a second Backoff state, a
#: plain final state for the fatal path, a workflow without LoadContext or Persist.
BUILT_IN_TESTS = {
    "second-backoff": DEFAULT.replace(
        "fatal: Failed}}",
        "fatal: Failed}}\n  Cool:        {action: backoff, transitions:"
        " {retry: Request, exhausted: Failed}}",
    ).replace("model_failed: Fallback", "model_failed: Cool"),
    "plain-final": DEFAULT.replace("fatal: Failed}", "fatal: Stop}").replace(
        "  Done:        {final: true}", "  Done:        {final: true}\n  Stop:        {final: true}"
    ),
    "tiny": _graph(
        "  Req: {action: request, transitions: {succeeded: Done, retryable: Wait,"
        " model_failed: Next, fatal: Done}}\n"
        "  Wait: {action: backoff, transitions: {retry: Req, exhausted: Next}}\n"
        "  Next: {action: fallback, transitions: {next_model: Req, exhausted: Done}}\n"
        "  Done: {final: true}\n",
        initial="Req",
    ),
}


def outcome(machine: Any, event: str) -> tuple[Any, ...]:
    """What sending ``event`` does: where it moves, or the error it raises, as comparable data."""
    try:
        machine.send(event)
    except TransitionNotAllowed as exc:
        assert exc.event is not None
        return ("refused", str(exc), exc.event.id, [s.value for s in exc.configuration])
    return ("moved", machine.current_state_value)


def assert_table_is_the_machine(cls: type[StateMachine], events: list[str]) -> None:
    """Every (state, event) pair, allowed or not, from every state: table and instance agree."""
    table = transition_table(cls)
    assert table.machine is cls
    assert TableMachine(table).current_state_value == cls().current_state_value == table.initial
    assert set(table.moves) == set(cls.states_map)
    for state in cls.states_map:
        for event in events:
            expected = outcome(cls(start_value=state), event)
            got = outcome(TableMachine(table, state), event)
            assert got == expected, (cls.__name__, state, event)


def assert_workflow(wf: Workflow) -> None:
    cls = definition_machine_class(wf)
    names = {str(e.id) for s in cls.states_map.values() for t in s.transitions for e in t.events}
    assert_table_is_the_machine(cls, sorted({*EVENTS, *names, *STRANGE_EVENTS}))
    assert table_for(wf) is transition_table(cls)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_workflow_file(path: Path) -> None:
    """The bundled workflow and the tests' own: the table is the machine, pair by pair."""
    assert_workflow(load_workflow(path))


@pytest.mark.parametrize("name", sorted(BUILT_IN_TESTS))
def test_graphs_the_tests_build(name: str) -> None:
    """The other graphs the test suite builds from text."""
    assert_workflow(parse_workflow(BUILT_IN_TESTS[name]))


NAMES = ("LoadContext", "Request", "Backoff", "Fallback", "Persist", "Cool", "Retry2")
ACTIONS = sorted(a for a in ACTION_EVENTS if a != "fail")


@st.composite
def graphs(draw: st.DrawFn) -> str:
    """A random valid ``states`` block: up to seven action states in a random order, each
    leading on to the next by one of its edges; its other edges go anywhere later (or to a
    final state), and the budget-consuming ones (retry, next_model) anywhere at all."""
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=len(NAMES), unique=True))
    finals = ["Done", "Failed"]
    lines: list[str] = []
    targeted: set[str] = set()
    for i, name in enumerate(names):
        action = draw(st.sampled_from(ACTIONS))
        events = sorted(ACTION_EVENTS[action])
        onward = draw(st.sampled_from([e for e in events if (action, e) not in CONSUMING_EDGES]))
        edges = {}
        for e in events:
            if e == onward and i + 1 < len(names):
                edges[e] = names[i + 1]
            elif (action, e) in CONSUMING_EDGES:
                edges[e] = draw(st.sampled_from([*names, *finals]))
            else:
                edges[e] = draw(st.sampled_from([*names[i + 1 :], *finals]))
        targeted.update(edges.values())
        listed = ", ".join(f"{e}: {t}" for e, t in edges.items())
        lines.append(f"  {name}: {{action: {action}, transitions: {{{listed}}}}}\n")
    if "Done" in targeted:
        lines.append("  Done: {final: true}\n")
    if "Failed" in targeted:
        lines.append("  Failed: {action: fail, final: true}\n")
    return _graph("".join(lines), initial=names[0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_any_valid_graph(text: str) -> None:
    """Any graph the loader accepts (random states, actions and targets)."""
    try:
        wf = parse_workflow(text)
    except DefinitionError:
        assume(False)
        raise
    assert_workflow(wf)


def test_matching_and_first_match_follow_python_statemachine() -> None:
    """Dotted events match their prefixes, and the first transition in document order wins,
    as the class's own transition selection decides."""

    class Dotted(StateMachine):
        a = State(initial=True)
        b = State()
        c = State(final=True)
        broad = a.to(b, event="error") | b.to(c, event="done")
        narrow = a.to(c, event="error.timeout")

    table = transition_table(Dotted)
    assert table.target("a", "error.timeout") == "b"  # "error" comes first and matches
    assert table.target("a", "error.network") == "b"
    assert_table_is_the_machine(Dotted, ["error", "error.timeout", "error.x.y", "err", "done", "x"])


def test_one_table_per_workflow_and_no_machine_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table is derived once per machine class (an equal workflow parsed again shares it),
    and a run builds no python-statemachine instance."""
    wf = parse_workflow(DEFAULT)
    table = table_for(wf)
    assert table_for(wf) is table
    assert table_for(parse_workflow(DEFAULT)) is table

    def no_instance(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a machine was built for a run")

    monkeypatch.setattr(StateChart, "__init__", no_instance)
    monkeypatch.delenv(MACHINE_ENV, raising=False)
    machine = start_machine(wf)
    machine.send("loaded")
    assert machine.current_state_value == "Request"


@pytest.mark.parametrize("driver", ["table", "statemachine"])
async def test_the_switch_drives_the_same_run(
    driver: str, monkeypatch: pytest.MonkeyPatch, autojump_clock: object
) -> None:
    """``DEMIARCH_FLOW_MACHINE`` picks the driver; a run with retries and a fallback takes the
    same transitions under both."""
    monkeypatch.setenv(MACHINE_ENV, driver)
    wf = load_workflow(DEFAULT_WORKFLOW)
    machine = start_machine(wf, "Backoff")
    assert isinstance(machine, TableMachine) == (driver == "table")
    assert machine.current_state_value == "Backoff"
    sonnet = wf.models[0]
    out = await run_workflow(wf, RunRequest("hi", stream=False), make_env(f"{sonnet}=500*"))
    assert out.status == "succeeded"
    assert [(t.from_state, t.event, t.to_state) for t in out.transitions] == [
        ("LoadContext", "loaded", "Request"),
        *[("Request", "retryable", "Backoff"), ("Backoff", "retry", "Request")] * 3,
        ("Request", "retryable", "Backoff"),
        ("Backoff", "exhausted", "Fallback"),
        ("Fallback", "next_model", "Request"),
        ("Request", "succeeded", "Persist"),
        ("Persist", "saved", "Done"),
    ]


@pytest.mark.parametrize("driver", ["table", "statemachine"])
async def test_a_foreign_event_is_a_surfaced_bug(
    driver: str, monkeypatch: pytest.MonkeyPatch, autojump_clock: object
) -> None:
    """A handler emitting an event its state has no transition for raises python-statemachine's
    TransitionNotAllowed, with the same message under both drivers, and the run is recorded
    failed (internal)."""
    monkeypatch.setenv(MACHINE_ENV, driver)
    loaded = HANDLERS["load_context"]

    async def foreign(state: RunState, env: Any, wf: Workflow) -> Step:
        return dataclasses.replace(await loaded(state, env, wf), event="saved")

    monkeypatch.setitem(HANDLERS, "load_context", foreign)
    store = MemoryStore()
    with pytest.raises(TransitionNotAllowed, match=r"^Can't Saved when in LoadContext\.$"):
        await run_workflow(load_workflow(DEFAULT_WORKFLOW), RunRequest("hi"), make_env(store=store))
    (run,) = store.runs.values()
    assert (run["status"], run["error_class"]) == ("failed", "internal")
    assert run["error_message"] == "TransitionNotAllowed: Can't Saved when in LoadContext."


def test_a_state_the_machine_does_not_have() -> None:
    """Starting in a state the workflow does not have fails as the class's constructor does."""
    wf = load_workflow(DEFAULT_WORKFLOW)
    with pytest.raises(InvalidStateValue) as sm_exc:
        definition_machine_class(wf)(start_value="Nowhere")
    with pytest.raises(InvalidStateValue) as table_exc:
        TableMachine(table_for(wf), "Nowhere")
    assert str(table_exc.value) == str(sm_exc.value)


def test_an_unknown_driver_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in the switch is an error, not a silent fall back to the table."""
    monkeypatch.setenv(MACHINE_ENV, "state-machine")
    with pytest.raises(EnvironmentProblem, match="DEMIARCH_FLOW_MACHINE"):
        start_machine(load_workflow(DEFAULT_WORKFLOW))


class Guarded(StateMachine):
    a = State(initial=True)
    b = State(final=True)
    go = a.to(b, cond="ready")

    def ready(self) -> bool:
        return True


class WithCallback(StateMachine):
    a = State(initial=True)
    b = State(final=True)
    go = a.to(b)

    def on_enter_b(self) -> None:
        pass


class Lenient(StateChart):  # type: ignore[type-arg]
    a = State(initial=True)
    b = State(final=True)
    go = a.to(b)


class Compound(StateMachine):
    class outer(State.Compound):
        inner = State(initial=True)
        last = State(final=True)
        step = inner.to(last)

    done = State(final=True)
    leave = outer.to(done)


@pytest.mark.parametrize(
    ("cls", "why"),
    [
        (Guarded, "guards or callbacks"),
        (WithCallback, "guards or callbacks"),
        (Lenient, "without a transition"),
        (Compound, "compound or parallel"),
    ],
)
def test_a_machine_the_table_cannot_reproduce_is_refused(cls: type[StateMachine], why: str) -> None:
    """Guards, callbacks, events that pass silently, nested states: no table, a loud error."""
    with pytest.raises(TypeError, match=why):
        transition_table(cls)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_workflow_the_cache_rebuilt_moves_on_the_table_it_kept(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file read back from the cache of checked workflows drives its runs on the table the
    entry kept (nothing derived in this process), and that table is the machine, pair by
    pair — every (state, event), allowed or not, as an instance of the class would move."""
    load_workflow(path, cache=tmp_path)  # checked, and its entry written
    wf = load_workflow(path, cache=tmp_path)  # rebuilt from the entry
    monkeypatch.setattr(table_module, "transition_table", None)  # deriving now would fail
    kept = table_for(wf)
    cls = definition_machine_class(wf)
    assert kept.machine is cls and table_for(wf) is kept
    names = {str(e.id) for s in cls.states_map.values() for t in s.transitions for e in t.events}
    for state in cls.states_map:
        for event in sorted({*EVENTS, *names, *STRANGE_EVENTS}):
            expected = outcome(cls(start_value=state), event)
            assert outcome(TableMachine(kept, state), event) == expected, (state, event)
