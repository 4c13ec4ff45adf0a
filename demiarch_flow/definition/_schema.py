"""Check 2 of 3: the JSON Schema (draft 2020-12), plus the cross-field rules it cannot express.

jsonschema's messages are kept (``0.5 is less than the minimum of 1``) and prefixed with the file
position and field path; an unknown key gets a did-you-mean hint, and a key named ``on`` gets the
YAML 1.1 explanation, because a silently ignored policy is the worst outcome of a typo.

A JSON number is always finite, but YAML has ``.nan`` and ``.inf`` and Python ints of any size; so
the validator's ``number`` and ``integer`` types are those of JSON: finite, and within 64 bits.
NaN slips past every ``minimum`` (each comparison with it is false) and would reach the request as
invalid JSON, so it must fail on its type. Once the schema passes, every string is checked for what
the database and the request cannot carry (:mod:`._text`).

Where the keys of a mapping are names the user chooses (rate buckets, states), a plain key
that YAML reads as a value (``~``, ``yes``, ``123``) is refused by name: its bucket or state could
never be matched or targeted, and a policy that silently applies to nothing is a typo's worst case.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator

from .._resources import bundled_path
from ..errors import DefinitionError, SchemaError
from ._source import Path, Positions, format_path, shorten
from ._text import unsafe_strings

_INT64 = 2**63


@cache
def workflow_schema() -> dict[str, Any]:
    """The bundled ``workflow.schema.json``, parsed once."""
    schema: dict[str, Any] = json.loads(
        bundled_path("schemas", "workflow.schema.json").read_text("utf-8")
    )
    return schema


def _in_json_range(value: object, *, integer: bool = False) -> bool:
    """Finite when a float, within signed 64 bits when an int (what JSON and a column hold)."""
    if isinstance(value, float):
        return math.isfinite(value) and (not integer or abs(value) < _INT64)
    return isinstance(value, int) and -_INT64 <= value < _INT64


_BASE_TYPES = Draft202012Validator.TYPE_CHECKER
_JSON_TYPES = _BASE_TYPES.redefine_many(
    {
        "number": lambda checker, value: (
            _BASE_TYPES.is_type(value, "number") and _in_json_range(value)
        ),
        "integer": lambda checker, value: (
            _BASE_TYPES.is_type(value, "integer") and _in_json_range(value, integer=True)
        ),
    }
)


@cache
def _validator() -> Validator:
    schema = workflow_schema()
    Draft202012Validator.check_schema(schema)
    cls: type[Validator] = validators.extend(  # type: ignore[no-untyped-call]
        Draft202012Validator, type_checker=_JSON_TYPES
    )
    return cls(schema)


def _subschema(path: Path) -> dict[str, Any]:
    """The schema that applies at ``path`` (following properties, items and $refs)."""
    schema = workflow_schema()
    node: dict[str, Any] = schema
    for part in path:
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        if isinstance(part, int):
            node = node.get("items", {})
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        else:
            extra = node.get("additionalProperties")
            node = extra if isinstance(extra, dict) else {}
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _unknown_key_errors(err: ValidationError, positions: Positions) -> list[DefinitionError]:
    path: Path = tuple(err.absolute_path)
    known = sorted(_subschema(path).get("properties", {}))
    instance = err.instance if isinstance(err.instance, dict) else {}
    out: list[DefinitionError] = []
    for key in instance:
        if key in known:
            continue
        if key == "on":
            hint = (
                " ('on' is not a key of this format: YAML 1.1 reads a bare on as a boolean;"
                " transitions are written under 'transitions')"
            )
        else:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        allowed = ", ".join(known)
        out.append(
            SchemaError(
                f"unknown key {shorten(key)}{hint}; allowed here: {allowed}",
                location=positions.locate((*path, key), key=True),
                path=format_path((*path, key)),
            )
        )
    return out


def _type_message(err: ValidationError) -> str | None:
    """Plainer words for a number that YAML read but JSON has no place for."""
    value, wanted = err.instance, err.validator_value
    if wanted not in ("number", "integer") or isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number (.nan and .inf are not allowed here)"
    if isinstance(value, int | float) and not _in_json_range(value, integer=True):
        return f"{shorten(value)} is out of range (beyond a 64-bit integer)"
    if isinstance(value, str):
        if means := _base_60(value):
            return (
                f"{shorten(value)} is text, not a number (YAML 1.1 would read it in base 60,"
                f" as {means}; write the number you mean)"
            )
        if means := _other_base(value):
            return f"{shorten(value)} is text, not a number ({means})"
        try:
            float(value)
        except ValueError:
            return None
        return (
            f"{shorten(value)} is text, not a number (YAML 1.1 reads 1e3 as text;"
            " write 1000 or 1.0e+3)"
        )
    return None


_BASE_60 = re.compile(r"([-+]?)([0-9][0-9_]*(?::[0-5]?[0-9])+)(\.[0-9_]*)?")


def _base_60(text: str) -> str | None:
    """The number YAML 1.1 makes of ``text`` in base 60 (``"1:30"`` → ``"90"``), if it would.

    The loader keeps such scalars as text (see :mod:`._yaml`); saying what YAML 1.1 would have
    made of one tells the user why ``1:30`` is not a number here.
    """
    match = _BASE_60.fullmatch(text)
    if match is None:
        return None
    if len(text) > 40:  # its value would not fit in a message (nor in 4,300 digits)
        return "some other number"
    sign, digits, fraction = match.groups()
    total = 0
    for part in digits.replace("_", "").split(":"):
        total = total * 60 + int(part)
    if fraction is None:
        return f"{sign.strip('+')}{total}"
    return f"{sign.strip('+')}{total + float('0' + fraction.replace('_', ''))}"


_OTHER_BASE = re.compile(r"([-+]?)0(?:([0-7_]+)|b([01_]+))")


def _other_base(text: str) -> str | None:
    """What YAML 1.1 makes of ``010`` (octal: 8) or ``0b11`` (binary: 3), if it would: the
    loader keeps these as text (see :mod:`._yaml`), since YAML 1.2 reads them otherwise."""
    match = _OTHER_BASE.fullmatch(text)
    if match is None or len(text) > 40:
        return None
    sign, octal, binary = match.groups()
    sign = sign.strip("+")
    if octal is not None:
        as_8, as_10 = (f"{sign}{int(octal.replace('_', ''), base)}" for base in (8, 10))
        return (
            f"YAML 1.1 reads it in octal, as {as_8}, YAML 1.2 as {as_10};"
            f" write {as_10} or {as_8}, without the leading 0"
        )
    as_2 = f"{sign}{int(binary.replace('_', '') or '0', 2)}"
    return f"YAML 1.1 reads it in binary, as {as_2}, YAML 1.2 as text; write {as_2}"


def _typed_key_errors(positions: Positions) -> list[DefinitionError]:
    """A key YAML reads as a value, in a mapping whose keys are names (see the module doc)."""
    out: list[DefinitionError] = []
    for path, reading in positions.typed_keys.items():
        if not isinstance(_subschema(path[:-1]).get("additionalProperties"), dict):
            continue  # a mapping of fixed fields: the unknown key is reported by the schema
        if path[-2:-1] == ("transitions",):
            continue  # an event: the graph check names the action that never emits it
        key = str(path[-1])
        if path[:-1] == ("limits", "rate"):
            advice = (
                f'so this bucket would match no model; quote it ("{key}") if a model id or'
                " glob really is that text"
            )
        else:
            advice = f'not as a name; rename it, or quote it ("{key}") wherever it is written'
        out.append(
            SchemaError(
                f"YAML reads the key {key} as {reading}, {advice}",
                location=positions.locate(path, key=True),
                path=format_path(path),
            )
        )
    return out


def _message(err: ValidationError) -> str:
    if err.validator == "type" and (plain := _type_message(err)):
        return plain
    if err.validator == "maxLength" and isinstance(err.instance, str):
        return (
            f"{shorten(err.instance)} is {len(err.instance)} characters long"
            f" (at most {err.validator_value})"
        )
    if err.validator == "enum":
        allowed = ", ".join(str(v) for v in err.validator_value)  # type: ignore[union-attr]
        return f"{shorten(err.instance)} is not one of: {allowed}"
    if err.validator == "pattern" and isinstance(err.instance, str):
        return (
            f"{shorten(err.instance)} is not a valid name here (must match {err.validator_value})"
        )
    if err.validator == "uniqueItems":
        return f"{shorten(err.instance)} has repeated items"
    if err.validator == "const":
        return f"{shorten(err.instance)} is not supported (expected {err.validator_value!r})"
    if len(err.message) > 200:  # jsonschema quotes the whole value; keep one paragraph
        return err.message.replace(repr(err.instance), shorten(err.instance))
    return err.message


def _sort_key(err: ValidationError) -> tuple[int, str]:
    return (len(err.absolute_path), str(list(err.absolute_path)))


def check_schema(doc: Any, positions: Positions) -> None:
    """Validate ``doc`` against the schema and the cross-field rules.

    Raises:
        SchemaError: every finding, the first (by position in the file) leading.
    """
    problems: list[DefinitionError] = _typed_key_errors(positions)
    for err in sorted(_validator().iter_errors(doc), key=_sort_key):
        if err.validator == "additionalProperties":
            problems.extend(_unknown_key_errors(err, positions))
            continue
        path: Path = tuple(err.absolute_path)
        key = err.validator in ("required", "propertyNames")
        if err.validator == "propertyNames" and isinstance(err.instance, str):
            path = (*path, err.instance)
        problems.append(
            SchemaError(
                _message(err),
                location=positions.locate(path, key=key),
                path=format_path(path) or "(top level)",
            )
        )
    if not problems:
        problems.extend(unsafe_strings(doc, positions))
    if not problems:
        problems.extend(_cross_field(doc, positions))
    if problems:
        problems.sort(key=lambda p: (p.line, p.column))
        raise DefinitionError.collect(problems)


def _cross_field(doc: dict[str, Any], positions: Positions) -> list[DefinitionError]:
    """Rules that need two fields at once (JSON Schema has no portable way to say them)."""
    retry = doc["retry"]
    if retry["max_delay_s"] < retry["initial_delay_s"]:
        path: Path = ("retry", "max_delay_s")
        return [
            SchemaError(
                f"{retry['max_delay_s']} is less than initial_delay_s"
                f" ({retry['initial_delay_s']}): no wait could ever be made",
                location=positions.locate(path),
                path=format_path(path),
            )
        ]
    return []
