"""The cache of checked workflows (`definition/_cache.py`): a text checked before is rebuilt
without the checks, into the very workflow a full parse gives; anything else — a new or changed
text, a stale, torn or foreign entry, another fingerprint — is checked in full, with the full
parse's messages."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from demiarch_flow import definition
from demiarch_flow.definition import Workflow, _cache, load_workflow
from demiarch_flow.errors import DefinitionError, SchemaError

ROOT = Path(__file__).resolve().parents[2]

#: Every part of the model set: limits (budgets and buckets), cooldown, request settings with
#: floats and ints, a system prompt with non-ASCII text, states in an order of their own.
RICH = """\
version: 1
name: rich_flow
description: "Every field — \u00e9t\u00e9 \u2028 and a date-like 2024-01-01"
system: "R\u00e9ponds en fran\u00e7ais. 12:30"
models: [acme/a, acme/b-2]
request: {timeout_s: 12.5, context_messages: 3, temperature: 0.7, max_tokens: 64,
          stream: true, first_token_timeout_s: 5, idle_timeout_s: 2.25}
retry: {max_retries: 2, initial_delay_s: 0.1, backoff_rate: 1.5, max_delay_s: 3,
        jitter: full, respect_retry_after: false, when: [rate_limited, timeout]}
fallback: {when: [retries_exhausted]}
cooldown: {after_failures: 2, window_s: 10, cool_s: 5}
limits:
  budget: {per_run_usd: 0.05, daily_usd: 1.10, monthly_usd: 20}
  rate:
    "acme/*": {rpm: 30, tpm: 1000, burst: 2, concurrency: 3, scope: process}
    acme/a: {rpm: 1.5}
initial: LoadContext
states:
  LoadContext: {action: load_context, transitions: {loaded: Request, failed: Failed}}
  Request:     {action: request, transitions: {succeeded: Persist, retryable: Backoff, model_failed: Fallback, fatal: Failed}}
  Backoff:     {action: backoff, transitions: {retry: Request, exhausted: Fallback}}
  Fallback:    {action: fallback, transitions: {next_model: Request, exhausted: Failed}}
  Persist:     {action: persist, transitions: {saved: Done, failed: Failed}}
  Failed:      {action: fail, final: true}
  Done:        {final: true}
"""

FILES = [ROOT / "workflows" / "chat.yaml", ROOT / "tests" / "workflows" / "fast.yaml"]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def entries(cache: Path) -> list[Path]:
    return sorted((cache / "workflows").glob("*"))


def rich(tmp_path: Path, text: str = RICH, name: str = "rich.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


@pytest.mark.parametrize("which", ["rich", *[p.name for p in FILES]])
def test_a_hit_is_the_workflow_a_full_parse_gives(
    which: str, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read twice through the cache, a file gives the same workflow as without it — every
    field, the text and its digest — and the second read checks nothing."""
    path = rich(tmp_path) if which == "rich" else next(p for p in FILES if p.name == which)
    full = load_workflow(path)
    first = load_workflow(path, cache=cache)
    assert len(entries(cache)) == 1
    monkeypatch.setattr(definition, "_checked", None)  # a second check would fail
    hit = load_workflow(path, cache=cache)
    for wf in (first, hit):
        assert wf == full
        assert (wf.text, wf.sha256, wf.source) == (full.text, full.sha256, full.source)
        assert repr(wf) == repr(full)
        assert [wf.state(n) for n in wf.state_names] == list(full.states)


