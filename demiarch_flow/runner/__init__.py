"""The trio runner, its handlers, the run state and the records it reports.

Public: :func:`run_workflow`, :func:`drive`, :func:`initial_state`, :class:`RunRequest`,
:class:`RunEnv`, :class:`RunState`, :class:`Step`, :class:`RunOutcome`, :class:`FlowRecord`,
:class:`Listener`, :data:`HANDLERS`.
"""

from .context import RunEnv, RunRequest
from .engine import RunOutcome, advance, drive, initial_state, run_workflow
from .handlers import HANDLERS
from .records import FlowRecord, Listener, WaitSource
from .state import AttemptInfo, ErrorInfo, RunState, Step, Wait

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
