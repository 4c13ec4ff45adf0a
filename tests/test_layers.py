"""Lower floors know nothing of upper ones: what importing a module pulls in, in a fresh
interpreter (``sys.modules`` after the import)."""

from __future__ import annotations

import json
import subprocess
import sys


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


def test_help_does_not_import_the_heavy_dependencies() -> None:
    """Building the parser (what ``--help`` does) loads no trio, httpx nor SQLAlchemy."""
    loaded = modules_after("from demiarch_flow.cli.main import build_parser\nbuild_parser()")
    assert not {"trio", "httpx", "sqlalchemy"} & loaded
