"""OpenRouterClient.stream: every failure before and after the first token, the three clocks
(MockClock: no real waiting), split characters, keep-alives, and the generation look-up."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from demiarch_flow.client import ApiKey, Attempt, Completion, OpenRouterClient
from demiarch_flow.client.streaming import StreamReader
from demiarch_flow.errors import ErrorClass
from demiarch_flow.testing import FAKE_BASE_URL, FAKE_KEY, FakeOpenRouter

M = "anthropic/claude-sonnet-4"
MESSAGES = [{"role": "user", "content": "héllo 日本語 wörld 🎉"}]
WHOLE = f"[simulated {M}] You said: héllo 日本語 wörld 🎉"


def client(fake: httpx.AsyncBaseTransport) -> OpenRouterClient:
    return OpenRouterClient(
        httpx.AsyncClient(transport=fake), ApiKey(FAKE_KEY), base_url=FAKE_BASE_URL
    )


async def attempt(script: str, *, read_size: int = 0, **clocks: float) -> tuple[object, list[str]]:
    fake = FakeOpenRouter(f"{M}={script}" if script else "", read_size=read_size)
    got: list[str] = []

    async def on_delta(text: str) -> None:
        got.append(text)

    c = client(fake)
    settings = {"timeout_s": 120.0, "first_token_timeout_s": 10.0, "idle_timeout_s": 5.0}
    settings.update(clocks)
    result = await c.stream(c.build_payload(M, MESSAGES), on_delta=on_delta, **settings)  # type: ignore[arg-type]
    return result, got


async def test_a_stream_arrives_in_pieces_and_ends_as_the_whole_reply(
    autojump_clock: object,
) -> None:
    """Deltas reach on_delta as they come; the completion carries the text and the usage."""
    result, got = await attempt("")
    assert result.error is None  # type: ignore[attr-defined]
    done = result.completion  # type: ignore[attr-defined]
    assert len(got) > 3 and "".join(got) == done.content == WHOLE
    assert done.cost_usd is not None and done.completion_tokens and done.finish_reason == "stop"
    assert done.generation_id.startswith("gen-sim-")
    assert result.streamed and result.first_token_ms == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("read_size", [1, 2, 3, 5, 7])
async def test_a_character_split_across_reads_is_reassembled(
    read_size: int, autojump_clock: object
) -> None:
    """Reads of 1..7 bytes cut é, 日 and 🎉 in two: the text is whole, never U+FFFD."""
    result, got = await attempt("", read_size=read_size)
    assert "".join(got) == result.completion.content == WHOLE  # type: ignore[attr-defined]
    assert "\ufffd" not in WHOLE


@pytest.mark.parametrize(
    ("script", "error_class"),
    [
        ("500", ErrorClass.SERVER_ERROR),
        ("429@3", ErrorClass.RATE_LIMITED),
        ("401", ErrorClass.AUTH),
        ("404", ErrorClass.MODEL_UNAVAILABLE),
        ("reset", ErrorClass.NETWORK_ERROR),
        ("refused", ErrorClass.NETWORK_ERROR),  # no stream form: refused as a blocking one
        ("cut:0", ErrorClass.SERVER_ERROR),  # an error chunk before any content
        ("ratecut:0", ErrorClass.RATE_LIMITED),
        ("drop:0", ErrorClass.NETWORK_ERROR),
        ("end:0", ErrorClass.SERVER_ERROR),
    ],
)
async def test_before_the_first_token_failures_are_classified_as_blocking(
    script: str, error_class: ErrorClass, autojump_clock: object
) -> None:
    """An HTTP error, an error chunk or a reset before any content: the blocking class, no
    partial text."""
    result, got = await attempt(script)
    assert got == []
    assert result.error.error_class is error_class  # type: ignore[attr-defined]
    assert result.partial is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("script", "cause"),
    [
        ("cut:3", ErrorClass.SERVER_ERROR),
        ("ratecut:3", ErrorClass.RATE_LIMITED),
        ("drop:3", ErrorClass.NETWORK_ERROR),
        ("stall:3", ErrorClass.TIMEOUT),
        ("end:3", ErrorClass.SERVER_ERROR),
    ],
)
async def test_after_the_first_token_a_break_is_stream_interrupted(
    script: str, cause: ErrorClass, autojump_clock: object
) -> None:
    """An error chunk, a reset, the idle clock or a body without finish_reason/[DONE] after
    text arrived: ``stream_interrupted``, with the text so far kept apart as the partial."""
    result, got = await attempt(script)
    err = result.error  # type: ignore[attr-defined]
    assert err.error_class is ErrorClass.STREAM_INTERRUPTED
    assert result.cause is cause  # type: ignore[attr-defined]
    assert result.completion is None  # type: ignore[attr-defined]
    partial = result.partial  # type: ignore[attr-defined]
    assert partial.content == "".join(got) and len(got) == 3
    assert partial.generation_id is not None
    assert f"interrupted after {len(partial.content)} characters" in err.detail


async def test_the_first_token_clock(autojump_clock: object) -> None:
    """A first token later than first_token_timeout_s is a ``timeout`` (keep-alives do not
    stop that clock); in time, it is fine."""
    start = trio.current_time()
    late, _ = await attempt("slowfirst:12", first_token_timeout_s=10)
    assert late.error.error_class is ErrorClass.TIMEOUT  # type: ignore[attr-defined]
    assert "first token within 10 s" in late.error.detail  # type: ignore[attr-defined]
    assert trio.current_time() - start == pytest.approx(10)
    ok, _ = await attempt("slowfirst:8", first_token_timeout_s=10)
    assert ok.error is None and ok.first_token_ms == 8000  # type: ignore[attr-defined]


async def test_the_idle_clock_counts_keepalives_as_bytes(autojump_clock: object) -> None:
    """After the first token, keep-alive comments (one a second) keep a slow stream alive
    however long it pauses; a silent stall is interrupted after idle_timeout_s."""
    ok, _ = await attempt("pause:30", idle_timeout_s=2)
    assert ok.error is None  # type: ignore[attr-defined]
    start = trio.current_time()
    stalled, _ = await attempt("stall:2", idle_timeout_s=2)
    assert stalled.error.error_class is ErrorClass.STREAM_INTERRUPTED  # type: ignore[attr-defined]
    assert stalled.cause is ErrorClass.TIMEOUT  # type: ignore[attr-defined]
    assert trio.current_time() - start == pytest.approx(2)


async def test_the_whole_attempt_clock(autojump_clock: object) -> None:
    """timeout_s bounds the whole attempt, even a stream that keeps sending keep-alives."""
    start = trio.current_time()
    result, _ = await attempt("pause:100", timeout_s=20, idle_timeout_s=5)
    assert result.error.error_class is ErrorClass.STREAM_INTERRUPTED  # type: ignore[attr-defined]
    assert "20 s ran out" in result.error.detail  # type: ignore[attr-defined]
    assert trio.current_time() - start == pytest.approx(20)


async def test_the_generation_cost_is_looked_up_until_it_appears(autojump_clock: object) -> None:
    """GET /generation 404s at first (the record appears late): the look-up retries."""
    fake = FakeOpenRouter(f"{M}=cut:2")
    c = client(fake)
    result = await c.stream(c.build_payload(M, MESSAGES), timeout_s=60)
    found = await c.generation_cost(result.partial.generation_id)  # type: ignore[union-attr]
    assert found is not None and found.cost_usd is not None and found.completion_tokens
    assert await c.generation_cost("gen-unknown", tries=3) is None


def test_reader_accepts_a_finish_without_done_and_counts_usage_once() -> None:
    """A body that ends after finish_reason without [DONE] is complete; a usage chunk seen
    twice is counted once; comments and CRLF line ends are understood."""
    reader = StreamReader(M)
    body = (
        b": OPENROUTER PROCESSING\r\n\r\n"
        b'data: {"id":"gen-1","choices":[{"delta":{"content":"Hi"}}]}\r\n\r\n'
        b'data: {"id":"gen-1","choices":[{"delta":{},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1,"cost":0.5}}\n\n'
        b'data: {"id":"gen-1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,'
        b'"cost":0.5}}\n\n'
    )
    assert reader.feed(body) == ["Hi"]
    reader.close()
    done = reader.outcome(200, None)
    assert not isinstance(done, Exception)
    assert done.content == "Hi" and str(done.cost_usd) == "0.500000000"
    assert done.generation_id == "gen-1"


@pytest.mark.parametrize(
    ("failure", "cls", "unsent"),
    [
        (httpx.ConnectError("refused"), ErrorClass.NETWORK_ERROR, True),
        (httpx.ConnectTimeout("no connection"), ErrorClass.TIMEOUT, True),
        (httpx.PoolTimeout("no free connection"), ErrorClass.TIMEOUT, True),
        (httpx.ReadTimeout("no answer"), ErrorClass.TIMEOUT, False),
        (httpx.ReadError("reset"), ErrorClass.NETWORK_ERROR, False),
        (httpx.WriteError("broken pipe"), ErrorClass.NETWORK_ERROR, False),
    ],
)
@pytest.mark.parametrize("streamed", [False, True])
async def test_a_request_that_never_left_says_so(
    failure: Exception, cls: ErrorClass, unsent: bool, streamed: bool
) -> None:
    """Failures before the request could leave (no connection, none free in time) are marked
    ``unsent``: nothing can have been billed (budgets release them); any later failure may
    have been billed, blocking or streamed alike."""

    def fail(request: httpx.Request) -> httpx.Response:
        raise failure

    c = client(httpx.MockTransport(fail))
    payload = c.build_payload(M, MESSAGES)
    if streamed:
        result = await c.stream(
            payload, timeout_s=120.0, first_token_timeout_s=10.0, idle_timeout_s=5.0
        )
    else:
        result = await c.complete(payload, timeout_s=120.0)
    assert result.error is not None and result.error.error_class == cls
    assert result.unsent is unsent


# ---------------------------------------------------------------- scripted bodies (raw bytes)

RESET = "reset"
STALL = "stall"


class Scripted(httpx.AsyncByteStream):
    """A streamed body played read by read: bytes, a pause (seconds, trio's clock), a reset,
    or silence for ever."""

    def __init__(self, reads: list[bytes | float | str]) -> None:
        self._reads = iter(reads)

    def __aiter__(self) -> Scripted:
        return self

    async def __anext__(self) -> bytes:
        while True:
            item = next(self._reads, None)
            if item is None:
                raise StopAsyncIteration
            if isinstance(item, bytes):
                return item
            if isinstance(item, float):
                await trio.sleep(item)
            elif item == RESET:
                raise httpx.ReadError("Connection reset by peer")
            else:
                await trio.sleep_forever()

    async def aclose(self) -> None:
        pass


def chunk(**fields: object) -> bytes:
    """One chat-completion chunk as an SSE event."""
    return b"data: " + json.dumps({"id": "gen-s", "model": M, **fields}).encode() + b"\n\n"


def says(text: str) -> bytes:
    return chunk(choices=[{"index": 0, "delta": {"content": text}}])


FINISH = chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
USAGE = chunk(choices=[], usage={"prompt_tokens": 3, "completion_tokens": 2, "cost": 0.25})
DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": OPENROUTER PROCESSING\n\n"


async def scripted(
    reads: list[bytes | float | str],
    finished: list[tuple[float, Completion]] | None = None,
    **clocks: float,
) -> tuple[Attempt, list[str], list[str]]:
    """One streamed attempt over ``reads``; returns it, the deltas and the generation ids
    (``finished`` gets each ``on_finish`` call with its time)."""
    deltas: list[str] = []
    ids: list[str] = []

    async def on_finish(answer: Completion) -> None:
        if finished is not None:
            finished.append((trio.current_time(), answer))

    async def on_delta(text: str) -> None:
        deltas.append(text)

    async def on_generation(generation_id: str) -> None:
        ids.append(generation_id)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"Content-Type": "text/event-stream"}, stream=Scripted(reads)
        )

    c = client(httpx.MockTransport(answer))
    settings = {"timeout_s": 120.0, "first_token_timeout_s": 10.0, "idle_timeout_s": 5.0}
    settings.update(clocks)
    payload = c.build_payload(M, MESSAGES)
    result = await c.stream(
        payload, on_delta=on_delta, on_generation=on_generation, on_finish=on_finish, **settings
    )
    return result, deltas, ids


FOREVER_KEEPALIVES: list[bytes | float | str] = [KEEPALIVE, 1.0] * 200


@pytest.mark.parametrize(
    ("after", "ended_by"),
    [
        ([RESET], ErrorClass.NETWORK_ERROR),
        ([STALL], ErrorClass.TIMEOUT),
        (FOREVER_KEEPALIVES, ErrorClass.TIMEOUT),  # the attempt's overall clock runs out
        ([b"data: [DONE] \n\n"], None),
        ([b"data:\n\n"], None),
        ([b"data:\n\n", STALL], ErrorClass.TIMEOUT),
        ([b"data: {not json\n\n", RESET], ErrorClass.NETWORK_ERROR),
        ([b"data: [DONE] \n\n", RESET], None),  # [DONE] ends the reading
        ([chunk(error={"code": 502, "message": "upstream went away"})], ErrorClass.SERVER_ERROR),
        ([], None),
    ],
    ids=[
        "reset", "idle", "overall", "done_space", "bare_data", "bare_data_then_silence",
        "garbage_then_reset", "done_space_then_reset", "error_chunk_after", "eof",
    ],
)  # fmt: skip
async def test_a_finished_stream_is_a_completion_however_it_ends(
    after: list[bytes | float | str], ended_by: ErrorClass | None, autojump_clock: object
) -> None:
    """After a finish_reason (and usage), a reset, silence, the overall clock, malformed
    trailing frames or a late error chunk do not throw the paid reply away."""
    reads: list[bytes | float | str] = [says("Hello"), says(" world"), FINISH, USAGE, *after]
    result, deltas, _ = await scripted(reads, timeout_s=60.0)
    assert result.error is None, result.error
    done = result.completion
    assert done is not None and done.content == "".join(deltas) == "Hello world"
    assert done.finish_reason == "stop" and str(done.cost_usd) == "0.250000000"
    assert done.generation_id == "gen-s" and result.streamed and result.partial is None
    assert result.after_finish is ended_by


@pytest.mark.parametrize("gap", [0.001, 4.9])
async def test_a_silence_is_cut_within_the_idle_slack_after_the_last_read(
    gap: float, autojump_clock: object
) -> None:
    """The idle clock runs from the last read: reads 4.9 s apart outlive many 5 s idle limits,
    and after the last one a silence is cut no later than ``idle_timeout_s`` and no sooner than
    ``IDLE_SLACK`` of it before (a read that moved the deadline by less than that left it)."""
    from demiarch_flow.client.openrouter import IDLE_SLACK

    start = trio.current_time()
    reads: list[bytes | float | str] = [says("a"), gap, says("b"), gap, says("c"), STALL]
    result, deltas, _ = await scripted(reads, timeout_s=60.0)
    last = start + 2 * gap
    assert deltas == ["a", "b", "c"] and result.partial is not None
    assert result.partial.content == "abc" and result.cause is ErrorClass.TIMEOUT
    assert last + 5.0 * (1 - IDLE_SLACK) <= trio.current_time() <= last + 5.0


async def test_the_attempts_own_end_is_not_moved_by_the_idle_slack(
    autojump_clock: object,
) -> None:
    """A read at 54.998 s moves the idle deadline to 59.998 s; the next, at 55.001 s, would
    move it to the attempt's end (60 s), only 2 ms later — within the slack, but the attempt's
    end is taken exactly: the stream is cut at 60 s and says that the attempt's time ran out,
    not that it went quiet 3 ms early."""
    start = trio.current_time()
    steady: list[bytes | float | str] = [x for _ in range(11) for x in (4.9, says("b"))]
    reads = [says("a"), *steady, 1.098, says("c"), 0.003, says("d"), STALL]
    result, _, _ = await scripted(reads, timeout_s=60.0)
    assert trio.current_time() - start == pytest.approx(60.0)
    assert result.cause is ErrorClass.TIMEOUT and "60 s ran out" in str(result.error)


async def test_a_finish_then_silence_without_usage_is_a_completion(
    autojump_clock: object,
) -> None:
    """A finish_reason then nothing (no usage, no [DONE]): the reply is whole; a short grace
    (FINISH_GRACE_S, not the 5 s idle timeout: the user should not wait for an answer that is
    whole) ends the wait, and the cost is left to the generation look-up."""
    from demiarch_flow.client.openrouter import FINISH_GRACE_S

    start = trio.current_time()
    result, _, _ = await scripted([says("Hi"), FINISH, STALL], idle_timeout_s=5.0)
    assert result.completion is not None and result.completion.content == "Hi"
    assert result.completion.cost_usd is None and result.streamed
    assert result.after_finish is ErrorClass.TIMEOUT
    assert FINISH_GRACE_S < 5
    assert trio.current_time() - start == pytest.approx(FINISH_GRACE_S)


async def test_the_quiet_fault_is_a_whole_reply_then_silence(autojump_clock: object) -> None:
    """``quiet`` (the fake's and the simulator's): every content chunk and the finish_reason,
    then nothing — a completion with no cost, ended by the short grace."""
    from demiarch_flow.client.openrouter import FINISH_GRACE_S

    start = trio.current_time()
    result, got = await attempt("quiet")
    assert isinstance(result, Attempt) and result.completion is not None
    assert result.completion.content == "".join(got) and got
    assert result.completion.cost_usd is None and result.after_finish is ErrorClass.TIMEOUT
    assert trio.current_time() - start == pytest.approx(FINISH_GRACE_S)


async def test_a_finished_answer_is_handed_over_before_its_usage_arrives(
    autojump_clock: object,
) -> None:
    """``on_finish`` gets the whole answer once, the moment its finish_reason arrives — before
    a slow usage chunk (while a process could still die waiting for it) — with no cost yet."""
    finished: list[tuple[float, Completion]] = []
    start = trio.current_time()
    result, _, _ = await scripted([says("Hi"), says(" there"), FINISH, 1.5, USAGE], finished)
    [(at, answer)] = finished
    assert at == pytest.approx(start)
    assert (answer.content, answer.finish_reason, answer.generation_id) == (
        "Hi there",
        "stop",
        "gen-s",
    )
    assert answer.cost_usd is None and answer.model == M
    assert result.completion is not None and str(result.completion.cost_usd) == "0.250000000"
    assert trio.current_time() - start == pytest.approx(1.5)


@pytest.mark.parametrize(
    "reads",
    [
        [says("Hi"), FINISH + USAGE + DONE],  # the end came in the same read: returned at once
        [says("Hi"), RESET],  # never whole
        [says("Hi"), b'data: {"id":"gen-s","choices":[{"delta":{},"finish_reason":"error"}]}\n\n'],
    ],
    ids=["same_read", "broken", "finish_error"],
)
async def test_on_finish_is_not_called_without_a_whole_answer_to_keep(
    reads: list[bytes | float | str], autojump_clock: object
) -> None:
    finished: list[tuple[float, Completion]] = []
    await scripted(reads, finished)
    assert finished == []


async def test_an_empty_finished_reply_then_silence_is_a_completion(
    autojump_clock: object,
) -> None:
    """finish_reason with no content (an empty reply) then silence: a completion with empty
    text, as a blocking empty reply is, not a first-token timeout bought again."""
    result, deltas, _ = await scripted([FINISH, USAGE, STALL], first_token_timeout_s=10.0)
    assert result.error is None and deltas == []
    assert result.completion is not None and result.completion.content == ""


async def test_a_non_json_frame_mid_stream_is_skipped_and_counted(autojump_clock: object) -> None:
    """A ``data:`` line that is not a JSON object in the middle of a stream is skipped (and
    counted on the attempt), not a reason to buy the stream again."""
    reads: list[bytes | float | str] = [
        says("Hello"), b"data: {truncated\n\n", b"data: [1, 2]\n\n", says(" world"),
        FINISH, USAGE, DONE,
    ]  # fmt: skip
    result, _, _ = await scripted(reads)
    assert result.error is None
    assert result.completion is not None and result.completion.content == "Hello world"
    assert result.skipped_frames == 2 and result.after_finish is None


async def test_a_break_before_finish_is_still_interrupted(autojump_clock: object) -> None:
    """Without a finish_reason, a reset after text is ``stream_interrupted`` (skipped frames
    counted too): only a finished reply is kept as the answer."""
    result, _, _ = await scripted([says("Hello"), b"data: nope\n\n", RESET])
    assert result.error is not None
    assert result.error.error_class is ErrorClass.STREAM_INTERRUPTED
    assert result.partial is not None and result.partial.content == "Hello"
    assert result.skipped_frames == 1 and result.after_finish is None


@pytest.mark.parametrize("eol", [b"\r", b"\n", b"\r\n"], ids=["cr", "lf", "crlf"])
async def test_bare_cr_lf_and_crlf_line_endings_all_stream(
    eol: bytes, autojump_clock: object
) -> None:
    """The SSE specification allows CR, LF and CRLF: a CR-only stream is read like the others
    (deltas, generation id, usage), not retried as ``server_error``."""
    frames = [KEEPALIVE, says("Hel"), says("lo"), FINISH, USAGE, DONE]
    body = b"".join(frames).replace(b"\n", eol)
    reads: list[bytes | float | str] = [body[i : i + 3] for i in range(0, len(body), 3)]
    result, deltas, ids = await scripted(reads)
    assert result.error is None, result.error
    assert deltas == ["Hel", "lo"] and ids == ["gen-s"]
    assert result.completion is not None and str(result.completion.cost_usd) == "0.250000000"


class CountingBytes(bytes):
    """A read that counts the bytes copied when something is concatenated with it (the
    growing-buffer pattern ``tail += read``)."""

    copied = 0

    def __add__(self, other: bytes) -> bytes:  # type: ignore[override]
        CountingBytes.copied += len(self) + len(other)
        return bytes(self) + bytes(other)

    def __radd__(self, other: bytes) -> bytes:
        CountingBytes.copied += len(self) + len(other)
        return bytes(other) + bytes(self)


def test_a_long_line_in_small_reads_is_split_in_linear_work() -> None:
    """A 5 MB chunk arriving in 4 KB reads is decoded whole, and its bytes are not copied
    again on every read (``tail += read`` was quadratic: 10 s for a 20 MB line)."""
    text = "é" * 2_500_000  # 5 MB of two-byte characters: reads cut them in two
    body = says(text)
    CountingBytes.copied = 0
    reader = StreamReader(M)
    got: list[str] = []
    for i in range(0, len(body), 4096):
        got += reader.feed(CountingBytes(body[i : i + 4096]))
    got += reader.close()
    assert got == [text] and reader.generation_id == "gen-s"
    assert CountingBytes.copied <= 2 * len(body)


def test_a_byte_order_mark_opening_the_stream_is_ignored() -> None:
    """The SSE specification ignores one leading BOM: the first chunk behind it is read."""
    reader = StreamReader(M)
    assert reader.feed(b"\xef\xbb\xbf" + says("Hi") + FINISH) == ["Hi"]
    assert reader.close() == [] and reader.skipped == 0
    assert not isinstance(done := reader.outcome(200, None), Exception) and done.content == "Hi"
