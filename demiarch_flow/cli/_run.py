"""``run`` (one chat turn) and ``chat`` (an interactive conversation).

The engine and the world of a run (trio, httpx, SQLAlchemy) are imported once the input, the
workflow and the key have been checked: a run that cannot start (no key, a bad option) says so
without paying for them."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import ErrorClass, RunFailed, UnknownConversation, UsageError
from ..keys import resolve_key
from ..runner.records import FlowRecord, Listener, WaitSource
from ._common import (
    check_conversation_option,
    check_message,
    check_model_option,
    decode_input,
    missing_sqlite_file,
    read_message,
    resolve_base_url,
    run_trio,
    setup_logging,
    style,
    workflow_from,
)
from ._json import json_line
from ._table import plain

if TYPE_CHECKING:
    from ..definition import Workflow
    from ..runner import RunOutcome
    from ..runtime import World

#: What to do next, by error class; ``{run_id}`` is the run's own id.
_HINTS = {
    "auth": "check the key: `demiarch-flow key status`, then `demiarch-flow key set`",
    "payment_required": "the account or key is out of credits: add credits on openrouter.ai",
    "unknown_conversation": "list conversations with `demiarch-flow history`",
    "all_models_failed": "see each attempt with `demiarch-flow runs show {run_id}`",
    "persistence": "the database could not be written; check --db / DEMIARCH_FLOW_DB",
}


_WHY = {
    WaitSource.BACKOFF: "backoff",
    WaitSource.RETRY_AFTER: "Retry-After from the server",
    WaitSource.COOLDOWN: "the model is cooling down",
    WaitSource.THROTTLE: "rate limit: waiting for a slot",
}


class Progress:
    """Live progress on stderr: each attempt, each wait with its reason, and the end."""

    def __init__(self, stream: TextIO | None = None, *, show_fallbacks: bool = False) -> None:
        self.stream = stream or sys.stderr  # the current one, not the one of import time
        self.show_fallbacks = show_fallbacks

    async def on_record(self, r: FlowRecord) -> None:
        line: str | None = None
        if r.kind == "attempt":
            if r.error_class:
                status = f"HTTP {r.status} " if r.status is not None else ""
                line = f"  {r.model} attempt {r.attempt}: {status}{r.error_class} — {r.message}"
            else:
                line = f"  {r.model} attempt {r.attempt}: ok in {r.latency_ms} ms"
        elif r.kind == "wait":
            why = _WHY[r.wait_source or WaitSource.BACKOFF]
            line = f"  waiting {r.wait_s:.1f} s before attempt {r.attempt} ({why})"
        elif r.kind == "cooldown":
            verb = "cools down for" if r.event == "started" else "skipped while cooling,"
            line = f"  {r.model} {verb} {r.wait_s:.1f} s" + (
                "" if r.event == "started" else " left"
            )
        elif r.kind == "fallback" and self.show_fallbacks:
            line = f"  {r.message}"
        elif r.kind == "finished" and r.run_status != "succeeded":
            line = f"  run {r.run_status} in state {r.to_state}"
            if r.run_status == "cancelled":
                line += f" — continue it with `demiarch-flow runs resume {r.run_id}`"
        if line:
            print(style(line, "2", self.stream), file=self.stream, flush=True)


_NEXT = {"retry": "retrying", "next_model": "falling back", "fatal": "giving up"}
"""What a broken stream's marker says, by the first transition that decides it (``retryable``
and ``model_failed`` decide nothing yet: Backoff or Fallback may still give up)."""


class StreamedText:
    """Writes a streamed reply to stdout as it arrives, chunk by chunk, flushed; when a stream
    breaks, a marker on stderr says so before the next attempt starts (the text shown so far
    is not the reply, and is not saved as one)."""

    def __init__(
        self, out: TextIO | None = None, err: TextIO | None = None, *, prefix: bool = False
    ) -> None:
        self.out = out or sys.stdout  # the current streams, not those of import time
        self.err = err or sys.stderr
        self.prefix = prefix
        """Start each attempt's text with ``MODEL> `` (``chat``)."""
        self.shown = False
        """The reply that succeeded was shown as it arrived."""
        self._written = 0
        self._broken: FlowRecord | None = None

    async def on_record(self, r: FlowRecord) -> None:
        if r.kind == "delta" and r.text:
            if self.prefix and not self._written:
                self.out.write(f"{r.model}> ")
            self.out.write(r.text)
            self.out.flush()
            self._written += len(r.text)
        elif r.kind == "attempt":
            if r.partial_chars is not None:
                self._broken = r
                self.out.write("\n")  # end the broken text's line before any progress line
                self.out.flush()
            elif r.error_class is None and self._written:
                self.shown = True
                self.out.write("\n")  # the reply is complete: end its line
                self.out.flush()
                self._written = 0
            if r.error_class is not None and not r.partial_chars and self._written:
                self._written = 0
        elif r.kind == "transition" and self._broken is not None and r.event in _NEXT:
            self._mark(_NEXT[r.event or ""])
        elif r.kind == "finished" and self._broken is not None:
            self._mark("giving up")

    def _mark(self, next_step: str) -> None:
        broken, self._broken = self._broken, None
        assert broken is not None
        self._written = 0
        line = (
            f"— interrupted after {broken.partial_chars} characters"
            f" ({broken.cause or broken.error_class}); {next_step}"
        )
        print(style(line, "2", self.err), file=self.err, flush=True)


