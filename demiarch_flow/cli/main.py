"""``demiarch-flow``: the command line.

Only argparse and this module are imported to parse arguments, so ``--help`` stays fast; each
command's module (and trio, httpx, SQLAlchemy behind it) is imported when that command runs.
Every :class:`~demiarch_flow.errors.FlowError` becomes one paragraph on stderr and its class's
exit code (0 ok, 1 the run failed or was cancelled, 2 invalid input, 3 environment, 130 Ctrl-C,
143 SIGTERM);
a traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .. import __version__

_P = TypeVar("_P", bound=argparse.ArgumentParser)

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_ENV, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_PIPE = 141
"""stdout was closed by its reader (128 + SIGPIPE, as a shell reports a pipe's writer)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but bad arguments exit with our input-error code (2, as argparse) and a hint."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_INPUT, f"demiarch-flow: error: {message}\n(see '{self.prog} --help')\n")


@dataclass(frozen=True, slots=True)
class Command:
    """A command's handler, named rather than imported so that ``--help`` loads nothing heavy:
    ``function`` in ``demiarch_flow.cli._<module>``, taking the parsed arguments and returning
    the exit code. A test loads every command the parser names."""

    module: str
    function: str

    def load(self) -> Callable[[argparse.Namespace], int]:
        """Import the command's module and return its handler."""
        handler: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(f"demiarch_flow.cli._{self.module}"), self.function
        )
        return handler


MAX_LIMIT = 1_000_000_000


def _limit(text: str) -> int:
    """``--limit``: an integer the database can take (the lower bound is the command's)."""
    value = int(text)
    if value > MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{text} is more than {MAX_LIMIT:,}")
    return value


