"""Reading a batch file's lines: what ``batch`` and ``submit --batch`` share.

Kept apart from :mod:`._batch` (which opens the runner: trio, httpx, the store) so that
``submit --batch``, which only queues the lines, does not import the runner to read them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import UsageError
from ._common import decode_input, model_problem, text_problem


@dataclass(frozen=True, slots=True)
class BatchItem:
    line: int
    id: str
    message: str
    conversation_id: str | None
    model: str | None

    @property
    def fingerprint(self) -> str:
        """What was asked (message, conversation, model), so that ``--resume`` can tell a
        result of this very line from one of a line since edited, or of another input."""
        asked = json.dumps([self.message, self.conversation_id, self.model], ensure_ascii=False)
        return hashlib.sha256(asked.encode("utf-8", "surrogatepass")).hexdigest()


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


def open_input(name: str) -> BinaryIO:
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


class SeenIds:
    """Input ids already given to a run, so a duplicate is a bad line instead of a lost reply."""

    def __init__(self) -> None:
        self._lines: dict[str, int] = {}

    def claim(self, item: BatchItem) -> None:
        """Raises: UsageError: another line already has this id (explicit or its line number)."""
        first = self._lines.setdefault(item.id, item.line)
        if first != item.line:
            raise UsageError(f"id {item.id!r} already used by line {first}")


def read_item(raw: bytes, number: int, seen: SeenIds) -> BatchItem:
    """One input line, decoded, parsed and given its id.

    Raises:
        UsageError: the line is bad (not UTF-8, see :func:`parse_line`, or a repeated id).
    """
    item = parse_line(decode_input(raw, "the line"), number)
    seen.claim(item)
    return item
