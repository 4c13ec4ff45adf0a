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
