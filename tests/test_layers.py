"""Lower floors know nothing of upper ones: what importing a module pulls in, in a fresh
interpreter (``sys.modules`` after the import)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def modules_after(code: str) -> set[str]:
    """The top-level and ``demiarch_flow.*`` modules loaded after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_the_command_line_does_not_import_the_test_helpers() -> None:
    """Every command module loads without ``demiarch_flow.testing``."""
    code = "\n".join(
        f"import demiarch_flow.cli.{name}"
        for name in (
            "main",
            "_batch",
            "_common",
            "_db",
            "_define",
            "_demo",
            "_keys",
            "_recover",
            "_report",
            "_run",
            "_simserver",
            "_simulate",
        )
    )
    loaded = modules_after(code)
    assert "demiarch_flow.testing" not in loaded
    assert "demiarch_flow.fake" in loaded  # simulate's provider, from a non-test module


@pytest.mark.parametrize("module", ["yaml", "jsonschema", "statemachine", "sqlalchemy"])
def test_the_http_client_does_not_import_the_definition_or_the_store(module: str) -> None:
    """``import demiarch_flow.client`` needs neither the YAML parser, the schema validator, the
    state machine nor SQLAlchemy."""
    loaded = modules_after("import demiarch_flow.client")
    assert module not in loaded
    assert "demiarch_flow.definition" not in loaded


@pytest.mark.parametrize(
    "module",
    ["yaml", "jsonschema", "statemachine", "demiarch_flow.runner", "demiarch_flow.definition"],
)
def test_the_store_does_not_import_the_runner_or_the_definition(module: str) -> None:
    """``import demiarch_flow.store`` (and its SQL implementation) stay below the runner."""
    loaded = modules_after("import demiarch_flow.store, demiarch_flow.store.sql")
    assert module not in loaded


def test_help_does_not_import_the_heavy_dependencies() -> None:
    """Building the parser (what ``--help`` does) loads no trio, httpx nor SQLAlchemy."""
    loaded = modules_after("from demiarch_flow.cli.main import build_parser\nbuild_parser()")
    assert not {"trio", "httpx", "sqlalchemy"} & loaded
