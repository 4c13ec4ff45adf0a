"""The ``limits`` block refuses what YAML would silently turn into a policy nobody wrote: rate keys
that YAML reads as null, booleans, numbers or dates, base-60 numbers (``1:30`` is 90 in YAML
1.1), and rates below one a minute — each at file:line:column, exit 2, before any request."""

from __future__ import annotations

from pathlib import Path

import pytest

from demiarch_flow.cli.main import main
from demiarch_flow.definition import parse_workflow
from demiarch_flow.errors import DefinitionError

from ..conftest import DEFAULT_WORKFLOW

DEFAULT = DEFAULT_WORKFLOW.read_text("utf-8")
#: The line of the first line appended after the default workflow (and its blank line).
FIRST = DEFAULT.count("\n") + 2


def _with_limits(block: str) -> str:
    return DEFAULT + "\nlimits:\n" + block


def _refused(text: str) -> DefinitionError:
    with pytest.raises(DefinitionError) as info:
        parse_workflow(text, "my.yaml")
    return info.value


# ---------------------------------------------------------------- rate keys YAML reads as values


@pytest.mark.parametrize(
    ("key", "reading"),
    [
        ("~", "null"),
        ("null", "null"),
        ("yes", "the boolean true"),
        ("Off", "the boolean false"),
        ("123", "the number 123"),
        ("0x1F", "the number 31"),
        ("1.5", "the number 1.5"),
        (".inf", "the number inf"),
        ("2025-01-01", "a date"),
    ],
)
def test_a_rate_key_yaml_reads_as_a_value_is_refused_at_its_line(key: str, reading: str) -> None:
    """`~:`, `yes:`, `123:` … under limits.rate: refused at the key, naming what YAML read."""
    err = _refused(_with_limits(f"  rate:\n    {key}: {{rpm: 60}}\n"))
    assert (err.file, err.line, err.column) == ("my.yaml", FIRST + 2, 5)
    assert err.path == f"limits.rate.{key}"
    assert f"YAML reads the key {key} as {reading}" in err.detail
    assert "would match no model" in err.detail
    assert f'"{key}"' in err.detail  # how to write it if it really is a model id


def test_a_quoted_rate_key_is_a_name() -> None:
    """Quoted, the same text is a glob like any other (the user said so)."""
    wf = parse_workflow(_with_limits("  rate:\n    \"yes\": {rpm: 60}\n    '123': {rpm: 6}\n"))
    assert wf.limits is not None
    assert [b.key for b in wf.limits.rate] == ["yes", "123"]


def test_a_state_named_like_a_boolean_is_refused_by_name() -> None:
    """The same rule holds for every free-named mapping: a state `No:` could never be a target."""
    assert DEFAULT.rstrip().endswith("Failed:      {action: fail, final: true}")
    err = _refused(DEFAULT.rstrip() + "\n  No: {final: true}\n")
    assert err.path == "states.No"
    assert "YAML reads the key No as the boolean false" in err.detail


def test_validate_exits_2_naming_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the command line: exit 2, one paragraph with file:line:column, no traceback."""
    path = tmp_path / "my.yaml"
    path.write_text(_with_limits("  rate:\n    ~: {rpm: 60}\n"), "utf-8")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{FIRST + 2}:5: limits.rate.~: YAML reads the key ~ as null" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- base-60 numbers


@pytest.mark.parametrize(
    ("value", "means"), [("1:30", "90"), ("1:30.5", "90.5"), ("1:00:00", "3600")]
)
def test_a_base_60_number_is_refused_where_a_number_goes(value: str, means: str) -> None:
    """`daily_usd: 1:30` is not 90 dollars: refused at its line, saying what YAML 1.1 makes of it."""
    err = _refused(_with_limits(f"  budget:\n    daily_usd: {value}\n"))
    assert (err.file, err.line, err.column) == ("my.yaml", FIRST + 2, 16)
    assert err.path == "limits.budget.daily_usd"
    assert f"{value!r} is text, not a number" in err.detail
    assert f"base 60, as {means}" in err.detail


def test_a_base_60_number_in_a_retry_field_is_refused_too() -> None:
    """Anywhere in the file: `max_delay_s: 1:00` is not a minute, it is refused."""
    err = _refused(DEFAULT.replace("max_delay_s: 30 ", "max_delay_s: 1:00"))
    assert err.path == "retry.max_delay_s"
    assert "'1:00' is text, not a number" in err.detail


def test_a_base_60_looking_text_stays_the_text_written() -> None:
    """Where text goes, `12:30` is the text 12:30 (YAML 1.1 would have made it 750)."""
    wf = parse_workflow(DEFAULT.replace("name: chat\n", "name: chat\nsystem: 12:30\n"))
    assert wf.system == "12:30"


# ---------------------------------------------------------------- rates below one a minute


@pytest.mark.parametrize(("field", "value"), [("tpm", "0.01"), ("rpm", "0.5"), ("rpm", "0.999")])
def test_a_rate_below_one_a_minute_is_refused(field: str, value: str) -> None:
    """`tpm: 0.01` would push a shared bucket days ahead: refused, naming the minimum of 1."""
    err = _refused(_with_limits(f'  rate:\n    "*": {{{field}: {value}}}\n'))
    assert (err.line, err.path) == (FIRST + 2, f"limits.rate.*.{field}")
    assert err.detail == f"{value} is less than the minimum of 1"


def test_a_rate_of_one_a_minute_is_accepted() -> None:
    """The minimum itself is allowed (one request, or one token, a minute)."""
    wf = parse_workflow(_with_limits('  rate:\n    "*": {rpm: 1, tpm: 1}\n'))
    assert wf.limits is not None
    assert (wf.limits.rate[0].rpm, wf.limits.rate[0].tpm) == (1, 1)


# ---------------------------------------------------------------- octal and binary integers


@pytest.mark.parametrize(
    ("value", "reads"),
    [
        ("010", "in octal, as 8, YAML 1.2 as 10; write 10 or 8"),
        ("017", "in octal, as 15, YAML 1.2 as 17; write 17 or 15"),
        ("0b11", "in binary, as 3, YAML 1.2 as text; write 3"),
    ],
)
def test_an_octal_or_binary_integer_is_refused_where_a_number_goes(value: str, reads: str) -> None:
    """`max_retries: 010` is 8 to PyYAML (YAML 1.1) and 10 to YAML 1.2: never a silent 8."""
    err = _refused(DEFAULT.replace("max_retries: 3 ", f"max_retries: {value} "))
    assert err.path == "retry.max_retries"
    assert f"{value!r} is text, not a number (YAML 1.1 reads it {reads}" in err.detail


@pytest.mark.parametrize("value", ["1", "10", "0x10", "2.5", "1_000"])
def test_plain_decimal_and_hex_integers_still_read_as_numbers(value: str) -> None:
    """Only the forms the two YAML versions read differently are refused."""
    wf = parse_workflow(DEFAULT.replace("max_delay_s: 30 ", f"max_delay_s: {value} "))
    assert wf.retry.max_delay_s == float(int(value, 0) if "x" in value else value)


def test_an_octal_looking_text_stays_the_text_written() -> None:
    """Where text goes, `007` is the text 007 (YAML 1.1 would have made it 7)."""
    wf = parse_workflow(DEFAULT.replace("name: chat\n", "name: chat\nsystem: 007\n"))
    assert wf.system == "007"
