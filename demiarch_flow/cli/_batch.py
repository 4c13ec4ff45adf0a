"""``batch``: many chat turns at once from a JSONL file.

All runs share one HTTP client (keep-alive pool), one store writer and one cooldown registry.
Two limits apply separately: ``--concurrency`` bounds the runs open at once, and the HTTP
requests in flight are capped by a trio limiter sized to the connection pool, because httpx's
pool gets slower per request as more wait on it and a cold burst turns into pool timeouts.
Ctrl-C once stops reading new lines and lets the runs in flight finish; twice cancels them
(each is recorded as cancelled). SIGTERM cancels them at once and exits 143. Either way the ids
that did not complete are reported.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import trio

from ..errors import EnvironmentProblem, Terminated, UsageError
from ..keys import resolve_key
from ..runner import FlowRecord, RunOutcome
from ._common import (
    decode_input,
    model_problem,
    open_world,
    resolve_base_url,
    setup_logging,
    text_problem,
    unwrapped_errors,
    workflow_from,
)
from ._run import turn


@dataclass(frozen=True, slots=True)
class BatchItem:
    line: int
    id: str
    message: str
    conversation_id: str | None
    model: str | None


def parse_line(text: str, line: int) -> BatchItem:
    """One JSONL input line → :class:`BatchItem`.

    Raises:
        UsageError: the line is not a JSON object with a non-empty string ``message``, or one
            of its strings cannot be sent and stored (a lone surrogate, a NUL, a model name
            the database cannot hold).
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # a 5,000-digit number, nesting too deep
        raise UsageError(f"not JSON that can be read ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise UsageError("not a JSON object")
    message = doc.get("message")
    if not isinstance(message, str) or not message.strip():
        raise UsageError("'message' must be a non-empty string")
    for name in ("conversation_id", "model"):
        if doc.get(name) is not None and not isinstance(doc[name], str):
            raise UsageError(f"{name!r} must be a string")
    raw_id = doc.get("id", line)
    if not isinstance(raw_id, str | int) or isinstance(raw_id, bool):
        raise UsageError("'id' must be a string or a number")
    item = BatchItem(line, str(raw_id), message, doc.get("conversation_id"), doc.get("model"))
    for name, value in (
        ("message", message),
        ("id", item.id),
        ("conversation_id", item.conversation_id),
    ):
        if value is not None and (problem := text_problem(value)):
            raise UsageError(f"{name!r} cannot be used: {problem}")
    if item.model is not None and (problem := model_problem(item.model)):
        raise UsageError(f"'model' cannot be used: {problem}")
    return item


@dataclass
class Tally:
    """Counters shown by the progress display and the final summary."""

    done: int = 0
    failed: int = 0
    bad_lines: int = 0
    retries: int = 0
    spend: Decimal = Decimal(0)
    in_flight: dict[str, int] = field(default_factory=dict)
    """input id → line, for runs started and not finished."""
    stop_reading: bool = False
    next_line: int = 0

    async def on_record(self, record: FlowRecord) -> None:
        if record.kind == "wait":
            self.retries += 1

    def line(self) -> str:
        return (
            f"{self.done} done, {self.failed} failed, {self.bad_lines} bad lines,"
            f" {len(self.in_flight)} running, {self.retries} retries, spend ${self.spend:.6f}"
        )


async def _progress(tally: Tally, stream: TextIO) -> None:
    """A live line on a terminal, a plain line every 5 s otherwise."""
    live = stream.isatty()
    while True:
        if live:
            stream.write("\r\x1b[K" + tally.line())
            stream.flush()
            await trio.sleep(0.2)
        else:
            await trio.sleep(5)
            print(f"batch: {tally.line()}", file=stream, flush=True)


def _open_input(name: str) -> BinaryIO:
    """The input file, opened as bytes: each line is decoded alone, so one bad byte spoils one
    line and not the batch.

    Raises:
        UsageError: it is missing, a directory, or cannot be read.
    """
    path = Path(name)
    if path.is_dir():
        raise UsageError(f"{name}: is a folder, not an input file")
    if not path.exists():  # a pipe or /dev/stdin is fine
        raise UsageError(f"{name}: no such input file")
    try:
        return path.open("rb")
    except OSError as exc:
        raise UsageError(f"{name}: cannot be read ({exc.strerror or exc})") from None


def _open_out(name: str | None) -> TextIO:
    """``--out``, opened before any request so a bad path costs nothing.

    Raises:
        EnvironmentProblem: the file cannot be created or written.
    """
    if not name:
        return sys.stdout
    try:
        return open(name, "w", encoding="utf-8")
    except OSError as exc:
        raise EnvironmentProblem(
            f"--out {name}: cannot be written ({exc.strerror or exc}); nothing was sent"
        ) from None


class _SeenIds:
    """Input ids already given to a run, so a duplicate is a bad line instead of a lost reply."""

    def __init__(self) -> None:
        self._lines: dict[str, int] = {}

    def claim(self, item: BatchItem) -> None:
        """Raises: UsageError: another line already has this id (explicit or its line number)."""
        first = self._lines.setdefault(item.id, item.line)
        if first != item.line:
            raise UsageError(f"id {item.id!r} already used by line {first}")


def cmd_batch(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if args.max_in_flight < 0:
        raise UsageError("--max-in-flight must be at least 1 (or 0 for the default)")
    base_url = resolve_base_url(args.base_url)
    wf = workflow_from(args.workflow)
    key = resolve_key()
    fh = _open_input(args.input)
    try:
        out = _open_out(args.out)
    except EnvironmentProblem:
        fh.close()
        raise
    setup_logging(quiet=True, debug=args.debug)
    in_flight_cap = args.max_in_flight or min(args.concurrency, 32)
    tally = Tally()
    seen = _SeenIds()
    interrupted = terminated = False

    def bad_line(number: int, exc: UsageError) -> None:
        tally.bad_lines += 1
        print(
            f"\ndemiarch-flow: {args.input}:{number}: skipped: {exc}",
            file=sys.stderr,
            flush=True,
        )

    async def run_one(world: Any, item: BatchItem, slots: trio.Semaphore) -> None:
        tally.in_flight[item.id] = item.line
        try:
            outcome: RunOutcome = await turn(
                world, wf, item.message, item.conversation_id, item.model
            )
            doc = outcome.to_json()
            doc["id"] = item.id
            doc["line"] = item.line
            out.write(json.dumps(doc, ensure_ascii=False) + "\n")
            if outcome.succeeded:
                tally.done += 1
                tally.spend += outcome.cost_usd or 0
            else:
                tally.failed += 1
            del tally.in_flight[item.id]
        finally:
            slots.release()

    async def main() -> None:
        nonlocal interrupted, terminated
        world_cm = open_world(
            db=args.db,
            base_url=base_url,
            key=key,
            listeners=(tally,),
            max_in_flight=in_flight_cap,
        )
        async with world_cm as world, trio.open_nursery() as outer:
            runs_scope = trio.CancelScope()

            async def watch() -> None:
                nonlocal interrupted, terminated
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        interrupted = True
                        if signum == signal.SIGTERM:
                            terminated = tally.stop_reading = True
                            runs_scope.cancel()
                        elif not tally.stop_reading:
                            tally.stop_reading = True
                            print(
                                "\nbatch: stopping — no new lines; Ctrl-C again cancels the runs in flight",
                                file=sys.stderr,
                                flush=True,
                            )
                        else:
                            runs_scope.cancel()

            outer.start_soon(watch)
            if not args.quiet:
                outer.start_soon(_progress, tally, sys.stderr)
            slots = trio.Semaphore(args.concurrency)
            with runs_scope:
                async with trio.open_nursery() as runs:
                    for number, raw in enumerate(fh, 1):
                        tally.next_line = number
                        if not raw.strip():
                            continue
                        await slots.acquire()
                        if tally.stop_reading:
                            slots.release()
                            break
                        try:
                            item = parse_line(decode_input(raw, "the line"), number)
                            seen.claim(item)
                        except UsageError as exc:
                            slots.release()
                            bad_line(number, exc)
                            continue
                        runs.start_soon(run_one, world, item, slots)
                    else:
                        tally.next_line = 0
            outer.cancel_scope.cancel()

    try:
        with unwrapped_errors():
            trio.run(main, restrict_keyboard_interrupt_to_checkpoints=True)
    finally:
        fh.close()
        if out is not sys.stdout:
            out.close()
        else:
            out.flush()
    if not args.quiet:
        print(f"\rbatch: {tally.line()}", file=sys.stderr)
    if tally.in_flight:
        ids = ", ".join(sorted(tally.in_flight, key=lambda i: tally.in_flight[i]))
        print(f"batch: did not complete (cancelled, recorded as such): {ids}", file=sys.stderr)
    if interrupted:
        if tally.next_line:
            print(f"batch: lines from {tally.next_line} on were not started", file=sys.stderr)
        if terminated:
            raise Terminated("batch terminated by SIGTERM (the runs in flight were cancelled)")
        return 130
    return 1 if tally.failed or tally.bad_lines else 0
