"""JSON for pipes: each document on one line that every line splitter reads as one line."""

from __future__ import annotations

import json
from typing import Any

#: Characters JSON allows raw inside a string but that ``str.splitlines`` (and JavaScript
#: before ES2019, for the two separators) takes for the end of a line: NEL, LINE SEPARATOR,
#: PARAGRAPH SEPARATOR. The other ones it splits on are control characters, which JSON
#: escapes anyway.
_LINE_BREAKING = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def json_line(doc: Any) -> str:
    """``doc`` as one line of JSON (no newline at the end): other non-ASCII text is kept as
    UTF-8, readable, and the characters of :data:`_LINE_BREAKING` are written as escapes, so a
    reader that splits with ``str.splitlines`` gets the document whole. The escapes decode to
    the same text."""
    text = json.dumps(doc, ensure_ascii=False)
    for raw, escaped in _LINE_BREAKING.items():
        if raw in text:  # only ever inside a string, where the escape means the same
            text = text.replace(raw, escaped)
    return text
