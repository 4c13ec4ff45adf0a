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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Protocol

from ..definition import Workflow, known_moves
from ..errors import EnvironmentProblem

if TYPE_CHECKING:  # pragma: no cover
    from statemachine import StateMachine

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
        initial: the value of its initial state.
        moves: state value → event → target value, for every event id a transition of the
            state names (an event outside it may still match a dotted prefix: :meth:`target`).
        definition: gives the python-statemachine class this table was read from; called
            only off the hot path (an event that is not an id of its state, an unknown
            state), so a run on a table the cache kept imports no python-statemachine.
    """

    initial: str
    moves: Mapping[str, Mapping[str, str]]
    definition: Callable[[], type[StateMachine]]

    @property
    def machine(self) -> type[StateMachine]:
        """The python-statemachine class this table was read from."""
        return self.definition()

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
        from statemachine.event import Event
        from statemachine.exceptions import InvalidStateValue, TransitionNotAllowed
        from statemachine.orderedset import OrderedSet

        from ..definition.machine import only_target

        source = self.machine.states_map.get(state)
        if source is None:
            raise InvalidStateValue([state])  # type: ignore[no-untyped-call]
        for t in source.transitions:
            if t.match(event):
                return str(only_target(t).value)
        known = getattr(self.machine, event, None)
        name = known.name if isinstance(known, Event) else event
        raise TransitionNotAllowed(Event(id=event, name=name), OrderedSet([source]))


class TableMachine:
    """One run's position in a :class:`TransitionTable`: the engine's ``send`` as a lookup."""

    __slots__ = ("current_state_value", "table")

    def __init__(self, table: TransitionTable, start_value: str | None = None) -> None:
        if start_value is not None and start_value not in table.moves:
            from statemachine.exceptions import InvalidStateValue

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
        from ..definition import machine_class

        return machine_class(wf)(start_value=start_value)
    raise EnvironmentProblem(f"{MACHINE_ENV}={driver!r}: expected one of {', '.join(MACHINES)}")


#: id(workflow) → (workflow, table): hashing a Workflow (a deep frozen dataclass) costs more
#: than a run's three lookups, so the per-run path finds its table by identity. The entry holds
#: the workflow, so its id cannot be reused while the entry lives.
_BY_ID: dict[int, tuple[Workflow, TransitionTable]] = {}


def table_for(wf: Workflow) -> TransitionTable:
    """The table of ``wf``'s machine class, derived once per workflow — or, for a workflow the
    cache of checked workflows rebuilt, the table kept beside it (derived from the same class
    when the text was checked), so that python-statemachine is imported only when needed."""
    hit = _BY_ID.get(id(wf))
    if hit is not None and hit[0] is wf:
        return hit[1]
    kept = known_moves(wf)
    if kept is None:
        table = transition_table(_machine_class(wf))
    else:
        initial, moves = kept
        table = TransitionTable(initial, _frozen(moves), partial(_machine_class, wf))
    _BY_ID[id(wf)] = (wf, table)
    return table


@cache
def transition_table(machine: type[StateMachine]) -> TransitionTable:
    """Read ``machine``'s ``send`` off the class, once per class
    (:func:`~demiarch_flow.definition.machine.transition_moves`).

    Raises:
        TypeError: the class has something ``send`` would run or consult besides its states
            and transitions, so a table cannot reproduce it.
    """
    from ..definition.machine import transition_moves

    initial, moves = transition_moves(machine)
    return TransitionTable(initial, _frozen(moves), lambda: machine)


def _machine_class(wf: Workflow) -> type[StateMachine]:
    """``wf``'s python-statemachine class, importing python-statemachine only now."""
    from ..definition import machine_class

    return machine_class(wf)


def _frozen(moves: Mapping[str, Mapping[str, str]]) -> Mapping[str, Mapping[str, str]]:
    return MappingProxyType({state: MappingProxyType(dict(m)) for state, m in moves.items()})
