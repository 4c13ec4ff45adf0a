"""Hostile input that is easier to build than to store: bounds, encodings and the model-name rule."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from demiarch_flow.definition import (
    MAX_FILE_BYTES,
    MAX_MODEL_NAME,
    check_model_name,
    load_workflow,
    parse_workflow,
)
from demiarch_flow.errors import DefinitionError, SchemaError, YamlSyntaxError

from ..conftest import DEFAULT_WORKFLOW

DEFAULT = DEFAULT_WORKFLOW.read_text("utf-8")


def _with(old: str, new: str) -> str:
    assert old in DEFAULT
    return DEFAULT.replace(old, new, 1)


# ---------------------------------------------------------------- the model-name rule


@pytest.mark.parametrize(
    "name",
    [
        "openai/gpt-4o",
        "anthropic/claude-3.5-haiku",
        "meta-llama/llama-3.1-8b-instruct:free",
        "openrouter/auto",
        "x" * MAX_MODEL_NAME,
    ],
)
def test_usable_model_names_pass(name: str) -> None:
    """Real OpenRouter ids, and a name exactly as wide as the model columns."""
    assert check_model_name(name) is None


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "model name is empty"),
        ("x" * (MAX_MODEL_NAME + 1), "model name is 201 characters long (at most 200)"),
        (" openai/gpt-4o", "leading or trailing whitespace"),
        ("openai/gpt-4o\n", "leading or trailing whitespace"),
        ("openai/gpt 4o", "contains whitespace (U+0020)"),
        ("openai/gpt\u00a04o", "contains whitespace (U+00A0)"),
        ("openai/gpt-4o\0", "control or invisible character U+0000"),
        ("openai/\x1b[31mgpt", "control or invisible character U+001B"),
        ("openai/gpt\u200b-4o", "control or invisible character U+200B"),
        ("\ufeffopenai/gpt-4o", "control or invisible character U+FEFF"),
        ("openai/\ud800", "control or invisible character U+D800"),
    ],
)
def test_unusable_model_names_are_described(name: str, problem: str) -> None:
    """Too long for the columns, empty, spaced, or carrying characters no id has."""
    found = check_model_name(name)
    assert found is not None and problem in found
    assert found.startswith("model name ")


def test_model_name_limit_matches_the_store_columns() -> None:
    """The limit is the width of every model column, so a name that passes can be stored."""
    from demiarch_flow.store import tables

    widths = {
        column.type.length
        for table in tables.Base.metadata.tables.values()
        for column in table.columns
        if column.name in ("model", "requested_model")
    }
    assert widths == {MAX_MODEL_NAME}


def test_workflow_name_fits_its_column() -> None:
    """64 characters pass (the width of workflow_runs.workflow), 65 do not."""
    assert parse_workflow(_with("name: chat", "name: " + "c" * 64)).name == "c" * 64
    with pytest.raises(SchemaError):
        parse_workflow(_with("name: chat", "name: " + "c" * 65))


# ---------------------------------------------------------------- strings that are fine


def test_prose_may_hold_tabs_and_line_breaks() -> None:
    """A system prompt or description is text: tabs and newlines are allowed, controls not."""
    wf = parse_workflow(
        _with("description: One", 'system: "Be brief.\\n\\tAlways."\ndescription: One')
    )
    assert wf.system == "Be brief.\n\tAlways."
    with pytest.raises(SchemaError, match=r"control character U\+0007"):
        parse_workflow(_with("description: One", 'system: "ding\\a"\ndescription: One'))


def test_byte_order_mark_is_accepted_and_columns_stay_right(tmp_path: Path) -> None:
    """A UTF-8 BOM (Windows editors write one) loads; a fault on line 1 keeps its column."""
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + DEFAULT.encode())
    assert load_workflow(path).models == load_workflow(DEFAULT_WORKFLOW).models
    path.write_bytes(b"\xef\xbb\xbfversion: 2\n" + _with("version: 1\n", "").encode())
    with pytest.raises(SchemaError, match="expected 1") as info:
        load_workflow(path)
    assert (info.value.line, info.value.column) == (1, 10)


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1.0e+400"])
@pytest.mark.parametrize(
    ("old", "field"),
    [
        ("timeout_s: 120", "timeout_s"),
        ("initial_delay_s: 1", "initial_delay_s"),
        ("backoff_rate: 2", "backoff_rate"),
        ("max_delay_s: 30", "max_delay_s"),
        ("# optional: temperature, max_tokens", "temperature"),
    ],
)
def test_non_finite_numbers_never_reach_the_model(old: str, field: str, value: str) -> None:
    """NaN passes every minimum and maximum; it must fail on its type, with its position."""
    with pytest.raises(SchemaError, match="is not a finite number") as info:
        parse_workflow(_with(old, f"{field}: {value}"), "w.yaml")
    assert info.value.line > 0 and info.value.column > 0


def test_finite_extremes_build_without_overflow() -> None:
    """The largest accepted values still make a workflow whose numbers are finite floats."""
    wf = parse_workflow(_with("backoff_rate: 2", "backoff_rate: 9223372036854775807"))
    assert math.isfinite(wf.retry.backoff_rate)
    wf = parse_workflow(_with("initial_delay_s: 1", "initial_delay_s: 0.001"))
    assert wf.retry.initial_delay_s == 0.001
    with pytest.raises(SchemaError, match="out of range"):
        parse_workflow(_with("backoff_rate: 2", "backoff_rate: 9223372036854775808"))


# ---------------------------------------------------------------- structure and size


@pytest.mark.parametrize("opener", ["[", "{a: ", "- "])
def test_deep_nesting_is_a_syntax_error_not_a_recursion_error(opener: str) -> None:
    """5,000 levels: PyYAML's composer would recurse; the limit stops it with a location."""
    closer = {"[": "]", "{a: ": "}", "- ": ""}[opener]
    text = "models:\n  " + opener * 5000 + "x" + closer * 5000 + "\n"
    with pytest.raises(YamlSyntaxError, match="nesting is deeper than 100 levels") as info:
        parse_workflow(text, "deep.yaml")
    assert info.value.line == 2


