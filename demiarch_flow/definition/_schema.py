"""Check 2 of 3: the JSON Schema (draft 2020-12), plus the cross-field rules it cannot express.

jsonschema's messages are kept (``0.5 is less than the minimum of 1``) and prefixed with the file
position and field path; an unknown key gets a did-you-mean hint, and a key named ``on`` gets the
YAML 1.1 explanation, because a silently ignored policy is the worst outcome of a typo.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from .._resources import bundled_path
from ..errors import DefinitionError, SchemaError
from ._yaml import Path, Positions, format_path


@cache
def workflow_schema() -> dict[str, Any]:
    """The bundled ``workflow.schema.json``, parsed once."""
    schema: dict[str, Any] = json.loads(
        bundled_path("schemas", "workflow.schema.json").read_text("utf-8")
    )
    return schema


@cache
def _validator() -> Draft202012Validator:
    schema = workflow_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


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
                f"unknown key {key!r}{hint}; allowed here: {allowed}",
                location=positions.locate((*path, key), key=True),
                path=format_path((*path, key)),
            )
        )
    return out


def _message(err: ValidationError) -> str:
    if err.validator == "enum":
        allowed = ", ".join(str(v) for v in err.validator_value)  # type: ignore[union-attr]
        return f"{err.instance!r} is not one of: {allowed}"
    if err.validator == "pattern" and isinstance(err.instance, str):
        return f"{err.instance!r} is not a valid name here (must match {err.validator_value})"
    if err.validator == "uniqueItems":
        return f"{err.instance!r} has repeated items"
    if err.validator == "const":
        return f"{err.instance!r} is not supported (expected {err.validator_value!r})"
    return err.message


def _sort_key(err: ValidationError) -> tuple[int, str]:
    return (len(err.absolute_path), str(list(err.absolute_path)))


def check_schema(doc: Any, positions: Positions) -> None:
    """Validate ``doc`` against the schema and the cross-field rules.

    Raises:
        SchemaError: every finding, the first (by position in the file) leading.
    """
    problems: list[DefinitionError] = []
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
