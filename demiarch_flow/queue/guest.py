"""The trio runner as a guest inside procrastinate's asyncio loop.

procrastinate is asyncio; the runner, its store writer and its HTTP client are trio. One trio
*guest run* (:func:`trio.lowlevel.start_guest_run`) per worker process lives inside the asyncio
loop, on the same thread: trio's scheduler ticks as asyncio callbacks, its I/O waits in a
helper thread. A job is handed in with :meth:`trio.lowlevel.TrioToken.run_sync_soon` (a task
started in the guest's nursery) and its result handed back by completing an asyncio future.
All runs of the process share one HTTP pool, one store writer and one heartbeat, as a
``batch`` process does. (Measured by the spike the issue names at 62-65 runs/s in 2 workers;
a thread per job or a trio loop per job would give each run its own pool and writer.)

Cancellation crosses too: an asyncio job cancelled (procrastinate aborting it after the grace)
cancels its trio task, whose run is recorded ``cancelled`` under trio's shielded cleanup
before the asyncio side sees the cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import outcome
import trio

T = TypeVar("T")
E = TypeVar("E")


class TrioGuest(Generic[E]):
    """A trio guest run hosting jobs; ``E`` is what its ``main`` offers them (the world).

    ``main(ready)`` opens what the jobs share and calls ``ready(env)`` once it is open, then
    sleeps until :meth:`stop`.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._ready: asyncio.Future[E] = self._loop.create_future()
        self._done: asyncio.Future[outcome.Outcome[None]] = self._loop.create_future()
        self._stop: trio.Event | None = None

    async def start(self, main: Callable[[Callable[[E], None]], Awaitable[None]]) -> E:
        """Start the guest run; returns what ``main`` offered once it is ready.

        Raises:
            whatever ``main`` raised before it was ready (a database that will not open).
        """

        async def guest() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery

                def ready(env: E) -> None:
                    if not self._ready.done():
                        self._ready.set_result(env)

                async def hold() -> None:
                    await main(ready)

                nursery.start_soon(hold)
                assert self._stop is not None
                await self._stop.wait()
                nursery.cancel_scope.cancel()

        def done(result: outcome.Outcome[None]) -> None:
            if not self._done.done():
                self._done.set_result(result)

        trio.lowlevel.start_guest_run(
            guest,
            run_sync_soon_threadsafe=self._loop.call_soon_threadsafe,
            run_sync_soon_not_threadsafe=self._loop.call_soon,
            done_callback=done,
            host_uses_signal_set_wakeup_fd=True,
        )
        waiting: list[asyncio.Future[Any]] = [self._ready, self._done]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if self._ready.done():
            return self._ready.result()
        _unwrap(self._done.result())
        raise RuntimeError("the trio guest ended before it was ready")  # pragma: no cover

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` in the guest; cancelling this cancels it there, and returns
        once the trio side has finished (its cleanup included)."""
        assert self._token is not None
        assert self._nursery is not None
        future: asyncio.Future[T] = self._loop.create_future()
        scope = trio.CancelScope()
        nursery = self._nursery

        async def job() -> None:
            try:
                with scope:
                    result = await fn(*args)
            except BaseException as exc:  # an error goes to asyncio, never to the nursery
                if not future.done():
                    future.set_exception(_for_asyncio(exc))
                if not isinstance(exc, Exception):  # trio.Cancelled goes on up
                    raise
                return
            if not future.done():
                if scope.cancelled_caught:
                    future.set_exception(asyncio.CancelledError())
                else:
                    future.set_result(result)

        self._token.run_sync_soon(nursery.start_soon, job)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if not future.done():
                self._token.run_sync_soon(scope.cancel)
                with contextlib.suppress(BaseException):
                    await future
            raise

    async def stop(self) -> None:
        """Cancel whatever the guest still runs, let ``main`` close, and wait for the end."""
        if self._token is not None and self._stop is not None and not self._done.done():
            self._token.run_sync_soon(self._stop.set)
        _unwrap(await self._done)


def _unwrap(result: outcome.Outcome[None]) -> None:
    """The guest's end, with a lone error taken out of trio's exception groups (the command
    line maps it to its exit code and message)."""
    try:
        result.unwrap()
    except BaseExceptionGroup as group:
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        raise leaf from None


def _for_asyncio(exc: BaseException) -> BaseException:
    """A trio cancellation becomes asyncio's; anything else crosses as it is."""
    if isinstance(exc, trio.Cancelled):
        return asyncio.CancelledError()
    return exc