def test_aliases_cannot_stack_nesting_past_the_limit() -> None:
    """Each anchor is shallow, but aliases nest them: the walk is bounded as well."""
    lines = ["a0: &a0 x"]
    for i in range(1, 30):
        lines.append(f"a{i}: &a{i} " + "[" * 10 + f"*a{i - 1}" + "]" * 10)
    with pytest.raises(YamlSyntaxError, match="nesting is deeper than 100 levels"):
        parse_workflow("\n".join(lines) + "\n", "stack.yaml")


def test_empty_file(tmp_path: Path) -> None:
    """Zero bytes: the file is empty, at 1:1."""
    path = tmp_path / "empty.yaml"
    path.write_bytes(b"")
    with pytest.raises(YamlSyntaxError, match="the file is empty") as info:
        load_workflow(path)
    assert (info.value.line, info.value.column) == (1, 1)


def test_utf16_file_is_not_utf8(tmp_path: Path) -> None:
    """A UTF-16 file (Notepad's 'Unicode') is refused at its first byte."""
    path = tmp_path / "utf16.yaml"
    path.write_bytes(DEFAULT.encode("utf-16"))
    with pytest.raises(YamlSyntaxError, match="not UTF-8") as info:
        load_workflow(path)
    assert (info.value.line, info.value.column) == (1, 1)


def test_huge_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    """Larger than the limit: refused by size, whatever it holds."""
    path = tmp_path / "huge.yaml"
    path.write_bytes(DEFAULT.encode() + b"#" * MAX_FILE_BYTES)
    with pytest.raises(YamlSyntaxError, match="too large") as info:
        load_workflow(path)
    assert str(info.value).startswith(f"{path}: ")
    with pytest.raises(YamlSyntaxError, match="too large"):
        parse_workflow("#" * (MAX_FILE_BYTES + 1))


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_endless_file_is_refused() -> None:
    """/dev/zero never ends; the read is bounded, so this returns at once."""
    with pytest.raises(YamlSyntaxError, match="too large"):
        load_workflow("/dev/zero")


def test_unreadable_paths_are_definition_errors(tmp_path: Path) -> None:
    """A directory, a NUL in the name: input errors, not crashes."""
    with pytest.raises(DefinitionError, match="cannot read the workflow file"):
        load_workflow(tmp_path)
    with pytest.raises(DefinitionError, match="cannot read the workflow file"):
        load_workflow("bad\0name.yaml")


def test_messages_stay_short_for_huge_values() -> None:
    """A 100,000-character model name is quoted in part: the message stays one paragraph."""
    text = _with("openai/gpt-4o", "openai/" + "x" * 100_000)
    with pytest.raises(SchemaError, match="100007 characters long") as info:
        parse_workflow(text, "w.yaml")
    assert len(str(info.value)) < 300
