"""Submit → queue → worker in one trace, over real processes: ``submit --trace`` and ``worker
--trace`` on PostgreSQL against the bundled simulator, exporting to a real OTLP receiver."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..e2e.conftest import FAST, Cli, Result, SimThread, cli, simulator
from ..e2e.test_workers_e2e import (
    _has_jobs,
    batch_file,
    finish,
    lines,
    paid_once,
    pg,
    rows,
    wait_for,
)
from .receiver import Receiver

__all__ = ["cli", "pg", "simulator"]

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

SONNET = "anthropic/claude-sonnet-4"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def worker(cli: Cli, url: str, sim: SimThread, env: dict[str, str], *flags: str) -> Result:
    proc = subprocess.Popen(
        [sys.executable, "-m", "demiarch_flow", "worker", "--db", url, "--base-url", sim.url,
         "--json", "--until-empty", *flags],
        env={**cli.env, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).parents[2],
    )  # fmt: skip
    return finish(proc)


def test_a_queued_run_is_one_trace_from_submit_to_its_attempts(
    cli: Cli, simulator: Callable[..., SimThread], pg: str, receiver: Receiver
) -> None:
    """``submit --trace`` puts the submit span's traceparent in the job; ``worker --trace``
    runs it as the submit's child: submit (PRODUCER) → invoke_workflow → chat spans (a retry
    after a 500 and the answer), all one trace, exported by two processes."""
    sim = simulator(f"{SONNET}=500")
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_METRICS_EXPORTER": "none"}
    sub = cli("submit", FAST, "-m", "hello", "--db", pg, "--json", "--trace", env=otel)
    assert sub.code == 0, sub.stderr
    run_id = sub.json()["run_id"]
    done = worker(cli, pg, sim, otel, "--trace")
    assert done.code == 0, done.stderr
    assert [(d["run_id"], d["status"]) for d in lines(done)] == [(run_id, "succeeded")]
    spans = receiver.spans()
    (submit,) = [s for s in spans if s.name == "submit"]
    assert submit.kind == submit.SPAN_KIND_PRODUCER
    assert {kv.key: kv.value.string_value for kv in submit.attributes}["demiarch_flow.run.id"] == (
        run_id
    )
    (root,) = [s for s in spans if s.name.startswith("invoke_workflow ")]
    chats = [s for s in spans if s.name == f"chat {SONNET}"]
    assert len(chats) == 2
    assert {s.trace_id for s in spans} == {submit.trace_id}
    assert root.parent_span_id == submit.span_id
    assert {c.parent_span_id for c in chats} == {root.span_id}
    assert submit.end_time_unix_nano <= root.start_time_unix_nano  # the queue wait between


def test_without_trace_flags_nothing_is_exported(
    cli: Cli, simulator: Callable[..., SimThread], pg: str, receiver: Receiver
) -> None:
    """``--no-trace`` on both wins over the variables: the receiver hears nothing, and the
    job carries no traceparent."""
    sim = simulator()
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
    sub = cli("submit", FAST, "-m", "hello", "--db", pg, "--json", "--no-trace", env=otel)
    assert sub.code == 0, sub.stderr
    from sqlalchemy import create_engine, text

    engine = create_engine(pg)
    with engine.connect() as conn:
        (args,) = conn.execute(text("SELECT args FROM procrastinate_jobs")).scalars()
    engine.dispose()
    assert "traceparent" not in args
    done = worker(cli, pg, sim, otel, "--no-trace")
    assert done.code == 0, done.stderr
    assert receiver.raw == []


def test_batch_queue_traces_each_line_from_its_submit(
    cli: Cli, simulator: Callable[..., SimThread], pg: str, receiver: Receiver, tmp_path: Path
) -> None:
    """``batch --queue --trace`` gives every line its own ``submit`` span, as ``submit --batch``
    does, and a worker run under ``--trace`` continues each one: one trace per line, its
    ``invoke_workflow`` the child of that line's submit (before, the runs began traces of
    their own)."""
    sim = simulator()
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_METRICS_EXPORTER": "none"}
    path = batch_file(tmp_path, 3)
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "demiarch_flow", "batch", str(path), FAST, "--queue",
            "--out", str(out), "--db", pg, "--trace"]  # fmt: skip
    waiting = subprocess.Popen(argv, env={**cli.env, **otel}, stderr=subprocess.PIPE, text=True)
    try:
        queued = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'"
        wait_for(lambda: _has_jobs(pg) and rows(pg, queued) == [(3,)], "the submission")
        done = worker(cli, pg, sim, otel, "--trace")
    finally:
        _, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert done.code == 0, done.stderr
    run_ids = [json.loads(line)["run_id"] for line in out.read_text().splitlines()]
    paid_once(pg, run_ids)
    spans = receiver.spans()
    submits = {
        {kv.key: kv.value.string_value for kv in s.attributes}["demiarch_flow.run.id"]: s
        for s in spans
        if s.name == "submit"
    }
    assert set(submits) == set(run_ids)
    roots = [s for s in spans if s.name.startswith("invoke_workflow ")]
    assert len(roots) == 3
    for root in roots:
        (parent,) = [s for s in submits.values() if s.span_id == root.parent_span_id]
        assert root.trace_id == parent.trace_id
    assert len({s.trace_id for s in submits.values()}) == 3