class JsonLines:
    """``run --jsonl``: one JSON object per line as things happen, for an editor or a web UI."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout  # the current one, not the one of import time

    def emit(self, doc: dict[str, object]) -> None:
        self.out.write(json_line(doc) + "\n")
        self.out.flush()

    async def on_record(self, r: FlowRecord) -> None:
        if r.kind == "delta":
            self.emit({"type": "delta", "text": r.text})
        elif r.kind == "attempt":
            self.emit(
                {
                    "type": "attempt", "model": r.model, "attempt": r.attempt,
                    "outcome": "ok" if r.error_class is None else "error",
                    "error_class": r.error_class, "status": r.status,
                    "latency_ms": r.latency_ms, "partial_chars": r.partial_chars,
                    "first_token_ms": r.first_token_ms, "cause": r.cause,
                    "message": r.message,
                }
            )  # fmt: skip
        elif r.kind == "transition":
            self.emit(
                {
                    "type": "transition", "from": r.from_state, "event": r.event,
                    "to": r.to_state, "model": r.model, "attempt": r.attempt,
                    "error_class": r.error_class, "wait_s": r.wait_s, "at": r.wall.isoformat(),
                }
            )  # fmt: skip


class AttemptMessages:
    """Keeps each attempt's error message from the records, by run, so that the attempts of
    ``--json`` carry ``error_message`` as the ``--jsonl`` events do (the outcome's attempts
    keep the class and status only)."""

    def __init__(self) -> None:
        self._sent: dict[str, list[FlowRecord]] = {}
        self._skipped: dict[str, list[FlowRecord]] = {}

    async def on_record(self, r: FlowRecord) -> None:
        if r.kind == "attempt":
            self._sent.setdefault(r.run_id, []).append(r)
        elif r.kind == "cooldown" and r.event == "skipped":
            self._skipped.setdefault(r.run_id, []).append(r)

    def json_of(self, outcome: RunOutcome) -> dict[str, Any]:
        """``outcome.to_json()`` with ``error_message`` on each attempt (``None`` for one that
        succeeded, or that this process did not make: before a resume) and amounts written
        plainly; forgets the run's records."""
        return outcome_json(outcome, self.pop(outcome))

    def pop(self, outcome: RunOutcome) -> list[str | None]:
        """The message of each of ``outcome.attempts``, in order. The records are matched from
        the last attempt backwards, each kind with its own (sent attempts with ``attempt``
        records, cooling skips with ``cooldown`` ones), so attempts made before a resume,
        which this process never saw, are the ones left without."""
        sent = self._sent.pop(outcome.run_id, [])
        skipped = self._skipped.pop(outcome.run_id, [])
        messages: list[str | None] = []
        for attempt in reversed(outcome.attempts):
            records = (
                sent if attempt.outcome != "skipped"
                else skipped if attempt.error_class == ErrorClass.COOLING
                else []  # refused by a budget or a rate bucket: no record of its own
            )  # fmt: skip
            record = records.pop() if records and records[-1].model == attempt.model else None
            messages.append(record.message if record and attempt.outcome != "ok" else None)
        return messages[::-1]


def outcome_json(outcome: RunOutcome, messages: list[str | None] | None = None) -> dict[str, Any]:
    """A run's ``--json`` object: ``outcome.to_json()``, each attempt with its
    ``error_message`` (from ``messages``, else ``None``) and the cost written plainly."""
    doc = outcome.to_json()
    if outcome.cost_usd is not None:
        doc["cost_usd"] = plain(outcome.cost_usd)
    messages = messages or [None] * len(doc["attempts"])
    for attempt, message in zip(doc["attempts"], messages, strict=True):
        attempt["error_message"] = message
    return doc


