"""The transition table that drives runs, derived from the workflow's python-statemachine class.

python-statemachine defines, the table drives. The class that :func:`~demiarch_flow.definition.
machine_class` builds from the YAML stays the definition — validation, the graph checks,
diagrams, ``testing`` — and the single source of every transition; but an instance of it costs
more than the rest of the engine's bookkeeping per run (each instance registers its callbacks
and starts an SCXML engine, each ``send()`` is a full macrostep). The machine has no guards and
no callbacks, so ``send`` is a pure function of (state, event): this module reads that function
off the class once per workflow (:func:`transition_table`) and runs on a dictionary lookup.

The derivation refuses a class whose ``send`` it could not reproduce (a guard, a validator, a
callback, a compound or parallel state, an eventless or multi-target transition, events that
pass without a transition) rather than drive it differently. An event the state cannot take
raises python-statemachine's own ``TransitionNotAllowed`` with the same message, and an event
name is matched by the class's own matcher, so a run moves exactly as an instance would move it
(``tests/runner/test_table.py`` checks every (state, event) pair against a real instance).

``DEMIARCH_FLOW_MACHINE=statemachine`` drives a real python-statemachine instance per run
instead (the crash matrix runs under both; the benchmark measures both); ``table``, the default,
is the table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Any, Final, Protocol

from statemachine import StateMachine
from statemachine.event import Event
from statemachine.exceptions import InvalidStateValue, TransitionNotAllowed
from statemachine.orderedset import OrderedSet
from statemachine.transition import Transition

from ..definition import Workflow, machine_class
from ..errors import EnvironmentProblem

#: The switch: which machine drives a run (``table`` unless set).
MACHINE_ENV: Final = "DEMIARCH_FLOW_MACHINE"
MACHINES: Final = ("table", "statemachine")


class Machine(Protocol):
    """What the engine needs of a run's machine — the part of python-statemachine's instance
    API that both drivers have."""

    @property
    def current_state_value(self) -> Any: ...

    def send(self, event: str) -> Any: ...


@dataclass(frozen=True, eq=False)
class TransitionTable:
    """(state, event) → target of one machine class, as its ``send`` computes it.

    Attributes:
        machine: the python-statemachine class this table was read from.
        initial: the value of its initial state.
        moves: state value → event → target value, for every event id a transition of the
            state names (an event outside it may still match a dotted prefix: :meth:`target`).
    """

    machine: type[StateMachine]
    initial: str
    moves: Mapping[str, Mapping[str, str]]

    def target(self, state: str, event: str) -> str:
        """Where ``event`` takes a run in ``state``.

        Raises:
            TransitionNotAllowed: the state has no transition for ``event`` (a bug: handlers
                only emit events of their action).
            InvalidStateValue: ``state`` is not a state of the machine.
        """
        try:
            return self.moves[state][event]
        except KeyError:
            return self._slow_target(state, event)

    def _slow_target(self, state: str, event: str) -> str:
        """Not an event id of the state: the class's own matcher decides, as ``send`` would
        (``error`` matches ``error.timeout``), and no match is ``TransitionNotAllowed``."""
        source = self.machine.states_map.get(state)
        if source is None:
            raise InvalidStateValue([state])  # type: ignore[no-untyped-call]
        for t in source.transitions:
            if t.match(event):
                return str(_only_target(t).value)
        known = getattr(self.machine, event, None)
        name = known.name if isinstance(known, Event) else event
        raise TransitionNotAllowed(Event(id=event, name=name), OrderedSet([source]))


class TableMachine:
    """One run's position in a :class:`TransitionTable`: the engine's ``send`` as a lookup."""

    __slots__ = ("current_state_value", "table")

    def __init__(self, table: TransitionTable, start_value: str | None = None) -> None:
        if start_value is not None and start_value not in table.moves:
            raise InvalidStateValue([start_value])  # type: ignore[no-untyped-call]
        self.table = table
        self.current_state_value: str = table.initial if start_value is None else start_value

    def send(self, event: str) -> None:
        """Move on ``event``, or raise ``TransitionNotAllowed`` as python-statemachine does."""
        self.current_state_value = self.table.target(self.current_state_value, event)


def start_machine(wf: Workflow, start_value: str | None = None) -> Machine:
    """The machine one run of ``wf`` is driven by, in its initial state or ``start_value``.

    Raises:
        EnvironmentProblem: ``$DEMIARCH_FLOW_MACHINE`` names neither ``table`` nor
            ``statemachine``.
    """
    driver = os.environ.get(MACHINE_ENV) or "table"
    if driver == "table":
        return TableMachine(table_for(wf), start_value)
    if driver == "statemachine":
        return machine_class(wf)(start_value=start_value)
    raise EnvironmentProblem(f"{MACHINE_ENV}={driver!r}: expected one of {', '.join(MACHINES)}")


#: id(workflow) → (workflow, table): hashing a Workflow (a deep frozen dataclass) costs more
#: than a run's three lookups, so the per-run path finds its table by identity. The entry holds
#: the workflow, so its id cannot be reused while the entry lives.
_BY_ID: dict[int, tuple[Workflow, TransitionTable]] = {}


def table_for(wf: Workflow) -> TransitionTable:
    """The table of ``wf``'s machine class, derived once per workflow."""
    hit = _BY_ID.get(id(wf))
    if hit is not None and hit[0] is wf:
        return hit[1]
    table = transition_table(machine_class(wf))
    _BY_ID[id(wf)] = (wf, table)
    return table


@cache
def transition_table(machine: type[StateMachine]) -> TransitionTable:
    """Read ``machine``'s ``send`` off the class, once per class.

    Raises:
        TypeError: the class has something ``send`` would run or consult besides its states
            and transitions, so a table cannot reproduce it.
    """
    if machine.allow_event_without_transition:
        raise TypeError(f"{machine.__name__}: an event without a transition passes silently")
    if machine.initial_state is None:
        raise TypeError(f"{machine.__name__}: no initial state")
    callbacks = machine()._callbacks._registry  # whatever an instance would call, resolved
    if any(any(True for _ in executor) for executor in callbacks.values()):
        raise TypeError(f"{machine.__name__}: it has guards or callbacks: {sorted(callbacks)}")
    moves: dict[str, Mapping[str, str]] = {}
    for state in machine.states_map.values():
        if state.states or state.parallel:
            raise TypeError(f"{machine.__name__}: {state.id} is compound or parallel")
        for t in state.transitions:
            if t.is_eventless:
                raise TypeError(f"{machine.__name__}: {t} has no event")
            _only_target(t)
        # For each event id the state names, the first transition in document order that the
        # class's matcher accepts: what the engine's transition selection would pick.
        ids = [str(e.id) for t in state.transitions for e in t.events]
        moves[str(state.value)] = MappingProxyType(
            {
                event: str(_only_target(next(t for t in state.transitions if t.match(event))).value)
                for event in ids
            }
        )
    return TransitionTable(machine, str(machine.initial_state.value), MappingProxyType(moves))


def _only_target(t: Transition) -> Any:
    if len(t.targets) != 1:
        raise TypeError(f"{t} does not have exactly one target")
    return t.targets[0]
