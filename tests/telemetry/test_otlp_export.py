"""The real command line exporting to a real OTLP receiver: ``run --trace`` against the bundled
simulator, the spans and metrics decoded from the protobuf the exporter sent."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from demiarch_flow.cli.main import main

from ..e2e.conftest import FAST, KEY, Cli, SimThread, cli, simulator
from .receiver import Receiver

__all__ = ["cli", "simulator"]

pytestmark = pytest.mark.e2e

SONNET, HAIKU = "anthropic/claude-sonnet-4", "anthropic/claude-3.5-haiku"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_run_with_trace_exports_one_trace_and_the_metrics(
    cli: Cli, simulator: Callable[..., SimThread], receiver: Receiver
) -> None:
    """A run that retries (500), falls back (404) and succeeds, exported over OTLP/HTTP: one
    trace, the root invoke_workflow span with every chat span its child, the service name
    from OTEL_SERVICE_NAME, both GenAI metrics — and the key in none of the bytes."""
    sim = simulator(f"{SONNET}=500,404")
    out = cli(
        "run", "-m", "hello", "--base-url", sim.url, "--json", "--trace", "--no-stream", FAST,
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "e2e-svc",
             "OTEL_METRIC_EXPORT_INTERVAL": "60000"},
    )  # fmt: skip
    assert out.code == 0, out.stderr
    run_id = out.json()["run_id"]
    spans = receiver.spans()
    (root,) = [s for s in spans if s.name == "invoke_workflow chat-fast"]
    chats = [s for s in spans if s.name.startswith("chat ")]
    assert sorted(s.name for s in chats) == sorted(
        [f"chat {SONNET}", f"chat {SONNET}", f"chat {HAIKU}"]
    )
    assert {s.trace_id for s in spans} == {root.trace_id}
    assert all(s.parent_span_id == root.span_id for s in chats)
    attrs = {kv.key: kv.value for kv in root.attributes}
    assert attrs["demiarch_flow.run.id"].string_value == run_id
    assert attrs["demiarch_flow.run.status"].string_value == "succeeded"
    assert {"e2e-svc"} == {r["service.name"] for r in receiver.resources()}
    assert {"gen_ai.client.operation.duration", "gen_ai.client.token.usage"} <= (
        receiver.metric_names()
    )
    assert receiver.raw and not [b for b in receiver.raw if KEY.encode() in b]


def test_without_a_variable_or_the_flag_nothing_is_exported(
    cli: Cli, simulator: Callable[..., SimThread], receiver: Receiver
) -> None:
    """No OTEL_* variable, no --trace: not a byte reaches the receiver; --no-trace beats the
    variables."""
    sim = simulator()
    assert cli("run", "-m", "hi", "--base-url", sim.url, FAST).code == 0
    out = cli(
        "run", "-m", "hi", "--base-url", sim.url, "--no-trace", FAST,
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url},
    )  # fmt: skip
    assert out.code == 0, out.stderr
    assert receiver.raw == []


def test_simulate_with_trace_draws_the_run_in_virtual_time(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``simulate --trace``: the same spans, exported, with the virtual timeline — the backoff
    wait lasts its 1 s though the simulation took milliseconds."""
    monkeypatch.setenv("DEMIARCH_FLOW_HOME", str(tmp_path))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    assert main(["simulate", "--faults", f"{SONNET}=500", "--trace"]) == 0
    spans = receiver.spans()
    (root,) = [s for s in spans if s.name == "invoke_workflow chat"]
    (wait,) = [s for s in spans if s.name == "wait backoff"]
    chats = [s for s in spans if s.name.startswith("chat ")]
    assert len(chats) == 2
    assert all(s.trace_id == root.trace_id for s in [wait, *chats])
    assert wait.end_time_unix_nano - wait.start_time_unix_nano == 1_000_000_000
    assert root.end_time_unix_nano - root.start_time_unix_nano >= 1_000_000_000


def test_a_run_resumed_in_another_process_continues_its_trace(
    cli: Cli, simulator: Callable[..., SimThread], receiver: Receiver
) -> None:
    """``run --trace`` fails (401) and ``runs resume --trace`` finishes it, two processes and
    the traceparent kept in the SQLite checkpoint between them: one trace, the resumed
    invoke_workflow span a child of the first."""
    sim = simulator(f"{SONNET}=401")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_METRICS_EXPORTER": "none"}
    first = cli("run", "-m", "hi", "--base-url", sim.url, "--json", "--trace", FAST, env=env)
    assert first.code == 1, first.stderr
    run_id = first.json()["run_id"]
    again = cli("runs", "resume", run_id, "--base-url", sim.url, "--trace", env=env)
    assert again.code == 0, again.stderr
    roots = sorted(
        (s for s in receiver.spans() if s.name == "invoke_workflow chat-fast"),
        key=lambda s: s.start_time_unix_nano,
    )
    assert len(roots) == 2
    original, resumed = roots
    assert resumed.trace_id == original.trace_id
    assert resumed.parent_span_id == original.span_id
    chats = [s for s in receiver.spans() if s.name.startswith("chat ")]
    assert len(chats) == 2
    assert {s.trace_id for s in chats} == {original.trace_id}