def _announce_conversation(outcome: RunOutcome, asked: str | None) -> None:
    if outcome.conversation_id and not asked:
        print(
            f"conversation: {outcome.conversation_id}"
            f" (continue it with --conversation {outcome.conversation_id})",
            file=sys.stderr,
        )


_KEY_REFUSED = frozenset({401, 403})


def key_hint(outcome: RunOutcome) -> str | None:
    """The hint to check the key, when any attempt was refused with 401 or 403 (even if the run
    then failed for another reason, e.g. every model of the chain failing)."""
    if any(a.status in _KEY_REFUSED for a in outcome.attempts):
        return _HINTS["auth"]
    return None


def failed_exit_code(outcome: RunOutcome) -> int:
    """A failed run exits 1, except when it failed on an id the user gave (``--conversation``
    naming no conversation): that is an input error, exit 2, as an unknown id is everywhere."""
    return 2 if outcome.error_class == ErrorClass.UNKNOWN_CONVERSATION else 1


def _fail_message(outcome: RunOutcome) -> str:
    cls = outcome.error_class or "failed"
    hints = [h.format(run_id=outcome.run_id) for h in (_HINTS.get(cls), key_hint(outcome)) if h]
    # once the cause is dealt with (or the provider is back), the run goes on where it stopped
    hints.append(f"continue this run with `demiarch-flow runs resume {outcome.run_id}`")
    text = f"run {outcome.run_id} {outcome.status}: {str(outcome.error or 'no reply').rstrip('.')}"
    return f"{text}. Next: {'; '.join(dict.fromkeys(hints))}."


def check_conversation_before_opening(db: str | None, conversation: str | None) -> None:
    """``--conversation`` with a SQLite database that does not exist yet: no conversation can
    be in it, so say so before the database is created.

    Raises:
        UsageError: the database file does not exist (exit 2, as any unknown id).
    """
    from ..paths import database_url

    if conversation is not None and missing_sqlite_file(database_url(db)):
        raise UsageError(
            f"no conversation with id {conversation!r}: there is no database yet (leave out"
            " --conversation to start one)"
        )


async def check_conversation(world: World, conversation: str | None) -> None:
    """``--conversation`` names a conversation of the database: checked before the run
    starts, so an unknown id is an input error (exit 2) that records no run and sends nothing.

    Raises:
        UsageError: the database holds no conversation with that id.
    """
    from ..store.sql import SqlStore

    store = world.env.store
    if conversation is None or not isinstance(store, SqlStore):
        return
    try:
        await store.messages(conversation, 1)
    except UnknownConversation as exc:
        raise UsageError(str(exc)) from None


async def turn(
    world: World,
    wf: Workflow,
    message: str,
    conversation: str | None,
    model: str | None,
    stream: bool | None = None,
    run_id: str | None = None,
) -> RunOutcome:
    """One chat turn through the workflow (what ``run``, ``chat``, ``batch`` and ``demo``
    call)."""
    from ..runner import RunRequest, run_workflow

    return await run_workflow(
        wf,
        RunRequest(message, conversation_id=conversation, model=model, stream=stream),
        world.env,
        run_id=run_id,
    )


def cmd_run(args: argparse.Namespace) -> int:
    message = read_message(args.message)
    check_model_option(args.model)
    check_conversation_option(args.conversation)
    base_url = resolve_base_url(args.base_url)
    wf = workflow_from(args.workflow)
    key = resolve_key()
    setup_logging(quiet=args.quiet, debug=args.debug)
    check_conversation_before_opening(args.db, args.conversation)
    jsonl = JsonLines() if args.jsonl else None
    # Text as it arrives is for a person: piped (`run … > out.txt`), stdout gets exactly the
    # reply, never a broken attempt's text — unless --stream asks for it.
    shown = args.stream is True or (args.stream is None and sys.stdout.isatty())
    text = None if args.json or args.jsonl or not shown else StreamedText()
    messages = AttemptMessages() if args.json or args.jsonl else None
    listeners: tuple[Listener, ...] = tuple(x for x in (jsonl, text, messages) if x is not None)
    if not (args.quiet or args.json or args.jsonl):
        listeners += (Progress(),)  # after the text: a broken stream's line is ended first

    from ..runtime import open_world

    async def main() -> RunOutcome:
        async with open_world(
            db=args.db, base_url=base_url, key=key, listeners=listeners, trace=args.trace
        ) as world:
            await check_conversation(world, args.conversation)
            return await turn(world, wf, message, args.conversation, args.model, args.stream)

    return report_outcome(
        run_trio(main),
        json_out=args.json,
        quiet=args.quiet,
        asked=args.conversation,
        jsonl=jsonl,
        text=text,
        messages=messages,
    )


