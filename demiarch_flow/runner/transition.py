"""What a transition makes of a run: the moved :class:`RunState` and its journal row — pure.

The engine builds both, and only the engine: after ``machine.send(event)``, or — for a step
that carries a reply (Persist's ``saved``) — just before, from the workflow's transition table
(which the machine was built from), so that the reply, the run's end, its last checkpoint and
its last journal row commit in one transaction. It then checks that the machine agrees.
"""

from __future__ import annotations

from datetime import datetime

from ..errors import ErrorClass
from ..store.base import JournalEntry
from .state import RunState, Step, evolve

#: Events that carry no error (their transition records no error class).
_HAPPY = frozenset({"loaded", "succeeded", "saved", "retry", "next_model"})


def cause(step: Step) -> ErrorClass | None:
    """The error class behind a transition (``None`` for the happy-path events)."""
    if step.event in _HAPPY:
        return None
    failure = step.state.failure
    if step.event == "failed" or failure is not None:
        return failure.error_class if failure else None
    last = step.state.last_error
    return last.error_class if last else None


def moved(before: RunState, step: Step, to_state: str) -> RunState:
    """The run state after ``step``'s event took the machine from ``before`` to ``to_state``."""
    return evolve(
        step.state,
        state=to_state,
        entered_by=step.event,
        came_from=before.state,
        wait=None,
        seq=step.state.seq + 1,
    )


def journal_entry(before: RunState, step: Step, after: RunState, at: datetime) -> JournalEntry:
    """The ``run_events`` row of the move from ``before`` to ``after``."""
    wait = step.wait
    return JournalEntry(
        run_id=after.run_id,
        seq=after.seq,
        from_state=before.state,
        event=step.event,
        to_state=after.state,
        model=step.state.model,
        attempt=step.state.attempt or None,
        error_class=cause(step),
        wait_s=wait.seconds if wait else None,
        at=at,
        wait_source=wait.source if wait else None,
    )


def stay_entry(state: RunState, step: Step, at: datetime) -> tuple[RunState, JournalEntry]:
    """The run state and ``run_events`` row of a wait in place (``Step.stay``: a throttle):
    from and to the same state, the wait and the bucket it waits for."""
    wait = step.wait
    assert wait is not None, "a stay step without a wait"
    after = evolve(step.state, seq=step.state.seq + 1)
    return after, JournalEntry(
        run_id=after.run_id, seq=after.seq, from_state=state.state, event=step.event,
        to_state=state.state, model=step.state.model, attempt=step.state.attempt + 1,
        error_class=None, wait_s=wait.seconds, at=at, wait_source=wait.source,
        bucket=wait.bucket,
    )  # fmt: skip
