"""``runs resume`` in-process: a failed, cancelled or stale run goes on under the same id, in the
same conversation, and nothing already paid for is paid for again."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from demiarch_flow.answers import generation_record
from demiarch_flow.definition import Workflow
from demiarch_flow.errors import PersistenceError
from demiarch_flow.faults import new_generation_id
from demiarch_flow.pricing import to_usd
from demiarch_flow.runner import RunEnv, RunRequest, RunState, run_workflow
from demiarch_flow.runner.owner import effective_status, this_host, this_process
from demiarch_flow.runner.resume import NotResumable, resume_point, resume_run
from demiarch_flow.store import MemoryStore
from demiarch_flow.store.base import AttemptRow, Reply, RunEnd, StoredRun
from demiarch_flow.testing import FakeOpenRouter, fixed_clock, make_env

from .helpers import GPT4O, SONNET, default_workflow, edited

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WF = default_workflow()


def env_of(fake: FakeOpenRouter, store: MemoryStore, **kw: Any) -> RunEnv:
    return make_env(fake, store=store, now=kw.pop("now", fixed_clock(T0)), **kw)


async def start(fake: FakeOpenRouter, store: MemoryStore, wf: Workflow = WF, **kw: Any) -> str:
    """One run of ``wf`` to its end; returns its id."""
    out = await run_workflow(wf, RunRequest("Hi"), env_of(fake, store, **kw))
    return out.run_id


def crashed(store: MemoryStore, run_id: str, owner: str, beat: datetime) -> None:
    """What a process that died leaves behind: the run still 'running', its last heartbeat."""
    store.runs[run_id].update(status="running", owner=owner, heartbeat_at=beat, finished_at=None)


def journal(store: MemoryStore, run_id: str) -> list[tuple[str, str, str]]:
    events = [e for e in store.events if e.run_id == run_id]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    return [(e.from_state, e.event, e.to_state) for e in events]


def user_messages(store: MemoryStore, run_id: str) -> int:
    return sum(1 for m in store.messages if m.run_id == run_id and m.role == "user")


async def loaded(store: MemoryStore, run_id: str) -> StoredRun:
    run = await store.load_run(run_id)
    assert run is not None
    return run


async def test_a_failed_401_run_resumes_in_the_same_conversation(autojump_clock: object) -> None:
    """401, then the key is fixed: the same run id and conversation, one user message, one
    reply, resume_count 1 and a resume row (Failed → Request) in a gapless journal."""
    fake, store = FakeOpenRouter(f"{SONNET}=401"), MemoryStore()
    run_id = await start(fake, store)
    before = await loaded(store, run_id)
    assert before.status == "failed"
    resumed = await resume_run(run_id, env_of(fake, store))
    assert resumed.ran
    out = resumed.outcome
    assert (out.run_id, out.status, out.conversation_id) == (
        run_id,
        "succeeded",
        before.conversation_id,
    )
    assert out.resume_count == 1
    after = await loaded(store, run_id)
    assert (after.status, after.resume_count, after.conversation_id) == (
        "succeeded",
        1,
        before.conversation_id,
    )
    assert user_messages(store, run_id) == 1
    assert len(store.usage) == 1
    assert ("Failed", "resume", "Request") in journal(store, run_id)
    assert journal(store, run_id)[-1] == ("Persist", "saved", "Done")
    assert fake.models_called == [SONNET, SONNET]


async def test_a_cancelled_run_resumes_in_backoff(autojump_clock: object) -> None:
    """Cancelled (an outer move_on_after) during a Backoff wait: resume re-enters Backoff,
    waits the first retry delay again (fresh counters) and succeeds."""
    fake, store = FakeOpenRouter(f"{SONNET}=500"), MemoryStore()
    with trio.move_on_after(0.5):
        await start(fake, store)
    (run_id,) = store.runs
    assert store.runs[run_id]["status"] == "cancelled"
    began = trio.current_time()
    resumed = await resume_run(run_id, env_of(fake, store))
    assert resumed.outcome.status == "succeeded"
    assert trio.current_time() - began == pytest.approx(1.0)  # initial_delay_s of chat.yaml
    events = journal(store, run_id)
    assert events[events.index(("Backoff", "resume", "Backoff")) + 1] == (
        "Backoff",
        "retry",
        "Request",
    )
    assert len(fake.requests) == 2
    assert (await loaded(store, run_id)).resume_count == 1


async def test_a_saved_run_is_only_reported(autojump_clock: object) -> None:
    """A run that stored its reply: resume sends nothing and reports the saved outcome."""
    fake, store = FakeOpenRouter(), MemoryStore()
    run_id = await start(fake, store)
    resumed = await resume_run(run_id, env_of(fake, store))
    assert not resumed.ran
    assert resumed.outcome.status == "succeeded"
    assert resumed.outcome.content == store.usage[0].content
    assert len(fake.requests) == 1
    assert (await loaded(store, run_id)).resume_count == 0


@dataclasses.dataclass
class BrokenSaves(MemoryStore):
    """A memory store whose database 'fails' every reply while ``broken``."""

    broken: bool = True

    async def save_reply(self, reply: Reply, end: RunEnd, checkpoint: Any = None) -> str:
        if self.broken:
            raise PersistenceError("database error: disk I/O error")
        return await super().save_reply(reply, end, checkpoint)


async def test_a_reply_in_the_recovery_file_is_imported(
    autojump_clock: object, tmp_path: Path
) -> None:
    """Persist could not store the reply (it went to the recovery file); once the database
    works, resume imports it from there and sends nothing."""
    fake, store = FakeOpenRouter(), BrokenSaves()
    run_id = await start(fake, store, recovery_dir=str(tmp_path))
    assert store.runs[run_id]["status"] == "failed"
    assert (tmp_path / "recovery.jsonl").is_file()
    store.broken = False
    resumed = await resume_run(run_id, env_of(fake, store, recovery_dir=str(tmp_path)))
    assert (resumed.ran, resumed.recovered) == (False, True)
    assert resumed.outcome.status == "succeeded"
    assert len(fake.requests) == 1
    assert len(store.usage) == 1
    assert user_messages(store, run_id) == 1


async def test_a_running_run_with_a_fresh_heartbeat_is_not_resumed(
    autojump_clock: object,
) -> None:
    """A run whose owner beats (10 s ago): not resumable (exit 2), nothing sent or written."""
    fake, store = FakeOpenRouter(f"{SONNET}=401"), MemoryStore()
    run_id = await start(fake, store)
    crashed(store, run_id, "elsewhere:4242:1", T0)
    events = len(store.events)
    with pytest.raises(NotResumable, match="still running") as caught:
        await resume_run(run_id, env_of(fake, store, now=fixed_clock(T0 + timedelta(seconds=10))))
    assert caught.value.exit_code == 2
    assert len(fake.requests) == 1
    assert len(store.events) == events
    assert store.runs[run_id]["status"] == "running"


async def test_a_stale_run_resumes(autojump_clock: object) -> None:
    """No heartbeat for over 30 s (owner on another host): stale, and resumed."""
    fake, store = FakeOpenRouter(f"{SONNET}=401"), MemoryStore()
    run_id = await start(fake, store)
    crashed(store, run_id, "elsewhere:4242:1", T0)
    later = fixed_clock(T0 + timedelta(seconds=31))
    resumed = await resume_run(run_id, env_of(fake, store, now=later))
    assert resumed.outcome.status == "succeeded"
    assert (await loaded(store, run_id)).resume_count == 1


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


async def test_effective_status_of_running_runs(autojump_clock: object) -> None:
    """A run of a dead process on this host is stale at once; one of a live process (or of
    another host) only after 30 s without a heartbeat; stored statuses are kept."""
    fake, store = FakeOpenRouter(), MemoryStore()
    run_id = await start(fake, store)
    host = this_host()
    crashed(store, run_id, f"{host}:{_dead_pid()}:1", T0)
    run = await loaded(store, run_id)
    assert effective_status(run, T0) == "stale"
    assert effective_status(run, T0, alive=lambda pid: True) == "running"
    assert effective_status(run, T0 + timedelta(seconds=31), alive=lambda pid: True) == "stale"
    crashed(store, run_id, this_process(T0).token, T0)
    assert effective_status(await loaded(store, run_id), T0) == "running"
    other = dataclasses.replace(run, owner=f"other-{host}:1:1")
    assert effective_status(other, T0, alive=lambda pid: False) == "running"
    # same hostname, another PID namespace (a container): its pids are not ours to check
    bare = socket.gethostname()
    elsewhere = dataclasses.replace(run, owner=f"{bare}#1:{_dead_pid()}:1")
    assert effective_status(elsewhere, T0) == "running"
    assert effective_status(dataclasses.replace(run, status="failed"), T0) == "failed"


def test_the_host_names_its_pid_namespace() -> None:
    """Where /proc shows the PID namespace, the owner's host carries its number."""
    import os

    host = this_host()
    assert host.startswith(socket.gethostname())
    if os.path.exists("/proc/self/ns/pid"):
        assert host != socket.gethostname() and host.rpartition("#")[2].isdigit()


