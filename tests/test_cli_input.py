"""Command-line input is checked before anything is opened or sent (in-process checks; the
subprocess view of the same rules is tests/hostile/test_command_lines.py)."""

from __future__ import annotations

import io

import pytest

from demiarch_flow.cli._common import (
    check_conversation_option,
    check_model_option,
    read_message,
    resolve_base_url,
)
from demiarch_flow.cli._lines import parse_line
from demiarch_flow.errors import UsageError
from demiarch_flow.faults import MAX_REPEAT, FaultScript


class _Pipe(io.TextIOWrapper):
    """A piped stdin: not a terminal, with the bytes underneath."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")

    def isatty(self) -> bool:
        return False


@pytest.mark.parametrize(
    ("flag", "stdin", "problem"),
    [
        ("a\x00b", b"", "NUL character"),
        ("caf\udce9", b"", "not valid UTF-8"),  # how Python hands over argv with a bad byte
        (None, b"caf\xe9", r"the message on stdin is not valid UTF-8 \(byte 3"),
        (None, b"a\x00b", "NUL character"),
        (None, b"", "the message is empty"),
        (None, b" \n\t", "the message is empty"),
    ],
)
def test_read_message_refuses(flag: str | None, stdin: bytes, problem: str) -> None:
    """Invalid UTF-8 and NUL characters are input errors, from -m and from stdin alike."""
    with pytest.raises(UsageError, match=problem) as info:
        read_message(flag, _Pipe(stdin))
    assert info.value.exit_code == 2


def test_read_message_decodes_stdin_as_utf8() -> None:
    """Valid UTF-8 on stdin is read whole, newlines and all."""
    assert read_message(None, _Pipe("héllo\nwörld\n".encode())) == "héllo\nwörld\n"


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        ("x" * 201, r"201 characters long \(at most 200\)"),
        ("", "model name is empty"),
        (" anthropic/claude-sonnet-4", "whitespace"),
        ("anthropic/claude\n", "whitespace"),
        ("anthropic/claude\x07", "control or invisible character U\\+0007"),
        ("a\x00b", "NUL"),
        ("a\udcffb", "not valid UTF-8"),
    ],
)
def test_model_option_rule(model: str, problem: str) -> None:
    """--model follows the workflow files' model-name rule; 200 characters is the column size."""
    with pytest.raises(UsageError, match=problem):
        check_model_option(model)


def test_model_option_accepts_200_characters() -> None:
    """The limit is inclusive, and no --model is fine."""
    assert check_model_option("x" * 200) == "x" * 200
    assert check_model_option(None) is None


def test_conversation_option_refuses_nul_surrogates_and_empty() -> None:
    """--conversation with a NUL would fail inside PostgreSQL, an empty one would record a failed
    run: both are input errors instead."""
    for bad in ("a\x00", "a\udcff", "", "  "):
        with pytest.raises(UsageError, match="--conversation"):
            check_conversation_option(bad)
    assert check_conversation_option("ok-id") == "ok-id"


def test_base_url_names_its_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """The message says whether --base-url or OPENROUTER_BASE_URL is wrong."""
    monkeypatch.setenv("OPENROUTER_BASE_URL", "ftp://x/api")
    with pytest.raises(UsageError, match=r"^OPENROUTER_BASE_URL 'ftp://x/api' cannot be used"):
        resolve_base_url(None)
    with pytest.raises(UsageError, match=r"^--base-url 'http://\[::1/api' cannot be used"):
        resolve_base_url("http://[::1/api")
    assert resolve_base_url("http://127.0.0.1:1/api/v1") == "http://127.0.0.1:1/api/v1"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"message": "\\ud800"}', "'message' cannot be used: it is not valid UTF-8"),
        ('{"message": "a\\u0000b"}', "'message' cannot be used: it contains a NUL"),
        ('{"message": "x", "id": "\\udfff"}', "'id' cannot be used"),
        ('{"message": "x", "conversation_id": "c\\u0000"}', "'conversation_id' cannot be used"),
        ('{"message": "x", "model": "' + "m" * 201 + '"}', "(at most 200)"),
        ('{"message": "x", "model": " m"}', "whitespace"),
        ('{"message": "x", "id": ' + "9" * 5000 + "}", "not JSON that can be read"),
        ("[" * 100_000 + "]" * 100_000, "not JSON that can be read"),
    ],
)
def test_parse_line_refuses_what_cannot_be_sent_or_stored(text: str, problem: str) -> None:
    """Lone surrogates, NULs, oversized model names and unreadable JSON are bad lines."""
    with pytest.raises(UsageError, match=problem):
        parse_line(text, 1)


@pytest.mark.parametrize(
    ("script", "problem"),
    [
        ("*=ok*99999999999", "a repetition count is at most 10,000"),
        (f"*=ok*{MAX_REPEAT + 1}", "a repetition count is at most 10,000"),
        ("*=ok*" + "9" * 5000, "a repetition count is at most 10,000"),
        ("*=" + ",".join(["500*10000"] * 11), "more than 100,000 outcomes"),
        ("*=slow:1.2.3", "is not a number of seconds"),
        ("*=429@date+x", "date\\+S takes a number of seconds"),
        ("*=429@date+1e99", "date\\+S takes a number of seconds"),
        ("*=429@date+nan", "date\\+S takes a number of seconds"),
        ("*=429@reset+x", "reset\\+S takes a number of seconds"),
        ("*=429@reset+1e99", "reset\\+S takes a number of seconds"),
        ("*=000", "a status is from 200 to 599"),
        ("*=999", "a status is from 200 to 599"),
        ("*=429@a\x01b", "printable ASCII"),
    ],
)
def test_fault_script_limits(script: str, problem: str) -> None:
    """Fault scripts that would exhaust memory or fail later when rendered are input errors."""
    with pytest.raises(UsageError, match=problem):
        FaultScript.parse(script)


def test_fault_script_at_the_limits() -> None:
    """10,000 repetitions, date offsets, junk Retry-After and ITEM* still parse."""
    script = FaultScript.parse(f"a=ok*{MAX_REPEAT};b=429@date+-5,429@junk,500*")
    assert len(script.steps["a"]) == MAX_REPEAT
    assert [f.retry_after for f in script.steps["b"]] == ["date+-5", "junk"]
    assert script.forever["b"].status == 500


def test_reset_sends_only_x_ratelimit_reset() -> None:
    """``429@reset+5``: OpenRouter's X-RateLimit-Reset (epoch ms) 5 s after now, and no
    Retry-After, so a client that reads only Retry-After sees no hint."""
    from datetime import UTC, datetime

    from demiarch_flow.faults import render
    from demiarch_flow.pricing import PriceTable

    (fault,) = FaultScript.parse("a=429@reset+5").steps["a"]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    out = render(fault, "a", [], PriceTable.load(), "gen-1", now)
    assert out.status == 429
    assert "Retry-After" not in out.headers
    assert int(out.headers["X-RateLimit-Reset"]) == int(now.timestamp() * 1000) + 5000


def test_refused_is_a_fault_word() -> None:
    """``refused`` (a connection refused) parses like ``reset``, repeated and forever."""
    script = FaultScript.parse("a=refused*2,ok;b=refused*")
    assert [f.kind for f in script.steps["a"]] == ["refused", "refused", "ok"]
    assert script.forever["b"].kind == "refused"
