"""A world for the "paid once, kept always" property: one fake provider that outlives the
processes, one database, and processes that run or resume a run until one of them crashes.

What survives a process is the world: the :class:`~demiarch_flow.fake.FakeOpenRouter` (what it
billed is billed), the database (a SQLite file, PostgreSQL, or — for the in-memory variant —
the :class:`~demiarch_flow.store.MemoryStore` and :class:`~demiarch_flow.store.limits.MemoryLedger`
objects) and the recovery file. What a process has is its own: its ``RunEnv``, its HTTP client,
its ``SqlStore`` object (with the writes it has queued and not committed) and its owner token.

A process opens the database as its backend says:

* ``sqlite`` / ``postgres`` — ``SqlStore(open_engine(url), url)`` and ``SqlLedger(engine)``:
  the SQLAlchemy engine's path (what PostgreSQL, and a SQLite file that needs creating or
  upgrading, take);
* ``sqlite-lite`` — exactly as ``demiarch-flow run`` does on a SQLite file at this release's
  revision: ``SqlStore.open_sync(url)``, which takes ``_Writer.at_head`` (its own ``sqlite3``
  connection, the generated statements of ``store/_sqlite_sql.py``, no engine until a read or
  the budget needs one), and the ledger :func:`demiarch_flow.runtime.open_world` builds,
  ``LazyLedger(SqlLedger(store.engine))``. A death there closes that connection without
  committing the queue.

Every await the engine makes through the world is a *tick* of its process: each store call,
each ledger call, each request the transport carries (chat ``POST`` and ``GET /generation``),
each record handed to a listener (one per streamed delta, too). A :class:`Crash` names a tick of
a process and whether it lands just before the call or just after it returned:

* ``cancel`` — Ctrl-C: the process's cancel scope is cancelled there; the engine's shielded
  clean-up runs, the store is closed (queued writes flushed), as the CLI does on exit.
* ``death`` — SIGKILL: from that tick on every call through the world raises
  :class:`ProcessDied` (a ``BaseException`` nothing in the package catches), shielded clean-up
  included; the ``SqlStore`` is dropped without flushing its queue, and the recovery file is put
  back as it was at the moment of death. Only what was committed survives.

The next process starts 31 s later (the dead owner looks stale) with a fresh ``RunEnv`` and
resumes the run with :func:`~demiarch_flow.runner.resume.resume_run`, until the run has its
reply or :data:`MAX_PROCESSES` have run. The transport records, for each chat request, which
run sent it, the generation the fake billed for it, and when the answer became known to the
process (the response reached httpx) and was *delivered* (a blocking 200 body, or a stream's
``finish_reason: stop`` chunk, handed to the client).

A generation lost in a crash is *forgiven* — the property does not ask for its reply or its
``llm_usage`` row — only when the process never saw it (the crash fell between the fake's answer
and httpx), or when a process death fell inside the instant the answer arrived: no virtual time
passed, no request left and no durable write completed between the answer and the death. A
death after a ``GET /generation``, a Backoff wait or a commit that did not carry the answer is not
forgiven: the answer could have been kept.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import json
import random
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import trio
from sqlalchemy import Engine, select
from trio.testing import MockClock

from demiarch_flow.answers import GenerationLog
from demiarch_flow.client import ApiKey, OpenRouterClient
from demiarch_flow.definition import Workflow, parse_workflow
from demiarch_flow.fake import FAKE_BASE_URL, FAKE_KEY, FakeOpenRouter
from demiarch_flow.pricing import to_usd
from demiarch_flow.runner import FlowRecord, RunEnv, RunRequest, run_workflow
from demiarch_flow.runner.limiter import Limiter
from demiarch_flow.runner.resume import NotResumable, resume_run
from demiarch_flow.runtime import _sql_ledger
from demiarch_flow.store import MemoryStore
from demiarch_flow.store.limits import (
    BudgetWindow,
    LazyLedger,
    Ledger,
    MemoryLedger,
    SqlLedger,
    WindowUse,
)
from demiarch_flow.store.sql import SqlStore, open_engine
from demiarch_flow.store.tables import ChatMessage, LlmUsage

from ..conftest import DEFAULT_WORKFLOW

T = TypeVar("T")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SONNET, HAIKU, GPT4O = "anthropic/claude-sonnet-4", "anthropic/claude-3.5-haiku", "openai/gpt-4o"
MODELS = (SONNET, HAIKU, GPT4O)
MESSAGE = "Hello"
RESTART_S = 31.0
"""How long after a process ends the next one resumes: the dead owner's heartbeat is stale."""
MAX_PROCESSES = 7
Backend = Literal["memory", "sqlite", "sqlite-lite", "postgres"]
Budget = Literal["none", "roomy", "tight"]
_BIG = Decimal(1_000_000)

