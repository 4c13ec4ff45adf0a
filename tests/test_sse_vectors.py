"""Our SSE decoder against the decoder test suites of two peers, translated to our layers.

Sources (read at these commits):

* ``openai/openai-python`` ``tests/test_streaming.py``
  (e43b422412a9e96c9cc5192c61fffbe2d7e04836): ten event-iterator cases.
* ``florimondmanca/httpx-sse`` ``tests/test_decoders.py``, ``tests/test_event_source.py``,
  ``tests/test_api.py``, ``tests/test_models.py`` (27c2fa9c66159ee9db214c03992f688279263c22).

Each upstream case keeps its name (``source::test``) as the test id and is checked at the
layer it tests: line splitting (:class:`LineSplitter`), event decoding (:class:`EventDecoder`),
and, where an event's data can be a chat-completion chunk, the chat level
(:class:`StreamReader`: the deltas it hands back). Every line and event vector is also fed
whole and one byte at a time: framing must not depend on where reads are cut.

Translated: httpx-sse test_decoders.py 36/36 (text chunks → UTF-8 bytes); test_event_source.py
11/11 at the event level (the ``retry:`` cases only there: retry has no meaning for a chat
reply), 8 of them also at the chat level; test_api.py 6/6 (the line helpers at the line level,
``connect_sse`` as "which content types are read as a stream"; httpx-sse raises ``SSEError``
for another content type, where we read the answer whole — a server may answer a streamed
request whole); test_models.py 1/3 (the defaults). openai-python 10/10 at the event level
(its ``event is None`` is the specification's default, ``"message"``) and 10/10 at the chat
level.

Skipped: httpx-sse test_models.py ``test_sse_json`` and ``test_sse_repr`` (our event has no
``json()``; its repr is the dataclass's), ``connect_sse``'s request headers (we send neither
``Accept`` nor ``Cache-Control``; that is the helper's request, not decoding),
test_exceptions.py (no ``SSEError``: see above) and test_asgi.py (an sse-starlette round trip:
a server framework, not decoder behaviour).
"""

from __future__ import annotations

import json

import httpx
import pytest

from demiarch_flow.client import ApiKey, OpenRouterClient
from demiarch_flow.client.streaming import (
    EventDecoder,
    LineSplitter,
    ServerSentEvent,
    StreamReader,
)
from demiarch_flow.testing import FAKE_BASE_URL, FAKE_KEY

OPENAI = "openai-python/tests/test_streaming.py"
DECODERS = "httpx-sse/tests/test_decoders.py"
EVENTS = "httpx-sse/tests/test_event_source.py"
API = "httpx-sse/tests/test_api.py"
MODELS = "httpx-sse/tests/test_models.py"

CHUNKINGS = ["upstream", "whole", "bytewise"]


def reads(chunks: list[bytes], chunking: str) -> list[bytes]:
    """The upstream reads, or all of them as one read, or one byte per read."""
    body = b"".join(chunks)
    if chunking == "whole":
        return [body]
    if chunking == "bytewise":
        return [body[i : i + 1] for i in range(len(body))]
    return chunks


# ------------------------------------------------------------------------------ lines


def case(source: str, name: str, *values: object) -> object:
    return pytest.param(*values, id=f"{source}::{name}")


def text(*chunks: str) -> list[bytes]:
    return [c.encode() for c in chunks]


