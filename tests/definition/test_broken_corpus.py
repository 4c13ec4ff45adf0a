"""Every file of tests/workflows/broken fails with the class, message and location it declares.

Each file starts with three header lines (``# expect:``, ``# message:``, ``# at: LINE:COL``). The
``hostile_*`` files are hostile input (NaN and huge numbers, deep nesting, alias bombs, tags,
control characters, bytes that are not UTF-8): the header is read from raw bytes, so a file may
carry a byte order mark or invalid bytes after it. Every one of them exits 2 on the command line
(tests/e2e/test_hostile_workflows.py runs them through ``validate`` and ``run``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from demiarch_flow import errors
from demiarch_flow.definition import load_workflow, workflow_schema

BROKEN = sorted((Path(__file__).parent.parent / "workflows" / "broken").glob("*.yaml"))


def _header(path: Path) -> dict[str, str]:
    fields = {}
    head = path.read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n")[:3]
    for line in head:
        key, _, value = line.decode("utf-8").removeprefix("# ").partition(": ")
        fields[key] = value
    return fields


def test_corpus_covers_every_check() -> None:
    """At least 15 distinct faults, spread over the YAML, schema and graph checks."""
    kinds = {_header(p)["expect"] for p in BROKEN}
    assert len(BROKEN) >= 15
    assert kinds == {"YamlSyntaxError", "SchemaError", "GraphError"}


def test_hostile_files_cover_every_numeric_field() -> None:
    """NaN or infinity is tried in every number of the format (the fields the schema types)."""
    numeric = {
        f"{section}.{name}"
        for section, spec in workflow_schema()["properties"].items()
        for name, field in spec.get("properties", {}).items()
        if field.get("type") in ("number", "integer")
    }
    tried = {
        _header(p)["message"].split(":")[0]
        for p in BROKEN
        if p.stem.startswith(("hostile_nan_", "hostile_inf_"))
    }
    assert numeric <= tried


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_workflow_fails_where_declared(path: Path) -> None:
    """The error class, the message and the file:line:column match the file's header."""
    want = _header(path)
    with pytest.raises(errors.DefinitionError) as info:
        load_workflow(path)
    err = info.value
    assert type(err).__name__ == want["expect"]
    assert want["message"] in str(err)
    assert all(line.isprintable() for line in str(err).split("\n")), "raw control characters"
    line, col = (int(x) for x in want["at"].split(":"))
    assert (err.file, err.line, err.column) == (str(path), line, col)
    assert str(err).startswith(f"{path}:{line}:{col}: ")