def _utf8(text: str) -> str:
    """An id given on the command line: Python lets undecodable bytes through as lone
    surrogates, which no database driver can send."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("it is not valid UTF-8") from None
    return text


def _db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        metavar="URL",
        help="database URL (default: $DEMIARCH_FLOW_DB, else a SQLite file in your data folder)",
    )


def _base_url(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="OpenAI-compatible API base (default: $OPENROUTER_BASE_URL, else OpenRouter)",
    )


def _workflow(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "workflow", nargs="?", help="workflow YAML file (default: the bundled workflows/chat.yaml)"
    )


def _trace(p: argparse.ArgumentParser) -> None:
    """``--trace`` / ``--no-trace``: force OpenTelemetry on or off (default: the ``OTEL_*``
    variables decide)."""
    tracing = p.add_mutually_exclusive_group()
    tracing.add_argument(
        "--trace", dest="trace", action="store_true", default=None,
        help="export OpenTelemetry traces and metrics (needs the otel extra; default: on when"
        " OTEL_EXPORTER_OTLP_ENDPOINT or another OTEL_* exporter variable is set)",
    )  # fmt: skip
    tracing.add_argument(
        "--no-trace", dest="trace", action="store_false", help="export no traces or metrics"
    )


def _turn_options(p: argparse.ArgumentParser) -> None:
    """What ``run`` and ``chat`` share: workflow, conversation, model, output, database, API."""
    _workflow(p)
    p.add_argument("--conversation", metavar="ID", help="continue this conversation")
    p.add_argument("--model", metavar="M", help="replace the first model of the chain")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    streaming = p.add_mutually_exclusive_group()
    streaming.add_argument(
        "--stream", dest="stream", action="store_true", default=None,
        help="stream the reply as it arrives (overrides the workflow's request.stream)",
    )  # fmt: skip
    streaming.add_argument(
        "--no-stream", dest="stream", action="store_false", help="wait for the whole reply"
    )
    _trace(p)
    _db(p)
    _base_url(p)


def _command(
    group: argparse._SubParsersAction[_P],
    name: str,
    *,
    help: str,
    description: str | None = None,
) -> _P:
    """Add command ``name``: ``help`` is its line in the list of commands and, as a sentence,
    the description its own ``--help`` starts with (unless ``description`` says more)."""
    return group.add_parser(
        name, help=help, description=description or f"{help[:1].upper()}{help[1:]}."
    )


def _json(
    p: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup,
    what: str = "print one JSON object on stdout",
) -> None:
    p.add_argument("--json", action="store_true", help=what)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; each subcommand names its handler as a :class:`Command`."""
    parser = _Parser(
        prog="demiarch-flow",
        description="Dependable, auditable LLM calls through OpenRouter, driven by a workflow file.",
    )
    parser.add_argument("--version", action="version", version=f"demiarch-flow {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser,
        help="what to do (each command has its own --help)",
    )  # fmt: skip

    p = _command(sub, "run", help="one chat turn through the workflow")
    _turn_options(p)
    p.add_argument("-m", "--message", help="the user message (default: read from stdin)")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    output.add_argument(
        "--jsonl", action="store_true",
        help="print one JSON event per line as things happen (delta, attempt, transition, result)",
    )  # fmt: skip
    p.set_defaults(handler=Command("run", "cmd_run"))

    p = _command(sub, "chat", help="an interactive conversation (each turn is a run)")
    _turn_options(p)
    p.set_defaults(handler=Command("run", "cmd_chat"))

    p = _command(sub, "batch", help="many chat turns at once from a JSONL file")
    p.add_argument(
        "input",
        metavar="INPUT.jsonl",
        help='one {"message": ..., "id"?, "conversation_id"?, "model"?} per line',
    )
    _workflow(p)
    p.add_argument("--concurrency", type=int, default=8, help="runs open at once (default 8)")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=0,
        metavar="N",
        help="HTTP requests in flight (default: min(concurrency, 32))",
    )
    p.add_argument("--out", metavar="FILE", help="write result lines here instead of stdout")
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --out: skip ids that succeeded there, resume failed or cancelled ones, run"
        " the missing ones; OUT then holds one line per input id (rewritten atomically)",
    )
    p.add_argument(
        "--queue", nargs="?", const="runs", default=None, metavar="NAME",
        help="submit the lines to the workers' queue (PostgreSQL; default queue: runs), then"
        " wait and write the results as they end",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _trace(p)
    _db(p)
    _base_url(p)
    p.set_defaults(handler=Command("batch", "cmd_batch"))

    p = _command(
        sub, "submit", help="queue runs for the workers (PostgreSQL): one, or one per batch line"
    )
    _workflow(p)
    p.add_argument("-m", "--message", help="the user message (default: read from stdin)")
    p.add_argument("--batch", metavar="IN", help="one run per line of a batch file (as `batch`)")
    p.add_argument("--conversation", metavar="ID", help="continue this conversation")
    p.add_argument("--model", metavar="M", help="replace the first model of the chain")
    p.add_argument("--queue", default="runs", metavar="NAME", help="the queue (default: runs)")
    _json(p, 'print {"run_id", "status"} (with --batch: {"id", "run_id", "status"} per line)')
    _trace(p)
    _db(p)
    p.set_defaults(handler=Command("queue", "cmd_submit"))

    p = _command(sub, "worker", help="run submitted runs until stopped (PostgreSQL)")
    p.add_argument(
        "--concurrency", type=int, default=20, metavar="N", help="runs at once (default 20)"
    )
    p.add_argument("--queue", default="runs", metavar="NAME", help="the queue (default: runs)")
    p.add_argument(
        "--until-empty", action="store_true",
        help="exit 0 once no job is waiting or running (cron, CI)",
    )  # fmt: skip
    p.add_argument(
        "--stall-after", type=float, default=30.0, metavar="S",
        help="a worker silent this long is dead: its runs move to a live one (default 30)",
    )  # fmt: skip
    p.add_argument(
        "--grace", type=float, default=30.0, metavar="S",
        help="on SIGTERM/Ctrl-C, how long runs in flight may finish (default 30)",
    )  # fmt: skip
    _json(p, "print one JSON line per finished run")
    _trace(p)
    _db(p)
    _base_url(p)
    p.set_defaults(handler=Command("queue", "cmd_worker"))

    p = _command(sub, "validate", help="check workflow files without calling anything")
    p.add_argument("files", nargs="+", metavar="FILE", help="workflow YAML files to check")
    _json(
        p,
        'print one JSON object on stdout: {"ok", "files": [{"file", "ok", then "workflow",'
        ' "states", "models", "max_retries" if valid, else "error" and "problems": [{"line",'
        ' "column", "path", "message"}]}]}',
    )
    p.set_defaults(handler=Command("define", "cmd_validate"))

    p = _command(sub, "graph", help="draw a workflow (Mermaid or Graphviz dot)")
    p.add_argument("file", metavar="FILE", help="the workflow YAML file to draw")
    p.add_argument(
        "--format", choices=["mermaid", "dot"], default="mermaid",
        help="Mermaid (default) or Graphviz dot",
    )  # fmt: skip
    p.set_defaults(handler=Command("define", "cmd_graph"))

    p = _command(
        sub,
        "simulate",
        help="run a workflow against scripted faults (or, with --replay, recorded runs) in virtual"
        " time (no network)",
    )
    _workflow(p)
    p.add_argument(
        "--faults",
        default="",
        metavar="SCRIPT",
        help="per-model outcomes, e.g. 'anthropic/claude-sonnet-4=429,500;openai/gpt-4o=ok'",
    )
    p.add_argument(
        "-m", "--message",
        help="the user message (default: 'Hello from the simulator')",
    )  # fmt: skip
    p.add_argument("--model", metavar="M", help="replace the first model of the chain")
    p.add_argument("--seed", type=int, default=0, help="seed for jitter (default 0)")
    p.add_argument("--json", action="store_true", help="print the timeline as JSON")
    p.add_argument(
        "--db", metavar="URL",
        help="also write the run to this database (with --replay: the database to read, default"
        " $DEMIARCH_FLOW_DB, else the SQLite file in your data folder)",
    )  # fmt: skip
    p.add_argument(
        "--batch", type=int, metavar="N", help="a batch of N runs: time, throttle, spend"
    )
    p.add_argument("--concurrency", type=int, default=8, help="runs at once with --batch")
    r = p.add_argument_group(
        "replay", "what the edited file would have done on recorded runs (read-only, no request)"
    )
    r.add_argument(
        "--replay", action="store_true",
        help="replay recorded runs (default: the last 7 days of the file's workflow name)",
    )  # fmt: skip
    r.add_argument("--since", metavar="WHEN", help="runs started at or after (ISO date/time, UTC)")
    r.add_argument("--until", metavar="WHEN", help="runs started before (ISO date/time, UTC)")
    r.add_argument(
        "--workflow-name", metavar="NAME", help="runs of this workflow (default: the file's name)"
    )
    r.add_argument(
        "--run", metavar="RUN_ID", nargs="+", type=_utf8, help="these runs only (any date)"
    )
    r.add_argument("--limit", type=_limit, metavar="N", help="the latest N runs picked")
    r.add_argument(
        "--unrecorded", metavar="succeed|fail|MODEL",
        help="how a model the record never asked answers (default: like the recorded model"
        " with the closest price)",
    )  # fmt: skip
    r.add_argument(
        "--fail-if", metavar="COND", action="append", default=[],
        help="exit 1 when the replay meets COND, e.g. 'success_rate < 0.99' (repeatable)",
    )  # fmt: skip
    _trace(p)
    p.set_defaults(handler=Command("simulate", "cmd_simulate"))

    p = _command(
        sub, "demo", help="the whole thing against the bundled simulator (no key)",
        description="Chat turns through the bundled workflow against the bundled simulator on"
        " 127.0.0.1, with scripted faults (a rate limit, a server error, a fallback) and the"
        " progress of each attempt: no key, no network, no options.",
    )  # fmt: skip
    p.set_defaults(handler=Command("demo", "cmd_demo"))

    p = _command(
        sub, "simulator", help="serve the bundled OpenRouter-compatible simulator on 127.0.0.1"
    )
    p.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    p.add_argument("--faults", default="", metavar="SCRIPT", help="fault script, as for simulate")
    p.add_argument("--latency", type=float, default=0.0, metavar="S", help="delay every answer")
    p.add_argument("--rpm", type=int, default=None, help="answer 429 past N requests a minute")
    p.set_defaults(handler=Command("simserver", "cmd_simulator"))

    p = _command(sub, "history", help="messages of a conversation (or the latest ones)")
    p.add_argument(
        "--conversation", metavar="ID", type=_utf8,
        help="this conversation's messages, oldest first (default: the latest conversations)",
    )  # fmt: skip
    p.add_argument(
        "--limit", type=_limit, default=20, metavar="N",
        help="at most N conversations, or N messages (default 20)",
    )  # fmt: skip
    _json(p, "print a JSON array on stdout (one object per conversation or message)")
    _db(p)
    p.set_defaults(handler=Command("report", "cmd_history"))

    p = _command(sub, "runs", help="inspect runs")
    runs = p.add_subparsers(
        dest="runs_command", metavar="SUBCOMMAND", required=True, help="what to do with runs"
    )
    q = _command(runs, "show", help="the journal of one run")
    q.add_argument(
        "run_id", metavar="RUN_ID", type=_utf8, help="the run's id (`runs list` shows them)"
    )
    _json(q)
    _db(q)
    q.set_defaults(handler=Command("report", "cmd_runs_show"))
    q = _command(
        runs, "trace", help="the span tree of one run with timings, drawn from its journal"
    )
    q.add_argument(
        "run_id", metavar="RUN_ID", type=_utf8, help="the run's id (`runs list` shows them)"
    )
    _db(q)
    q.set_defaults(handler=Command("trace", "cmd_runs_trace"))
    q = _command(runs, "list", help="one row per run, newest first")
    q.add_argument(
        "--status", choices=["queued", "running", "stale", "failed", "cancelled", "succeeded"],
        help="only runs with this status (stale: running, but its process is gone; queued:"
        " submitted to the workers, not begun)",
    )  # fmt: skip
    q.add_argument("--since", metavar="DATE", help="only runs started on or after this date")
    q.add_argument(
        "--limit", type=_limit, default=20, metavar="N", help="at most N runs (default 20)"
    )
    _json(q, "print a JSON array on stdout (one object per run)")
    _db(q)
    q.set_defaults(handler=Command("runs", "cmd_runs_list"))
    q = _command(runs, "wait", help="wait until submitted runs have ended (PostgreSQL)")
    q.add_argument("run_ids", nargs="+", metavar="RUN_ID", type=_utf8, help="the runs' ids")
    q.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (exit 124)")
    _json(q, "print one `run --json` object per line")
    _db(q)
    q.set_defaults(handler=Command("queue", "cmd_runs_wait"))
    q = _command(
        runs, "resume", help="continue a failed, cancelled or stale run from its last checkpoint"
    )
    q.add_argument(
        "run_id", metavar="RUN_ID", type=_utf8, help="the run's id (`runs list` shows them)"
    )
    q.add_argument(
        "--workflow", metavar="FILE", help="resume under this definition instead of the stored one"
    )
    q.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    q.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _trace(q)
    _db(q)
    _base_url(q)
    q.set_defaults(handler=Command("runs", "cmd_runs_resume"))

    p = _command(sub, "usage", help="spend and tokens from llm_usage")
    p.add_argument("--since", metavar="DATE", help="only calls on or after this date (YYYY-MM-DD)")
    p.add_argument(
        "--by", choices=["model", "day", "conversation"], default="model",
        help="one row per model (default), day or conversation",
    )  # fmt: skip
    _json(p)
    _db(p)
    p.set_defaults(handler=Command("report", "cmd_usage"))

    p = _command(sub, "budget", help="budget windows: limit, spent, reserved, remaining")
    p.add_argument("--workflow", metavar="FILE", help="whose limits (default: the bundled one)")
    p.add_argument("--key", action="store_true", help="also ask OpenRouter (GET /key)")
    _json(p, "print a JSON array on stdout (one object per window)")
    _db(p)
    _base_url(p)
    p.set_defaults(handler=Command("budget", "cmd_budget"))

    p = _command(sub, "db", help="the database schema: its revision, upgrades")
    dbs = p.add_subparsers(
        dest="db_command", metavar="SUBCOMMAND", required=True, help="what to do with the schema"
    )
    q = _command(dbs, "upgrade", help="create or upgrade the schema to this release's revision")
    upgrade_output = q.add_mutually_exclusive_group()
    upgrade_output.add_argument(
        "--sql", action="store_true", help="print the SQL for a DBA instead of running it"
    )
    _json(
        upgrade_output,
        'print one JSON object on stdout: {"database", "backend", "action" (none, created or'
        ' upgraded), "from_revision", "revision"}',
    )
    _db(q)
    q.set_defaults(handler=Command("db", "cmd_db_upgrade"))
    q = _command(dbs, "current", help="the database's revision and whether it is current")
    _json(q)
    _db(q)
    q.set_defaults(handler=Command("db", "cmd_db_current"))

    p = _command(sub, "recover", help="import the replies of recovery.jsonl into the database")
    p.add_argument(
        "--file",
        metavar="PATH",
        help="the recovery file (default: recovery.jsonl beside a SQLite database, else in the"
        " data folder)",
    )
    _json(
        p,
        'print one JSON object on stdout: {"file", "found", "imported", "imported_usd",'
        ' "present", "no_conversation", "failed", "malformed"} (each problem stays on stderr)',
    )
    _db(p)
    p.set_defaults(handler=Command("recover", "cmd_recover"))

    p = _command(sub, "key", help="store, check or delete the OpenRouter API key")
    keys = p.add_subparsers(
        dest="key_command", metavar="SUBCOMMAND", required=True, help="what to do with the key"
    )
    q = _command(keys, "set", help="store the key in the OS keyring (hidden prompt or stdin)")
    q.set_defaults(handler=Command("keys", "cmd_key_set"))
    q = _command(keys, "status", help="say where the key comes from (never prints it)")
    _json(
        q,
        'print one JSON object on stdout: {"usable", "source" (environment, keyring or null),'
        ' "problem", "message"}',
    )
    q.set_defaults(handler=Command("keys", "cmd_key_status"))
    q = _command(keys, "delete", help="remove the key from the OS keyring")
    q.set_defaults(handler=Command("keys", "cmd_key_delete"))

    p = _command(sub, "models", help="model prices")
    models = p.add_subparsers(
        dest="models_command", metavar="SUBCOMMAND", required=True, help="what to do with prices"
    )
    q = _command(models, "sync", help="refresh the local price table from GET /models")
    _base_url(q)
    q.add_argument(
        "--force", action="store_true",
        help="replace the price table with the prices of a base URL that is not OpenRouter",
    )  # fmt: skip
    _json(q, 'print one JSON object on stdout: {"file", "written", "skipped", "source"}')
    q.set_defaults(handler=Command("keys", "cmd_models_sync"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``demiarch-flow`` script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command | None = getattr(args, "handler", None)
    if command is None:
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    try:
        return command.load()(args)
    except KeyboardInterrupt:
        print("demiarch-flow: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`runs list | head -1`): not an error of ours. Later writes
        # (the interpreter's own flush at exit) go nowhere; the exit code is a SIGPIPE's.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except Exception as exc:
        return _report(exc, debug=args.debug)


def _report(exc: Exception, *, debug: bool) -> int:
    from ..errors import FlowError, redact

    if debug:
        import traceback

        text = "".join(traceback.format_exception(exc))
        print(redact(text, os.environ.get("OPENROUTER_API_KEY")), file=sys.stderr, end="")
    if isinstance(exc, FlowError):
        print(f"demiarch-flow: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    print(
        f"demiarch-flow: internal error: {type(exc).__name__}: "
        f"{redact(str(exc), os.environ.get('OPENROUTER_API_KEY'))}"
        + ("" if debug else " (run with --debug for the traceback)"),
        file=sys.stderr,
    )
    return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
