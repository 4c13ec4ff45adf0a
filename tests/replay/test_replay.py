"""``simulate --replay`` on a recorded week: the unchanged policy reproduces the record, and each
edit changes the report the way a hand calculation says."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from pathlib import Path

import pytest

from demiarch_flow.definition import Workflow, parse_workflow
from demiarch_flow.pricing import PriceTable
from demiarch_flow.replay import Record, Report, Selection, Unrecorded, read_record, replay
from demiarch_flow.store.sql import SqlStore

from ..conftest import DEFAULT_WORKFLOW
from .history import record

SONNET = "anthropic/claude-sonnet-4"
HAIKU = "anthropic/claude-3.5-haiku"
GPT = "openai/gpt-4o"
SIX_HOURS = 6 * 3600.0
#: A week of runs every six hours. Sonnet's requests, in order: run 0 meets a 429 burst with
#: Retry-After 2 s (twice), run 1 two 500s, run 2 a stream cut after two chunks, run 3 a slow
#: answer (3 s), run 4 four 500s (it falls back to haiku); every other request is answered.
WEEK_SCRIPT = f"{SONNET}=429@2,429@2,ok,500,500,ok,cut:2,ok,slow:3,500*4,ok*"
WEEK_RUNS = [i * SIX_HOURS for i in range(28)]


def edited(**changes: tuple[str, str]) -> Workflow:
    """The bundled workflow with text replaced (``(old, new)`` pairs, in keyword order)."""
    text = DEFAULT_WORKFLOW.read_text("utf-8")
    for old, new in changes.values():
        assert old in text, old
        text = text.replace(old, new)
    return parse_workflow(text, "edited.yaml")


def read(url: str) -> Record:
    store = SqlStore.open_sync(url, read_only=True)
    try:
        return read_record(store.engine, Selection("chat", None, None))
    finally:
        store.close()


@pytest.fixture(scope="module")
def week(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    """The recorded week on SQLite (recorded once for the module) and its run ids."""
    url = f"sqlite:///{tmp_path_factory.mktemp('week') / 'flow.db'}"
    ids = record(url, parse_workflow(DEFAULT_WORKFLOW.read_text("utf-8")), WEEK_SCRIPT, WEEK_RUNS)
    return url, ids


def assert_faithful(report: Report) -> None:
    assert report.changed == ()
    assert report.replayed.to_json() == report.recorded.to_json()
    for rec, rep in report.pairs:
        assert (rec.status, rec.error_class, rec.model) == (rep.status, rep.error_class, rep.model)
        assert rec.requests == rep.requests, rec.run_id
        assert (rec.retries, rec.fallbacks) == (rep.retries, rep.fallbacks)
        assert rec.spend_by_model == rep.spend_by_model, rec.run_id
        assert len(rec.waits) == len(rep.waits)
        assert all(abs(a - b) <= 0.001 for a, b in zip(rec.waits, rep.waits, strict=True))
        assert rec.seconds is not None and rep.seconds is not None
        assert abs(rec.seconds - rep.seconds) <= 0.001, rec.run_id


def test_the_unchanged_policy_replays_to_exactly_the_record(db_url: str, tmp_path: Path) -> None:
    """Same file: every run's outcome, requests per model, retries, fallbacks and spend are the
    record's, and every wait and every run's duration within 1 ms of virtual time (SQLite and
    PostgreSQL)."""
    wf = parse_workflow(DEFAULT_WORKFLOW.read_text("utf-8"))
    record(db_url, wf, WEEK_SCRIPT, WEEK_RUNS)
    rec = read(db_url)
    assert len(rec.runs) == 28
    report = replay(wf, rec)
    assert_faithful(report)
    # the faults really are in the record, and were met again
    assert report.recorded.retries == 8 and report.recorded.fallbacks == 1
    assert report.recorded.wait_s == pytest.approx(2 + 2 + 1 + 2 + 1 + 1 + 2 + 4)
    assert report.recorded.p95_s == pytest.approx(4.0)  # run 0: two 2 s Retry-After waits
    assert report.assumptions == () and report.missing == ()


def test_a_shorter_backoff_meets_the_storm_that_was_still_going(
    week: tuple[str, list[str]],
) -> None:
    """``initial_delay_s: 0.25`` (waits 0.25, 0.5, 1 s). By hand: run 0 is unchanged (its waits
    are Retry-After). Run 1 (500 at 0 s and 1 s, ok at 3 s) now asks at 0.25 s (sonnet last seen
    failing: 500), 0.75 s (its own 500 of 1 s), 1.75 s (last seen at 1 s: 500): sonnet is given
    up and haiku answers — 2 more sonnet requests, 1 haiku. Run 2's retry at 0.75 s (its cut
    stream ended at 0.5 s, after the cost look-up) meets the broken stream again, its second
    retry at 1.75 s its own answer of 1.5 s. Run 4 fails four times as before, sooner."""
    url, ids = week
    wf = edited(a=("initial_delay_s: 1", "initial_delay_s: 0.25"))
    report = replay(wf, read(url))
    assert [(c.run_id, c.replayed) for c in report.changed] == [(ids[1], f"succeeded with {HAIKU}")]
    rec, rep = report.recorded, report.replayed
    assert (rec.requests, rep.requests) == (37, 40)
    assert (rec.retries, rep.retries) == (8, 10)
    assert (rec.fallbacks, rep.fallbacks) == (1, 2)
    assert rep.wait_s == pytest.approx(4 + (0.25 + 0.5 + 1) + (0.25 + 0.5) + (0.25 + 0.5 + 1))
    assert rep.models[HAIKU].answers == 2 and rep.succeeded == 28


def _own_reply_costs(url: str, model: str, prices: PriceTable) -> Decimal:
    """Each run's recorded reply tokens, priced for ``model`` by the table."""
    total = Decimal(0)
    for run in read(url).runs:
        reply = next(u for u in run.usage if u.outcome == "reply")
        total += prices.cost(model, reply.prompt_tokens, reply.completion_tokens, None).usd
    return total