# ---------------------------------------------------------------------- the schedule


@dataclass(frozen=True, slots=True)
class Crash:
    """Crash process N at its ``tick``-th await (just before the call, or just after it)."""

    kind: Literal["cancel", "death"]
    tick: int
    after: bool = False

    def __str__(self) -> str:
        return f"{self.kind}@{self.tick}{'+' if self.after else ''}"


@dataclass(frozen=True, slots=True)
class Schedule:
    """One example: the fault script, what the transport does to the n-th chat answer
    (``mods``), how late ``GET /generation`` finds a record, and a crash per process."""

    script: str = ""
    stream: bool = True
    mods: tuple[str, ...] = ()
    """Per chat request, in the order the fake receives them: ``""`` (as played),
    ``nousage`` (the answer without its ``usage``: a blocking body without the object, a stream
    without its usage chunk), ``dropfinish`` / ``stallfinish`` (a stream whose connection drops
    / goes silent right after its ``finish_reason: stop`` chunk)."""
    late: int = 1
    """The first ``late`` look-ups of each generation are 404s (the fake's default is 1)."""
    crashes: tuple[Crash, ...] = ()
    """The crash of process 1, 2, … (fewer crashes than processes: the rest run to the end)."""
    budget: Budget = "none"
    """``roomy``: a daily budget no run reaches (every attempt reserves and settles);
    ``tight``: a per-run budget that refuses the first model's worst case, with
    ``budget_exceeded`` in ``fallback.when``."""

    def __str__(self) -> str:
        mods = ",".join(m or "-" for m in self.mods)
        crashes = " ".join(map(str, self.crashes)) or "none"
        return (
            f"script={self.script!r} stream={self.stream} mods=[{mods}] late={self.late}"
            f" budget={self.budget} crashes={crashes}"
        )


def workflow(budget: Budget) -> Workflow:
    """The bundled chat workflow, with a budget when asked (``max_tokens: 100`` bounds the
    worst case of every attempt)."""
    text = DEFAULT_WORKFLOW.read_text("utf-8")
    if budget == "none":
        return parse_workflow(text)
    text = text.replace("  # optional: temperature, max_tokens", "  max_tokens: 100")
    if budget == "roomy":
        return parse_workflow(text + "\nlimits:\n  budget: {daily_usd: 1000}\n")
    # sonnet's worst case (about 0.0016 USD) does not fit, haiku's (about 0.0004 USD) does
    text = text.replace("when: [retries_exhausted,", "when: [budget_exceeded, retries_exhausted,")
    return parse_workflow(text + "\nlimits:\n  budget: {per_run_usd: 0.001, daily_usd: 1000}\n")


# ---------------------------------------------------------------------- what happened


class ProcessDied(BaseException):
    """The process was killed: raised by every call through the world from then on."""


@dataclass(slots=True)
class Tick:
    n: int
    label: str
    kind: Literal["store", "ledger", "net", "listener"]
    durable: bool
    """A write that commits when it returns (a queued write does not)."""
    at: float
    completed: bool = False


@dataclass(frozen=True, slots=True)
class Mark:
    """A moment in a process: after its ``tick``-th tick, at virtual time ``at``."""

    process: int
    tick: int
    at: float


@dataclass(slots=True)
class Chat:
    """One chat request the fake received."""

    index: int
    process: int
    run_id: str
    model: str
    mod: str
    gen: str | None = None
    """The generation the fake created for it (``X-Generation-Id``), if any."""
    known: Mark | None = None
    """When the response reached httpx (the process could know the generation)."""
    delivered: Mark | None = None
    """When the whole answer was handed to the client."""

    @property
    def name(self) -> str:
        return f"#{self.index}"