LINE_VECTORS = [
    # TestSplitlinesSSE: one text, split whole
    case(DECODERS, "test_crlf_splitting", text("line1\r\nline2\r\nline3"),
         ["line1", "line2", "line3"]),
    case(DECODERS, "test_cr_splitting", text("line1\rline2\rline3"), ["line1", "line2", "line3"]),
    case(DECODERS, "test_lf_splitting", text("line1\nline2\nline3"), ["line1", "line2", "line3"]),
    case(DECODERS, "test_mixed_line_endings", text("line1\r\nline2\nline3\rline4"),
         ["line1", "line2", "line3", "line4"]),
    case(DECODERS, "test_empty_lines", text("line1\n\nline3"), ["line1", "", "line3"]),
    case(DECODERS, "test_unicode_line_separator_not_split", text("line1\u2028line2"),
         ["line1\u2028line2"]),
    case(DECODERS, "test_unicode_paragraph_separator_not_split", text("line1\u2029line2"),
         ["line1\u2029line2"]),
    case(DECODERS, "test_unicode_next_line_not_split", text("line1\u0085line2"),
         ["line1\u0085line2"]),
    case(DECODERS, "test_empty_string", text(""), []),
    case(DECODERS, "test_only_newlines", text("\n\r\n\r"), ["", "", ""]),
    case(DECODERS, "test_trailing_newlines", text("line1\n"), ["line1"]),
    # TestSSELineDecoder: chunks fed in turn, then flushed
    case(DECODERS, "test_basic_lines", text("line1\nline2\n"), ["line1", "line2"]),
    case(DECODERS, "test_incremental_decoding", text("partial", " line\n", "another\n"),
         ["partial line", "another"]),
    case(DECODERS, "test_trailing_cr_with_immediate_n", text("line1\r", "\nline2", "\n"),
         ["line1", "line2"]),
    case(DECODERS, "test_crlf_across_chunks", text("line1\r", "\nline2\n"), ["line1", "line2"]),
    case(DECODERS, "test_buffer_without_newline", text("buffered"), ["buffered"]),
    case(DECODERS, "test_buffer_with_newline", text("buffered", "\n"), ["buffered"]),
    case(DECODERS, "test_no_flush_needed", text("line1\n", "line2\n"), ["line1", "line2"]),
    case(DECODERS, "test_flush_with_trailing_cr", text("text\r"), ["text"]),
    case(DECODERS, "test_empty_chunks", text("", "line1\n", "", "line2\n", ""),
         ["line1", "line2"]),
    case(DECODERS, "test_multiple_empty_lines", text("\n\n\n"), ["", "", ""]),
    case(DECODERS, "test_mixed_line_endings_incremental", text("line1\r\n", "line2\r", "line3\n"),
         ["line1", "line2", "line3"]),
    case(DECODERS, "test_partial_line_then_complete", text("par", "tial", " line\ncomp", "lete\n"),
         ["partial line", "complete"]),
    case(DECODERS, "test_unicode_line_separators_preserved",
         text("data\u2028field\nline2\u2029end\n"), ["data\u2028field", "line2\u2029end"]),
    case(DECODERS, "test_alternating_cr_lf", text("\r\n\r\n"), ["", ""]),
    case(DECODERS, "test_flush_after_partial", text("line1\npartial"), ["line1", "partial"]),
    case(DECODERS, "test_consecutive_cr_handling", text("line1\r\rline2\n"),
         ["line1", "", "line2"]),
    case(DECODERS, "test_text_after_trailing_newline", text("line1\n", "line2", "\n"),
         ["line1", "line2"]),
    case(DECODERS, "test_only_cr", text("\r", "\r"), ["", ""]),
    case(DECODERS, "test_only_lf", text("\n"), [""]),
    case(DECODERS, "test_empty_input", [], []),
    case(DECODERS, "test_single_char_chunks",
         text("h", "e", "l", "l", "o", "\n", "w", "o", "r", "l", "d"), ["hello", "world"]),
    case(DECODERS, "test_cr_lf_as_separate_chunks",
         text("l", "i", "n", "e", "1", "\r", "\n", "l", "i", "n", "e", "2"), ["line1", "line2"]),
    case(DECODERS, "test_mixed_endings_with_content", text("a\rb\nc\r\nd"), ["a", "b", "c", "d"]),
    case(DECODERS, "test_trailing_cr_no_followup", text("line\r"), ["line"]),
    case(DECODERS, "test_complex_mixed_scenario",
         text("first", " line\r", "\nsecond", " line\r\n", "third\rfo", "urth\n", "fifth"),
         ["first line", "second line", "third", "fourth", "fifth"]),
    # _iter_sse_lines / _aiter_sse_lines over a response body
    case(API, "test_iter_sse_lines_basic", [b"line1\nli", b"ne2\n"], ["line1", "line2"]),
    case(API, "test_iter_sse_lines_with_flush", [b"line1\npartial"], ["line1", "partial"]),
    case(API, "test_aiter_sse_lines_with_flush", [b"line1\nno_newline"], ["line1", "no_newline"]),
]  # fmt: skip


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize(("chunks", "expected"), LINE_VECTORS)
def test_line_vectors(chunks: list[bytes], expected: list[str], chunking: str) -> None:
    """Lines end at CR, LF or CRLF only (never U+2028, U+2029 or U+0085), a CRLF cut across
    reads is one end, and a last line without its end is flushed."""
    splitter = LineSplitter()
    lines: list[bytes] = []
    for data in reads(chunks, chunking):
        lines += splitter.feed(data)
    lines += splitter.close()
    assert [line.decode() for line in lines] == expected