def test_a_reordered_chain_asks_haiku_first(week: tuple[str, list[str]]) -> None:
    """Haiku first: the record saw haiku answer once (run 4), so every run is answered by haiku
    at once — 28 requests, no retry, no fallback — and costs its own reply's tokens at haiku's
    price (run 4 its recorded figure, the same tokens)."""
    url, ids = week
    wf = edited(a=(f"  - {SONNET}\n  - {HAIKU}\n", f"  - {HAIKU}\n  - {SONNET}\n"))
    report = replay(wf, read(url))
    rep = report.replayed
    assert rep.succeeded == 28 and rep.models[HAIKU].answers == 28
    assert (rep.requests, rep.retries, rep.fallbacks, rep.wait_s) == (28, 0, 0, 0.0)
    assert rep.spend_usd == _own_reply_costs(url, HAIKU, PriceTable.load())
    assert rep.spend_usd < report.recorded.spend_usd
    assert {c.run_id for c in report.changed} == set(ids) - {ids[4]}


def test_a_lower_cooldown_sends_runs_back_into_the_failing_model(tmp_path: Path) -> None:
    """Recorded with ``cool_s: 30`` (after 2 failures in 60 s), runs at 0, 10, 20 and 40 s, and
    sonnet failing twice (500) in run 0 then answering: run 0 falls back to haiku, runs 1 and 2
    skip the cooling sonnet, run 3 asks it again. With ``cool_s: 5`` sonnet has cooled by 10 s:
    runs 1 and 2 each ask it, meet it as last seen (500, at 1 s), retry after 1 s into another
    500 — the second failure in the window (a cooldown clears its count) starts a new 5 s
    cooldown — and, 2 s later, skip it and fall back: 4 more sonnet requests (3 → 7), 4 more
    retries (2 → 6), the same outcomes."""
    cooldown = "cooldown: {after_failures: 2, window_s: 60, cool_s: %s}\ninitial: LoadContext"
    recorded_wf = edited(a=("initial: LoadContext", cooldown % 30))
    url = f"sqlite:///{tmp_path / 'flow.db'}"
    record(url, recorded_wf, f"{SONNET}=500,500,ok*", [0, 10, 20, 40])
    same = replay(recorded_wf, read(url))
    assert_faithful(same)
    assert same.recorded.models[SONNET].requests == 3
    assert same.recorded.fallbacks == 3
    report = replay(edited(a=("initial: LoadContext", cooldown % 5)), read(url))
    assert report.changed == ()
    assert report.replayed.models[SONNET].requests == 7
    assert (report.recorded.retries, report.replayed.retries) == (2, 6)
    assert report.replayed.fallbacks == 3