class BillingLog(GenerationLog):
    """The fake's generation log, remembering what each generation cost."""

    def __init__(self, late: int) -> None:
        super().__init__(late)
        self.billed: dict[str, Decimal] = {}

    def add(self, generation_id: str, record: dict[str, Any]) -> None:
        super().add(generation_id, record)
        cost = to_usd(record["data"]["total_cost"])
        assert cost is not None
        self.billed[generation_id] = cost


@dataclass(frozen=True, slots=True)
class Death:
    tick: int
    after: bool
    at: float


# ---------------------------------------------------------------------- the world


class World:
    """The provider, the database and the recovery file, and every process that ran."""

    def __init__(self, schedule: Schedule, backend: Backend, folder: Path, url: str) -> None:
        self.schedule = schedule
        self.backend = backend
        self.folder = folder
        self.url = url
        self.wf = workflow(schedule.budget)
        self.fake = FakeOpenRouter(schedule.script)
        self.log = BillingLog(schedule.late)
        self.fake.generations = self.log
        self.chats: list[Chat] = []
        self.processes: list[Process] = []
        self.run_ids: list[str] = []
        self.status_log: list[tuple[str, str, int]] = []
        """(run, status, process) of every status write that completed."""
        self.book_checks: list[tuple[int, Decimal, WindowUse]] = []
        """(process, what the fake had billed, the day window's books) after each process."""
        self.memory = MemoryStore() if backend == "memory" else None
        self.memory_ledger = MemoryLedger() if backend == "memory" else None
        self._recovery_frozen: bytes | None = None

    # -- the recovery file as a dead process leaves it

    @property
    def recovery(self) -> Path:
        return self.folder / "recovery.jsonl"

    def freeze_recovery(self) -> None:
        self._recovery_frozen = self.recovery.read_bytes() if self.recovery.exists() else b""

    def restore_recovery(self) -> None:
        if self._recovery_frozen is None:
            return
        if self._recovery_frozen:
            self.recovery.write_bytes(self._recovery_frozen)
        else:
            self.recovery.unlink(missing_ok=True)
        self._recovery_frozen = None

    # -- names

    def gen_name(self, generation_id: str | None) -> str | None:
        """A generation id as the chat request that created it (``#3``): stable across
        backends, which draw different uuids."""
        if generation_id is None:
            return None
        for chat in self.chats:
            if chat.gen == generation_id:
                return chat.name
        return f"?{generation_id}"

    def forgiven(self, mark: Mark | None) -> bool:
        """Whether an answer (or a generation id) known at ``mark`` may be lost: see the
        module docstring."""
        if mark is None:
            return True
        p = self.processes[mark.process - 1]
        if p.death is None or p.death.at != mark.at:
            return False
        for tick in p.ticks[mark.tick : p.death.tick]:
            if tick.kind == "net" or (tick.durable and tick.completed):
                return False
        return True

    # -- the database as a new process opens it

    def open_store(self) -> MemoryStore | SqlStore:
        """The store a new process opens (the schema is in place: see :func:`prepare`)."""
        if self.memory is not None:
            return self.memory
        if self.backend == "sqlite-lite":  # as ``run`` opens it (runtime.open_world)
            store = SqlStore.open_sync(self.url)
            assert at_head(store), "SqlStore.open_sync did not take _Writer.at_head"
            return store
        return SqlStore(open_engine(self.url), self.url)

    def ledger(self, store: MemoryStore | SqlStore) -> Ledger:
        if self.memory_ledger is not None:
            return self.memory_ledger
        assert isinstance(store, SqlStore)
        if self.backend == "sqlite-lite":  # as ``run`` builds it (runtime.open_world)
            return LazyLedger(functools.partial(_sql_ledger, store))
        return SqlLedger(store.engine)

    async def books(self, engine: Engine | None) -> WindowUse:
        """The day window's books, as a process reading them now would see them."""
        window = BudgetWindow("day", _BIG, T0)
        now = wall()
        if self.memory_ledger is not None:
            (use,) = await self.memory_ledger.window_use([window], now)
        else:
            assert engine is not None
            (use,) = await SqlLedger(engine).window_use([window], now)
        return use