# ------------------------------------------------------------------------------ events


def sse(
    event: str = "message", data: str = "", event_id: str = "", retry: int | None = None
) -> object:
    return ServerSentEvent(event, data, event_id, retry)


EVENT_VECTORS = [
    case(OPENAI, "test_basic", [b"event: completion\n", b'data: {"foo":true}\n', b"\n"],
         [sse("completion", '{"foo":true}')]),
    case(OPENAI, "test_data_missing_event", [b'data: {"foo":true}\n', b"\n"],
         [sse(data='{"foo":true}')]),
    case(OPENAI, "test_event_missing_data", [b"event: ping\n", b"\n"], [sse("ping")]),
    case(OPENAI, "test_multiple_events", [b"event: ping\n", b"\n", b"event: completion\n", b"\n"],
         [sse("ping"), sse("completion")]),
    case(OPENAI, "test_multiple_events_with_data",
         [b"event: ping\n", b'data: {"foo":true}\n', b"\n",
          b"event: completion\n", b'data: {"bar":false}\n', b"\n"],
         [sse("ping", '{"foo":true}'), sse("completion", '{"bar":false}')]),
    case(OPENAI, "test_multiple_data_lines_with_empty_line",
         [b"event: ping\n", b"data: {\n", b'data: "foo":\n', b"data: \n", b"data:\n",
          b"data: true}\n", b"\n\n"],
         [sse("ping", '{\n"foo":\n\n\ntrue}')]),
    case(OPENAI, "test_data_json_escaped_double_new_line",
         [b"event: ping\n", b'data: {"foo": "my long\\n\\ncontent"}', b"\n\n"],
         [sse("ping", '{"foo": "my long\\n\\ncontent"}')]),
    case(OPENAI, "test_multiple_data_lines",
         [b"event: ping\n", b"data: {\n", b'data: "foo":\n', b"data: true}\n", b"\n\n"],
         [sse("ping", '{\n"foo":\ntrue}')]),
    case(OPENAI, "test_special_new_line_character",
         [b'data: {"content":" culpa"}\n', b"\n", b'data: {"content":" \xe2\x80\xa8"}\n', b"\n",
          b'data: {"content":"foo"}\n', b"\n"],
         [sse(data='{"content":" culpa"}'), sse(data='{"content":" \u2028"}'),
          sse(data='{"content":"foo"}')]),
    case(OPENAI, "test_multi_byte_character_multiple_chunks",
         [b'data: {"content":"', b"\xd0", b"\xb8\xd0\xb7\xd0",
          b"\xb2\xd0\xb5\xd1\x81\xd1\x82\xd0\xbd\xd0\xb8", b'"}\n', b"\n"],
         [sse(data='{"content":"известни"}')]),
    case(EVENTS, "test_iter_sse_whatwg_example1",
         [b"data: YH00\n", b"data: +2\n", b"data: 10\n", b"\n"], [sse(data="YH00\n+2\n10")]),
    case(EVENTS, "test_iter_sse_whatwg_example2",
         [b": test stream\n", b"\n", b"data: first event\n", b"id: 1\n", b"\n",
          b"data: second event\n", b"id\n", b"\n", b"data:  third event\n", b"\n"],
         [sse(data="first event", event_id="1"), sse(data="second event"),
          sse(data=" third event")]),
    case(EVENTS, "test_iter_sse_whatwg_example3",
         [b"data\n", b"\n", b"data\n", b"data\n", b"\n", b"data:\n"],
         [sse(data=""), sse(data="\n")]),
    case(EVENTS, "test_iter_sse_whatwg_example4",
         [b"data:test\n", b"\n", b"data: test\n", b"\n"], [sse(data="test"), sse(data="test")]),
    case(EVENTS, "test_iter_sse_event",
         [b"event: logline\n", b"data: New user connected\n", b"\n"],
         [sse("logline", "New user connected")]),
    case(EVENTS, "test_iter_sse_id_null", [b"data: test\n", b"id: 123\0\n", b"\n"],
         [sse(data="test")]),
    case(EVENTS, "test_iter_sse_id_retry", [b"retry: 10000\n", b"\n"], [sse(retry=10000)]),
    case(EVENTS, "test_iter_sse_id_retry_invalid", [b"retry: 1667a\n", b"\n"], []),
    case(EVENTS, "test_iter_sse_unknown_field", [b"something: ignore\n", b"\n"], []),
    case(EVENTS, "test_unicode_line_separator_not_parsed_as_newline",
         [b"event: message\n", b'data: {"text":"Hello\xe2\x80\xa8World"}\n', b"\n"],
         [sse(data='{"text":"Hello\u2028World"}')]),
    case(EVENTS, "test_aiter_sse", [b"data: YH00\n", b"data: +2\n", b"data: 10\n", b"\n"],
         [sse(data="YH00\n+2\n10")]),
]  # fmt: skip


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize(("chunks", "expected"), EVENT_VECTORS)
def test_event_vectors(chunks: list[bytes], expected: list[object], chunking: str) -> None:
    """Fields are read as the specification says (one leading space dropped, data lines
    joined with LF, an ``id`` with NUL and a non-numeric ``retry`` ignored, unknown fields
    ignored), and a blank line dispatches an event if any field was set."""
    decoder = EventDecoder()
    events: list[ServerSentEvent] = []
    for data in reads(chunks, chunking):
        events += decoder.feed(data)
    last, _unfinished = decoder.close()  # the spec drops an event the body ends inside
    assert [*events, *last] == expected