def report_outcome(
    outcome: RunOutcome,
    *,
    json_out: bool,
    quiet: bool,
    asked: str | None,
    jsonl: JsonLines | None = None,
    text: StreamedText | None = None,
    messages: AttemptMessages | None = None,
) -> int:
    """Print a run's outcome as ``run`` does (the reply unless it was streamed already,
    ``--json``, or ``--jsonl``'s last event) and give its exit code.

    ``messages``, when it listened to the run, gives each attempt of the JSON its message.

    Raises:
        RunFailed: the run failed (without ``--json``/``--jsonl``): one paragraph with what to
            do next.
    """
    doc = messages.json_of(outcome) if messages is not None else outcome_json(outcome)
    if json_out:
        print(json_line(doc))
    elif jsonl is not None:
        jsonl.emit({"type": "result", **doc})
    elif text is not None and text.shown:
        pass  # the reply is on stdout already
    elif outcome.succeeded and outcome.content is not None:
        print(outcome.content)
    if not quiet:
        _announce_conversation(outcome, asked)
    if not outcome.succeeded:
        if json_out or jsonl is not None:
            if hint := key_hint(outcome):
                note = f"run {outcome.run_id} {outcome.status}. Next: {hint}."
                print(f"demiarch-flow: {note}", file=sys.stderr)
            return failed_exit_code(outcome)
        failed = RunFailed(
            _fail_message(outcome), run_id=outcome.run_id, error_class=outcome.error_class
        )
        failed.exit_code = failed_exit_code(outcome)
        raise failed
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    check_model_option(args.model)
    check_conversation_option(args.conversation)
    base_url = resolve_base_url(args.base_url)
    wf = workflow_from(args.workflow)
    key = resolve_key()
    setup_logging(quiet=args.quiet, debug=args.debug)
    text = StreamedText(prefix=True)
    listeners: tuple[Listener, ...] = (text,) if args.quiet else (text, Progress())
    stream = True if args.stream is None else args.stream  # chat streams by default
    conversation: str | None = args.conversation
    check_conversation_before_opening(args.db, conversation)
    print(
        f"demiarch-flow chat — workflow {wf.name!r}, models {' → '.join(wf.models)}. Type /exit to leave.",
        file=sys.stderr,
    )

    from ..runtime import open_world

    async def main() -> int:
        nonlocal conversation
        async with open_world(
            db=args.db, base_url=base_url, key=key, listeners=listeners, trace=args.trace
        ) as world:
            await check_conversation(world, conversation)
            while True:
                try:
                    line = await _ask("you> ")
                    if line.strip() in ("/exit", "/quit"):
                        return 0
                    if not line.strip():
                        continue
                    check_message(line, "that line")
                except EOFError:
                    return 0
                except UsageError as exc:
                    print(f"demiarch-flow: {exc}; nothing was sent", file=sys.stderr)
                    continue
                text.shown = False
                outcome = await turn(world, wf, line, conversation, args.model, stream)
                if outcome.conversation_id and conversation is None:
                    conversation = outcome.conversation_id
                    print(f"(conversation {conversation})", file=sys.stderr)
                if outcome.succeeded and text.shown:
                    print(flush=True)
                elif outcome.succeeded:
                    print(f"{outcome.model}> {outcome.content}\n")
                else:
                    print(f"demiarch-flow: {_fail_message(outcome)}", file=sys.stderr)
                    if outcome.error_class == ErrorClass.UNKNOWN_CONVERSATION:
                        return failed_exit_code(outcome)

    return run_trio(main)


async def _ask(prompt: str) -> str:
    import trio

    def read() -> str:
        if _line_editing():
            return input(prompt)  # readline: line editing and history (EOFError at the end)
        print(prompt, end="", file=sys.stderr, flush=True)
        # Bytes, decoded line by line: a bad byte spoils its own line, not the session.
        raw = getattr(sys.stdin, "buffer", None)
        line = decode_input(raw.readline(), "that line") if raw else sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n").removesuffix("\r")

    return await trio.to_thread.run_sync(read, abandon_on_cancel=True)


def _line_editing() -> bool:
    """Whether ``input()`` gets line editing and history: an interactive terminal on a
    platform with the standard library's ``readline``."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    try:
        import readline  # noqa: F401 -- importing it is what turns line editing on
    except ImportError:
        return False
    return True
