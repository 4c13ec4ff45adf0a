"""``recover``: import the replies of the recovery file into the database, idempotently.

When Persist cannot store a paid-for reply it appends it to ``recovery.jsonl`` (beside a SQLite
database file, else in the data folder). ``recover`` stores each entry whose run has no reply
yet, with its usage row, and marks the run succeeded; running it again creates nothing twice.
The file is left in place: it stays the record of what was recovered, and ``usage`` and
``history`` only warn about entries that are still missing from the database.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path

from ..errors import PersistenceError, UsageError
from ..paths import database_url
from ..runner.recovery import RecoveredReply, read_recovery, recovery_file_for
from ..store.sql import SqlStore
from ._common import run_trio


def cmd_recover(args: argparse.Namespace) -> int:
    """Import every entry that is not in the database yet; exit 1 if any line was bad."""
    url = database_url(args.db)
    store = SqlStore.open_sync(url)
    try:
        path = Path(args.file) if args.file else recovery_file_for(url)
        if not path.is_file():
            if args.file:
                raise UsageError(f"{args.file}: no such recovery file")
            if args.json:
                print(json.dumps(_summary(path, found=False)))
            else:
                print(f"nothing to recover: {path} does not exist")
            return 0
        try:
            entries, bad = read_recovery(path)
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
        results = run_trio(lambda: _import_all(store, entries))
    finally:
        store.close()
    outcome: Counter[str] = Counter()
    imported_usd = Decimal(0)
    for entry, result in zip(entries, results, strict=True):
        kind = result if result in ("imported", "present", "no_conversation") else "failed"
        outcome[kind] += 1
        if kind == "imported":
            imported_usd += entry.reply.cost_usd
        elif kind == "no_conversation":
            print(
                f"demiarch-flow: {path}:{entry.line}: skipped: conversation"
                f" {entry.reply.conversation_id} (run {entry.reply.run_id}) no longer exists",
                file=sys.stderr,
            )
        elif kind == "failed":
            print(f"demiarch-flow: {path}:{entry.line}: not imported: {result}", file=sys.stderr)
    for line in bad:
        print(
            f"demiarch-flow: {path}:{line.line}: malformed, skipped: {line.problem}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(_summary(path, found=True, outcome=outcome, usd=imported_usd,
                                  malformed=len(bad))))  # fmt: skip
        return 1 if bad or outcome["failed"] else 0
    summary = (
        f"imported {outcome['imported']} replies (${imported_usd:.6f}),"
        f" skipped {outcome['present']} already in the database"
    )
    if outcome["no_conversation"]:
        summary += f", {outcome['no_conversation']} whose conversation no longer exists"
    if outcome["failed"]:
        summary += f", {outcome['failed']} that could not be written"
    if bad:
        summary += f"; {len(bad)} malformed line{'s' if len(bad) != 1 else ''}"
    print(summary)
    return 1 if bad or outcome["failed"] else 0


def _summary(
    path: Path,
    *,
    found: bool,
    outcome: Counter[str] | None = None,
    usd: Decimal = Decimal(0),
    malformed: int = 0,
) -> dict[str, object]:
    """``recover --json``: the file, and how many entries went which way (each problem is
    still named by line on stderr)."""
    counts = outcome or Counter()
    return {
        "file": str(path), "found": found, "imported": counts["imported"],
        "imported_usd": format(usd, "f"), "present": counts["present"],
        "no_conversation": counts["no_conversation"], "failed": counts["failed"],
        "malformed": malformed,
    }  # fmt: skip


async def _import_all(store: SqlStore, entries: list[RecoveredReply]) -> list[str]:
    """Each entry in its own transaction (one bad entry cannot block the others); the result
    of each: ``imported``, ``present``, ``no_conversation`` or the database error's text."""
    results: list[str] = []
    for entry in entries:
        try:
            results.append(await store.import_reply(entry.reply, entry.final_state))
        except PersistenceError as exc:
            results.append(str(exc))
    return results
