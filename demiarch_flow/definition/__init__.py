"""Workflow definitions: YAML text → checked, frozen :class:`Workflow` → state machine class.

Public here: :func:`load_workflow`, :func:`parse_workflow`, the model classes, the vocabulary,
and :func:`machine_class`. The three checks run in order (YAML syntax, JSON Schema, graph) and
each failure is a :class:`~demiarch_flow.errors.DefinitionError` subclass with file, line,
column and field path as attributes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path as FsPath

from ..errors import DefinitionError, Location, YamlSyntaxError
from ._graph import check_graph
from ._schema import check_schema, workflow_schema
from ._yaml import load_yaml
from .machine import WorkflowMachine, machine_class
from .model import (
    CooldownPolicy,
    FallbackPolicy,
    RequestSettings,
    RetryPolicy,
    StateSpec,
    Workflow,
    build_workflow,
)
from .vocabulary import (
    ACTION_EVENTS,
    ACTIONS,
    ALWAYS_FATAL,
    ERROR_CLASSES,
    FALLBACK_CLASSES,
    PROVIDER_ERROR_CLASSES,
    RETRY_CLASSES,
)

__all__ = [
    "ACTIONS",
    "ACTION_EVENTS",
    "ALWAYS_FATAL",
    "ERROR_CLASSES",
    "FALLBACK_CLASSES",
    "PROVIDER_ERROR_CLASSES",
    "RETRY_CLASSES",
    "CooldownPolicy",
    "FallbackPolicy",
    "RequestSettings",
    "RetryPolicy",
    "StateSpec",
    "Workflow",
    "WorkflowMachine",
    "load_workflow",
    "machine_class",
    "parse_workflow",
    "workflow_schema",
]


def parse_workflow(text: str, source: str = "<string>") -> Workflow:
    """Check ``text`` (YAML syntax, schema, graph) and return the frozen workflow.

    Args:
        text: the YAML document.
        source: the name used in messages (normally the file path as the user gave it).

    Raises:
        DefinitionError: a ``YamlSyntaxError``, ``SchemaError`` or ``GraphError``.
    """
    doc, positions = load_yaml(text, source)
    if not isinstance(doc, dict):
        raise YamlSyntaxError(
            f"the top level must be a mapping of workflow fields, not {type(doc).__name__}",
            location=positions.locate(()),
        )
    check_schema(doc, positions)
    sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    wf = build_workflow(doc, source=source, sha256=sha256, text=text)
    check_graph(wf, positions)
    machine_class(wf)
    return wf


def load_workflow(path: str | FsPath) -> Workflow:
    """Read and check the workflow file at ``path``.

    Raises:
        DefinitionError: the file is missing, unreadable or invalid.
    """
    name = str(path)
    try:
        raw = FsPath(path).read_bytes()
    except FileNotFoundError:
        raise DefinitionError("no such workflow file", location=Location(name)) from None
    except OSError as exc:
        raise DefinitionError(
            f"cannot read the workflow file: {exc.strerror}", location=Location(name)
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlSyntaxError(
            f"the file is not UTF-8 text (byte {exc.start})", location=Location(name)
        ) from None
    return parse_workflow(text, name)
