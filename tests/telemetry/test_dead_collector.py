"""A collector that is down or never answers does not slow a run: export happens in the
background, its failure is said once, and the end of the process waits a bounded time."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence

import pytest
import trio
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from demiarch_flow.runner import RunEnv, RunRequest, run_workflow
from demiarch_flow.telemetry._listener import OtelTracer
from demiarch_flow.telemetry._otlp import SpanExporter
from demiarch_flow.telemetry._setup import sdk_providers
from demiarch_flow.testing import FakeOpenRouter, make_env

from ..runner.helpers import default_workflow

WF = default_workflow()
RUNS = 30


@pytest.fixture
def black_hole() -> Iterator[tuple[str, socket.socket | None]]:
    """A port on 127.0.0.1 that takes connections into its backlog and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", sock
    sock.close()


@pytest.fixture
def refused() -> tuple[str, socket.socket | None]:
    """A port on 127.0.0.1 nobody listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}", None


class ExportSpy:
    """Wraps the span exporter's ``export``: which threads call it, and how many calls are
    in progress (a call to a collector that never answers waits out its timeout)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.threads: set[int] = set()
        self.entered = 0
        self.in_progress = 0
        self._lock = threading.Lock()
        real = SpanExporter.export
        spy = self

        def export(exporter: SpanExporter, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            with spy._lock:
                spy.threads.add(threading.get_ident())
                spy.entered += 1
                spy.in_progress += 1
            try:
                return real(exporter, spans)
            finally:
                with spy._lock:
                    spy.in_progress -= 1

        monkeypatch.setattr(SpanExporter, "export", export)


def run_both(plain: RunEnv, traced: RunEnv) -> None:
    """``RUNS`` runs each way (instant fake provider, real clock), alternating, on this
    thread; a few real milliseconds apart so the 50 ms export schedule falls among them."""

    async def main() -> None:
        for _ in range(RUNS):
            for env in (plain, traced):
                out = await run_workflow(WF, RunRequest("hi", stream=False), env)
                assert out.succeeded
            await trio.sleep(0.005)

    trio.run(main)


@pytest.mark.parametrize("collector", ["black_hole", "refused"])
def test_a_dead_collector_never_makes_a_run_wait(
    collector: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Exporting every 50 ms to a collector that never answers (or refuses), so exports are
    tried while the runs go on: every export is made by a thread other than the runs' one,
    and with the collector that never answers the runs all ended while an export was still
    waiting on it (so no run waited for it); at most one export warning is logged, and the
    end of the block waits its flush limit (0.3 s), not the export's 30 s timeout. What a
    traced run costs in time is measured, not asserted here: ``bench/trace.py``."""
    endpoint, hole = request.getfixturevalue(collector)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30")
    caplog.set_level(logging.WARNING)
    spy = ExportSpy(monkeypatch)
    with sdk_providers(os.environ, flush_s=0.3) as (tracer_provider, meter_provider):
        tracer = OtelTracer(
            server_url="https://openrouter.ai/api/v1",
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        run_both(
            make_env(FakeOpenRouter("")),
            make_env(FakeOpenRouter(""), listeners=(tracer,), tracer=tracer),
        )
        waiting_at_the_end = spy.in_progress
        t0 = time.perf_counter()
    closing_s = time.perf_counter() - t0
    assert spy.entered >= 1
    assert threading.get_ident() not in spy.threads
    if hole is not None:
        assert waiting_at_the_end == 1  # the runs ended while an export hung on the collector
    assert closing_s < 5.0  # the flush limit, far below the export's own 30 s
    if hole is not None:  # the exporter did try: its connection waits in the backlog
        hole.settimeout(1.0)
        hole.accept()[0].close()
    failures = [r for r in caplog.records if r.name.startswith("opentelemetry")]
    assert len(failures) <= 1, [r.getMessage() for r in failures]
