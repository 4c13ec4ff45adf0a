"""``batch``: many chat turns at once from a JSONL file.

All runs share one HTTP client (keep-alive pool), one store writer and one cooldown registry.
Two limits apply separately: ``--concurrency`` bounds the runs open at once, and the HTTP
requests in flight are capped by a trio limiter sized to the connection pool, because httpx's
pool gets slower per request as more wait on it and a cold burst turns into pool timeouts.
Ctrl-C once stops reading new lines and lets the runs in flight finish; twice cancels them
(each is recorded as cancelled). SIGTERM cancels them at once and exits 143. Either way the ids
that did not complete are reported.

Results go to ``--out`` line by line as runs end (flushed at once, so a killed batch keeps
them), and each run's id is noted in ``OUT.runs`` the moment it starts, before anything is
sent: a run cancelled or killed before its result line was written can still be found.
``OUT.runs`` is removed once every input line has its result.

``--resume`` picks a batch up where it stopped, from its ``--out`` file (and the
``OUT.partial`` and ``OUT.runs`` an interrupted batch left): an id that succeeded there is not
requested again, a failed, cancelled or stale one is resumed (same run id, see
:mod:`demiarch_flow.runner.resume`), one whose run never reached the database runs afresh, a
missing one runs. New results go to ``OUT.partial`` as they come; at the end OUT is rewritten
atomically with exactly one line per input id.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO, TextIO

import trio

from ..client import ApiKey
from ..definition import Workflow
from ..errors import EnvironmentProblem, Terminated, UsageError
from ..keys import resolve_key
from ..runner import FlowRecord, RunOutcome
from ..runner.context import new_id
from ..runner.resume import NotResumable, resume_run
from ..runtime import World, open_world
from ._common import (
    resolve_base_url,
    setup_logging,
    trio_run,
    workflow_from,
)
from ._json import json_line
from ._lines import BatchItem, read_item
from ._lines import SeenIds as _SeenIds
from ._lines import open_input as _open_input
from ._lines import parse_line as parse_line  # where `batch` users and tests find it
from ._run import AttemptMessages, turn
from ._signals import Signals


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


def _open_out(name: str | None, *, resume: bool = False) -> TextIO:
    """``--out`` (with ``--resume``: ``OUT.partial``, OUT itself is kept until the end), opened
    before any request so a bad path costs nothing.

    Raises:
        EnvironmentProblem: the file cannot be created or written.
    """
    if not name:
        return sys.stdout
    # Line-buffered: a result written is a result kept, whatever stops the batch afterwards.
    # With --resume, OUT.partial is appended to: it may hold an interrupted resume's results.
    target = f"{name}.partial" if resume else name
    try:
        return open(target, "a" if resume else "w", encoding="utf-8", buffering=1)
    except OSError as exc:
        raise EnvironmentProblem(
            f"--out {target}: cannot be written ({exc.strerror or exc}); nothing was sent"
        ) from None


def replace_lines(name: str, lines: list[str]) -> None:
    """File ``name`` becomes exactly ``lines``: written aside, flushed to disk, then renamed
    over it, so a crash leaves the old file or the new one, never half of either."""
    tmp = f"{name}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(line + "\n" for line in lines)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, name)


def read_results(name: str) -> dict[str, dict[str, object]]:
    """An earlier batch's ``--out`` lines by input id (the last line of an id wins); a missing
    file is an empty batch, an unreadable line is ignored (its id simply runs again).

    Raises:
        EnvironmentProblem: the file exists but cannot be read.
    """
    try:
        text = Path(name).read_text("utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise EnvironmentProblem(f"--out {name}: cannot be read ({exc.strerror or exc})") from None
    results: dict[str, dict[str, object]] = {}
    for line in text.splitlines():
        with contextlib.suppress(ValueError, RecursionError):
            doc = json.loads(line)
            if isinstance(doc, dict) and isinstance(doc.get("id"), str):
                results[doc["id"]] = doc
    return results


def _open_runs_log(name: str | None) -> TextIO | None:
    """``OUT.runs``: one ``{"id", "line", "run_id"}`` line per run, written as it starts.

    Raises:
        EnvironmentProblem: the file cannot be created or written.
    """
    if not name:
        return None
    try:
        return open(f"{name}.runs", "a", encoding="utf-8", buffering=1)
    except OSError as exc:
        raise EnvironmentProblem(
            f"--out {name}.runs: cannot be written ({exc.strerror or exc}); nothing was sent"
        ) from None


def earlier_results(
    name: str,
) -> tuple[dict[str, dict[str, object]], dict[str, dict[str, object]]]:
    """What earlier batches on ``--out`` left: the result lines by id (OUT, then the newer
    OUT.partial of an interrupted resume) and the ``OUT.runs`` line of each run they started.
    """
    return read_results(name) | read_results(f"{name}.partial"), read_results(f"{name}.runs")


def cmd_batch(args: argparse.Namespace) -> int:
    """Check the options and open the files, run every line, then report what happened
    (with ``--queue``: the workers run them, see :mod:`._batchq`)."""
    if args.queue:
        from ._batchq import cmd_batch_queue

        return cmd_batch_queue(args)
    batch = _Batch.open(args)
    try:
        trio_run(batch.main)
    finally:
        batch.close()
    return batch.summary()


def _check_options(args: argparse.Namespace) -> None:
    """Raises: UsageError: ``--concurrency`` or ``--max-in-flight`` is out of range, or
    ``--resume`` is given without ``--out``."""
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if args.resume and not args.out:
        raise UsageError("--resume needs --out FILE: the results of the earlier batch")
    if args.max_in_flight < 0:
        raise UsageError("--max-in-flight must be at least 1 (or 0 for the default)")


def _numbered_lines(fh: BinaryIO, tally: Tally) -> Iterator[tuple[int, bytes]]:
    """The input's non-blank lines with their numbers; ``tally.next_line`` says where reading
    stopped (0 once the whole input was read)."""
    for number, raw in enumerate(fh, 1):
        tally.next_line = number
        if raw.strip():
            yield number, raw
    tally.next_line = 0


@dataclass
class _Batch:
    """One ``batch`` command: its options, open files and counters, the runs, the summary."""

    args: argparse.Namespace
    wf: Workflow
    key: ApiKey
    base_url: str
    fh: BinaryIO
    out: TextIO
    tally: Tally = field(default_factory=Tally)
    messages: AttemptMessages = field(default_factory=AttemptMessages)
    """Each attempt's error message, for the result lines."""
    seen: _SeenIds = field(default_factory=_SeenIds)
    signals: Signals = field(default_factory=Signals)
    runs_log: TextIO | None = None
    """``OUT.runs``: the run id of each run, written as it starts."""
    earlier: dict[str, dict[str, object]] = field(default_factory=dict)
    """``--resume``: the earlier batch's result lines by id."""
    started: dict[str, dict[str, object]] = field(default_factory=dict)
    """``--resume``: the ``OUT.runs`` line (its run id) of each id earlier batches started."""
    results: dict[str, str] = field(default_factory=dict)
    """``--resume``: this batch's result line of each id (the earlier line when kept)."""
    order: list[str] = field(default_factory=list)
    """``--resume``: the input ids in input order."""

    @classmethod
    def open(cls, args: argparse.Namespace) -> _Batch:
        """Everything checked and opened before the first request (a bad option, workflow,
        key, input or ``--out`` costs nothing)."""
        _check_options(args)
        base_url = resolve_base_url(args.base_url)
        wf = workflow_from(args.workflow)
        key = resolve_key()
        earlier, started = earlier_results(args.out) if args.resume else ({}, {})
        fh = _open_input(args.input)
        out: TextIO | None = None
        try:
            out = _open_out(args.out, resume=args.resume)
            runs_log = _open_runs_log(args.out)
        except EnvironmentProblem:
            fh.close()
            if out is not None and out is not sys.stdout:
                out.close()
            raise
        setup_logging(quiet=True, debug=args.debug)
        return cls(
            args, wf, key, base_url, fh, out, runs_log=runs_log, earlier=earlier,
            started=started,
        )  # fmt: skip

    def close(self) -> None:
        self.fh.close()
        if self.out is not sys.stdout:
            self.out.close()
        else:
            self.out.flush()
        if self.runs_log is not None:
            self.runs_log.close()
        if self.args.resume:
            self.rewrite_out()
        complete = not (self.signals.interrupted or self.tally.next_line or self.tally.in_flight)
        if self.runs_log is not None and complete:  # every line has its result in OUT
            with contextlib.suppress(OSError):
                os.remove(f"{self.args.out}.runs")

    def rewrite_out(self) -> None:
        """OUT becomes exactly one line per input id, in input order: this batch's result, or
        the earlier one for ids that did not run again (written aside, then renamed over OUT)."""
        name = self.args.out
        ids = list(self.order)
        if self.tally.next_line:  # stopped before the end: keep what the rest had
            read = set(ids)
            ids += [i for i in self.earlier if i not in read]
        lines = [
            self.results[i] if i in self.results else json_line(self.earlier[i])
            for i in ids
            if i in self.results or i in self.earlier
        ]
        replace_lines(name, lines)
        with contextlib.suppress(OSError):
            os.remove(f"{name}.partial")

    # ------------------------------------------------------------------ running

    async def main(self) -> None:
        """Start a run per good line (``--concurrency`` at a time) until the input ends or a
        signal stops the reading; Ctrl-C twice or SIGTERM cancels the runs in flight."""
        args, tally = self.args, self.tally
        world_cm = open_world(
            db=args.db,
            base_url=self.base_url,
            key=self.key,
            listeners=(tally, self.messages),
            max_in_flight=args.max_in_flight or min(args.concurrency, 32),
            trace=args.trace,
        )
        async with world_cm as world, trio.open_nursery() as outer:
            runs_scope = trio.CancelScope()

            def on_signal(signum: int) -> bool:
                if signum == signal.SIGTERM:
                    tally.stop_reading = True
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
                return False

            outer.start_soon(self.signals.watch, on_signal)
            if not args.quiet:
                outer.start_soon(_progress, tally, sys.stderr)
            slots = trio.Semaphore(args.concurrency)
            with runs_scope:
                async with trio.open_nursery() as runs:
                    for number, raw in _numbered_lines(self.fh, tally):
                        await slots.acquire()
                        if tally.stop_reading:
                            slots.release()
                            break
                        try:
                            item = read_item(raw, number, self.seen)
                        except UsageError as exc:
                            slots.release()
                            self.bad_line(number, exc)
                            continue
                        self.order.append(item.id)
                        self.forget_if_edited(item)
                        if self.earlier.get(item.id, {}).get("status") == "succeeded":
                            slots.release()  # done in the earlier batch: nothing is sent
                            tally.done += 1
                            continue
                        runs.start_soon(self.run_one, world, item, slots)
            outer.cancel_scope.cancel()

    async def run_one(self, world: World, item: BatchItem, slots: trio.Semaphore) -> None:
        self.tally.in_flight[item.id] = item.line
        try:
            run_id = self.earlier.get(item.id, {}).get("run_id") or self.started.get(
                item.id, {}
            ).get("run_id")
            if isinstance(run_id, str) and await world.env.store.load_run(run_id) is not None:
                try:
                    outcome = (await resume_run(run_id, world.env)).outcome
                except NotResumable as exc:  # keep the earlier line; say why
                    self.bad_run(item, exc)
                    del self.tally.in_flight[item.id]
                    return
            else:
                # New — or started by a batch that stopped before the run reached the
                # database: nothing of it was stored or sent, so it runs afresh.
                run_id = new_id()
                self.note_started(item, run_id)
                outcome = await turn(
                    world, self.wf, item.message, item.conversation_id, item.model,
                    run_id=run_id,
                )  # fmt: skip
            self.write_result(item, outcome)
            del self.tally.in_flight[item.id]
        finally:
            slots.release()

    def forget_if_edited(self, item: BatchItem) -> None:
        """An earlier result or run of this id that asked something else (the line was edited,
        or OUT belongs to another input) is not this line's: the line runs afresh."""
        for known in (self.earlier.get(item.id), self.started.get(item.id)):
            asked = known.get("input_sha256") if known else None
            if isinstance(asked, str) and asked != item.fingerprint:
                self.earlier.pop(item.id, None)
                self.started.pop(item.id, None)

    def note_started(self, item: BatchItem, run_id: str) -> None:
        """Note the run's id in ``OUT.runs`` before the run begins."""
        if self.runs_log is not None:
            doc = {"id": item.id, "line": item.line, "run_id": run_id,
                   "input_sha256": item.fingerprint}  # fmt: skip
            self.runs_log.write(json_line(doc) + "\n")

    # ------------------------------------------------------------------ output

    def bad_line(self, number: int, exc: UsageError, what: str = "skipped") -> None:
        self.tally.bad_lines += 1
        print(
            f"\ndemiarch-flow: {self.args.input}:{number}: {what}: {exc}",
            file=sys.stderr,
            flush=True,
        )

    def bad_run(self, item: BatchItem, exc: UsageError) -> None:
        """An earlier run of this id that cannot be resumed (its line is kept as it was)."""
        self.bad_line(item.line, exc, f"id {item.id!r} not resumed")

    def write_result(self, item: BatchItem, outcome: RunOutcome) -> None:
        """The run's ``--json`` object with the input's ``id`` and ``line``, one per line."""
        doc = self.messages.json_of(outcome)
        doc["id"] = item.id
        doc["line"] = item.line
        doc["input_sha256"] = item.fingerprint
        line = json_line(doc)
        self.out.write(line + "\n")
        if self.args.resume:
            self.results[item.id] = line
        if outcome.succeeded:
            self.tally.done += 1
            self.tally.spend += outcome.cost_usd or 0
        else:
            self.tally.failed += 1

    def summary(self) -> int:
        """The final counts, the ids that did not complete and the lines not started; the exit
        code (143 by raising :class:`~demiarch_flow.errors.Terminated`)."""
        tally = self.tally
        if not self.args.quiet:
            print(f"\rbatch: {tally.line()}", file=sys.stderr)
        if tally.in_flight:
            ids = ", ".join(sorted(tally.in_flight, key=lambda i: tally.in_flight[i]))
            print(f"batch: did not complete (cancelled, recorded as such): {ids}", file=sys.stderr)
        if self.signals.interrupted:
            if tally.next_line:
                print(f"batch: lines from {tally.next_line} on were not started", file=sys.stderr)
            if self.signals.terminated:
                raise Terminated("batch terminated by SIGTERM (the runs in flight were cancelled)")
            return 130
        return 1 if tally.failed or tally.bad_lines else 0
