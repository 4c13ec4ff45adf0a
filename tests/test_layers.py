"""Lower floors know nothing of upper ones: what importing a module pulls in, in a fresh
interpreter (``sys.modules`` after the import)."""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest


@functools.cache
def modules_after(code: str) -> frozenset[str]:
    """The top-level and ``demiarch_flow.*`` modules loaded after running ``code``.

    Cached: a fresh interpreter gives the same answer for the same code, so the parametrized
    cases of one import share one subprocess instead of starting one each."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return frozenset(json.loads(out.stdout.splitlines()[-1]))


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
            "_replay",
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


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[Any]:
    """(command words, handler default) of every leaf command of ``parser``."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser.get_default("handler")
    for action in subs:
        for name, child in action.choices.items():
            yield from _commands(child, (*path, name))


def test_every_command_names_a_handler_that_exists() -> None:
    """Each leaf command of the parser carries a typed Command whose function imports and is
    callable (a typo would otherwise surface only when a user runs that command)."""
    from demiarch_flow.cli.main import Command, build_parser

    found = dict(_commands(build_parser()))
    assert ("run",) in found and ("db", "upgrade") in found and ("key", "set") in found
    for words, command in found.items():
        assert isinstance(command, Command), words
        handler = command.load()
        assert callable(handler), words
        assert handler.__name__ == command.function