async def test_a_lost_attempt_with_a_known_generation_is_booked_then_sent_again(
    autojump_clock: object,
) -> None:
    """An attempt that was sent and never recorded, whose generation GET /generation knows:
    booked as 'billed' at the provider's cost, journaled, and the request is sent again."""
    fake, store = FakeOpenRouter(f"{SONNET}=401"), MemoryStore()
    run_id = await start(fake, store)
    gen = new_generation_id()
    record = generation_record(SONNET, [], fake.prices, gen, "an answer that never arrived")
    fake.generations.add(gen, record)
    cost = to_usd(record["data"]["total_cost"])
    assert cost is not None
    assert cost > 0
    store.attempts[(run_id, 1)] = AttemptRow(run_id, 1, SONNET, T0, generation_id=gen)
    crashed(store, run_id, "elsewhere:1:1", T0)
    resumed = await resume_run(run_id, env_of(fake, store, now=fixed_clock(T0 + timedelta(1))))
    assert resumed.outcome.status == "succeeded"
    (billed,) = store.billed
    assert (billed.generation_id, billed.cost_usd, billed.attempt) == (gen, cost, 1)
    run = await loaded(store, run_id)
    assert run.cost_usd == cost + store.usage[0].cost_usd
    assert [a.ended_at is not None for a in run.attempts] == [True, True]
    assert [a.number for a in run.attempts] == [1, 2]
    assert ("Failed", "attempt_billed", "Failed") in journal(store, run_id)
    assert len(fake.requests) == 2


