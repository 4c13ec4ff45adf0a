"""Paid once, kept always — on the path every ``demiarch-flow run`` takes.

:mod:`.test_paid_once` proves the property with the store opened on the SQLAlchemy engine
(``SqlStore(open_engine(url), url)``). A run on a SQLite file at this release's revision opens it
otherwise: ``SqlStore.open_sync(url)`` takes ``_Writer.at_head`` (its own ``sqlite3`` connection
and the generated statements of ``store/_sqlite_sql.py``), and its budgets go through the
``LazyLedger`` that :func:`demiarch_flow.runtime.open_world` builds. The harness's
``sqlite-lite`` backend opens every process that way (and asserts it did); a death closes that
connection with its queue uncommitted. The same invariants, the same schedules.

In a file of its own so that ``pytest --dist loadfile`` can run it beside the engine's.
"""

from __future__ import annotations

import dataclasses

from hypothesis import example, given

from .harness import Crash, Schedule, run_example
from .test_paid_once import (
    _QUIET,
    _settings,
    _tell,
    check_paid_once,
    check_same_rows,
    schedules,
)


@_settings(15)
@given(schedules(budgets=("none", "roomy", "tight")))
def test_memory_and_lite_stores_agree(schedule: Schedule) -> None:
    """Without a crash, the in-memory store and the store ``run`` opens end with the same rows
    and books, and both keep the paid-once invariants."""
    memory = run_example(schedule, "memory")
    lite = run_example(schedule, "sqlite-lite")
    check_paid_once(memory)
    check_paid_once(lite)
    check_same_rows(memory, lite)


@_settings(40)
@example(dataclasses.replace(_QUIET, crashes=(Crash("death", 27),)))
@example(dataclasses.replace(_QUIET, crashes=(Crash("death", 26, after=True),)))
@example(dataclasses.replace(_QUIET, crashes=(Crash("cancel", 26),)))
@example(dataclasses.replace(_QUIET, budget="tight", crashes=(Crash("death", 20),)))
@given(schedules(crashes=("cancel", "death"), budgets=("none", "roomy", "tight"), max_crashes=2))
def test_paid_once_across_crashes_on_sqlite_lite(schedule: Schedule) -> None:
    """Ctrl-C or a process death at a random await of ``run``'s own path, then resumes: paid
    once, kept always."""
    played = run_example(schedule, "sqlite-lite")
    _tell(played)
    check_paid_once(played)
