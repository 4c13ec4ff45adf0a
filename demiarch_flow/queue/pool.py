"""The worker's connections to procrastinate: one round trip per query, not four.

procrastinate's own pool hands out connections outside autocommit and checks each one before
it is used, so each of its queries (a job's fetch, its finish) costs four round trips to
PostgreSQL: the check (an empty query), ``BEGIN``, the query, ``COMMIT``. Its queries are
single statements (calls of its own SQL functions), which PostgreSQL runs in one transaction
of their own under autocommit, so ``BEGIN``/``COMMIT`` add nothing but two round trips.

The check is kept where it earns its round trip: a connection idle in the pool has been sent
nothing by the server unless the server is saying goodbye (a restart, an administrator's
termination: an error message, then the end of the stream), so a connection with something
to read is checked the full way (and replaced if it fails), and one with nothing to read is
used at once. A connection cut without a word (a network split) fails its query instead, as it
could after the full check too; the worker gives that job's fetch or finish back to its
reconnect loop either way.
"""

from __future__ import annotations

import select
from typing import Any


def has_news(fileno: int) -> bool:
    """Whether the server sent anything to this (idle) connection: readable now."""
    poller = select.poll()
    poller.register(fileno, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


async def check_if_spoken_to(conn: Any) -> None:
    """The pool's check: the full one (an empty query) only for a connection the server has
    written to while it sat idle, or one already closed.

    Raises:
        psycopg.Error: the connection does not work (the pool replaces it).
    """
    from psycopg_pool import AsyncConnectionPool

    if conn.closed or has_news(conn.fileno()):
        await AsyncConnectionPool.check_connection(conn)


async def autocommit(conn: Any) -> None:
    """The pool's ``configure``: each new connection in autocommit (procrastinate's own
    ``LISTEN`` connection, which it opens in autocommit, passes through here too)."""
    await conn.set_autocommit(True)


def pool_factory(**args: Any) -> Any:
    """procrastinate's ``pool_factory``: its pool, its connections in autocommit, checked by
    :func:`check_if_spoken_to`."""
    from psycopg_pool import AsyncConnectionPool

    args["check"] = check_if_spoken_to
    return AsyncConnectionPool(**args)
