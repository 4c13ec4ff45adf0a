"""The trio runner, its handlers, and the records it reports.

Public: :func:`run_workflow`, :class:`RunRequest`, :class:`RunEnv`, :class:`RunContext`,
:class:`RunOutcome`, :class:`FlowRecord`, :class:`Listener`, :class:`JournalListener`,
:data:`HANDLERS`.
"""

from .context import AttemptSummary, RunContext, RunEnv, RunRequest, model_chain
from .engine import RunOutcome, drive, run_workflow
from .handlers import HANDLERS
from .journal import JournalListener
from .records import FlowRecord, Listener

__all__ = [
    "HANDLERS",
    "AttemptSummary",
    "FlowRecord",
    "JournalListener",
    "Listener",
    "RunContext",
    "RunEnv",
    "RunOutcome",
    "RunRequest",
    "drive",
    "model_chain",
    "run_workflow",
]
