"""The hostile corpora run the real CLI and the SQL stores too: those fixtures, shared."""

from ..e2e.conftest import cli
from ..store.conftest import sql_store

__all__ = ["cli", "sql_store"]
