"""`models sync` keeps OpenRouter's price table OpenRouter's: prices listed by another base URL
(a proxy, a local server, the simulator) replace it only with `--force`, and the file then says
where they came from (in-process; the simulator on 127.0.0.1, OpenRouter through respx)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import respx

from demiarch_flow.cli.main import main
from demiarch_flow.client._endpoint import DEFAULT_BASE_URL, is_openrouter
from demiarch_flow.pricing import PriceTable

from .e2e.conftest import SimThread
from .test_cli_consistency import _unreachable

OURS = {"_comment": "a table synced from OpenRouter", "acme/x": {"prompt": "1", "completion": "2"}}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private data folder holding a synced OpenRouter table, and no key."""
    monkeypatch.setenv("DEMIARCH_FLOW_HOME", str(tmp_path))
    monkeypatch.setenv("OPENROUTER_API_KEY", "")
    monkeypatch.delenv("OPENROUTER_BASE_URL", raising=False)
    (tmp_path / "prices.json").write_text(json.dumps(OURS), "utf-8")
    return tmp_path


@pytest.fixture
def sim() -> Iterator[SimThread]:
    started = SimThread("")
    yield started
    started.stop()


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_prices_from_another_base_url_are_refused_without_force(
    home: Path,
    how: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`models sync --base-url <not OpenRouter>` (or OPENROUTER_BASE_URL): exit 2 before
    anything is asked (nothing listens there: asking would be exit 3), naming the host and
    --force; OpenRouter's table is left as it was."""
    url = _unreachable()
    if how == "flag":
        code = main(["models", "sync", "--base-url", url])
    else:
        monkeypatch.setenv("OPENROUTER_BASE_URL", url)
        code = main(["models", "sync"])
    assert code == 2
    err = capsys.readouterr().err
    assert "127.0.0.1 is not OpenRouter" in err and "--force" in err
    assert json.loads((home / "prices.json").read_text("utf-8")) == OURS


def test_force_replaces_the_table_and_the_file_names_its_source(
    home: Path, sim: SimThread, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --force the other endpoint's prices are written, with `_source` saying whose
    (which the table's reader skips)."""
    assert main(["models", "sync", "--base-url", sim.url, "--force"]) == 0
    assert f"from {sim.url} to" in capsys.readouterr().out
    doc = json.loads((home / "prices.json").read_text("utf-8"))
    assert doc["_source"] == sim.url and "acme/x" not in doc
    assert "_source" not in PriceTable.load(home / "prices.json").prices


def test_openrouter_needs_no_force(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The default base URL is OpenRouter's: synced without --force, `_source` it."""
    listing = {"data": [{"id": "acme/y", "pricing": {"prompt": "0.000001", "completion": "0"}}]}
    with respx.mock(assert_all_called=True) as router:
        router.get(f"{DEFAULT_BASE_URL}/models").mock(httpx.Response(200, json=listing))
        assert main(["models", "sync", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["written"] == 1 and doc["source"] == DEFAULT_BASE_URL
    table = json.loads((home / "prices.json").read_text("utf-8"))
    assert table["_source"] == DEFAULT_BASE_URL and table["acme/y"]["prompt"] == "1"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://openrouter.ai/api/v1", True),
        ("https://OpenRouter.ai/api/v1/", True),
        ("https://eu.openrouter.ai/api/v1", True),
        ("http://127.0.0.1:8765/api/v1", False),
        ("https://openrouter.ai.example.com/api/v1", False),
        ("https://notopenrouter.ai/api/v1", False),
    ],
)
def test_what_counts_as_openrouter(url: str, expected: bool) -> None:
    """The host decides, not a prefix of the URL."""
    assert is_openrouter(url) is expected
