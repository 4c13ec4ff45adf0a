"""Persistence: the store interface, an in-memory store and the SQLAlchemy store.

Public: :class:`Store` and its value types, :class:`MemoryStore`; the SQL store lives in
``demiarch_flow.store.sql`` and is imported only by the commands that open a database.
"""

from .base import BeganRun, JournalEntry, NewRun, Reply, RunEnd, Store, StoredMessage
from .memory import MemoryStore

__all__ = [
    "BeganRun",
    "JournalEntry",
    "MemoryStore",
    "NewRun",
    "Reply",
    "RunEnd",
    "Store",
    "StoredMessage",
]
