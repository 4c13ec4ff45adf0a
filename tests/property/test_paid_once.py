"""Paid once, kept always — the proof by property.

The real engine drives a run through the one fake provider under a random fault schedule (429
with and without ``Retry-After``, 5xx, timeouts, refused connections, streams that break before
and after their first token and after their ``finish_reason``, answers without ``usage``,
``GET /generation`` records that appear late), with a crash — Ctrl-C, or a process death that
keeps only what was committed — at a random await, then resumes it in fresh processes until it
has its reply (see :mod:`.harness`). Then, for every run:

* every answer the fake delivered is stored exactly once and never requested again;
* ``llm_usage`` has one row per generation the fake billed, none at $0;
* spend plus kept reservations is never below what the fake billed (runs with a budget);
* the run ends with exactly one final status that no later write changes;
* its journal is numbered 1..N without a gap;

and, without a crash, the in-memory and SQL stores end with the same rows and the same books.
Examples are derandomized (the same in every CI run); a failure prints its schedule, which
:func:`~.harness.run_example` replays.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from ..store.conftest import PG_URL, drop_everything, postgres_available
from .harness import MODELS, Crash, Played, Schedule, run_example

#: What one request may meet: each model's list is drawn from these, then it answers ``ok``.
BLOCKING = ("500", "429", "429@1", "429@40", "502", "503", "refused", "reset", "hang")
AFTER_FIRST_TOKEN = ("cut:2", "drop:2", "stall:2", "ratecut:2", "end:2")
BEFORE_FIRST_TOKEN = ("cut:0", "drop:0", "stall:0", "end:0")
MODS = ("", "nousage")
AFTER_FINISH = ("dropfinish", "stallfinish")


@st.composite
def schedules(
    draw: st.DrawFn,
    *,
    faults: tuple[str, ...] = BLOCKING + BEFORE_FIRST_TOKEN + AFTER_FIRST_TOKEN,
    mods: tuple[str, ...] = MODS + AFTER_FINISH,
    crashes: tuple[str, ...] = (),
    budgets: tuple[str, ...] = ("none",),
    max_crashes: int = 1,
    max_tick: int = 32,
    lates: tuple[int, ...] = (1, 0, 3, 6),
    streams: tuple[bool, ...] = (True, False),
) -> Schedule:
    parts = []
    for model in MODELS if faults else ():
        items = draw(st.lists(st.sampled_from(faults), max_size=4))
        if items:
            parts.append(f"{model}={','.join(items)}")
    crash = st.builds(
        Crash,
        st.sampled_from(crashes) if crashes else st.nothing(),
        st.integers(1, max_tick),
        st.booleans(),
    )
    return Schedule(
        script=";".join(parts),
        stream=draw(st.sampled_from(streams)),
        mods=tuple(draw(st.lists(st.sampled_from(mods), max_size=6))),
        late=draw(st.sampled_from(lates)),
        crashes=tuple(draw(st.lists(crash, min_size=1, max_size=max_crashes))) if crashes else (),
        budget=draw(st.sampled_from(budgets)),  # type: ignore[arg-type]
    )


#: A longer hunt than CI's (``just property-hunt``): examples × SCALE, drawn at random.
SCALE = int(os.environ.get("DEMIARCH_FLOW_PROPERTY_SCALE", "1"))


def _settings(examples: int) -> Any:
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---------------------------------------------------------------------- the invariants


def check_answers(played: Played) -> None:
    """Every answer the fake delivered is stored exactly once and never requested again."""
    world, facts = played.world, played.facts
    for run_id in world.run_ids:
        chats = [c for c in world.chats if c.run_id == run_id]
        delivered = [c for c in chats if c.delivered is not None]
        kept = [c for c in delivered if not world.forgiven(c.delivered)]
        replies = [u.generation for u in facts.usage if u.run_id == run_id and u.outcome == "reply"]
        roles = Counter(m[1] for m in facts.messages if m[0] == run_id)
        assert roles["user"] <= 1, f"{run_id}: the user's message stored {roles['user']} times"
        assert roles["assistant"] == len(replies) <= 1, (
            f"{run_id}: {roles['assistant']} assistant messages, replies {replies}"
        )
        if kept:
            first = kept[0]
            again = [c.name for c in chats if c.index > first.index]
            assert not again, (
                f"{run_id}: the answer of request {first.name} was delivered, then requested"
                f" again by {again}"
            )
            assert replies == [first.name], (
                f"{run_id}: the answer of request {first.name} was delivered; stored: {replies}"
            )
        assert set(replies) <= {c.name for c in delivered}, (
            f"{run_id}: stored reply {replies} was never delivered"
            f" (delivered: {[c.name for c in delivered]})"
        )


def check_usage(played: Played) -> None:
    """``llm_usage`` has one row per generation the fake billed, and books none at $0."""
    world, facts = played.world, played.facts
    billed = {c.name: world.log.billed[c.gen] for c in world.chats if c.gen in world.log.billed}
    rows = Counter(u.generation for u in facts.usage)
    twice = sorted(g for g, n in rows.items() if n > 1 and g is not None)
    assert not twice, f"generations booked more than once: {twice}"
    phantom = sorted(str(g) for g in rows if g not in billed)
    assert not phantom, f"llm_usage rows for generations the fake never billed: {phantom}"
    missing = [
        c.name
        for c in world.chats
        if c.name in billed and rows[c.name] == 0 and not world.forgiven(c.known)
    ]
    assert not missing, (
        f"generations the fake billed with no llm_usage row: {missing}"
        f" (booked: {sorted(str(g) for g in rows)})"
    )
    free = [(u.generation, u.outcome, u.cost_source) for u in facts.usage if u.cost_usd == 0]
    assert not free, f"billed generations booked at $0: {free}"


def check_books(played: Played) -> None:
    """Spend plus kept reservations is never below what the fake billed (after every process
    and at the end)."""
    world, facts = played.world, played.facts
    if world.schedule.budget == "none":
        return
    for number, billed, use in world.book_checks:
        assert use.spent_usd + use.reserved_usd >= billed, (
            f"after process {number}: spent {use.spent_usd} + reserved {use.reserved_usd}"
            f" < billed {billed}"
        )
    spent, reserved = facts.books
    total = sum(world.log.billed.values())
    assert spent + reserved >= total, f"at the end: spent {spent} + reserved {reserved} < {total}"


def check_status(played: Played) -> None:
    """Each run ends with exactly one final status, which no later write changes."""
    world, facts = played.world, played.facts
    for run_id in world.run_ids:
        writes = [s for r, s, _ in world.status_log if r == run_id]
        if "succeeded" in writes:
            later = writes[writes.index("succeeded") + 1 :]
            assert set(later) <= {"succeeded"}, (
                f"{run_id}: succeeded, then written {later} (all writes: {writes})"
            )
        run = facts.runs.get(run_id)
        if run is None:
            sent = [c.name for c in world.chats if c.run_id == run_id]
            assert not sent, f"{run_id} is not in the database but sent {sent}"
            continue
        status = run[0]
        replied = any(u.run_id == run_id and u.outcome == "reply" for u in facts.usage)
        assert status in ("succeeded", "failed"), f"{run_id} ended {status!r}"
        assert (status == "succeeded") == replied, f"{run_id} ended {status!r}, reply: {replied}"
    last = world.run_ids[-1]
    if facts.runs.get(last, ("",))[0] == "succeeded":
        assert played.post is not None and not played.post.ran, played.post
        before, after = played.facts.contract(), played.after.contract()
        for key in ("runs", "attempts", "journal", "messages", "usage"):
            assert before[key] == after[key], f"a resume of the succeeded run changed {key}"


def check_journal(played: Played) -> None:
    """Every run's journal is numbered 1..N without a gap."""
    for run_id, rows in played.facts.journal.items():
        seqs = [row[0] for row in rows]
        assert seqs == list(range(1, len(seqs) + 1)), f"{run_id}: journal seq {seqs}"


