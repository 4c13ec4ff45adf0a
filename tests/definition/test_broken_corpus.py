"""Every file of tests/workflows/broken fails with the class, message and location it declares."""

from __future__ import annotations

from pathlib import Path

import pytest

from demiarch_flow import errors
from demiarch_flow.definition import load_workflow

BROKEN = sorted((Path(__file__).parent.parent / "workflows" / "broken").glob("*.yaml"))


def _header(path: Path) -> dict[str, str]:
    fields = {}
    for line in path.read_text("utf-8").splitlines()[:3]:
        key, _, value = line.removeprefix("# ").partition(": ")
        fields[key] = value
    return fields


def test_corpus_covers_every_check() -> None:
    """At least 15 distinct faults, spread over the YAML, schema and graph checks."""
    kinds = {_header(p)["expect"] for p in BROKEN}
    assert len(BROKEN) >= 15
    assert kinds == {"YamlSyntaxError", "SchemaError", "GraphError"}


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_workflow_fails_where_declared(path: Path) -> None:
    """The error class, the message and the file:line:column match the file's header."""
    want = _header(path)
    with pytest.raises(errors.DefinitionError) as info:
        load_workflow(path)
    err = info.value
    assert type(err).__name__ == want["expect"]
    assert want["message"] in str(err)
    line, col = (int(x) for x in want["at"].split(":"))
    assert (err.file, err.line, err.column) == (str(path), line, col)
    assert str(err).startswith(f"{path}:{line}:{col}: ")
