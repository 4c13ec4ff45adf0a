"""``simulate --replay``: what an edited workflow would have done on the runs it really had.

The record (:mod:`._record`) is read in a few bulk queries from a read-only database; the
provider is rebuilt from it per model and in time order (:mod:`._provider`); every run is
replayed through the real runner under the edited definition, in virtual time, against stores
in memory (:mod:`._run`); both sides are counted alike (:mod:`._facts`) and compared
(:mod:`._report`). Nothing is sent and nothing is written.

Public: :func:`read_record`, :class:`Selection`, :func:`replay`, :class:`Unrecorded`,
:class:`Report`.
"""

from ._provider import TOLERANCE_S, Unrecorded
from ._record import Record, Selection, read_record
from ._report import Report, Summary
from ._run import replay

__all__ = [
    "TOLERANCE_S",
    "Record",
    "Report",
    "Selection",
    "Summary",
    "Unrecorded",
    "read_record",
    "replay",
]