def at_head(store: SqlStore) -> bool:
    """Whether ``store`` writes through ``_Writer.at_head``'s own ``sqlite3`` connection (it was
    opened with no engine; one is made only when a read or the ledger asks for it)."""
    return store._writer._path is not None and store._writer._engine is None


def drop(store: SqlStore) -> None:
    """What a process death leaves of ``store``: its connections closed, its queued writes
    never committed (an open transaction, if any, rolled back by the closing)."""
    if at_head(store):
        store._writer.close()
        if store._engine is not None:  # made by a read or the ledger
            store._engine.dispose()
    else:
        store.engine.dispose()  # closes the writer's pooled connection too


def wall() -> datetime:
    """The wall clock every process shares: trio's virtual clock from 2026-01-01."""
    return T0 + timedelta(seconds=trio.current_time())


# ---------------------------------------------------------------------- a process


class Process:
    """One process of the world: its env, its ticks, its crash."""

    def __init__(self, world: World, number: int, crash: Crash | None) -> None:
        self.world = world
        self.number = number
        self.crash = crash
        self.ticks: list[Tick] = []
        self.scope = trio.CancelScope()
        self.dead = False
        self.death: Death | None = None
        self.cancelled_at: int | None = None
        self.fired = False
        self.run_id = ""
        self.end = ""
        self.store = world.open_store()
        self.http = httpx.AsyncClient(transport=ProcessTransport(self))
        client = OpenRouterClient(self.http, ApiKey(FAKE_KEY, "test"), base_url=FAKE_BASE_URL)
        self.env = RunEnv(
            client=client,
            store=TickingStore(self, self.store),  # type: ignore[arg-type]
            rng=random.Random(number),
            now=wall,
            listeners=(TickingListener(self),),
            recovery_dir=str(world.folder),
            owner=f"proc{number}:{number}:{number}",
            limits=Limiter(TickingLedger(self, world.ledger(self.store))),
        )

    @property
    def sql(self) -> bool:
        return isinstance(self.store, SqlStore)

    def mark(self) -> Mark:
        return Mark(self.number, len(self.ticks), trio.current_time())

    def alive(self) -> None:
        if self.dead:
            raise ProcessDied(f"process {self.number} is dead")

    async def at(
        self,
        label: str,
        kind: Literal["store", "ledger", "net", "listener"],
        op: Callable[[], Awaitable[T]],
        *,
        durable: bool = False,
    ) -> T:
        """One tick: the call ``op``, with this process's crash if it falls here."""
        self.alive()
        tick = Tick(len(self.ticks) + 1, label, kind, durable, trio.current_time())
        self.ticks.append(tick)
        crash = self.crash if self.crash and self.crash.tick == tick.n and not self.fired else None
        if crash is not None and not crash.after:
            await self._fire(crash, tick)
        try:
            result = await op()
        except BaseException:
            if crash is not None and crash.after:
                await self._fire(crash, tick)
            raise
        tick.completed = True
        self.alive()
        if crash is not None and crash.after:
            await self._fire(crash, tick)
        return result

    async def _fire(self, crash: Crash, tick: Tick) -> None:
        self.fired = True
        if crash.kind == "cancel":
            self.cancelled_at = tick.n
            self.scope.cancel()
            await trio.lowlevel.checkpoint()  # Cancelled here, unless the call is shielded
            return
        self.death = Death(tick.n, crash.after, trio.current_time())
        self.world.freeze_recovery()
        self.dead = True
        raise ProcessDied(f"process {self.number} killed at tick {tick.n} ({tick.label})")

    async def live(self, body: Callable[[], Awaitable[None]]) -> None:
        """Run ``body`` as this process's life, then shut the process down as it ended."""
        try:
            with self.scope:
                await body()
        except BaseException as exc:
            if not (self.dead and _only(exc, (ProcessDied, trio.Cancelled))):
                raise
        finally:
            await self._shutdown()
        if self.dead:
            self.end = "died"
        elif self.scope.cancelled_caught:
            self.end = "cancelled"

    async def _shutdown(self) -> None:
        with trio.CancelScope(shield=True):
            await self.http.aclose()
        if isinstance(self.store, SqlStore):
            if self.dead:
                drop(self.store)  # the queue dies with the process
            else:
                self.store.close()
        if self.dead:
            self.world.restore_recovery()

    async def start(self, run_id: str) -> None:
        self.run_id = run_id

        async def body() -> None:
            await run_workflow(
                self.world.wf,
                RunRequest(MESSAGE, stream=self.world.schedule.stream),
                self.env,
                run_id=run_id,
            )
            self.end = "returned"

        await self.live(body)

    async def resume(self, run_id: str) -> Resumed | None:
        self.run_id = run_id
        out: list[Resumed] = []

        async def body() -> None:
            try:
                resumed = await resume_run(run_id, self.env)
            except NotResumable as exc:
                if "no run with id" not in str(exc):
                    raise
                self.end = "no_run"
                return
            out.append(Resumed(resumed.ran, resumed.recovered, resumed.outcome.status))
            self.end = "returned"

        await self.live(body)
        return out[0] if out else None


