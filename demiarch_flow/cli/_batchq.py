"""``batch IN --queue``: submit the file to the workers, then wait and write OUT as ``batch``.

Nothing runs in this process: each line becomes a queued run (``submit --batch``: the same line
submitted again is the same run), and the command waits (:func:`._queue.wait_runs`) and writes
each result line as its run ends — the ``run --json`` object with ``id``, ``line`` and
``input_sha256``, as ``batch`` writes it. Ctrl-C stops the waiting only: the runs go on in the
workers, and the same command again collects them — the ids OUT already has a result for (that
asked the same) are not waited for, and at the end OUT holds one line per input id, in input
order (rewritten atomically).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

from ..errors import EnvironmentProblem, UsageError
from ..runner import RunOutcome
from ..store.base import Definition
from ._batch import read_results, replace_lines
from ._common import setup_logging, workflow_from
from ._json import json_line
from ._queue import (
    database_errors,
    open_queue,
    queue_ready,
    read_batch,
    submit_batch,
    traced,
    wait_runs,
)
from ._run import outcome_json

PROGRESS_S = 5.0


def cmd_batch_queue(args: argparse.Namespace) -> int:
    """Submit IN, wait for its runs, write OUT (see the module doc)."""
    if args.resume:
        raise UsageError("--queue picks up where OUT left off by itself: leave out --resume")
    url = queue_ready("batch --queue", args.db)
    wf = workflow_from(args.workflow)
    setup_logging(quiet=True, debug=args.debug)
    definition = Definition(wf.name, wf.sha256, wf.text)
    subs, bad = read_batch(args.input, wf.name, wf.sha256)
    earlier = read_results(args.out) if args.out else {}
    kept = {
        s.item_id: earlier[s.item_id]
        for s in subs
        if s.item_id in earlier and earlier[s.item_id].get("input_sha256") == s.input_sha256
    }
    with traced(args.trace, subs) as subs:  # each line's own submit span, as `submit --batch`
        statuses = submit_batch(url, definition, subs, args.queue)
    queued = statuses.count("queued")
    if not args.quiet:
        print(
            f"batch: {queued} submitted, {len(subs) - queued} submitted before,"
            f" {len(kept)} already in {args.out or 'OUT'}, {bad} bad lines",
            file=sys.stderr, flush=True,
        )  # fmt: skip
    by_run = {s.run_id: s for s in subs if s.item_id not in kept}
    results: dict[str, str] = {i: json_line(doc) for i, doc in kept.items()}
    try:
        out = open(args.out, "a", encoding="utf-8", buffering=1) if args.out else sys.stdout  # noqa: SIM115
    except OSError as exc:
        raise EnvironmentProblem(f"--out {args.out}: cannot be written ({exc})") from None
    failed = sum(1 for doc in kept.values() if doc.get("status") != "succeeded")
    last = time.monotonic()

    def ended(outcome: RunOutcome) -> None:
        nonlocal failed
        sub = by_run[outcome.run_id]
        doc = outcome_json(outcome)
        doc.update(id=sub.item_id, line=sub.line, input_sha256=sub.input_sha256)
        line = json_line(doc)
        results[sub.item_id or ""] = line
        out.write(line + "\n")
        failed += not outcome.succeeded

    def tick(pending: int) -> None:
        nonlocal last
        if not args.quiet and time.monotonic() - last >= PROGRESS_S:
            last = time.monotonic()
            print(f"batch: {len(results)} done ({failed} failed), {pending} waiting",
                  file=sys.stderr, flush=True)  # fmt: skip

    try:
        with open_queue(url) as store, database_errors(url):
            wait_runs(url, store, list(by_run), ended, tick=tick)
    except KeyboardInterrupt:
        print(
            "batch: stopped waiting; the runs go on in the workers — the same command again"
            " collects them",
            file=sys.stderr,
        )
        return 130
    finally:
        if out is not sys.stdout:
            out.close()
    if args.out:
        _rewrite(args.out, [results[s.item_id or ""] for s in subs])
    if not args.quiet:
        print(f"batch: {len(results)} done ({failed} failed), {bad} bad lines", file=sys.stderr)
    return 1 if failed or bad else 0


def _rewrite(name: str, lines: list[str]) -> None:
    """OUT becomes exactly one line per input id, in input order (written aside, renamed)."""
    replace_lines(name, lines)
    with contextlib.suppress(OSError):
        os.remove(f"{name}.runs")