def test_a_per_run_budget_below_a_sonnet_request_falls_back_to_haiku(
    week: tuple[str, list[str]],
) -> None:
    """``max_tokens: 50`` and ``per_run_usd: 0.0005``: a sonnet request's worst case (50 × $15/M
    = $0.00075 before the prompt) is over the budget, haiku's ($0.0002 + the prompt at
    $0.80/M) is not: with ``budget_exceeded`` in ``fallback.when`` every run is answered by
    haiku, sonnet is never asked, and the spend is haiku's price of each run's own tokens."""
    url, _ = week
    wf = edited(
        a=("  # optional: temperature, max_tokens", "  max_tokens: 50"),
        b=("forbidden]   # error", "forbidden, budget_exceeded]   # error"),
        c=("initial: LoadContext", "limits: {budget: {per_run_usd: 0.0005}}\ninitial: LoadContext"),
    )
    rep = replay(wf, read(url)).replayed
    assert rep.succeeded == 28 and SONNET not in rep.models
    assert (rep.requests, rep.fallbacks) == (28, 28)
    assert rep.spend_usd == _own_reply_costs(url, HAIKU, PriceTable.load())


def test_a_budget_that_stops_every_run(week: tuple[str, list[str]]) -> None:
    """The same budget without the fallback: every run fails ``budget_exceeded``, nothing is
    asked, nothing spent."""
    url, _ = week
    wf = edited(
        a=("  # optional: temperature, max_tokens", "  max_tokens: 50"),
        c=("initial: LoadContext", "limits: {budget: {per_run_usd: 0.0005}}\ninitial: LoadContext"),
    )
    rep = replay(wf, read(url)).replayed
    assert rep.failed == {"budget_exceeded": 28}
    assert (rep.requests, rep.spend_usd) == (0, Decimal(0))


GPT_FIRST = {
    "a": (f"  - {HAIKU}\n  - {GPT}\n", f"  - {HAIKU}\n"),
    "b": (f"  - {SONNET}\n", f"  - {GPT}\n  - {SONNET}\n"),
}


def test_an_unrecorded_model_that_succeeds(week: tuple[str, list[str]]) -> None:
    """``--unrecorded succeed``: gpt-4o (never asked in the record) answers every run at once,
    at its price of each run's own tokens; every changed run is marked as resting on it."""
    url, _ = week
    report = replay(edited(**GPT_FIRST), read(url), unrecorded=Unrecorded("succeed"))
    rep = report.replayed
    assert rep.models[GPT].answers == 28 and rep.requests == 28
    assert rep.spend_usd == _own_reply_costs(url, GPT, PriceTable.load())
    assert len(report.changed) == 28 and all(c.assumed for c in report.changed)
    assert [(a.model, a.runs) for a in report.assumptions] == [(GPT, 28)]


def test_an_unrecorded_model_that_fails(week: tuple[str, list[str]]) -> None:
    """``--unrecorded fail`` with gpt-4o alone in the chain: each run asks it 4 times (a 503
    retried after 1, 2 and 4 s) and fails ``all_models_failed``; nothing is spent."""
    url, _ = week
    only_gpt = edited(a=(f"  - {SONNET}\n  - {HAIKU}\n", ""))
    report = replay(only_gpt, read(url), unrecorded=Unrecorded("fail"))
    rep = report.replayed
    assert rep.failed == {"all_models_failed": 28}
    assert (rep.requests, rep.retries, rep.spend_usd) == (112, 84, Decimal(0))
    assert rep.wait_s == pytest.approx(28 * 7.0)
    assert "fails every request" in report.assumptions[0].how


def test_an_unrecorded_model_like_a_recorded_one(week: tuple[str, list[str]]) -> None:
    """``--unrecorded anthropic/claude-3.5-haiku``: gpt-4o behaves as haiku did (it answered),
    so gpt-4o answers every run, priced at gpt-4o's rates."""
    url, _ = week
    report = replay(edited(**GPT_FIRST), read(url), unrecorded=Unrecorded("like", HAIKU))
    assert report.replayed.models[GPT].answers == 28
    assert report.replayed.spend_usd == _own_reply_costs(url, GPT, PriceTable.load())
    assert report.assumptions[0].how == f"behaves like {HAIKU}"


def test_by_default_an_unrecorded_model_behaves_like_the_closest_price(
    week: tuple[str, list[str]],
) -> None:
    """gpt-4o ($2.50 + $10 a million) is nearer sonnet ($3 + $15: 5.5 away) than haiku ($0.80 +
    $4: 7.7 away): it meets sonnet's record, and the report names sonnet."""
    url, _ = week
    report = replay(edited(**GPT_FIRST), read(url))
    assert report.assumptions[0].how == f"behaves like {SONNET} (the closest price)"
    # sonnet's record at each run's start: answered, except run 4's moment (500 × 4 → haiku)
    assert report.replayed.models[GPT].answers == 27