def test_event_defaults() -> None:
    """httpx-sse tests/test_models.py::test_sse_default: an event is a ``message`` with empty
    data and id and no retry."""
    assert ServerSentEvent() == ServerSentEvent("message", "", "", None)


# ------------------------------------------------------------------------------ chat chunks


def chat(content: str) -> str:
    """A chat-completion chunk carrying ``content`` (as JSON text)."""
    return json.dumps({"id": "gen-v", "choices": [{"index": 0, "delta": {"content": content}}]})


def c(content: str) -> bytes:
    return chat(content).encode()


def split_json(content: str) -> tuple[bytes, bytes, bytes]:
    """The chunk of ``content`` cut into the JSON pieces ``{``, ``"choices": …``, ``}``."""
    body = chat(content)
    return body[:1].encode(), body[1:-1].encode(), body[-1:].encode()


_OPEN, _MIDDLE, _CLOSE = split_json("foo")
_A, _B, _C = split_json("YH00")

CHAT_VECTORS = [
    case(OPENAI, "test_basic", [b"event: completion\n", b"data: " + c("foo") + b"\n", b"\n"],
         ["foo"]),
    case(OPENAI, "test_data_missing_event", [b"data: " + c("foo") + b"\n", b"\n"], ["foo"]),
    case(OPENAI, "test_event_missing_data", [b"event: ping\n", b"\n"], []),
    case(OPENAI, "test_multiple_events", [b"event: ping\n", b"\n", b"event: completion\n", b"\n"],
         []),
    case(OPENAI, "test_multiple_events_with_data",
         [b"event: ping\n", b"data: " + c("foo") + b"\n", b"\n",
          b"event: completion\n", b"data: " + c("bar") + b"\n", b"\n"],
         ["foo", "bar"]),
    case(OPENAI, "test_multiple_data_lines_with_empty_line",
         [b"event: ping\n", b"data: " + _OPEN + b"\n", b"data: " + _MIDDLE + b"\n", b"data: \n",
          b"data:\n", b"data: " + _CLOSE + b"\n", b"\n\n"],
         ["foo"]),
    case(OPENAI, "test_data_json_escaped_double_new_line",
         [b"event: ping\n", b"data: " + c("my long\n\ncontent"), b"\n\n"], ["my long\n\ncontent"]),
    case(OPENAI, "test_multiple_data_lines",
         [b"event: ping\n", b"data: " + _OPEN + b"\n", b"data: " + _MIDDLE + b"\n",
          b"data: " + _CLOSE + b"\n", b"\n\n"],
         ["foo"]),
    case(OPENAI, "test_special_new_line_character",
         [b"data: " + c(" culpa") + b"\n", b"\n",
          b'data: {"id":"gen-v","choices":[{"delta":{"content":" \xe2\x80\xa8"}}]}\n', b"\n",
          b"data: " + c("foo") + b"\n", b"\n"],
         [" culpa", " \u2028", "foo"]),
    case(OPENAI, "test_multi_byte_character_multiple_chunks",
         [b'data: {"id":"gen-v","choices":[{"delta":{"content":"', b"\xd0", b"\xb8\xd0\xb7\xd0",
          b"\xb2\xd0\xb5\xd1\x81\xd1\x82\xd0\xbd\xd0\xb8", b'"}}]}\n', b"\n"],
         ["известни"]),
    case(EVENTS, "test_iter_sse_whatwg_example1",
         [b"data: " + _A + b"\n", b"data: " + _B + b"\n", b"data: " + _C + b"\n", b"\n"],
         ["YH00"]),
    case(EVENTS, "test_iter_sse_whatwg_example2",
         [b": test stream\n", b"\n", b"data: " + c("first event") + b"\n", b"id: 1\n", b"\n",
          b"data: " + c("second event") + b"\n", b"id\n", b"\n",
          b"data:  " + c(" third event") + b"\n", b"\n"],
         ["first event", "second event", " third event"]),
    case(EVENTS, "test_iter_sse_whatwg_example3",
         [b"data\n", b"\n", b"data\n", b"data\n", b"\n", b"data:\n"], []),
    case(EVENTS, "test_iter_sse_whatwg_example4",
         [b"data:" + c("test") + b"\n", b"\n", b"data: " + c("test") + b"\n", b"\n"],
         ["test", "test"]),
    case(EVENTS, "test_iter_sse_event",
         [b"event: logline\n", b"data: " + c("New user connected") + b"\n", b"\n"],
         ["New user connected"]),
    case(EVENTS, "test_iter_sse_id_null", [b"data: " + c("test") + b"\n", b"id: 123\0\n", b"\n"],
         ["test"]),
    case(EVENTS, "test_iter_sse_unknown_field",
         [b"something: ignore\n", b"\n", b"data: " + c("after") + b"\n\n"], ["after"]),
    case(EVENTS, "test_unicode_line_separator_not_parsed_as_newline",
         [b"event: message\n",
          b'data: {"id":"gen-v","choices":[{"delta":{"content":"Hello\xe2\x80\xa8World"}}]}\n',
          b"\n"],
         ["Hello\u2028World"]),
]  # fmt: skip


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize(("chunks", "expected"), CHAT_VECTORS)
def test_chat_vectors(chunks: list[bytes], expected: list[str], chunking: str) -> None:
    """The same framings with chat chunks as data: each chunk's content comes out once and
    whole, events without data are no chunk, and nothing is skipped as malformed."""
    reader = StreamReader("m")
    deltas: list[str] = []
    for data in reads(chunks, chunking):
        deltas += reader.feed(data)
    deltas += reader.close()
    assert deltas == expected
    assert reader.skipped == 0 and reader.error is None
    assert reader.generation_id == ("gen-v" if expected else None)