async def test_a_lost_attempt_of_unknown_generation_is_booked_at_an_estimate(
    autojump_clock: object,
) -> None:
    """GET /generation never knows the id (the look-ups are retried, then given up): the
    generation was named, so it was billed — it is booked at an estimate (the prompt at the
    price table's rates, ``estimated``), never left out of llm_usage; the request goes again."""
    fake, store = FakeOpenRouter(f"{SONNET}=401"), MemoryStore()
    run_id = await start(fake, store)
    store.attempts[(run_id, 1)] = AttemptRow(run_id, 1, SONNET, T0, generation_id="gen-unknown")
    crashed(store, run_id, "elsewhere:1:1", T0)
    resumed = await resume_run(run_id, env_of(fake, store, now=fixed_clock(T0 + timedelta(1))))
    assert resumed.outcome.status == "succeeded"
    (billed,) = store.billed
    assert (billed.generation_id, billed.cost_source) == ("gen-unknown", "estimated")
    assert billed.cost_usd > 0 and billed.prompt_tokens is None
    assert ("Failed", "attempt_billed", "Failed") in journal(store, run_id)
    assert len(store.usage) == 1


async def test_a_cancelled_stream_is_booked_once_by_resume(autojump_clock: object) -> None:
    """Ctrl-C after a stream named its generation: the provider may bill what it generated, so
    resume looks the generation up and books it (journal ``attempt_billed``; the attempt stays
    ``cancelled``); a second resume of the same run does not book it again."""
    from demiarch_flow.runner import FlowRecord

    fake, store = FakeOpenRouter(f"{SONNET}=stall:3,401"), MemoryStore()
    scope = trio.CancelScope()

    class CtrlC:
        async def on_record(self, rec: FlowRecord) -> None:
            if rec.kind == "delta":
                scope.cancel()

    with scope:
        await run_workflow(WF, RunRequest("Hi"), env_of(fake, store, listeners=(CtrlC(),)))
    (run_id,) = store.runs
    assert store.runs[run_id]["status"] == "cancelled"
    assert store.billed == []
    first = await resume_run(run_id, env_of(fake, store))
    assert first.outcome.status == "failed"  # the 401
    (billed,) = store.billed
    run = await loaded(store, run_id)
    assert (billed.attempt, billed.generation_id) == (1, run.attempts[0].generation_id)
    assert billed.cost_usd > 0
    assert run.attempts[0].error_class == "cancelled"
    again = await resume_run(run_id, env_of(fake, store))
    assert again.outcome.status == "succeeded"
    assert len(store.billed) == 1
    assert [e[1] for e in journal(store, run_id)].count("attempt_billed") == 1
    assert len(fake.requests) == 3


