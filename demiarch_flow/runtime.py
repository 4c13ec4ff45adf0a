"""The composition root: one open world — the database, the HTTP client, the shared limits and
the heartbeat — for the lifetime of a command, a benchmark or a library user's program.

Everything a run needs is injected through :class:`~demiarch_flow.runner.RunEnv`; this module
is the one place that builds the real one from a database URL, a base URL and a key, so the
command line, ``bench/`` and the tests open it the same way (and none of them needs the command
line's private modules)::

    async with open_world(db=None, base_url=DEFAULT_BASE_URL, key=key) as world:
        outcome = await run_workflow(workflow, RunRequest("hello"), world.env)
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass

import httpx
import trio

from .client import ApiKey, OpenRouterClient
from .client.openrouter import DEFAULT_APP_TITLE, DEFAULT_APP_URL
from .paths import database_url, prices_path
from .pricing import PriceTable
from .runner import Listener, RunEnv
from .runner.context import utc_now
from .runner.limiter import Limiter
from .runner.owner import HEARTBEAT_S, keep_alive, this_process
from .runner.recovery import recovery_dir_for
from .store.limits import LazyLedger, Ledger
from .store.sql import SqlStore
from .telemetry import open_tracer

__all__ = ["World", "http_client", "open_world"]


def http_client(max_in_flight: int = 100) -> httpx.AsyncClient:
    """The shared HTTP client: keep-alive pool sized to the in-flight cap, its CA bundle loaded
    by the first TLS handshake (:mod:`.client._tls`), not by every command that makes one."""
    from .client._tls import lazy_trust_context

    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    # Per-attempt deadlines come from the workflow (trio's clock); this is only a backstop.
    return httpx.AsyncClient(
        limits=limits, timeout=httpx.Timeout(3600.0), verify=lazy_trust_context()
    )


def _sql_ledger(store: SqlStore) -> Ledger:
    """The database's ledger, made when a workflow first needs it (budgets, shared buckets):
    SQLAlchemy is imported then, not for every run."""
    from .store.limits import SqlLedger

    return SqlLedger(store.engine)


@dataclass
class World:
    """An open store and HTTP client, for the lifetime of one command (the store is
    ``env.store``)."""

    http: httpx.AsyncClient
    env: RunEnv


@asynccontextmanager
async def open_world(
    *,
    db: str | None,
    base_url: str,
    key: ApiKey,
    listeners: tuple[Listener, ...] = (),
    max_in_flight: int = 100,
    heartbeat_s: float = HEARTBEAT_S,
    trace: bool | None = None,
) -> AsyncIterator[World]:
    """Open the database and the HTTP client; close both afterwards. The database is opened
    first, so a schema that does not fit (exit 3) is found before any request is sent, and
    Ctrl-C while it connects exits 130 at once (see :meth:`SqlStore.open`).

    Args:
        heartbeat_s: how often the runs of this process say they are alive.
        trace: trace every run with OpenTelemetry (``True``), never (``False``), or as the
            ``OTEL_*`` variables and the program's own tracer provider say (``None``; see
            :func:`~demiarch_flow.telemetry.tracing_wanted`); flushed when the world closes.
    """
    url = database_url(db)
    store = await SqlStore.open(url)
    tracing = ExitStack()
    try:
        tracer = tracing.enter_context(open_tracer(trace, server_url=base_url))
        async with http_client(max_in_flight) as http:
            client = OpenRouterClient(
                http,
                key,
                base_url=base_url,
                app_url=os.environ.get("DEMIARCH_FLOW_APP_URL") or DEFAULT_APP_URL,
                app_title=os.environ.get("DEMIARCH_FLOW_APP_TITLE") or DEFAULT_APP_TITLE,
                limiter=trio.CapacityLimiter(max_in_flight),
            )
            owner = this_process(utc_now()).token
            env = RunEnv(
                client=client,
                store=store,
                prices=PriceTable.load(prices_path()),
                listeners=(*listeners, tracer) if tracer is not None else listeners,
                recovery_dir=recovery_dir_for(url),
                owner=owner,
                limits=Limiter(LazyLedger(functools.partial(_sql_ledger, store))),
                tracer=tracer,
            )
            async with trio.open_nursery() as nursery:
                # One heartbeat for every run of this process: a run left 'running' by a
                # process that died is then recognisable as stale.
                nursery.start_soon(keep_alive, store, owner, utc_now, heartbeat_s)
                yield World(http, env)
                nursery.cancel_scope.cancel()
    finally:
        tracing.close()
        store.close()