def test_runs_without_attempts_replay_with_what_they_have(
    tmp_path: Path,
) -> None:
    """A run with no ``run_attempts`` (as a first-release run) is replayed from the answer it
    stored; a cancelled run is not replayed; the report says both."""
    url = f"sqlite:///{tmp_path / 'flow.db'}"
    wf = parse_workflow(DEFAULT_WORKFLOW.read_text("utf-8"))
    ids = record(url, wf, "", [0, 60, 120])
    store = SqlStore.open_sync(url)
    try:
        with store.engine.begin() as conn:
            from sqlalchemy import delete, update

            from demiarch_flow.store.tables import RunAttempt, WorkflowRun

            conn.execute(delete(RunAttempt).where(RunAttempt.run_id == ids[1]))
            conn.execute(
                update(WorkflowRun).where(WorkflowRun.id == ids[2]).values(status="cancelled")
            )
    finally:
        store.close()
    report = replay(wf, read(url))
    assert report.replayed.succeeded == 2 and report.changed == ()
    assert report.missing == (
        "1 run: no recorded attempts (first-release runs): only their answer is known (its"
        " model, latency and cost), not what failed before it",
        "1 run: cancelled (Ctrl-C, SIGTERM): not replayed — an interruption is not the"
        " provider's behaviour",
    )


def test_replay_is_deterministic(week: tuple[str, list[str]]) -> None:
    """Two replays of one record under one edit give the same report."""
    url, _ = week
    wf = edited(a=("initial_delay_s: 1", "initial_delay_s: 0.25"))
    first, second = replay(wf, read(url)), replay(wf, read(url))
    assert first.to_json() == second.to_json()
    assert [dataclasses.astuple(p[1]) for p in first.pairs] == [
        dataclasses.astuple(p[1]) for p in second.pairs
    ]


def test_a_run_replays_with_its_own_model_and_stream_choice(tmp_path: Path) -> None:
    """Runs recorded with ``--model openai/gpt-4o --no-stream`` are replayed asking gpt-4o,
    blocking: the unchanged file reproduces them (gpt-4o timing out twice, then answering)."""
    url = f"sqlite:///{tmp_path / 'flow.db'}"
    wf = parse_workflow(DEFAULT_WORKFLOW.read_text("utf-8"))
    record(url, wf, f"{GPT}=hang,hang,ok*", [0, 600], model=GPT, stream=False)
    rec = read(url)
    assert [(r.first_model, r.stream) for r in rec.runs] == [(GPT, False)] * 2
    report = replay(wf, rec)
    assert_faithful(report)
    assert report.replayed.models[GPT].requests == 4
    assert report.replayed.wait_s == pytest.approx(1 + 2)  # the timeouts retried after 1, 2 s


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_runs_split_over_processes_give_the_same_report(
    week: tuple[str, list[str]], method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Independent runs (no limits, no cooldown) replayed in two processes, forked or
    spawned: the same report as in one, assumptions merged."""
    import threading

    from demiarch_flow.replay import _run

    if method == "fork" and threading.active_count() > 1:
        pytest.skip("this process has other threads: a replay would spawn its workers")
    monkeypatch.setattr(_run, "start_method", lambda: method)
    url, _ = week
    wf = edited(**GPT_FIRST)
    one = replay(wf, read(url), unrecorded=Unrecorded("fail"), workers=1)
    two = replay(wf, read(url), unrecorded=Unrecorded("fail"), workers=2)
    assert two.to_json() == one.to_json()
    assert two.pairs == one.pairs
    assert [(a.model, a.runs) for a in two.assumptions] == [(GPT, 28)]


def test_an_unreachable_host_replays_as_unreachable(tmp_path: Path) -> None:
    """A run whose connections were refused (the host down: its retries, then no fallback
    behind the same host) replays to exactly its record, not into haiku."""
    url = f"sqlite:///{tmp_path / 'flow.db'}"
    wf = parse_workflow(DEFAULT_WORKFLOW.read_text("utf-8"))
    record(url, wf, f"{SONNET}=refused*4,ok*;{HAIKU}=ok", [0, 600])
    report = replay(wf, read(url))
    assert_faithful(report)
    assert report.recorded.failed == {"network_error": 1}
    assert HAIKU not in report.replayed.models
