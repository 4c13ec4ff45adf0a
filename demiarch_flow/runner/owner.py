"""Who runs a run: the owning process, its heartbeat, and how a dead owner is recognised.

Every run started by a process carries that process's token (``host:pid:start``, the host
qualified by its PID namespace where the system has them) in
``workflow_runs.owner``, and one task per process refreshes ``heartbeat_at`` of all its running
runs every :data:`HEARTBEAT_S` seconds (one UPDATE for the whole process, not one per run). A run
left ``running`` is *stale* when its heartbeat is older than :data:`STALE_AFTER_S`, or at once
when its owner ran on this host — in this PID namespace: containers sharing a hostname do
not see each other's processes — and that process no longer exists. Only stale, failed and
cancelled runs can be resumed. A live process that only looked stale (paused past the limit)
and wakes after its run was resumed elsewhere can write nothing more to it (the store refuses,
:class:`~demiarch_flow.errors.RunTakenOver`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from ..store.base import StoredRun

if TYPE_CHECKING:
    from ..store.base import Store

HEARTBEAT_S = 5.0
STALE_AFTER_S = 30.0
"""Six missed heartbeats: a live process under heavy load is not mistaken for a dead one."""


@dataclass(frozen=True, slots=True)
class Owner:
    """A process that runs runs."""

    host: str
    pid: int
    started: int
    """Start time (seconds since the epoch): a recycled pid is a different owner."""

    @property
    def token(self) -> str:
        return f"{self.host}:{self.pid}:{self.started}"

    @classmethod
    def parse(cls, token: str) -> Owner | None:
        host, _, rest = token.rpartition(":")
        host, _, pid = host.rpartition(":")
        try:
            return cls(host, int(pid), int(rest))
        except ValueError:
            return None


def this_host() -> str:
    """The host name, with the PID namespace's number where there is one (``/proc``): two
    containers with one hostname are two hosts, each blind to the other's pids."""
    try:
        ns = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return socket.gethostname()
    number = "".join(c for c in ns if c.isdigit())
    return f"{socket.gethostname()}#{number}" if number else socket.gethostname()


def this_process(now: datetime) -> Owner:
    return Owner(this_host(), os.getpid(), int(now.timestamp()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours to signal
        return True
    return True


def effective_status(
    run: StoredRun,
    now: datetime,
    *,
    host: str | None = None,
    alive: Callable[[int], bool] = _alive,
    stale_after_s: float = STALE_AFTER_S,
) -> str:
    """The run's status, with ``running`` turned into ``stale`` when its owner is gone (its
    heartbeat older than ``stale_after_s``: a worker passes its ``--stall-after``, the limit
    after which the queue has given the run's job to another worker)."""
    if run.status != "running":
        return run.status
    owner = Owner.parse(run.owner) if run.owner else None
    here = owner is not None and owner.host == (host or this_host())
    if here and owner is not None and owner.pid != os.getpid() and not alive(owner.pid):
        return "stale"
    beat = run.heartbeat_at or run.started_at
    return "stale" if (now - beat).total_seconds() > stale_after_s else "running"


async def keep_alive(
    store: Store, owner: str, now: Callable[[], datetime], interval_s: float = HEARTBEAT_S
) -> None:
    """Refresh the heartbeat of every running run of ``owner`` every ``interval_s`` until
    cancelled (a worker whose runs count as stale sooner beats faster)."""
    import trio  # here: `runs list` reads owners without starting trio

    while True:
        await trio.sleep(interval_s)
        try:
            await store.heartbeat(owner, now())
        except Exception:  # a missed beat is not worth failing runs for
            continue