@dataclass(frozen=True, slots=True)
class Resumed:
    ran: bool
    recovered: bool
    status: str


def _only(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only(e, kinds) for e in exc.exceptions)
    return isinstance(exc, kinds)


# ---------------------------------------------------------------------- the seams


class TickingStore:
    """The process's view of the database: every call is a tick; status writes are logged.

    A proxy over whatever the store's interface is (it is being reshaped): any coroutine
    method is wrapped. For the SQL store the queued writes are named in :data:`_QUEUED` (they
    commit with the next write), reads commit nothing new, every other call commits.
    """

    def __init__(self, process: Process, inner: MemoryStore | SqlStore) -> None:
        self.p = process
        self.inner = inner
        self.sql = isinstance(inner, SqlStore)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(method):
            return method

        async def call(*args: Any, **kwargs: Any) -> Any:
            async def op() -> Any:
                result = await method(*args, **kwargs)
                await self._logged(name, args, kwargs, result)
                return result

            durable = kwargs.get("durable", True) if name == "checkpoint" else True
            if name in _READS or (self.sql and name in _QUEUED):
                durable = False
            elif not self.sql:
                durable = True
            return await self.p.at(_label(name, args, kwargs), "store", op, durable=durable)

        return call

    async def _logged(self, name: str, args: Any, kwargs: Any, result: Any) -> None:
        """Log a status write that took effect (a store refuses to end an ended run)."""
        first = args[0] if args else next(iter(kwargs.values()), None)
        status: str | None = None
        run_id = getattr(first, "run_id", None)
        if name == "save_reply":
            end = args[1] if len(args) > 1 else kwargs["end"]
            status, run_id = end.status, end.run_id
        elif name == "finish_run":
            status = first.status
        elif name == "reopen_run" and result:
            status = "running"
        elif name == "import_reply" and result == "imported":
            status = "succeeded"
        if status is not None and run_id is not None:
            if name == "finish_run":
                run = await self.inner.load_run(run_id)
                if run is None or run.status != status:
                    return
            self.p.world.status_log.append((run_id, status, self.p.number))


_READS = frozenset({"load_run", "list_runs", "journal", "count_rows", "missing_replies",
                    "conversations", "messages", "usage"})  # fmt: skip
_QUEUED = frozenset({"attempt_ended", "attempt_unsent"})
"""SqlStore calls that only queue their write (checkpoint: ``durable=False``)."""


def _label(name: str, args: Any, kwargs: Any) -> str:
    first = args[0] if args else None
    if name == "checkpoint":
        durable = ", durable" if kwargs.get("durable") else ""
        return f"checkpoint({getattr(first, 'current_state', '?')}{durable})"
    if name in ("attempt_started", "attempt_ended", "attempt_progress"):
        return f"{name}({getattr(first, 'number', '?')})"
    if name == "finish_run":
        return f"finish_run({getattr(first, 'status', '?')})"
    return name


class TickingLedger:
    """The process's view of the budget ledger: every call is a tick (reads commit nothing)."""

    def __init__(self, process: Process, inner: Ledger) -> None:
        self.p = process
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(method):
            return method

        async def call(*args: Any, **kwargs: Any) -> Any:
            label = name
            if name == "settle":
                label = f"settle({'unbooked' if kwargs.get('unbooked') else args[1]})"
            return await self.p.at(
                label, "ledger", lambda: method(*args, **kwargs), durable=name != "window_use"
            )

        return call


