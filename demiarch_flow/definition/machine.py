"""The python-statemachine class built from a :class:`Workflow` at run time.

The machine holds states and transitions only — no callbacks, no I/O — so it is a pure
transition table that tests can drive without a network. It uses the 2.x-style
:class:`statemachine.StateMachine` base, which raises ``TransitionNotAllowed`` on an event the
current state does not accept instead of ignoring it, and lets python-statemachine's own class
checks (unreachable states, trap states, final reachability) run as a second opinion.
"""

from __future__ import annotations

from collections import defaultdict
from functools import cache
from typing import Any

from statemachine import State, StateMachine
from statemachine.exceptions import InvalidDefinition
from statemachine.transition import Transition

from ..errors import GraphError, Location
from .model import Workflow


class WorkflowMachine(StateMachine):
    """Base of every generated machine; ``workflow`` is set on each generated class."""

    workflow: Workflow


@cache
def machine_class(wf: Workflow) -> type[WorkflowMachine]:
    """Build (once per workflow) the state machine class for ``wf``.

    Raises:
        GraphError: python-statemachine rejected the graph (the checks in ``_graph`` should
            have caught it first; this is the safety net).
    """
    states = {
        s.name: State(s.name, value=s.name, initial=s.name == wf.initial, final=s.final)
        for s in wf.states
    }
    by_event: dict[str, Any] = defaultdict(lambda: None)
    for s in wf.states:
        for event, target in s.transitions:
            transitions = states[s.name].to(states[target])
            previous = by_event[event]
            by_event[event] = transitions if previous is None else previous | transitions
    attrs: dict[str, Any] = {**states, **by_event, "workflow": wf}
    class_name = "".join(p.capitalize() for p in wf.name.replace("-", "_").split("_")) or "W"
    try:
        return type(f"{class_name}Machine", (WorkflowMachine,), attrs)
    except InvalidDefinition as exc:
        raise GraphError(str(exc), location=Location(wf.source)) from None


def transition_moves(machine: type[StateMachine]) -> tuple[str, dict[str, dict[str, str]]]:
    """Read ``machine``'s ``send`` off the class: its initial state's value and, for every
    state, event id → target value, as an instance's ``send`` would move (the first transition
    in document order that the class's matcher accepts).

    This is what :mod:`demiarch_flow.runner.table` drives runs on, and what the cache of
    checked workflows keeps beside a document, so a run of a file checked before needs no
    python-statemachine at all.

    Raises:
        TypeError: the class has something ``send`` would run or consult besides its states
            and transitions (a guard, a callback, a compound or parallel state, an eventless or
            multi-target transition, events that pass without a transition), so a table cannot
            reproduce it.
    """
    if machine.allow_event_without_transition:
        raise TypeError(f"{machine.__name__}: an event without a transition passes silently")
    if machine.initial_state is None:
        raise TypeError(f"{machine.__name__}: no initial state")
    callbacks = machine()._callbacks._registry  # whatever an instance would call, resolved
    if any(any(True for _ in executor) for executor in callbacks.values()):
        raise TypeError(f"{machine.__name__}: it has guards or callbacks: {sorted(callbacks)}")
    moves: dict[str, dict[str, str]] = {}
    for state in machine.states_map.values():
        if state.states or state.parallel:
            raise TypeError(f"{machine.__name__}: {state.id} is compound or parallel")
        for t in state.transitions:
            if t.is_eventless:
                raise TypeError(f"{machine.__name__}: {t} has no event")
            only_target(t)
        ids = [str(e.id) for t in state.transitions for e in t.events]
        moves[str(state.value)] = {
            event: str(only_target(next(t for t in state.transitions if t.match(event))).value)
            for event in ids
        }
    return str(machine.initial_state.value), moves


def only_target(t: Transition) -> Any:
    """The one target state of ``t``.

    Raises:
        TypeError: ``t`` has none or several.
    """
    if len(t.targets) != 1:
        raise TypeError(f"{t} does not have exactly one target")
    return t.targets[0]