async def test_a_run_failed_after_fallback_resumes_on_the_last_model(
    autojump_clock: object,
) -> None:
    """Every model refused (400): the run failed when Fallback ran out of models; it resumes
    in Request on the last model of the chain, not from the first."""
    fake, store = FakeOpenRouter("*=400"), MemoryStore()
    run_id = await start(fake, store)
    run = await loaded(store, run_id)
    assert run.state_json is not None
    state = RunState.from_json(run.state_json)
    assert (state.state, state.came_from) == ("Failed", "Fallback")
    assert resume_point(WF, state) == "Request"
    resumed = await resume_run(run_id, env_of(fake, store))
    assert resumed.outcome.status == "succeeded"
    assert fake.models_called[-1] == GPT4O
    assert len(fake.requests) == 4


async def test_the_stored_definition_is_used_unless_another_is_given(
    autojump_clock: object,
) -> None:
    """Resume runs under the definition the run started with; ``workflow=`` replaces it (an
    edited file changes nothing unless it is passed)."""
    slow = edited(**{"initial_delay_s: 1": "initial_delay_s: 7"})
    waited: list[float] = []
    for override in (None, slow):
        fake, store = FakeOpenRouter(f"{SONNET}=500"), MemoryStore()
        with trio.move_on_after(0.5):
            await start(fake, store)
        (run_id,) = store.runs
        began = trio.current_time()
        resumed = await resume_run(run_id, env_of(fake, store), workflow=override)
        assert resumed.outcome.status == "succeeded"
        waited.append(trio.current_time() - began)
    assert waited == [pytest.approx(1.0), pytest.approx(7.0)]


async def test_a_run_resumed_under_an_edited_definition_stays_under_it(
    autojump_clock: object,
) -> None:
    """``workflow=`` records the edited definition on the run: a later resume without one
    goes on under the edit (7 s backoff), not under the definition the run started with."""
    slow = edited(**{"initial_delay_s: 1": "initial_delay_s: 7"})
    fake, store = FakeOpenRouter(f"{SONNET}=500"), MemoryStore()
    with trio.move_on_after(0.5):
        await start(fake, store)
    (run_id,) = store.runs
    with trio.move_on_after(3):
        await resume_run(run_id, env_of(fake, store), workflow=slow)
    assert store.runs[run_id]["workflow_sha256"] == slow.sha256 != WF.sha256
    began = trio.current_time()
    resumed = await resume_run(run_id, env_of(fake, store))
    assert resumed.outcome.status == "succeeded"
    assert trio.current_time() - began == pytest.approx(7.0)


async def test_an_unknown_run_is_not_resumable(autojump_clock: object) -> None:
    """No run with that id: NotResumable (exit 2), nothing sent."""
    fake, store = FakeOpenRouter(), MemoryStore()
    with pytest.raises(NotResumable, match="no run with id") as caught:
        await resume_run("nope", env_of(fake, store))
    assert caught.value.exit_code == 2
    assert fake.requests == []


async def test_a_paused_owner_does_not_overwrite_a_run_taken_over(autojump_clock: object) -> None:
    """The owner is paused while its request is out; the run looks stale and another process
    resumes it. When the owner wakes with the answer, every write it tries is refused
    (RunTakenOver): the run stays the other process's, and the answer this one paid for is
    booked as a billed generation of the run instead of being lost."""
    from demiarch_flow.errors import RunTakenOver

    store = MemoryStore()

    class TakenOverWhileOut(FakeOpenRouter):
        async def handle_async_request(self, request: Any) -> Any:
            answer = await super().handle_async_request(request)
            (row,) = store.runs.values()  # what `runs resume` in another process does
            row.update(owner="elsewhere:2:2", status="running")
            return answer

    fake = TakenOverWhileOut()
    env = env_of(fake, store, owner="here:1:1")
    with pytest.raises(RunTakenOver, match="taken over by another process"):
        await run_workflow(WF, RunRequest("Hi", stream=False), env)
    (run_id,) = store.runs
    row = store.runs[run_id]
    assert (row["owner"], row["status"]) == ("elsewhere:2:2", "running")
    assert store.usage == []  # no reply stored by the paused owner
    (billed,) = store.billed
    assert billed.generation_id == store.attempts[(run_id, 1)].generation_id
    assert billed.generation_id.startswith("gen-sim-") and billed.cost_usd > 0