# ------------------------------------------------------------------------------ content types


@pytest.mark.parametrize(
    ("content_type", "streamed"),
    [
        case(API, "test_connect_sse-exact", "text/event-stream", True),
        case(API, "test_connect_sse-contains",
             "application/json, text/event-stream; charset=utf-8", True),
        case(API, "test_aconnect_sse", "text/event-stream", True),
        case(API, "test_connect_sse_non_event_stream_received", "application/json", False),
    ],
)  # fmt: skip
async def test_which_answers_are_read_as_a_stream(content_type: str, streamed: bool) -> None:
    """A content type that contains ``text/event-stream`` is read as events; any other is an
    answer given whole (httpx-sse raises ``SSEError`` there; a server may answer a streamed
    request whole, and that answer is paid for)."""
    whole = json.dumps({"id": "gen-v", "choices": [{"message": {"content": "test"}}]})
    finish = json.dumps({"choices": [{"delta": {}, "finish_reason": "stop"}]})
    # Read to its end, not stopped at [DONE]: httpx's ``text=`` body is an async generator
    # that a reader stopping early would leave to the garbage collector.
    body = f"data: {chat('test')}\n\ndata: {finish}\n\n" if streamed else whole

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type}, text=body)

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    c = OpenRouterClient(http, ApiKey(FAKE_KEY), base_url=FAKE_BASE_URL)
    result = await c.stream(c.build_payload("m", [{"role": "user", "content": "hi"}]), timeout_s=5)
    assert result.completion is not None and result.completion.content == "test"
    assert result.streamed is streamed
