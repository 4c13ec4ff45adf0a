"""The hostile provider-response corpus: raw HTTP answers (status, headers, body bytes), each
with the outcome it must have, run through the real runner and, for a subset, the real CLI.

Nothing in it may reach "internal error": an answer is either a stored reply or exactly one
error class, and a reply that was paid for is in the database or in the recovery file.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from demiarch_flow.definition import load_workflow
from demiarch_flow.runner import RunRequest, run_workflow
from demiarch_flow.store import MemoryStore
from demiarch_flow.store.sql import SqlStore
from demiarch_flow.testing import make_env

from ..conftest import DEFAULT_WORKFLOW
from ..e2e.conftest import FAST, Cli

SONNET = "anthropic/claude-sonnet-4"
OK = "succeeded"


_IDS = itertools.count(1)


def body(**replace: Any) -> bytes:
    """A normal success body (with an id of its own) with some top-level fields replaced."""
    answer: dict[str, Any] = {
        "id": f"gen-hostile-{next(_IDS)}", "object": "chat.completion", "model": SONNET,
        "provider": "Anthropic",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "the paid answer"}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
                  "prompt_tokens_details": {"cached_tokens": 0}, "cost": 0.00009},
    }  # fmt: skip
    answer.update(replace)
    return json.dumps(answer).encode()


def usage(**fields: Any) -> bytes:
    return body(usage={"prompt_tokens": 10, "completion_tokens": 4, **fields})


def message(content: Any) -> bytes:
    return body(choices=[{"index": 0, "message": {"role": "assistant", "content": content}}])


def error(code: Any, message: Any = "upstream said no", **extra: Any) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, **extra}}).encode()


@dataclass(frozen=True)
class Answer:
    """One raw answer and what it must come to: ``OK`` (a stored reply) or the error class of
    the attempt; the CLI exits 0 for the first, 1 for the others."""

    name: str
    status: int
    content: bytes
    expect: str
    headers: tuple[tuple[bytes, bytes], ...] = ((b"Content-Type", b"application/json"),)

    @property
    def exit_code(self) -> int:
        return 0 if self.expect == OK else 1


def _with(*headers: tuple[bytes, bytes]) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"Content-Type", b"application/json"), *headers)


CORPUS = [
    # absurd numbers in a success: unknown figures, the reply is kept
    Answer("cost_1e30", 200, usage(cost=1e30), OK),
    Answer("cost_string_1e40", 200, usage(cost="1e40"), OK),
    Answer("cost_negative", 200, usage(cost=-3), OK),
    Answer("cost_nan_literal", 200, usage(cost=float("nan")), OK),
    Answer("cost_infinity_literal", 200, usage(cost=float("inf")), OK),
    Answer(
        "cost_5000_digits",
        200,
        b'{"choices": [{"message": {"content": "x"}}], "usage": {"cost": ' + b"9" * 5000 + b"}}",
        OK,
    ),
    Answer("tokens_1e23", 200, usage(prompt_tokens=1e23, completion_tokens=1e23), OK),
    Answer("tokens_bigint", 200, usage(prompt_tokens=10**30, total_tokens=2**31), OK),
    Answer("tokens_negative", 200, usage(prompt_tokens=-5, completion_tokens=-1), OK),
    Answer("tokens_strings", 200, usage(prompt_tokens="10", completion_tokens=[4]), OK),
    Answer("cached_tokens_absurd", 200, usage(prompt_tokens_details={"cached_tokens": 1e99}), OK),
    # wrong types around a usable content
    Answer("usage_string", 200, body(usage="lots"), OK),
    Answer("usage_list", 200, body(usage=[1, 2]), OK),
    Answer("model_dict", 200, body(model={"name": "x"}), OK),
    Answer("model_huge", 200, body(model="m" * 100_000), OK),
    Answer("id_number", 200, body(id=5), OK),
    Answer("id_huge", 200, body(id="g" * 100_000), OK),
    Answer("provider_list", 200, body(provider=["a"]), OK),
    Answer(
        "finish_reason_dict",
        200,
        body(choices=[{"finish_reason": {"x": 1}, "message": {"content": "x"}}]),
        OK,
    ),
    Answer(
        "content_lone_surrogate", 200, b'{"choices": [{"message": {"content": "a\\ud800b"}}]}', OK
    ),
    Answer(
        "model_lone_surrogate",
        200,
        b'{"model": "\\udfff", "choices": [{"message": {"content": "x"}}]}',
        OK,
    ),
    Answer("content_empty", 200, message(""), OK),
    Answer("content_nul", 200, message("a\u0000b"), OK),
    Answer("content_huge", 200, message("y" * 3_000_000), OK),
    Answer("utf8_bom", 200, b"\xef\xbb\xbf" + body(), OK),
    Answer("utf16_json", 200, body().decode().encode("utf-16"), OK),
    Answer("error_beside_choices", 200, body(error={"code": 500, "message": "x"}), OK),
    Answer("text_plain_type", 200, body(), OK, ((b"Content-Type", b"text/plain"),)),
    Answer("unknown_encoding", 200, body(), OK, _with((b"Content-Encoding", b"x-unheard-of"))),
    # success bodies that hold no answer: a broken upstream, retried
    Answer("choices_string", 200, body(choices="many"), "server_error"),
    Answer("choices_dict", 200, body(choices={"0": {}}), "server_error"),
    Answer("choices_empty", 200, body(choices=[]), "server_error"),
    Answer("choices_of_numbers", 200, body(choices=[7, 8]), "server_error"),
    Answer("message_string", 200, body(choices=[{"message": "hi"}]), "server_error"),
    Answer("content_number", 200, message(42), "server_error"),
    Answer("content_null", 200, message(None), "server_error"),
    Answer("content_list", 200, message([{"type": "text", "text": "hi"}]), "server_error"),
    Answer(
        "duplicate_key_last_wins",
        200,
        b'{"choices": [{"message": {"content": "x"}}], "choices": "gone"}',
        "server_error",
    ),
    Answer("deep_array", 200, b"[" * 200_000 + b"]" * 200_000, "server_error"),
    Answer(
        "deep_object_in_choices",
        200,
        b'{"choices": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}",
        "server_error",
    ),
    Answer("huge_garbage", 200, b"x" * 3_000_000, "server_error"),
    Answer("invalid_utf8", 200, b'{"choices": "\xff\xfe\xfd"}', "server_error"),
    Answer(
        "html",
        200,
        b"<html><body>502 Bad Gateway</body></html>",
        "server_error",
        ((b"Content-Type", b"text/html"),),
    ),
    Answer("empty_body", 200, b"", "server_error"),
    Answer("whitespace_body", 200, b" \r\n\t ", "server_error"),
    Answer("json_null", 200, b"null", "server_error"),
    Answer("json_number", 200, b"42", "server_error"),
    Answer("json_string", 200, b'"the answer"', "server_error"),
    Answer("json_list", 200, b"[]", "server_error"),
    Answer("truncated", 200, body()[:40], "server_error"),
    Answer("gzip_lie", 200, body(), "server_error", _with((b"Content-Encoding", b"gzip"))),
    Answer("deflate_lie", 200, body(), "server_error", _with((b"Content-Encoding", b"deflate"))),
    Answer("error_200_string", 200, b'{"error": "boom"}', "server_error"),
    Answer("error_200_code_429", 200, error(429), "rate_limited"),
    Answer("error_200_code_text", 200, error("server_error"), "server_error"),
    # error envelopes of every odd shape
    Answer("error_null", 400, b'{"error": null}', "bad_request"),
    Answer("error_list", 400, b'{"error": [1, 2]}', "bad_request"),
    Answer("error_number", 500, b'{"error": 7}', "server_error"),
    Answer("code_dict", 400, error({"x": 1}), "bad_request"),
    Answer("code_superscript_digits", 400, error("\u00b2\u00b2\u00b2"), "bad_request"),
    Answer("code_5000_digits", 400, error("9" * 5000), "bad_request"),
    Answer("code_infinite", 400, b'{"error": {"code": 1e400}}', "bad_request"),
    Answer("code_bool", 400, error(True), "bad_request"),
    Answer("code_wrapped_502_text", 400, error(" 502 "), "server_error"),
    Answer("message_dict", 400, error(400, {"deep": [1, {"x": None}]}), "bad_request"),
    Answer("message_huge", 400, error(400, "m" * 1_000_000), "bad_request"),
    Answer("message_lone_surrogate", 500, b'{"error": {"message": "\\udc80"}}', "server_error"),
    Answer("metadata_string", 402, error(402, metadata="x"), "payment_required"),
    Answer(
        "metadata_list",
        402,
        error(402, metadata=["openrouter_in_flight_budget"]),
        "payment_required",
    ),
    Answer(
        "in_flight_budget",
        402,
        error(402, metadata={"limit_source": "openrouter_in_flight_budget"}),
        "rate_limited",
    ),
    Answer("html_502", 502, b"<html>bad gateway</html>", "server_error"),
    Answer("empty_503", 503, b"", "server_error"),
    Answer("deep_500", 500, b"{" * 100_000, "server_error"),
    Answer("status_418", 418, b"{}", "bad_request"),
    Answer("status_599", 599, b"{}", "server_error"),
    Answer("redirect", 301, b"", "server_error", ((b"Location", b"https://elsewhere.test/"),)),
    # Retry-After garbage: the schedule applies, nothing crashes
    Answer("retry_after_words", 429, error(429), "rate_limited", _with((b"Retry-After", b"soon"))),
    Answer("retry_after_zero", 429, error(429), "rate_limited", _with((b"Retry-After", b"0"))),
    Answer("retry_after_negative", 429, error(429), "rate_limited", _with((b"Retry-After", b"-5"))),
    Answer("retry_after_nan", 429, error(429), "rate_limited", _with((b"Retry-After", b"NaN"))),
    Answer(
        "retry_after_huge", 429, error(429), "rate_limited", _with((b"Retry-After", b"9" * 400))
    ),
    Answer(
        "retry_after_past_date",
        429,
        error(429),
        "rate_limited",
        _with((b"Retry-After", b"Wed, 01 Jan 2020 00:00:00 GMT")),
    ),
    Answer(
        "retry_after_year_9999",
        429,
        error(429),
        "rate_limited",
        _with((b"Retry-After", b"Fri, 31 Dec 9999 23:59:59 GMT")),
    ),
    Answer(
        "retry_after_bytes", 429, error(429), "rate_limited", _with((b"Retry-After", b"\xff\xfe3"))
    ),
    Answer(
        "retry_after_twice",
        429,
        error(429),
        "rate_limited",
        _with((b"Retry-After", b"1"), (b"Retry-After", b"junk")),
    ),
    Answer(
        "retry_after_ms_garbage",
        429,
        error(429),
        "rate_limited",
        _with((b"retry-after-ms", b"-1e309"), (b"Retry-After", b"0.001")),
    ),
]


def test_corpus_names_are_unique() -> None:
    """Every case can be run alone by its name."""
    assert len({a.name for a in CORPUS}) == len(CORPUS)


def _transport(answer: Answer) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        # A stream, not content=: the client decodes it as it would a real body (gzip lies).
        return httpx.Response(
            answer.status, headers=list(answer.headers), stream=httpx.ByteStream(answer.content)
        )

    return httpx.MockTransport(handler)


def _params(answers: list[Answer]) -> list[Any]:
    # httpx leaves its stream generators to the garbage collector when a body fails to decode;
    # that ResourceWarning is httpx's, and harmless.
    leak = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
    return [
        pytest.param(a, id=a.name, marks=[leak] if b"Content-Encoding" in dict(a.headers) else [])
        for a in answers
    ]


@pytest.mark.parametrize("answer", _params(CORPUS))
async def test_runner_turns_every_answer_into_a_reply_or_one_error_class(
    answer: Answer, tmp_path: Path, autojump_clock: object
) -> None:
    """Through the real runner: the expected class, a stored reply for every success, and a
    --json object that can be printed as UTF-8."""
    store = MemoryStore()
    env = make_env(_transport(answer), store=store, recovery_dir=str(tmp_path))
    out = await run_workflow(load_workflow(DEFAULT_WORKFLOW), RunRequest("hi"), env)
    assert out.attempts[0].error_class == (None if answer.expect == OK else answer.expect)
    assert out.status == ("succeeded" if answer.expect == OK else "failed")
    json.dumps(out.to_json(), ensure_ascii=False).encode("utf-8")
    if answer.expect == OK:
        (row,) = store.usage
        assert out.content == row.content
        row.content.encode("utf-8")
        assert 0 <= row.cost_usd <= 1_000_000
        counts = (row.prompt_tokens, row.completion_tokens)
        assert all(n is None or 0 <= n < 2**31 for n in counts)  # None: not given believably
    else:
        assert store.usage == []
    assert not (tmp_path / "recovery.jsonl").exists()


async def test_every_paid_answer_fits_the_sql_columns(
    sql_store: SqlStore, tmp_path: Path, autojump_clock: object
) -> None:
    """Each success-shaped answer is stored by SQLite and PostgreSQL alike (NUMERIC(20, 9),
    32-bit token counts, VARCHAR(200) names), none goes to the recovery file."""
    paid = [a for a in CORPUS if a.expect == OK]
    for answer in paid:
        env = make_env(_transport(answer), store=sql_store, recovery_dir=str(tmp_path))
        out = await run_workflow(load_workflow(DEFAULT_WORKFLOW), RunRequest("hi"), env)
        assert out.status == "succeeded", (answer.name, out.error)
    assert (await sql_store.count_rows())["llm_usage"] == len(paid)
    assert not (tmp_path / "recovery.jsonl").exists()


# ------------------------------------------------------------------ the CLI, over a socket


class RawServer:
    """Serves one raw answer to every POST, and a /models listing to GET, on 127.0.0.1."""

    def __init__(self, answer: Answer, listing: bytes = b'{"data": []}') -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests += 1
                self._send(answer.status, answer.headers, answer.content)

            def do_GET(self) -> None:
                self._send(200, ((b"Content-Type", b"application/json"),), listing)

            def _send(self, status: int, headers: Any, content: bytes) -> None:
                head = [f"HTTP/1.1 {status} Hostile\r\n".encode()]
                head += [k + b": " + v + b"\r\n" for k, v in headers]
                head.append(f"Content-Length: {len(content)}\r\n\r\n".encode())
                self.wfile.write(b"".join(head) + content)

            def log_message(self, *args: Any) -> None:
                pass

        self.requests = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def raw_server() -> Iterator[Callable[..., RawServer]]:
    started: list[RawServer] = []

    def start(answer: Answer, listing: bytes = b'{"data": []}') -> RawServer:
        server = RawServer(answer, listing)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


#: The answers that once reached "internal error" (or lost a paid reply), and a few plain ones.
CLI_SUBSET = [a for a in CORPUS if a.name in {
    "cost_1e30", "tokens_bigint", "content_lone_surrogate", "deep_array", "gzip_lie",
    "code_5000_digits", "message_lone_surrogate", "invalid_utf8", "empty_body",
    "retry_after_bytes",
}]  # fmt: skip


@pytest.mark.e2e
@pytest.mark.parametrize("answer", _params(CLI_SUBSET))
def test_cli_run_json_exits_cleanly(
    answer: Answer, cli: Cli, raw_server: Callable[..., RawServer]
) -> None:
    """`run --json` against the raw answer: exit 0 or 1 as expected, one JSON object, no
    internal error, and a paid reply in the database."""
    server = raw_server(answer)
    res = cli("run", FAST, "-m", "hi", "--json", "--base-url", server.url)
    assert "internal error" not in res.stderr
    assert res.code == answer.exit_code, res.stderr
    out = res.json()
    assert out["status"] == ("succeeded" if answer.expect == OK else "failed")
    replies = cli.rows("select count(*) from chat_messages where role = 'assistant'")
    assert replies == [(1 if answer.expect == OK else 0,)]
    assert not (cli.home / "recovery.jsonl").exists()


@pytest.mark.e2e
def test_models_sync_skips_absurd_prices(cli: Cli, raw_server: Callable[..., RawServer]) -> None:
    """A /models listing with "1e40", negative and NaN prices: the sane one is written and the
    skipped ones are counted."""
    listing = {"data": [
        {"id": "a/ok", "pricing": {"prompt": "0.000003", "completion": "0.000015"}},
        {"id": "a/huge", "pricing": {"prompt": "1e40", "completion": "1"}},
        {"id": "a/neg", "pricing": {"prompt": "-1", "completion": "1"}},
        {"id": "a/nan", "pricing": {"prompt": "NaN", "completion": "Infinity"}},
    ]}  # fmt: skip
    server = raw_server(CORPUS[0], json.dumps(listing).encode())
    res = cli("models", "sync", "--base-url", server.url, "--force")
    assert res.code == 0, res.stderr
    assert "wrote prices of 1 models" in res.stdout
    assert "skipped 3" in res.stdout