def test_a_hit_takes_the_name_given_now(tmp_path: Path, cache: Path) -> None:
    """The same text under another name is a hit that carries the new name (messages and run
    records name the file as the user gave it)."""
    load_workflow(rich(tmp_path, name="first.yaml"), cache=cache)
    other = rich(tmp_path, name="second.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(definition, "_checked", None)  # a second check would fail
        assert load_workflow(other, cache=cache).source == str(other)


def checked(path: Path) -> tuple[Workflow, dict[str, Any]]:
    """The full check of ``path``: its workflow and the document it was built from."""
    text = path.read_text("utf-8")
    return definition._checked(text, str(path), hashlib.sha256(text.encode()).hexdigest())


def test_a_changed_file_is_checked_in_full(tmp_path: Path, cache: Path) -> None:
    """After a good text was cached, the file made invalid fails exactly as without a cache:
    the same class, message and file:line:column."""
    path = rich(tmp_path)
    load_workflow(path, cache=cache)
    path.write_text(RICH.replace("max_retries: 2", "max_retries: -1"), "utf-8")
    with pytest.raises(DefinitionError) as cached_run:
        load_workflow(path, cache=cache)
    with pytest.raises(DefinitionError) as plain_run:
        load_workflow(path)
    assert isinstance(cached_run.value, SchemaError)
    assert str(cached_run.value) == str(plain_run.value)
    assert str(cached_run.value).startswith(f"{path}:9:22: retry.max_retries")
    assert len(entries(cache)) == 1  # the bad text left nothing behind


def test_a_changed_file_that_is_still_valid_is_a_new_entry(tmp_path: Path, cache: Path) -> None:
    """Edited and still valid, a file gives its new values (never the old parse)."""
    path = rich(tmp_path)
    assert load_workflow(path, cache=cache).retry.max_retries == 2
    path.write_text(RICH.replace("max_retries: 2", "max_retries: 5"), "utf-8")
    assert load_workflow(path, cache=cache).retry.max_retries == 5
    assert len(entries(cache)) == 2


def _entry(cache: Path) -> Path:
    (entry,) = entries(cache)
    return entry


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda e: e.write_bytes(e.read_bytes()[:40]), id="torn"),
        pytest.param(lambda e: e.write_bytes(b"\x00\xff garbage"), id="not-json"),
        pytest.param(lambda e: e.write_text("[]"), id="not-an-object"),
        pytest.param(lambda e: _edit(e, fingerprint="0" * 64), id="another-fingerprint"),
        pytest.param(lambda e: _edit(e, format=0), id="older-format"),
        pytest.param(lambda e: _edit(e, sha256="1" * 64), id="another-text"),
        pytest.param(
            lambda e: _edit(e, doc=_doc(e).replace('"max_retries": 2', '"max_retries": 9')),
            id="edited-document",
        ),
        pytest.param(lambda e: _edit(e, doc=None), id="no-document"),
    ],
)
def test_a_spoilt_entry_is_a_miss_and_is_rebuilt(
    spoil: object, tmp_path: Path, cache: Path
) -> None:
    """An entry that is torn, not JSON, of another format, fingerprint or text, or whose
    document was edited is ignored: the file is checked again, gives its own values, and the
    entry is written anew."""
    path = rich(tmp_path)
    good = load_workflow(path, cache=cache)
    before = _entry(cache).read_bytes()
    spoil(_entry(cache))  # type: ignore[operator]
    assert load_workflow(path, cache=cache) == good
    assert _entry(cache).read_bytes() == before


def _doc(entry: Path) -> str:
    doc: str = json.loads(entry.read_text("utf-8"))["doc"]
    return doc


def _edit(entry: Path, **fields: object) -> None:
    data = json.loads(entry.read_text("utf-8"))
    data.update(fields)
    entry.write_text(json.dumps(data), "utf-8")


def test_another_fingerprint_is_a_miss(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new release, schema, definition source or checking library (another fingerprint)
    checks the text again instead of trusting a judgement it did not make."""
    path = rich(tmp_path)
    load_workflow(path, cache=cache)
    monkeypatch.setattr(_cache, "fingerprint", lambda: "f" * 64)
    calls = []
    real = definition._checked
    monkeypatch.setattr(definition, "_checked", lambda *a: calls.append(a) or real(*a))
    load_workflow(path, cache=cache)
    assert len(calls) == 1
    assert json.loads(_entry(cache).read_text("utf-8"))["fingerprint"] == "f" * 64


def test_the_fingerprint_covers_the_definition_source_and_the_schema() -> None:
    """The fingerprint reads the schema and every module of the definition package, and the
    checking libraries' files: it changes when any of them does."""
    opened: list[str] = []
    real = Path.read_bytes

    def spy(self: Path) -> bytes:
        opened.append(self.name)
        return real(self)

    _cache.fingerprint.cache_clear()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Path, "read_bytes", spy)
            _cache.fingerprint()
    finally:
        _cache.fingerprint.cache_clear()
    modules = {p.name for p in (ROOT / "demiarch_flow" / "definition").glob("*.py")}
    assert {"workflow.schema.json", "model.py", "_schema.py", "_graph.py"} <= set(opened)
    assert modules <= set(opened)


def test_a_cache_that_cannot_be_written_is_left_off(tmp_path: Path) -> None:
    """A cache folder that cannot be made (a file is in its place) costs nothing but time:
    the workflow loads, and nothing is written."""
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    assert load_workflow(rich(tmp_path), cache=blocker) == load_workflow(rich(tmp_path))
    assert blocker.read_text() == "not a folder"


def test_an_entry_is_written_whole(tmp_path: Path, cache: Path) -> None:
    """Written through a temporary file renamed over the entry: no temporary file is left,
    and the entry is private to the user."""
    load_workflow(rich(tmp_path), cache=cache)
    (entry,) = entries(cache)
    assert not entry.name.startswith(".")
    assert oct(entry.stat().st_mode & 0o777) == oct(0o600)
    assert json.loads(entry.read_text("utf-8"))["format"] == _cache.CACHE_FORMAT


