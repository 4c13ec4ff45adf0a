"""The recovery file: replies that Persist could not store, one JSON object a line.

Persist appends a row when the database keeps failing (see
:func:`~demiarch_flow.runner.attempt.write_recovery`), so a paid-for answer is never lost;
``demiarch-flow recover`` reads the rows back and stores them. The writer and the reader of the
format live here together. A row carries everything needed to recreate the assistant message, its
``llm_usage`` row and the run's end exactly as Persist would have stored them::

    run_id, conversation_id, project_id, message_id, usage_id, content, model,
    requested_model, generation_id, prompt_tokens, completion_tokens, total_tokens,
    cached_tokens, cost_usd (a decimal string), cost_source, latency_ms, attempts,
    request_timestamp, created_at (ISO 8601), final_state, error

Rows written before this format (``at`` instead of ``created_at``, no ids, no total, cached,
latency or attempts) stay importable: a missing id is generated, ``total_tokens`` is the sum,
``cached_tokens`` and ``latency_ms`` are 0, ``attempts`` 1, ``request_timestamp`` the reply's
time, ``final_state`` unknown (the run keeps its current state). Only ``run_id``,
``conversation_id``, ``content``, ``model`` and a timestamp are required.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, get_args

from ..errors import redact
from ..pricing import CostSource
from ..store.base import Reply

RECOVERY_FILE = "recovery.jsonl"


def recovery_path(folder: str | None) -> Path:
    """The recovery file in ``folder`` (a SQLite database's folder), else in the data folder."""
    if folder:
        return Path(folder) / RECOVERY_FILE
    from ..paths import data_dir

    return data_dir() / RECOVERY_FILE


def recovery_dir_for(url: str) -> str | None:
    """The folder of a SQLite database file, whose recovery file goes beside it; ``None`` for
    any other database (its recovery file lives in the data folder)."""
    from ..store._lite import sqlite_path

    if (path := sqlite_path(url)) is not None:  # the common case, without SQLAlchemy's parser
        return str(path.resolve().parent)
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return str(Path(str(parsed.database)).expanduser().resolve().parent)
    return None


def recovery_file_for(url: str) -> Path:
    """Where the recovery file of the database at ``url`` is."""
    return recovery_path(recovery_dir_for(url))


def recovery_row(reply: Reply, final_state: str | None, error: Exception | None) -> dict[str, Any]:
    """``reply`` as a recovery row (JSON-ready)."""
    return {
        "run_id": reply.run_id,
        "conversation_id": reply.conversation_id,
        "project_id": reply.project_id,
        "message_id": reply.message_id,
        "usage_id": reply.usage_id,
        "model": reply.model,
        "requested_model": reply.requested_model,
        "generation_id": reply.generation_id,
        "content": reply.content,
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.total_tokens,
        "cached_tokens": reply.cached_tokens,
        "cost_usd": str(reply.cost_usd),
        "cost_source": reply.cost_source,
        "latency_ms": reply.latency_ms,
        "attempts": reply.attempts,
        "request_timestamp": reply.request_timestamp.isoformat(),
        "created_at": reply.created_at.isoformat(),
        "final_state": final_state,
        "error": redact(str(error)) if error else None,
    }


@dataclass(frozen=True, slots=True)
class RecoveredReply:
    """One good line of a recovery file."""

    line: int
    reply: Reply
    final_state: str | None
    """The state the run reached once the reply was saved; ``None`` for rows that predate it."""


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line of a recovery file that could not be read, and why."""

    line: int
    problem: str


def read_recovery(path: Path) -> tuple[list[RecoveredReply], list[BadLine]]:
    """Every row of the recovery file at ``path``, and the lines that are not rows.

    Raises:
        OSError: the file cannot be read.
    """
    good: list[RecoveredReply] = []
    bad: list[BadLine] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for number, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                good.append(parse_row(json.loads(text), number))
            except json.JSONDecodeError as exc:
                bad.append(BadLine(number, f"not JSON ({exc.msg} at column {exc.colno})"))
            except MalformedRow as exc:
                bad.append(BadLine(number, str(exc)))
    return good, bad


class MalformedRow(ValueError):
    """A recovery line that is JSON but not a usable row."""


def parse_row(doc: Any, line: int = 0) -> RecoveredReply:
    """A decoded recovery line → :class:`RecoveredReply`, with defaults for fields older rows
    lack.

    Raises:
        MalformedRow: not an object, a required field is missing or a field has the wrong type.
    """
    if not isinstance(doc, dict):
        raise MalformedRow("not a JSON object")
    run_id, conversation_id = _text(doc, "run_id"), _text(doc, "conversation_id")
    model = _text(doc, "model")
    old_style = doc.get("created_at") is None and doc.get("at") is not None
    created_at = _time(doc, "at" if old_style else "created_at")
    prompt, completion = _count(doc, "prompt_tokens"), _count(doc, "completion_tokens")
    try:
        cost = Decimal(str(doc.get("cost_usd", "0")))
    except InvalidOperation:
        raise MalformedRow(f"'cost_usd' is not a number: {doc.get('cost_usd')!r}") from None
    if not cost.is_finite():
        raise MalformedRow(f"'cost_usd' is not a number: {doc.get('cost_usd')!r}")
    reply = Reply(
        run_id=run_id,
        conversation_id=conversation_id,
        project_id=_optional(doc, "project_id"),
        message_id=_optional(doc, "message_id") or str(uuid.uuid4()),
        usage_id=_optional(doc, "usage_id") or str(uuid.uuid4()),
        content=_text(doc, "content", allow_empty=True),
        model=model,
        requested_model=_optional(doc, "requested_model") or model,
        generation_id=_optional(doc, "generation_id"),
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=_count(doc, "total_tokens")
        if doc.get("total_tokens") is not None or prompt is None or completion is None
        else prompt + completion,
        cached_tokens=_count(doc, "cached_tokens") or 0,
        cost_usd=cost,
        cost_source=_source(doc),
        latency_ms=_count(doc, "latency_ms") or 0,
        attempts=_count(doc, "attempts") or 1,
        request_timestamp=(
            _time(doc, "request_timestamp") if doc.get("request_timestamp") else created_at
        ),
        created_at=created_at,
    )
    return RecoveredReply(line, reply, _optional(doc, "final_state"))


def _text(doc: dict[str, Any], name: str, *, allow_empty: bool = False) -> str:
    """A required string field."""
    value = doc.get(name)
    if value is None:
        raise MalformedRow(f"{name!r} is missing")
    if not isinstance(value, str) or not (value or allow_empty):
        raise MalformedRow(f"{name!r} must be a non-empty string")
    return value


def _optional(doc: dict[str, Any], name: str) -> str | None:
    """An optional string field (missing, null and "" are all ``None``)."""
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise MalformedRow(f"{name!r} must be a string or null")
    return value or None


def _source(doc: dict[str, Any]) -> str:
    """How the cost is known; a value this release does not know (a newer writer's) is
    ``unknown`` rather than a row the database refuses."""
    value = _optional(doc, "cost_source")
    return value if value is not None and value in get_args(CostSource) else "unknown"


def _count(doc: dict[str, Any], name: str) -> int | None:
    """A token or other count; ``None`` when the row does not say (a NULL in the database)."""
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedRow(f"{name!r} must be a whole number ≥ 0, not {value!r}")
    return value


def _time(doc: dict[str, Any], name: str) -> datetime:
    value = doc.get(name)
    if not isinstance(value, str):
        raise MalformedRow(
            f"{name!r} is missing" if value is None else f"{name!r} must be a string"
        )
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise MalformedRow(f"{name!r} is not an ISO 8601 time: {value!r}") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)