class TickingListener:
    """Every record the engine reports is a tick (a streamed delta too)."""

    def __init__(self, process: Process) -> None:
        self.p = process

    async def on_record(self, record: FlowRecord) -> None:
        await self.p.at(f"record({record.kind})", "listener", trio.lowlevel.checkpoint)


class ProcessTransport(httpx.AsyncBaseTransport):
    """The process's connection to the world's fake: every request is a tick; it notes what
    the fake billed and when the process could know it, and plays the schedule's ``mods``."""

    def __init__(self, process: Process) -> None:
        self.p = process

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        p, world = self.p, self.p.world
        path = request.url.path
        if not path.endswith("/chat/completions"):
            return await p.at(f"GET {path.rsplit('/', 1)[-1]}", "net",
                              lambda: world.fake.handle_async_request(request))  # fmt: skip
        chats: list[Chat] = []

        async def send() -> httpx.Response:
            index = len(world.chats)
            mods = world.schedule.mods
            body = json.loads(request.content or b"{}")
            chat = Chat(
                index, p.number, p.run_id, str(body.get("model", "")),
                mods[index] if index < len(mods) else "",
            )  # fmt: skip
            world.chats.append(chat)
            chats.append(chat)
            response = await world.fake.handle_async_request(request)
            chat.gen = response.headers.get("X-Generation-Id")
            return response

        response = await p.at("POST chat", "net", send)
        (chat,) = chats
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        if "text/event-stream" in response.headers.get("content-type", ""):
            stream = response.stream
            assert isinstance(stream, httpx.AsyncByteStream)
            chat.known = p.mark()
            return httpx.Response(
                response.status_code, headers=headers, stream=_Observed(p, chat, stream),
                request=request,
            )  # fmt: skip
        content = await response.aread()
        if response.status_code == 200 and chat.gen is not None:
            answer = json.loads(content)
            if chat.mod == "nousage":
                answer.pop("usage", None)
                content = json.dumps(answer).encode()
            chat.known = chat.delivered = p.mark()
        return httpx.Response(
            response.status_code, headers=headers, content=content, request=request
        )


class _Observed(httpx.AsyncByteStream):
    """A played stream as the process reads it: notes the delivery of the ``finish_reason``
    chunk, and drops the usage chunk or breaks the connection after the finish as the chat's
    ``mod`` says."""

    def __init__(self, process: Process, chat: Chat, inner: httpx.AsyncByteStream) -> None:
        self.p = process
        self.chat = chat
        self.inner = inner.__aiter__()
        self.finished = False

    def __aiter__(self) -> _Observed:
        return self

    async def __anext__(self) -> bytes:
        while True:
            self.p.alive()
            if self.finished and self.chat.mod == "dropfinish":
                raise httpx.ReadError("Connection reset by peer")
            if self.finished and self.chat.mod == "stallfinish":
                await trio.sleep_forever()
            data = await self.inner.__anext__()
            self.p.alive()
            if self.chat.mod == "nousage" and b'"choices":[],"usage"' in data:
                continue
            if b'"finish_reason":"stop"' in data:
                self.finished = True
                self.chat.delivered = self.p.mark()
            return data

    async def aclose(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()


# ---------------------------------------------------------------------- playing a schedule


async def play(schedule: Schedule, backend: Backend, folder: Path, url: str) -> World:
    """Run the schedule's run to its end: start it, then resume it after each crash or
    failure, one process at a time (see the module docstring)."""
    world = World(schedule, backend, folder, url)
    inspector = open_engine(url) if backend != "memory" else None
    try:
        run_id = "run-1"
        world.run_ids.append(run_id)
        resume = False
        for number in range(1, MAX_PROCESSES + 1):
            if number > 1:
                await trio.sleep(RESTART_S)
            crashes = schedule.crashes
            p = Process(world, number, crashes[number - 1] if number <= len(crashes) else None)
            world.processes.append(p)
            if resume:
                await p.resume(run_id)
            else:
                await p.start(run_id)
            world.book_checks.append((number, sum(world.log.billed.values(), Decimal(0)),
                                      await world.books(inspector)))  # fmt: skip
            if p.end == "no_run":  # it never began: what a user does is start it again
                run_id = f"run-{len(world.run_ids) + 1}"
                world.run_ids.append(run_id)
                resume = False
                continue
            status = await status_of(world, run_id, inspector)
            if status is None:
                run_id = f"run-{len(world.run_ids) + 1}"
                world.run_ids.append(run_id)
                resume = False
                continue
            if status == "succeeded":
                break
            resume = True
    finally:
        if inspector is not None:
            inspector.dispose()
    return world


async def status_of(world: World, run_id: str, engine: Engine | None) -> str | None:
    if world.memory is not None:
        row = world.memory.runs.get(run_id)
        return None if row is None else str(row.get("status"))
    store = SqlStore(open_engine(world.url), world.url)
    try:
        run = await store.load_run(run_id)
    finally:
        store.engine.dispose()
    return None if run is None else run.status


# ---------------------------------------------------------------------- what the world holds


@dataclass(frozen=True, slots=True)
class UsageRow:
    run_id: str | None
    outcome: str
    model: str
    generation: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: Decimal
    cost_source: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Facts:
    """The world's rows, with ids and times taken out (generations named by request)."""

    runs: dict[str, tuple[Any, ...]]
    attempts: dict[str, tuple[tuple[Any, ...], ...]]
    journal: dict[str, tuple[tuple[Any, ...], ...]]
    messages: tuple[tuple[Any, ...], ...]
    usage: tuple[UsageRow, ...]
    counts: dict[str, int]
    books: tuple[Decimal, Decimal]
    """The day window: (spent, reserved)."""
    run_books: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)

    def contract(self) -> dict[str, Any]:
        """What two stores given the same schedule must agree on."""
        return {
            "runs": self.runs,
            "attempts": self.attempts,
            "journal": self.journal,
            "messages": self.messages,
            "usage": self.usage,
            "counts": self.counts,
            "books": self.books,
            "run_books": self.run_books,
        }


