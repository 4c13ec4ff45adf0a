"""What `run` writes for a person watching a stream: the interruption marker says what
happens next only once it is decided (issue 18: it said "retrying" after the last attempt)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
import trio

from demiarch_flow.cli._run import StreamedText
from demiarch_flow.errors import ErrorClass
from demiarch_flow.runner import FlowRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _rec(kind: str, **fields: object) -> FlowRecord:
    return FlowRecord(kind, "run-1", 0.0, T0, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("events", "said"),
    [
        (["retryable", "retry"], "retrying"),
        (["retryable", "exhausted", "next_model"], "falling back"),
        (["model_failed", "next_model"], "falling back"),
        (["retryable", "exhausted", "exhausted"], "giving up"),  # the last model, the run ends
        (["fatal"], "giving up"),
    ],
)
def test_the_marker_says_what_comes_after_a_broken_stream(events: list[str], said: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    text = StreamedText(out, err)

    async def play() -> None:
        await text.on_record(_rec("delta", text="Hel"))
        await text.on_record(
            _rec("attempt", partial_chars=3, error_class=ErrorClass.STREAM_INTERRUPTED,
                 cause=ErrorClass.SERVER_ERROR)
        )  # fmt: skip
        for event in events:
            await text.on_record(_rec("transition", event=event))
        await text.on_record(_rec("finished", run_status="failed"))

    trio.run(play)
    (line,) = err.getvalue().splitlines()
    assert line == f"— interrupted after 3 characters (server_error); {said}"
