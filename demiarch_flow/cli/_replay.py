"""``simulate EDITED.yaml --replay``: the edited policy against what the provider really did.

Reads the database read-only (a file it cannot write is fine; nothing is ever written), replays
the runs picked in virtual time (:mod:`demiarch_flow.replay`) and prints the recorded and the
replayed figures side by side. Exit 0 when the replay ran, whatever it found (1 when a
``--fail-if`` gate is met), 2 for bad input, 3 for a database that cannot be read.
"""

from __future__ import annotations

import argparse
import json
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from ..errors import UsageError
from ..paths import database_url, prices_path
from ..pricing import PriceTable
from ..replay import Report, Selection, Summary, Unrecorded, read_record, replay
from ..runner.context import utc_now
from ..store.sql import SqlStore
from ._common import setup_logging, workflow_from
from ._table import table

DEFAULT_WINDOW = timedelta(days=7)
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
    "<": operator.lt, ">": operator.gt,
}  # fmt: skip
_GATE = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|==|!=|<|>)\s*([0-9.]+)\s*$")
_METRICS = ("success_rate", "succeeded", "failed", "requests", "fallbacks", "retries",
            "wait_seconds", "p50_seconds", "p95_seconds", "spend_usd", "changed")  # fmt: skip


@dataclass(frozen=True)
class Gate:
    """A ``--fail-if`` condition on the replayed figures."""

    text: str
    metric: str
    op: Callable[[Any, Any], bool]
    value: float

    @classmethod
    def parse(cls, text: str) -> Gate:
        m = _GATE.match(text)
        if not m or m[1] not in _METRICS:
            raise UsageError(
                f"--fail-if {text!r}: expected METRIC OP NUMBER, e.g. 'success_rate < 0.99';"
                f" METRIC is one of {', '.join(_METRICS)}"
            )
        try:
            value = float(m[3])
        except ValueError:
            raise UsageError(f"--fail-if {text!r}: {m[3]!r} is not a number") from None
        return cls(text.strip(), m[1], _OPS[m[2]], value)

    def met(self, report: Report) -> bool:
        figures = report.replayed.to_json()
        figures["failed"] = sum(report.replayed.failed.values())
        figures["changed"] = len(report.changed)
        value = figures[self.metric]
        return value is not None and bool(self.op(float(value), self.value))


def _when(flag: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{flag} {text!r} is not a date or time (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def cmd_replay(args: argparse.Namespace) -> int:
    for flag, given in (("--faults", args.faults), ("--batch", args.batch is not None),
                        ("-m/--message", args.message is not None),
                        ("--model", args.model is not None)):  # fmt: skip
        if given:
            raise UsageError(
                f"{flag} cannot be used with --replay: the record says what each run asked"
            )
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    gates = [Gate.parse(g) for g in args.fail_if]
    wf = workflow_from(args.workflow)
    unrecorded = Unrecorded.parse(args.unrecorded)
    since, until = _when("--since", args.since), _when("--until", args.until)
    if since is None and not args.run:
        since = utc_now() - DEFAULT_WINDOW
    if since is not None and until is not None and since >= until:
        raise UsageError(f"--since {args.since!r} is not before --until {args.until!r}")
    sel = Selection(
        workflow=args.workflow_name or wf.name, since=since, until=until,
        run_ids=tuple(args.run or ()), limit=args.limit,
    )  # fmt: skip
    setup_logging(quiet=True)
    store = SqlStore.open_sync(database_url(args.db), read_only=True)
    try:
        record = read_record(store.engine, sel)
    finally:
        store.close()
    if args.run:
        found = {r.run_id for r in record.runs}
        unknown = [r for r in args.run if r not in found]
        if unknown:
            raise UsageError(
                f"no ended run of workflow {sel.workflow!r} with id {', '.join(unknown)}"
                " (`runs list` shows them; --workflow-name picks another workflow)"
            )
    report = replay(wf, record, unrecorded=unrecorded, prices=PriceTable.load(prices_path()),
                    seed=args.seed)  # fmt: skip
    tripped = [g.text for g in gates if g.met(report)]
    if args.json:
        doc = report.to_json()
        doc["workflow"] = sel.workflow
        doc["fail_if"] = tripped
        print(json.dumps(doc))
    else:
        print("\n".join(lines(report, wf.source, sel)))
        for g in tripped:
            print(f"--fail-if met: {g}")
    return 1 if tripped else 0


def _usd(amount: Decimal) -> str:
    return format(amount, "f")


def _secs(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def lines(report: Report, source: str, sel: Selection) -> list[str]:
    """The text report: totals side by side, per model, changed runs, assumptions."""
    rec, rep = report.recorded, report.replayed
    if not rec.runs:
        return [f"no ended runs of workflow {sel.workflow!r} to replay" + _window(sel)]
    out = [
        f"replay of {source} on {rec.runs} recorded run{'s' if rec.runs != 1 else ''} of"
        f" {sel.workflow!r}{_window(sel)} — virtual time, nothing sent or written",
        "",
    ]
    rows: list[tuple[str, object, object]] = [
        ("runs", rec.runs, rep.runs),
        ("succeeded", rec.succeeded, rep.succeeded),
    ]
    for cls in sorted(set(rec.failed) | set(rep.failed)):
        rows.append((f"failed ({cls})", rec.failed.get(cls, 0), rep.failed.get(cls, 0)))
    rows += [
        ("requests", rec.requests, rep.requests),
        ("retries", rec.retries, rep.retries),
        ("fallbacks", rec.fallbacks, rep.fallbacks),
        ("waits (s)", f"{rec.wait_s:.3f}", f"{rep.wait_s:.3f}"),
        ("p50 time to answer (s)", _secs(rec.p50_s), _secs(rep.p50_s)),
        ("p95 time to answer (s)", _secs(rec.p95_s), _secs(rep.p95_s)),
        ("spend (USD)", _usd(rec.spend_usd), _usd(rep.spend_usd)),
    ]
    out.append(table(["", "recorded", "replayed"], rows, numeric=[1, 2]))
    out += ["", _models(rec, rep)]
    out.append("")
    if report.changed:
        n = len(report.changed)
        out.append(f"changed: {n} run{'s' if n != 1 else ''}")
        for c in report.changed:
            mark = "  [rests on an assumption]" if c.assumed else ""
            out.append(f"  {c.run_id}  {c.recorded} → {c.replayed}{mark}")
    else:
        out.append("changed: no run's outcome")
    for a in report.assumptions:
        out.append(
            f"assumption: {a.model} was never asked in the record: it {a.how}"
            f" ({a.runs} run{'s' if a.runs != 1 else ''} asked it)"
        )
    for m in report.missing:
        out.append(f"missing from the record: {m}")
    return out


def _models(rec: Summary, rep: Summary) -> str:
    rows = []
    for m in sorted(set(rec.models) | set(rep.models)):
        a, b = rec.models.get(m), rep.models.get(m)
        rows.append((
            m,
            f"{a.requests if a else 0} → {b.requests if b else 0}",
            f"{a.answers if a else 0} → {b.answers if b else 0}",
            f"{_usd(a.spend_usd) if a else '0'} → {_usd(b.spend_usd) if b else '0'}",
        ))  # fmt: skip
    return table(["model", "requests", "answers", "spend (USD)"], rows)


def _window(sel: Selection) -> str:
    if sel.run_ids:
        return ""
    since = f" since {sel.since:%Y-%m-%d %H:%M}" if sel.since else ""
    until = f" until {sel.until:%Y-%m-%d %H:%M}" if sel.until else ""
    return since + until
