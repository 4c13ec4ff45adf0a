"""The trio runner, its handlers, the run state and the records it reports.

Public: :func:`run_workflow`, :func:`drive`, :func:`initial_state`, :class:`RunRequest`,
:class:`RunEnv`, :class:`RunState`, :class:`Step`, :class:`RunOutcome`, :class:`FlowRecord`,
:class:`Listener`, :data:`HANDLERS`. They are imported on first use: a command that only reads
the recovery file (``history``, ``usage``) imports :mod:`.recovery` alone, not the engine, trio
and the state machine behind it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "HANDLERS": "handlers",
    "AttemptInfo": "state",
    "ErrorInfo": "state",
    "FlowRecord": "records",
    "Listener": "records",
    "RunEnv": "context",
    "RunOutcome": "engine",
    "RunRequest": "context",
    "RunState": "state",
    "Step": "state",
    "Wait": "state",
    "WaitSource": "records",
    "advance": "engine",
    "drive": "engine",
    "initial_state": "engine",
    "run_workflow": "engine",
}

__all__ = [
    "HANDLERS",
    "AttemptInfo",
    "ErrorInfo",
    "FlowRecord",
    "Listener",
    "RunEnv",
    "RunOutcome",
    "RunRequest",
    "RunState",
    "Step",
    "Wait",
    "WaitSource",
    "advance",
    "drive",
    "initial_state",
    "run_workflow",
]

if TYPE_CHECKING:  # pragma: no cover
    from .context import RunEnv, RunRequest
    from .engine import RunOutcome, advance, drive, initial_state, run_workflow
    from .handlers import HANDLERS
    from .records import FlowRecord, Listener, WaitSource
    from .state import AttemptInfo, ErrorInfo, RunState, Step, Wait


__getattr__ = lazy_exports(__name__, _EXPORTS)
