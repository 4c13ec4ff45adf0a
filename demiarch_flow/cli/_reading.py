"""Reading the database for a report (``history``, ``usage``, ``runs list``): the quick path
first, the full store when the quick one does not apply.

The quick path (:class:`~demiarch_flow.store._lite.LiteReader`) reads a plain SQLite file at
this release's revision with the standard library's driver, so these commands start without
importing SQLAlchemy or trio. Whatever it does not take — another backend, an old or broken
schema, a missing file — is read, or refused with its exact message, by
:class:`~demiarch_flow.store.sql.SqlStore` opened read-only, as before. A report only reads and
returns data (it prints afterwards), so trying it twice is safe.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol, TypeVar

from ..paths import database_url
from ..store.base import ConversationSummary, RunStatus, StoredMessage, StoredRun, UsageRow

if TYPE_CHECKING:
    from ..store._lite import LiteReader
    from ..store.sql import SqlStore

T = TypeVar("T")


class Reports(Protocol):
    """What a report reads: the quick reader and the full store (blocking) alike."""

    url: str

    def conversations(self, limit: int) -> list[ConversationSummary]: ...

    def messages(self, conversation_id: str, limit: int) -> list[StoredMessage]: ...

    def usage(self, since: datetime | None, by: str) -> list[UsageRow]: ...

    def list_runs(
        self, *, status: RunStatus | None, since: datetime | None, limit: int
    ) -> list[StoredRun]: ...

    def missing_replies(self, runs: Sequence[tuple[str, str]]) -> set[str]: ...


class _FullStore:
    """:class:`SqlStore`'s report methods, blocking (each one a short trio run)."""

    def __init__(self, store: SqlStore) -> None:
        from ._common import run_trio

        self._store = store
        self._run = run_trio
        self.url = store.url

    def conversations(self, limit: int) -> list[ConversationSummary]:
        return self._run(lambda: self._store.conversations(limit))

    def messages(self, conversation_id: str, limit: int) -> list[StoredMessage]:
        return self._run(lambda: self._store.messages(conversation_id, limit))

    def usage(self, since: datetime | None, by: str) -> list[UsageRow]:
        return self._run(lambda: self._store.usage(since, by))

    def list_runs(
        self, *, status: RunStatus | None, since: datetime | None, limit: int
    ) -> list[StoredRun]:
        return self._run(lambda: self._store.list_runs(status=status, since=since, limit=limit))

    def missing_replies(self, runs: Sequence[tuple[str, str]]) -> set[str]:
        return self._run(lambda: self._store.missing_replies(runs))


def read_lite(url: str, read: Callable[[LiteReader], T]) -> T:
    """``read`` through the quick reader, closed afterwards.

    Raises:
        NotLite: the quick reader does not take the database (another backend, another
            revision, no file) or could not run a query of ``read``: the caller reads it the
            full way, which also says exactly what is wrong.
    """
    from ..store._lite import LiteReader

    reader = LiteReader.open(url)
    try:
        return read(reader)
    finally:
        reader.close()


def read_report(db: str | None, read: Callable[[Reports], T]) -> T:
    """``read`` against the database of ``--db`` (or the default), opened for reading only:
    the quick reader if it takes the database, else the full store.

    Raises:
        StoreUnavailable: the database does not exist, cannot be opened or its schema does not
            fit (the full store's messages).
    """
    from ..store._lite import NotLite

    url = database_url(db)
    try:
        return read_lite(url, read)
    except NotLite:
        pass  # the full store reads it, or says what is wrong
    from ..store.sql import SqlStore

    store = SqlStore.open_sync(url, read_only=True)  # it may be unwritable: never upgraded
    try:
        return read(_FullStore(store))
    finally:
        store.close()


def unimported_warning(reports: Reports) -> str | None:
    """The one line ``usage`` and ``history`` print on stderr when the recovery file beside the
    database holds replies that are not in it yet (``None``: no file, or nothing missing)."""
    from ..runner.recovery import read_recovery, recovery_file_for

    path = recovery_file_for(reports.url)
    if not path.is_file():
        return None
    try:
        entries, _ = read_recovery(path)
    except OSError:
        return None
    if not entries:
        return None
    missing = reports.missing_replies([(e.reply.run_id, e.reply.conversation_id) for e in entries])
    pending = {e.reply.run_id: e.reply.cost_usd for e in entries if e.reply.run_id in missing}
    if not pending:
        return None
    usd = sum(pending.values(), Decimal(0))
    return (
        f"demiarch-flow: warning: {len(pending)} replies (${usd:.6f}) in {path} are not in"
        " the database yet: run `demiarch-flow recover`"
    )


def warn(line: str | None) -> None:
    if line:
        print(line, file=sys.stderr)
