"""A collector that is down or never answers does not slow a run: export happens in the
background, its failure is said once, and the end of the process waits a bounded time."""

from __future__ import annotations

import logging
import os
import socket
import statistics
import time
from collections.abc import Iterator

import pytest
import trio

from demiarch_flow.runner import RunEnv, RunRequest, run_workflow
from demiarch_flow.telemetry._listener import OtelTracer
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


def per_run_ms(plain: RunEnv, traced: RunEnv) -> tuple[float, float]:
    """The median wall time of one run (instant fake provider, real clock) untraced and
    traced, in ms, the two alternating so that load from elsewhere hits both alike."""

    async def one(env: RunEnv) -> float:
        t0 = time.perf_counter()
        out = await run_workflow(WF, RunRequest("hi", stream=False), env)
        assert out.succeeded
        return (time.perf_counter() - t0) * 1000

    async def main() -> tuple[float, float]:
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(RUNS):
            times[0].append(await one(plain))
            times[1].append(await one(traced))
        return statistics.median(times[0]), statistics.median(times[1])

    return trio.run(main)


@pytest.mark.parametrize("collector", ["black_hole", "refused"])
def test_a_dead_collector_costs_a_run_no_more_than_a_few_milliseconds(
    collector: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Exporting every 50 ms to a collector that never answers (or refuses), so exports are
    tried while the runs go on: a traced run takes at most 5 ms more than an untraced one
    (median; the exporter's thread waking costs the run's thread at most a GIL switch
    interval now and then, with a live collector alike), at most one export warning is
    logged, and the end of the block waits no longer than its flush limit."""
    endpoint, hole = request.getfixturevalue(collector)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30")
    caplog.set_level(logging.WARNING)
    with sdk_providers(os.environ, flush_s=0.3) as (tracer_provider, meter_provider):
        tracer = OtelTracer(
            server_url="https://openrouter.ai/api/v1",
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        untraced, traced = per_run_ms(
            make_env(FakeOpenRouter("")),
            make_env(FakeOpenRouter(""), listeners=(tracer,), tracer=tracer),
        )
        t0 = time.perf_counter()
    closing_s = time.perf_counter() - t0
    assert traced - untraced < 5.0, (traced, untraced)
    assert closing_s < 1.0
    if hole is not None:  # the exporter did try: its connection waits in the backlog
        hole.settimeout(1.0)
        hole.accept()[0].close()
    failures = [r for r in caplog.records if r.name.startswith("opentelemetry")]
    assert len(failures) <= 1, [r.getMessage() for r in failures]