def test_a_document_json_does_not_hold_is_not_kept(tmp_path: Path, cache: Path) -> None:
    """A document whose values JSON would change (a date) is not kept: a hit could not give
    the same workflow."""
    wf = load_workflow(rich(tmp_path))
    doc = {"description": date(2024, 1, 1)}
    _cache.remember(cache / "workflows", doc, wf)
    assert not (cache / "workflows").exists()


def test_a_document_that_builds_another_workflow_is_not_kept(tmp_path: Path, cache: Path) -> None:
    """`remember` keeps a document only if it builds the very workflow it stands for."""
    wf = load_workflow(rich(tmp_path))
    other = load_workflow(FILES[0])
    _, doc = checked(FILES[0])
    _cache.remember(cache / "workflows", doc, wf)
    assert not entries(cache)
    _cache.remember(cache / "workflows", doc, other)
    assert len(entries(cache)) == 1


def test_the_cache_folder_follows_the_data_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """`DEMIARCH_FLOW_HOME` holds the cache too (`cache/`); else the platform's cache folder."""
    from demiarch_flow.paths import cache_dir

    monkeypatch.setenv("DEMIARCH_FLOW_HOME", "/tmp/flow-home")
    assert cache_dir() == Path("/tmp/flow-home/cache")
    monkeypatch.delenv("DEMIARCH_FLOW_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", "/tmp/xdg-cache")
    assert cache_dir() == Path("/tmp/xdg-cache/demiarch-flow")
    monkeypatch.delenv("XDG_CACHE_HOME")
    if os.name == "posix" and os.uname().sysname == "Linux":
        assert cache_dir() == Path.home() / ".cache" / "demiarch-flow"


def test_without_a_home_folder_the_workflow_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """No `DEMIARCH_FLOW_HOME`, no XDG folder and no home to be found (`Path.home()` fails):
    commands still read their workflow, checked in full, with no cache."""
    from demiarch_flow.cli._common import workflow_from

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("DEMIARCH_FLOW_HOME")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert workflow_from(None).name == "chat"


@pytest.mark.parametrize("which", ["rich", *[p.name for p in FILES]])
def test_a_hit_carries_the_table_read_off_the_class(
    which: str, tmp_path: Path, cache: Path
) -> None:
    """The entry keeps the transition table of the workflow's python-statemachine class, and
    the workflow rebuilt from it carries exactly that table; one checked in this process
    carries none (the runner derives it from the class)."""
    from demiarch_flow.definition.machine import machine_class, transition_moves

    path = rich(tmp_path) if which == "rich" else next(p for p in FILES if p.name == which)
    first = load_workflow(path, cache=cache)
    assert definition.known_moves(first) is None
    hit = load_workflow(path, cache=cache)
    assert definition.known_moves(hit) == transition_moves(machine_class(load_workflow(path)))


def test_a_spoilt_table_is_a_miss(tmp_path: Path, cache: Path) -> None:
    """A table edited in the entry (a move sent elsewhere) no longer matches the entry's digest:
    the text is checked in full and the entry written anew."""
    path = rich(tmp_path)
    load_workflow(path, cache=cache)
    (entry,) = entries(cache)
    data = json.loads(entry.read_text("utf-8"))
    table = json.loads(data["table"])
    table["moves"]["Request"]["succeeded"] = "Failed"
    data["table"] = json.dumps(table)
    entry.write_text(json.dumps(data), "utf-8")
    hit = load_workflow(path, cache=cache)
    assert definition.known_moves(hit) is None  # checked in full, not rebuilt
    assert (
        json.loads(json.loads(entry.read_text("utf-8"))["table"])["moves"]["Request"]["succeeded"]
        == "Persist"
    )


def test_a_class_no_table_reproduces_is_kept_without_one(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the class have something a table cannot reproduce, the entry keeps the document
    and no table: the hit carries none, and the runner derives (or refuses) as for a text
    checked now."""
    from demiarch_flow.definition import machine

    def refuse(cls: Any) -> Any:
        raise TypeError("a guard")

    monkeypatch.setattr(machine, "transition_moves", refuse)
    path = rich(tmp_path)
    load_workflow(path, cache=cache)
    (entry,) = entries(cache)
    assert json.loads(entry.read_text("utf-8"))["table"] == "null"
    hit = load_workflow(path, cache=cache)
    assert hit == load_workflow(path) and definition.known_moves(hit) is None
