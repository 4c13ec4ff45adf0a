"""What the commands share: output styling, logging to stderr, opening the world of a run,
and turning Ctrl-C (or SIGTERM) into a clean cancellation that is recorded before the process
exits 130 (or 143).

trio, the workflow definition (YAML, JSON Schema, python-statemachine) and the price table are
imported inside the functions that use them: every command imports this module, and a command
that reads the database or the key must not pay for what only a run needs."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

from ..client._endpoint import DEFAULT_BASE_URL, base_url_problem
from ..errors import EnvironmentProblem, ErrorClass, ProviderError, UsageError, redact

if TYPE_CHECKING:
    from ..definition import Workflow

T = TypeVar("T")


def use_color(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set."""
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def style(text: str, code: str, stream: TextIO | None = None) -> str:
    """``text`` in colour ``code`` when ``stream`` (default: the current stderr) wants it."""
    return f"\x1b[{code}m{text}\x1b[0m" if use_color(stream or sys.stderr) else text


class _StderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno == logging.WARNING else record.levelname.lower()
        text = f"demiarch-flow: {level}: {redact(record.getMessage())}"
        # stderr may have been closed (a host program, or a test, replaced it).
        with contextlib.suppress(ValueError):
            print(style(text, "33") if record.levelno >= logging.WARNING else text, file=sys.stderr)


def setup_logging(*, quiet: bool = False, debug: bool = False) -> None:
    """Warnings (fallbacks, unknown costs) go to stderr; ``--quiet`` keeps errors only."""
    log = logging.getLogger("demiarch_flow")
    log.handlers[:] = [_StderrHandler()]
    log.propagate = False
    log.setLevel(logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING)


def resolve_base_url(flag: str | None) -> str:
    """The API base from ``--base-url``, ``$OPENROUTER_BASE_URL`` or the default.

    Raises:
        UsageError: it is not an http(s) URL with a host (checked before anything is opened).
    """
    env = os.environ.get("OPENROUTER_BASE_URL")
    url = flag or env or DEFAULT_BASE_URL
    if problem := base_url_problem(url):
        source = "--base-url" if flag else "OPENROUTER_BASE_URL" if env else "the base URL"
        raise UsageError(
            f"{source} {redact(url)!r} cannot be used: {problem}"
            " (expected e.g. https://openrouter.ai/api/v1)"
        )
    return url


@contextmanager
def network_needed(base_url: str, what: str) -> Iterator[None]:
    """Around a command's one request (``models sync``, ``budget --key``): no network is an
    environment problem (exit 3, as no key or no database), not a failed run (exit 1).

    Raises:
        EnvironmentProblem: the request met a network error (name resolution, connection
            refused, TLS); the message names the host, never the rest of the URL.
    """
    try:
        yield
    except ProviderError as exc:
        if exc.error_class != ErrorClass.NETWORK_ERROR:
            raise
        from urllib.parse import urlsplit

        host = urlsplit(base_url).hostname or "the API"
        raise EnvironmentProblem(
            f"{what}: cannot reach {host} ({exc.detail}) — are you offline? Check the network,"
            " or --base-url / OPENROUTER_BASE_URL"
        ) from None


