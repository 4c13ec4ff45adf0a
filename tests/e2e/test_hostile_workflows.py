"""The broken-workflow corpus through the real command line: exit 2, a location, no crash.

Every file of tests/workflows/broken (the ``hostile_*`` ones above all) plus a few that are
generated rather than stored (empty, UTF-16, larger than the limit, a 100,000-character model
name) goes through ``demiarch-flow validate``; a selection also goes through ``run``, which
must stop before a single request reaches the provider.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from demiarch_flow import errors
from demiarch_flow.definition import MAX_FILE_BYTES

from ..conftest import DEFAULT_WORKFLOW
from ..definition.test_broken_corpus import BROKEN, _header
from .conftest import Cli, SimThread

DEFAULT = DEFAULT_WORKFLOW.read_bytes()


def _generated(folder: Path) -> dict[Path, str]:
    """Hostile files too big or too odd to keep in the repository, with a message fragment."""
    files = {
        "empty.yaml": (b"", "the file is empty"),
        "utf16.yaml": (DEFAULT.decode().encode("utf-16"), "not UTF-8"),
        "huge.yaml": (DEFAULT + b"#" * MAX_FILE_BYTES, "too large"),
        "long_model.yaml": (
            DEFAULT.replace(b"openai/gpt-4o", b"openai/" + b"x" * 100_000),
            "100007 characters long (at most 200)",
        ),
    }
    out = {}
    for name, (data, message) in files.items():
        path = folder / name
        path.write_bytes(data)
        out[path] = message
    return out


def test_validate_exits_2_for_every_hostile_file(cli: Cli, tmp_path: Path) -> None:
    """One error line per file, at the declared place; never an internal error or a traceback."""
    expected: dict[str, str] = {}
    for path in BROKEN:
        want = _header(path)
        assert errors.DefinitionError.exit_code == getattr(errors, want["expect"]).exit_code == 2
        expected[str(path)] = f"demiarch-flow: {path}:{want['at']}: "
    generated = _generated(tmp_path)
    res = cli("validate", *expected, *map(str, generated))
    assert res.code == 2
    assert res.stdout == ""
    assert "internal error" not in res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    for path in BROKEN:
        start = expected[str(path)]
        found = [line for line in lines if line.startswith(start)]
        assert found, f"no error at {start}"
        assert _header(path)["message"] in found[0]
    for path, message in generated.items():
        found = [line for line in lines if line.startswith(f"demiarch-flow: {path}")]
        assert found and message in found[0], path


RUN_SELECTION = [
    "hostile_nan_temperature",
    "hostile_long_model",
    "hostile_nul_in_system",
    "hostile_deep_sequence",
    "hostile_non_utf8",
]


@pytest.mark.parametrize("stem", RUN_SELECTION)
def test_run_exits_2_before_any_request(
    cli: Cli, simulator: Callable[[str], SimThread], stem: str
) -> None:
    """A hostile workflow stops ``run`` with exit 2 and the location; the provider sees nothing."""
    sim = simulator("")
    path = next(p for p in BROKEN if p.stem == stem)
    want = _header(path)
    res = cli("run", str(path), "-m", "hi", "--base-url", sim.url)
    assert res.code == 2, res.stderr
    assert f"{path}:{want['at']}: " in res.stderr
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr
    assert sim.sim.chat_requests == 0
