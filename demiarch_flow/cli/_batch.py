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
from typing import Any, TextIO

import trio

from ..errors import Terminated, UsageError
from ..keys import resolve_key
from ..runner import FlowRecord, RunOutcome
from ._common import (
    open_world,
    resolve_base_url,
    setup_logging,
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
        UsageError: the line is not a JSON object with a non-empty string ``message``.
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"not JSON ({exc.msg} at column {exc.colno})") from None
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
    return BatchItem(line, str(raw_id), message, doc.get("conversation_id"), doc.get("model"))


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


def cmd_batch(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    path = Path(args.input)
    if not path.is_file():
        raise UsageError(f"{args.input}: no such input file")
    wf = workflow_from(args.workflow)
    key = resolve_key()
    setup_logging(quiet=True, debug=args.debug)
    in_flight_cap = args.max_in_flight or min(args.concurrency, 32)
    tally = Tally()
    out: TextIO = sys.stdout if not args.out else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    interrupted = terminated = False

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
            base_url=resolve_base_url(args.base_url),
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
                    with path.open(encoding="utf-8") as fh:
                        for number, text in enumerate(fh, 1):
                            tally.next_line = number
                            if not text.strip():
                                continue
                            await slots.acquire()
                            if tally.stop_reading:
                                slots.release()
                                break
                            try:
                                item = parse_line(text, number)
                            except UsageError as exc:
                                slots.release()
                                tally.bad_lines += 1
                                print(
                                    f"\ndemiarch-flow: {args.input}:{number}: skipped: {exc}",
                                    file=sys.stderr,
                                    flush=True,
                                )
                                continue
                            runs.start_soon(run_one, world, item, slots)
                        else:
                            tally.next_line = 0
            outer.cancel_scope.cancel()

    try:
        with unwrapped_errors():
            trio.run(main, restrict_keyboard_interrupt_to_checkpoints=True)
    finally:
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
