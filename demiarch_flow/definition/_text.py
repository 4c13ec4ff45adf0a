"""Which strings may travel from a workflow file to the request and the database.

JSON Schema patterns cannot say all of it: Python's ``$`` matches before a trailing newline, so
``"Done\\n"`` passes ``^[A-Z]\\w*$``; PostgreSQL cannot store a NUL character; a lone surrogate
(``"\\ud800"`` in a double-quoted YAML string) cannot be encoded as UTF-8 for the request; and a
model name longer than the ``String(200)`` columns is only discovered after the call was paid.
So every string of the document is checked here, once the schema has passed.

:func:`check_model_name` is the one rule for a model name wherever it comes from (the workflow's
``models``, ``--model``, a batch line), so that all of them fail the same way before any request.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from typing import Any

from ..errors import SchemaError
from ._source import Path, Positions, format_path

#: The width of every ``model`` column of the store (``String(200)``).
MAX_MODEL_NAME = 200

#: Keys whose values are prose (sent or shown as written), where tabs and line breaks belong.
_PROSE = frozenset({"description", "system"})
_LINE_BREAKS = frozenset("\t\n\r")
#: Control, invisible formatting and surrogate characters: nothing a name needs.
_INVISIBLE = frozenset({"Cc", "Cf", "Cs"})


def _codepoint(ch: str) -> str:
    return f"U+{ord(ch):04X}"


def check_model_name(name: str) -> str | None:
    """The problem with ``name`` as a model id, or ``None`` when it is usable.

    The rule: 1 to 200 characters (the width of the store's model columns, counted as
    PostgreSQL counts them), no whitespace anywhere (so none leading or trailing either), and
    no control, invisible-formatting or surrogate characters (NUL cannot be stored; a lone
    surrogate cannot be encoded). OpenRouter ids (``vendor/model:variant``) always pass.

    Returns:
        A description that reads on its own, e.g. ``model name is 300 characters long (at
        most 200)``, or ``None``.
    """
    if not name:
        return "model name is empty"
    if len(name) > MAX_MODEL_NAME:
        return f"model name is {len(name)} characters long (at most {MAX_MODEL_NAME})"
    if name != name.strip():
        return "model name has leading or trailing whitespace"
    for ch in name:
        if unicodedata.category(ch) in _INVISIBLE:
            return f"model name contains the control or invisible character {_codepoint(ch)}"
        if ch.isspace():
            return f"model name contains whitespace ({_codepoint(ch)})"
    return None


def _text_problem(value: str, *, prose: bool) -> str | None:
    """Why ``value`` cannot be stored or sent, or ``None``."""
    for ch in value:
        category = unicodedata.category(ch)
        if ch == "\0":
            return "contains a NUL character (U+0000), which the database cannot store"
        if category == "Cs":
            return f"contains a lone surrogate ({_codepoint(ch)}), which is not valid text"
        if category == "Cc" and not (prose and ch in _LINE_BREAKS):
            return f"contains the control character {_codepoint(ch)}"
    return None


def unsafe_strings(doc: Any, positions: Positions) -> list[SchemaError]:
    """Every string of ``doc`` (keys included) that could not be stored or sent as is."""
    return [
        SchemaError(message, location=positions.locate(path, key=key), path=format_path(path))
        for path, message, key in _walk(doc, ())
    ]


def _walk(value: Any, path: Path) -> Iterator[tuple[Path, str, bool]]:
    if isinstance(value, dict):
        for k, v in value.items():
            child = (*path, k)
            if problem := _text_problem(k, prose=False):
                yield child, f"the key {problem}", True
            yield from _walk(v, child)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, (*path, i))
    elif isinstance(value, str):
        if len(path) == 2 and path[0] == "models":
            problem = check_model_name(value)
        else:
            problem = _text_problem(value, prose=bool(path) and path[-1] in _PROSE)
        if problem:
            yield path, problem, False
