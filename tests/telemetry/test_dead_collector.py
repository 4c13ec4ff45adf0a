"""A collector that is down or never answers does not slow a run: export happens in the
background, its failure is said once, and the end of the process waits a bounded time."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from opentelemetry.exporter.otlp.common.http import _OTLPHTTPClient

from demiarch_flow.runner import RunEnv, RunRequest, run_workflow
from demiarch_flow.telemetry._listener import OtelTracer
from demiarch_flow.telemetry._setup import direct_providers, sdk_providers
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
    """Wraps the OTLP/HTTP client's ``export`` (spans' and metrics' alike): which threads call
    it, and how many calls are in progress (a call to a collector that never answers waits
    out its timeout, retries included)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.threads: set[int] = set()
        self.entered = 0
        self.in_progress = 0
        self._lock = threading.Lock()
        real = _OTLPHTTPClient.export
        spy = self

        def export(client: _OTLPHTTPClient, data: bytes) -> Any:
            with spy._lock:
                spy.threads.add(threading.get_ident())
                spy.entered += 1
                spy.in_progress += 1
            try:
                return real(client, data)
            finally:
                with spy._lock:
                    spy.in_progress -= 1

        monkeypatch.setattr(_OTLPHTTPClient, "export", export)

    def wait_idle(self, limit_s: float) -> None:
        """Until no export is in progress: the SDK's threads outlive the providers' shutdown
        while an export hangs, and each attempt draws its jitter from the global ``random``
        (which Hypothesis, in a later test of this process, takes for a strategy's)."""
        deadline = time.monotonic() + limit_s
        while self.in_progress and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.in_progress == 0


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


@pytest.mark.parametrize("providers", [sdk_providers, direct_providers], ids=["sdk", "direct"])
@pytest.mark.parametrize("collector", ["black_hole", "refused"])
def test_a_dead_collector_never_makes_a_run_wait(
    providers: Any,
    collector: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Exporting every 50 ms to a collector that never answers (or refuses), so exports are
    tried while the runs go on: every export is made by a thread other than the runs' one,
    and with the collector that never answers the runs all ended while an export was still
    waiting on it (so no run waited for it); at most one export warning is logged, and the
    end of the block waits its flush limit (0.3 s), not the export's 8 s timeout. What a
    traced run costs in time is measured, not asserted here: ``bench/trace.py``. The same
    with the SDK's providers and the direct path's."""
    endpoint, hole = request.getfixturevalue(collector)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "8")
    caplog.set_level(logging.WARNING)
    spy = ExportSpy(monkeypatch)
    with providers(os.environ, flush_s=0.3) as (tracer_provider, meter_provider):
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
    assert closing_s < 5.0  # the flush limit, below the export's own 8 s
    if hole is not None:  # the exporter did try: its connection waits in the backlog
        hole.settimeout(1.0)
        hole.accept()[0].close()
        hole.close()  # what else waits in the backlog is refused: the hung exports end
    spy.wait_idle(limit_s=20.0)
    failures = [r for r in caplog.records if r.name.startswith("opentelemetry")]
    assert len(failures) <= 1, [r.getMessage() for r in failures]
