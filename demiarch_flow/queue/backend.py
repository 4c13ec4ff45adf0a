"""What the queue needs before it starts: a PostgreSQL URL and procrastinate installed.

Both are checked before anything is opened, so the commands fail with one line and the right
exit code: SQLite is an input the queue cannot use (exit 2), a missing package is the
environment (exit 3, with the command that installs it).
"""

from __future__ import annotations

import importlib.util
import re

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..errors import EnvironmentProblem, UsageError
from ..store.sql import CONNECT_TIMEOUT_S

INSTALL = "pip install 'demiarch-flow[postgres]'"
"""The command that brings procrastinate (and psycopg) in."""


def require_postgres(url: str, command: str) -> None:
    """Raises: UsageError: ``url`` is not a PostgreSQL URL (SQLite has no queue)."""
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        backend = ""
    if backend != "postgresql":
        raise UsageError(
            f"{command} needs a PostgreSQL database: pass --db postgresql+psycopg://… (or set"
            " DEMIARCH_FLOW_DB); SQLite has no shared queue"
        )


def require_procrastinate(command: str) -> None:
    """Raises: EnvironmentProblem: procrastinate is not installed."""
    if importlib.util.find_spec("procrastinate") is None:
        raise EnvironmentProblem(
            f"{command} needs procrastinate, which is not installed: run {INSTALL}"
        )


def conninfo(url: str) -> str:
    """The libpq connection string of a SQLAlchemy PostgreSQL URL (for procrastinate's pool
    and ``LISTEN``), password included: it never leaves the process."""
    parsed = make_url(url)
    query = dict(parsed.query)
    query.setdefault("connect_timeout", str(CONNECT_TIMEOUT_S))
    return parsed.set(drivername="postgresql", query=query).render_as_string(hide_password=False)


_SECRETS = re.compile(r"(password\s*=\s*)\S+|(://[^:/@\s]*:)[^@\s]*@", re.IGNORECASE)


def describe(exc: BaseException) -> str:
    """What went wrong, in one line for a log: the error's class and the first line of its
    message. procrastinate wraps every driver error in ``ConnectorException("Database
    error.")``; the driver's own error (its ``__cause__``) is what says what happened. A
    password that found its way into a message (a DSN quoted back) is masked."""
    from procrastinate.exceptions import ConnectorException

    while isinstance(exc, ConnectorException) and exc.__cause__ is not None:
        exc = exc.__cause__
    lines = str(exc).strip().splitlines()
    message = _SECRETS.sub(
        lambda m: f"{m.group(1) or m.group(2)}***" + ("@" if m.group(2) else ""),
        lines[0] if lines else "",
    )
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
