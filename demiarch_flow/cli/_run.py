"""``run`` (one chat turn) and ``chat`` (an interactive conversation)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from ..definition import Workflow
from ..errors import RunFailed, UsageError
from ..keys import resolve_key
from ..runner import FlowRecord, RunOutcome, RunRequest, WaitSource, run_workflow
from ..runner.records import Listener
from ..runtime import World, open_world
from ._common import (
    check_conversation_option,
    check_message,
    check_model_option,
    decode_input,
    read_message,
    resolve_base_url,
    run_trio,
    setup_logging,
    style,
    workflow_from,
)

_HINTS = {
    "auth": "check the key: `demiarch-flow key status`, then `demiarch-flow key set`",
    "payment_required": "the account or key is out of credits: add credits on openrouter.ai",
    "unknown_conversation": "list conversations with `demiarch-flow history`",
    "all_models_failed": "see each attempt with `demiarch-flow runs show RUN_ID`",
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

    def __init__(self, stream: TextIO = sys.stderr, *, show_fallbacks: bool = False) -> None:
        self.stream = stream
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


_NEXT = {"retryable": "retrying", "model_failed": "falling back", "fatal": "giving up"}


class StreamedText:
    """Writes a streamed reply to stdout as it arrives, chunk by chunk, flushed; when a stream
    breaks, a marker on stderr says so before the next attempt starts (the text shown so far
    is not the reply, and is not saved as one)."""

    def __init__(
        self, out: TextIO = sys.stdout, err: TextIO = sys.stderr, *, prefix: bool = False
    ) -> None:
        self.out = out
        self.err = err
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
        elif r.kind == "transition" and self._broken is not None:
            broken, self._broken = self._broken, None
            self._written = 0
            next_step = _NEXT.get(r.event or "", r.event or "")
            line = (
                f"— interrupted after {broken.partial_chars} characters"
                f" ({broken.cause or broken.error_class}); {next_step}"
            )
            print(style(line, "2", self.err), file=self.err, flush=True)


class JsonLines:
    """``run --jsonl``: one JSON object per line as things happen, for an editor or a web UI."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out

    def emit(self, doc: dict[str, object]) -> None:
        self.out.write(json.dumps(doc, ensure_ascii=False) + "\n")
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


def _fail_message(outcome: RunOutcome) -> str:
    cls = outcome.error_class or "failed"
    hints = [h for h in (_HINTS.get(cls), key_hint(outcome)) if h]
    # once the cause is dealt with (or the provider is back), the run goes on where it stopped
    hints.append(f"continue this run with `demiarch-flow runs resume {outcome.run_id}`")
    text = f"run {outcome.run_id} {outcome.status}: {str(outcome.error or 'no reply').rstrip('.')}"
    return f"{text}. Next: {'; '.join(dict.fromkeys(hints))}."


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
    jsonl = JsonLines() if args.jsonl else None
    text = None if args.json or args.jsonl else StreamedText()
    listeners: tuple[Listener, ...] = tuple(x for x in (jsonl, text) if x is not None)
    if not (args.quiet or args.json or args.jsonl):
        listeners += (Progress(),)  # after the text: a broken stream's line is ended first

    async def main() -> RunOutcome:
        async with open_world(db=args.db, base_url=base_url, key=key, listeners=listeners) as world:
            return await turn(world, wf, message, args.conversation, args.model, args.stream)

    return report_outcome(
        run_trio(main),
        json_out=args.json,
        quiet=args.quiet,
        asked=args.conversation,
        jsonl=jsonl,
        text=text,
    )


def report_outcome(
    outcome: RunOutcome,
    *,
    json_out: bool,
    quiet: bool,
    asked: str | None,
    jsonl: JsonLines | None = None,
    text: StreamedText | None = None,
) -> int:
    """Print a run's outcome as ``run`` does (the reply unless it was streamed already,
    ``--json``, or ``--jsonl``'s last event) and give its exit code.

    Raises:
        RunFailed: the run failed (without ``--json``/``--jsonl``): one paragraph with what to
            do next.
    """
    if json_out:
        print(json.dumps(outcome.to_json(), ensure_ascii=False))
    elif jsonl is not None:
        jsonl.emit({"type": "result", **outcome.to_json()})
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
            return 1
        raise RunFailed(
            _fail_message(outcome), run_id=outcome.run_id, error_class=outcome.error_class
        )
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
    print(
        f"demiarch-flow chat — workflow {wf.name!r}, models {' → '.join(wf.models)}. Type /exit to leave.",
        file=sys.stderr,
    )

    async def main() -> int:
        nonlocal conversation
        async with open_world(db=args.db, base_url=base_url, key=key, listeners=listeners) as world:
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
                    if outcome.error_class == "unknown_conversation":
                        return 1

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
