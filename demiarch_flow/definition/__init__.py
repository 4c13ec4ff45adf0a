"""Workflow definitions: YAML text → checked, frozen :class:`Workflow` → state machine class.

Public here: :func:`load_workflow`, :func:`parse_workflow`, the model classes, the vocabulary,
:func:`machine_class`, and :func:`check_model_name` (the one rule for a model id, which the
command line applies to ``--model`` and batch lines too). The three checks run in order (YAML
syntax, JSON Schema, graph) and each failure is a :class:`~demiarch_flow.errors.DefinitionError`
subclass with file, line, column and field path as attributes.

The checks' libraries (PyYAML, jsonschema, python-statemachine) are imported when a text is
checked, not with this package: :func:`load_workflow` given a ``cache`` folder rebuilds a text
it has checked before without them (see :mod:`._cache`), and the model classes alone import
nothing heavy. ``machine_class``, ``WorkflowMachine``, ``workflow_schema`` and ``known_moves``
(the transition table a cache entry kept) are imported on first use.
"""

from __future__ import annotations

import hashlib
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Any

from .._lazy import lazy_exports
from ..errors import DefinitionError, Location, YamlSyntaxError
from ._source import MAX_FILE_BYTES
from ._text import MAX_MODEL_NAME, check_model_name
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
    ALWAYS_FATAL,
    FALLBACK_CLASSES,
    PROVIDER_ERROR_CLASSES,
    RETRY_CLASSES,
)

__all__ = [
    "ACTION_EVENTS",
    "ALWAYS_FATAL",
    "FALLBACK_CLASSES",
    "MAX_FILE_BYTES",
    "MAX_MODEL_NAME",
    "PROVIDER_ERROR_CLASSES",
    "RETRY_CLASSES",
    "CooldownPolicy",
    "FallbackPolicy",
    "RequestSettings",
    "RetryPolicy",
    "StateSpec",
    "Workflow",
    "WorkflowMachine",
    "check_model_name",
    "known_moves",
    "load_workflow",
    "machine_class",
    "parse_workflow",
    "workflow_schema",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "machine_class": "machine",
        "WorkflowMachine": "machine",
        "workflow_schema": "_schema",
        "known_moves": "_cache",
    },
)

if TYPE_CHECKING:  # pragma: no cover
    from ._cache import known_moves
    from ._schema import workflow_schema
    from .machine import WorkflowMachine, machine_class


def parse_workflow(text: str, source: str = "<string>") -> Workflow:
    """Check ``text`` (YAML syntax, schema, graph) and return the frozen workflow.

    Args:
        text: the YAML document.
        source: the name used in messages (normally the file path as the user gave it).

    Raises:
        DefinitionError: a ``YamlSyntaxError``, ``SchemaError`` or ``GraphError``.
    """
    return _checked(text, source, hashlib.sha256(text.encode("utf-8")).hexdigest())[0]


def _checked(text: str, source: str, sha256: str) -> tuple[Workflow, dict[str, Any]]:
    """The three checks and the build: the workflow and the document it was built from."""
    from ._graph import check_graph
    from ._schema import check_schema
    from ._yaml import load_yaml
    from .machine import machine_class

    doc, positions = load_yaml(text, source)
    if not isinstance(doc, dict):
        raise YamlSyntaxError(
            f"the top level must be a mapping of workflow fields, not {type(doc).__name__}",
            location=positions.locate(()),
        )
    check_schema(doc, positions)
    wf = build_workflow(doc, source=source, sha256=sha256, text=text)
    check_graph(wf, positions)
    machine_class(wf)
    return wf, doc


def load_workflow(path: str | FsPath, *, cache: FsPath | None = None) -> Workflow:
    """Read and check the workflow file at ``path``.

    Args:
        path: the file, named as the user gave it (messages and the run record say it so).
        cache: a folder of checked workflows (:func:`demiarch_flow.paths.cache_dir`): a text
            checked before is rebuilt from there without the checks' libraries, and a text
            checked now is added. ``None``: always check (library use, ``validate``).

    Raises:
        DefinitionError: the file is missing, unreadable, too large or invalid.
    """
    name = str(path)
    try:
        with open(path, "rb") as f:  # bounded: /dev/zero or a huge log must not fill memory
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise DefinitionError("no such workflow file", location=Location(name)) from None
    except OSError as exc:
        raise DefinitionError(
            f"cannot read the workflow file: {exc.strerror or exc}", location=Location(name)
        ) from None
    except ValueError as exc:  # a NUL in the path
        raise DefinitionError(
            f"cannot read the workflow file: {exc}", location=Location(name)
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise YamlSyntaxError(
            f"the file is too large (more than {MAX_FILE_BYTES} bytes; a workflow is a few KB)",
            location=Location(name),
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        column = len(raw[line_start : exc.start].decode("utf-8")) + 1
        raise YamlSyntaxError(
            f"the file is not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.end]!r})",
            location=Location(name, line, column),
        ) from None
    sha256 = hashlib.sha256(raw).hexdigest()  # the text's UTF-8, as parse_workflow hashes it
    if cache is None:
        return _checked(text, name, sha256)[0]
    from ._cache import cached, remember

    folder = cache / "workflows"
    wf = cached(folder, text, sha256, name)
    if wf is None:
        wf, doc = _checked(text, name, sha256)
        remember(folder, doc, wf)
    return wf