async def test_resuming_under_an_edited_model_chain_uses_it(autojump_clock: object) -> None:
    """`--workflow` with an edited `models:` list: the resumed run asks the new chain (from
    its start when the model it stood on is gone), not the chain it started with."""
    fake, store = FakeOpenRouter(f"{SONNET}=401"), MemoryStore()
    run_id = await start(fake, store)
    assert store.runs[run_id]["status"] == "failed"
    mini = "openai/gpt-4o-mini"
    edited_chain = edited(**{f"  - {SONNET}\n": f"  - {mini}\n"})
    resumed = await resume_run(run_id, env_of(fake, store), workflow=edited_chain)
    assert resumed.outcome.status == "succeeded"
    assert fake.models_called == [SONNET, mini]
    assert resumed.outcome.model == mini


async def test_an_answer_whole_before_its_usage_is_kept_and_stored_by_resume(
    autojump_clock: object,
) -> None:
    """A stream delivers its whole answer and finish_reason, then goes silent (``quiet``): the
    answer is committed with its attempt at once, before the usage chunk is given up on; Ctrl-C
    inside that wait leaves it there, and resume stores it as the reply — the delivered text,
    at GET /generation's cost, one llm_usage row — without asking the provider again."""
    fake, store = FakeOpenRouter(f"{SONNET}=quiet"), MemoryStore()
    scope = trio.CancelScope()
    seen: list[AttemptRow] = []

    async def ctrl_c_in_the_wait() -> None:
        await trio.sleep(1.0)  # the stream is silent; the 2 s grace has not run out
        seen.extend(store.attempts.values())
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ctrl_c_in_the_wait)
        with scope:
            await run_workflow(WF, RunRequest("Hi"), env_of(fake, store))
    [row] = seen
    delivered = row.partial_text
    assert delivered and delivered.startswith(f"[simulated {SONNET}]")
    assert (row.finish_reason, row.ended_at, row.status) == ("stop", None, 200)
    assert row.answer_unkept and row.generation_id is not None
    (run_id,) = store.runs
    assert store.runs[run_id]["status"] == "cancelled"
    [cancelled] = (await loaded(store, run_id)).attempts
    assert (cancelled.error_class, cancelled.partial_text) == ("cancelled", delivered)
    assert cancelled.answer_unkept
    chats = len(fake.requests)
    resumed = await resume_run(run_id, env_of(fake, store))
    assert resumed.outcome.status == "succeeded" and resumed.outcome.content == delivered
    assert len(fake.requests) == chats  # the answer was not bought again
    (reply,) = store.usage
    assert (reply.generation_id, reply.cost_source) == (row.generation_id, "provider")
    assert store.billed == []
    run = await loaded(store, run_id)
    assert not run.attempts[0].answer_unkept and run.attempts[0].partial_text is None
    assert ("Request", "attempt_answered", "Persist") in journal(store, run_id)
    again = await resume_run(run_id, env_of(fake, store))
    assert not again.ran and len(store.usage) == 1


async def test_a_process_that_died_holding_a_whole_answer_is_resumed_into_persist(
    autojump_clock: object,
) -> None:
    """A process died while its stream's usage chunk was awaited: the attempt row is open with
    the whole answer. Resume books that generation as the reply (not as a lost attempt), at the
    provider's cost, and sends nothing."""
    fake, store = FakeOpenRouter(f"{SONNET}=401"), MemoryStore()
    run_id = await start(fake, store)
    gen = new_generation_id()
    record = generation_record(SONNET, [], fake.prices, gen, "the whole answer")
    fake.generations.add(gen, record)
    store.attempts[(run_id, 2)] = AttemptRow(
        run_id, 2, SONNET, T0, status=200, generation_id=gen, latency_ms=7,
        partial_text="the whole answer", finish_reason="stop", response_model=SONNET,
    )  # fmt: skip
    crashed(store, run_id, "elsewhere:1:1", T0)
    chats = len(fake.requests)
    resumed = await resume_run(run_id, env_of(fake, store, now=fixed_clock(T0 + timedelta(1))))
    assert resumed.outcome.status == "succeeded"
    assert resumed.outcome.content == "the whole answer"
    assert len(fake.requests) == chats
    (reply,) = store.usage
    assert reply.generation_id == gen and reply.cost_usd == to_usd(record["data"]["total_cost"])
    assert store.billed == []
    assert ("Failed", "attempt_answered", "Persist") in journal(store, run_id)