async def facts(world: World) -> Facts:
    """Read back everything the world's database holds."""
    store: MemoryStore | SqlStore
    engine = None
    if world.memory is not None:
        store = world.memory
    else:
        engine = open_engine(world.url)
        store = SqlStore(engine, world.url)
    try:
        runs: dict[str, tuple[Any, ...]] = {}
        attempts: dict[str, tuple[tuple[Any, ...], ...]] = {}
        journal: dict[str, tuple[tuple[Any, ...], ...]] = {}
        run_books: dict[str, tuple[Decimal, Decimal]] = {}
        for run_id in world.run_ids:
            run = await store.load_run(run_id)
            if run is None:
                continue
            runs[run_id] = (
                run.status, run.current_state, run.model, run.error_class, run.resume_count,
                run.cost_usd,
            )  # fmt: skip
            attempts[run_id] = tuple(
                (a.number, a.model, a.ended_at is not None, a.status, a.error_class,
                 world.gen_name(a.generation_id), a.partial_text)
                for a in run.attempts
            )  # fmt: skip
            journal[run_id] = tuple(
                (e.seq, e.from_state, e.event, e.to_state, e.model, e.attempt, e.error_class,
                 e.wait_s, e.wait_source)
                for e in await store.journal(run_id)
            )  # fmt: skip
            window = BudgetWindow("run", _BIG)
            ledger = world.memory_ledger or SqlLedger(store.engine)  # type: ignore[union-attr]
            (use,) = await ledger.window_use([window], wall(), run_id)
            run_books[run_id] = (use.spent_usd, use.reserved_usd)
        messages, usage = _rows(world, store, engine)
        counts = await store.count_rows()
        use = await world.books(engine)
        return Facts(
            runs, attempts, journal, messages, usage, counts, (use.spent_usd, use.reserved_usd),
            run_books,
        )  # fmt: skip
    finally:
        if engine is not None:
            engine.dispose()