def missing_sqlite_file(url: str) -> bool:
    """Whether ``url`` names a SQLite file (not memory, not a ``file:`` URI) that does not exist."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return False  # open_engine says what is wrong with it
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return False
    return not database.startswith("file:") and not Path(database).expanduser().exists()


def workflow_from(arg: str | None, *, check_prices: bool = True) -> Workflow:
    """The named workflow file, or the bundled default, through the user's cache of checked
    workflows (a text checked before costs no YAML, schema or graph imports; a new or changed
    one is checked in full); its budget checked against the price table unless ``check_prices``
    is false (``budget`` reports the books and enforces nothing: see
    :func:`check_budget_prices`)."""
    from .._resources import default_workflow_path
    from ..definition import load_workflow
    from ..paths import cache_dir

    try:
        cache: Path | None = cache_dir()
    except RuntimeError:  # no home folder to be found: no cache, the workflow is checked
        cache = None
    wf = load_workflow(arg if arg else default_workflow_path(), cache=cache)
    if check_prices:
        check_budget_prices(wf)
    return wf


def check_budget_prices(wf: Workflow) -> None:
    """A budget needs a price for each model it applies to: it never guesses zero.

    Raises:
        UsageError: a model of the chain has no price, or no known largest completion while
            ``request.max_tokens`` is unset (exit 2, before anything is sent).
    """
    if wf.limits is None or not wf.limits.budget.any:
        return
    from ..paths import prices_path
    from ..pricing import PriceTable
    from ..runner.budget import price_problems

    problems = price_problems(wf, PriceTable.load(prices_path()))
    if problems:
        raise UsageError(f"{wf.source}: limits.budget cannot be enforced: " + "; ".join(problems))


def model_problem(name: str) -> str | None:
    """Why ``name`` cannot be a model name (also not valid UTF-8), or ``None``."""
    from ..definition import check_model_name

    return text_problem(name) or check_model_name(name)


def check_model_option(name: str | None, option: str = "--model") -> str | None:
    """``--model``, checked before any request: a paid call must not fail at Persist.

    Raises:
        UsageError: the name breaks the model-name rule.
    """
    if name is not None and (problem := model_problem(name)):
        raise UsageError(f"{option} {name[:60]!r}{'…' if len(name) > 60 else ''}: {problem}")
    return name


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be sent and stored, or ``None``: lone surrogates (invalid UTF-8 that
    Python let through from argv or JSON escapes) cannot be encoded, and PostgreSQL cannot store
    a NUL character (SQLite can, so both backends refuse it here, before the run begins)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    if "\x00" in text:
        return "it contains a NUL character (\\0), which cannot be stored"
    return None


def check_conversation_option(conversation: str | None) -> str | None:
    """``--conversation``, checked before the database is asked about it.

    Raises:
        UsageError: the id is empty, not valid UTF-8 or holds a NUL character.
    """
    if conversation is None:
        return None
    if problem := text_problem(conversation):
        raise UsageError(f"--conversation: {problem}")
    if not conversation.strip():
        raise UsageError("--conversation is empty: give an id, or leave it out to start one")
    return conversation


def decode_input(data: bytes, what: str) -> str:
    """``data`` as UTF-8 text.

    Raises:
        UsageError: it is not valid UTF-8 (the message names ``what`` and the byte offset).
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{what} is not valid UTF-8 (byte {exc.start}: {data[exc.start : exc.end]!r})"
        ) from None


def check_message(text: str, what: str = "the message") -> str:
    """A user message that can be sent and stored: non-empty, valid UTF-8, no NUL.

    Raises:
        UsageError: it is empty, or :func:`text_problem` finds something.
    """
    if problem := text_problem(text):
        raise UsageError(f"{what} cannot be used: {problem}")
    if not text.strip():
        raise UsageError(f"{what} is empty: pass -m TEXT with some text")
    return text


def read_message(flag: str | None, stdin: TextIO | None = None) -> str:
    """The user message from ``-m`` or stdin (read as bytes and decoded as UTF-8, so a bad byte
    is an input error and not a crash).

    Raises:
        UsageError: no message, an empty one, invalid UTF-8 or a NUL character.
    """
    if flag is None:
        stdin = stdin or sys.stdin  # the current one, not the one of import time
        if stdin.isatty():
            raise UsageError("no message: pass -m TEXT or pipe the message on stdin")
        raw = getattr(stdin, "buffer", None)
        flag = decode_input(raw.read(), "the message on stdin") if raw else stdin.read()
    return check_message(flag)


def run_trio(fn: Callable[[], Awaitable[T]]) -> T:
    """``trio.run(fn)`` where SIGINT or SIGTERM cancels ``fn`` cleanly (shielded cleanup runs,
    so a run is recorded as cancelled) and then raises :class:`KeyboardInterrupt` (exit 130)
    or :class:`~demiarch_flow.errors.Terminated` (exit 143)."""

    import trio

    from ._signals import Signals

    async def main() -> T:
        signals = Signals()
        async with trio.open_nursery() as nursery:

            def stop(_signum: int) -> bool:
                nursery.cancel_scope.cancel()
                return True

            nursery.start_soon(signals.watch, stop)
            result = await fn()
            nursery.cancel_scope.cancel()
        signals.raise_if_stopped(
            "terminated by SIGTERM (work in progress was recorded as cancelled)"
        )
        return result

    return trio_run(main)


def trio_run(main: Callable[[], Awaitable[T]]) -> T:
    """``trio.run(main)`` with Ctrl-C delivered only at checkpoints (so cleanup is not torn
    mid-write) and a lone error unwrapped from trio's exception groups; ``main`` handles
    signals itself (see :mod:`demiarch_flow.cli._signals`)."""
    import trio

    with unwrapped_errors():
        return trio.run(main, restrict_keyboard_interrupt_to_checkpoints=True)
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def unwrapped_errors() -> Iterator[None]:
    """Re-raise a lone error out of trio's exception groups, so the CLI maps it to its exit
    code and message instead of reporting an ``ExceptionGroup``."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        raise leaf from None