def check_paid_once(played: Played) -> None:
    check_answers(played)
    check_usage(played)
    check_books(played)
    check_status(played)
    check_journal(played)


def check_same_rows(memory: Played, sql: Played) -> None:
    """The in-memory and the SQL store end with the same rows and the same books."""
    left, right = memory.facts.contract(), sql.facts.contract()
    if memory.world.schedule.budget == "none":  # no ledger: the SQL books are llm_usage alone
        del left["books"], right["books"], left["run_books"], right["run_books"]
    for key in left:
        assert left[key] == right[key], f"{key} differ:\n memory {left[key]}\n    sql {right[key]}"


# ---------------------------------------------------------------------- the properties


@_settings(40)
@given(schedules(budgets=("none", "roomy", "tight")))
def test_memory_and_sql_stores_agree(schedule: Schedule) -> None:
    """Without a crash, the in-memory and the SQLite store end with the same rows and books,
    and both keep the paid-once invariants."""
    memory = run_example(schedule, "memory")
    sql = run_example(schedule, "sqlite")
    check_paid_once(memory)
    check_paid_once(sql)
    check_same_rows(memory, sql)


# A stream silent after its finish_reason, its answer whole: a death or Ctrl-C while the
# usage chunk is awaited (found by a hunt; the answer was bought again on resume).
_QUIET = Schedule(script=f"{MODELS[0]}=cut:0", mods=("", "stallfinish"))


@_settings(150)
@example(dataclasses.replace(_QUIET, crashes=(Crash("death", 27),)))
@example(dataclasses.replace(_QUIET, crashes=(Crash("death", 26, after=True),)))
@example(dataclasses.replace(_QUIET, crashes=(Crash("cancel", 26),)))
@given(schedules(crashes=("cancel", "death"), budgets=("none", "roomy", "tight"), max_crashes=2))
def test_paid_once_across_crashes_on_sqlite(schedule: Schedule) -> None:
    """Ctrl-C or a process death at a random await, then resumes: paid once, kept always."""
    played = run_example(schedule, "sqlite")
    _tell(played)
    check_paid_once(played)


@pytest.mark.postgres
@_settings(20)
@given(schedules(crashes=("cancel", "death"), budgets=("none", "roomy", "tight"), max_crashes=2))
def test_paid_once_across_crashes_on_postgres(schedule: Schedule) -> None:
    """The same property on PostgreSQL (where a server is present)."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    drop_everything(PG_URL)
    played = run_example(schedule, "postgres", PG_URL)
    _tell(played)
    check_paid_once(played)


def _tell(played: Played) -> None:
    """What the example did, for ``--hypothesis-show-statistics`` (how many crashes fired,
    and how many requests were billed, answered and resumed)."""
    ends = [p.end for p in played.world.processes[:-1]]
    event(f"processes ended: {'+'.join(ends)}")
    event(f"billed generations: {min(len(played.world.log.billed), 3)}+")