def _rows(
    world: World, store: MemoryStore | SqlStore, engine: Engine | None
) -> tuple[tuple[tuple[Any, ...], ...], tuple[UsageRow, ...]]:
    if isinstance(store, MemoryStore):
        messages = [(m.run_id, m.role, m.content, m.model, m.token_count) for m in store.messages]
        usage = [
            UsageRow(u.run_id, "reply", u.model, world.gen_name(u.generation_id), u.prompt_tokens,
                     u.completion_tokens, u.cost_usd, u.cost_source, u.attempts)
            for u in store.usage
        ] + [
            UsageRow(b.run_id, b.outcome, b.model, world.gen_name(b.generation_id),
                     b.prompt_tokens, b.completion_tokens, b.cost_usd, b.cost_source,
                     b.attempt)
            for b in store.billed
        ]  # fmt: skip
    else:
        assert engine is not None
        with engine.connect() as conn:
            messages = [
                (m.run_id, m.role, m.content, m.model, m.token_count)
                for m in conn.execute(select(ChatMessage.__table__))
            ]
            usage = [
                UsageRow(u.run_id, u.outcome, u.model, world.gen_name(u.generation_id),
                         u.prompt_tokens, u.completion_tokens, Decimal(str(u.cost_usd)),
                         u.cost_source, u.attempts)
                for u in conn.execute(select(LlmUsage.__table__))
            ]  # fmt: skip
    key = lambda row: tuple(str(x) for x in row)  # noqa: E731
    return (
        tuple(sorted(messages, key=key)),
        tuple(sorted(usage, key=lambda u: key(tuple(getattr(u, f) for f in u.__slots__)))),
    )


# ---------------------------------------------------------------------- running one example


@dataclass(frozen=True, slots=True)
class Played:
    """An example's world, its rows when the run ended, and its rows after one more resume
    by a fresh process (``post``: what that resume said)."""

    world: World
    facts: Facts
    after: Facts
    post: Resumed | None


_TEMPLATE: list[Path] = []


def prepare(backend: Backend, folder: Path, pg_url: str | None) -> str:
    """The URL of an empty database at this release's schema: a copy of a SQLite file prepared
    once per session (running the migrations costs more than an example), or PostgreSQL."""
    if backend == "postgres":
        assert pg_url is not None
        SqlStore.open_sync(pg_url).close()
        return pg_url
    if not _TEMPLATE:
        template = Path(tempfile.mkdtemp(prefix="paid-once-template-")) / "flow.db"
        atexit.register(shutil.rmtree, template.parent, ignore_errors=True)
        SqlStore.open_sync(f"sqlite:///{template}").close()
        _TEMPLATE.append(template)
    shutil.copyfile(_TEMPLATE[0], folder / "flow.db")
    return f"sqlite:///{folder / 'flow.db'}"


def run_example(schedule: Schedule, backend: Backend, pg_url: str | None = None) -> Played:
    """Play ``schedule`` on ``backend`` in its own folder, under trio's MockClock.

    ``pg_url``: an emptied PostgreSQL database (``backend="postgres"``).
    """
    folder = Path(tempfile.mkdtemp(prefix="paid-once-"))
    try:
        url = prepare(backend, folder, pg_url) if backend != "memory" else ""

        async def main() -> Played:
            world = await play(schedule, backend, folder, url)
            before = await facts(world)
            await trio.sleep(RESTART_S)
            last = Process(world, len(world.processes) + 1, None)
            world.processes.append(last)
            post = await last.resume(world.run_ids[-1])
            return Played(world, before, await facts(world), post)

        with _inline_threads():
            return trio.run(main, clock=MockClock(autojump_threshold=0))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _inline_threads() -> Iterator[None]:
    """Run the SQL store's and ledger's worker-thread calls in trio's thread instead.

    A commit then takes no virtual time and lets no other task run in the middle: under
    ``MockClock(autojump_threshold=0)`` a worker thread leaves every task blocked, so the clock
    would jump to the next deadline (a stream's idle timeout) while SQLite commits, and how
    many stream chunks arrive during a commit would depend on real time. Inline, an example
    replays exactly (trio's scheduler is seeded by Hypothesis). Cancellation is seen before the
    call, never during or after it, as with ``trio.to_thread.run_sync``.
    """

    async def run_sync(fn: Callable[..., T], *args: Any, **_: Any) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        result = fn(*args)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return result

    real = trio.to_thread.run_sync
    trio.to_thread.run_sync = run_sync  # type: ignore[assignment]
    try:
        yield
    finally:
        trio.to_thread.run_sync = real
