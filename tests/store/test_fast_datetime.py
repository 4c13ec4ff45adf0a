"""The fixed statements' one-call SQLite processor for UTC timestamps writes what
SQLAlchemy's two processors (the type's ``process_bind_param``, then SQLite's ``DATETIME``
storage format) write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite

from demiarch_flow.store.tables import UTCDateTime

CASES = [
    datetime(2026, 12, 3, 14, 6, 38, 123456, tzinfo=UTC),
    datetime(2026, 1, 1, tzinfo=UTC),  # no microseconds: still six digits
    datetime(2026, 3, 29, 1, 30, 0, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC),
    None,
]


@pytest.mark.parametrize("value", CASES)
def test_fast_processor_writes_what_sqlalchemy_writes(value: datetime | None) -> None:
    dialect = sqlite.dialect()
    kind = UTCDateTime()
    fast = kind.fast_bind_processor(dialect)
    assert fast is not None
    slow = kind.dialect_impl(dialect).bind_processor(dialect)
    assert slow is not None
    assert fast(value) == slow(value)


def test_fast_processor_refuses_naive_times_and_other_dialects() -> None:
    from sqlalchemy.dialects import postgresql

    fast = UTCDateTime.fast_bind_processor(sqlite.dialect())
    assert fast is not None
    with pytest.raises(ValueError, match="naive"):
        fast(datetime(2026, 1, 1))
    assert UTCDateTime.fast_bind_processor(postgresql.dialect()) is None
