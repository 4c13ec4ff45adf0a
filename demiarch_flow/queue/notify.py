"""Finished runs announced on ``NOTIFY``, so ``runs wait`` sleeps on ``LISTEN`` instead of
polling.

A worker hands each finished run id to :class:`Notifier`, which sends what has gathered in one
statement on one connection of its own (kept open, opened again after a failure). A lost
notification costs only latency: ``runs wait`` also looks again every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from .backend import conninfo

CHANNEL = "demiarch_flow_runs"
"""The channel (payload: a run id)."""


class Notifier:
    """Sends ``NOTIFY`` for finished runs in the background (an async context manager)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._ids: list[str] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None

    def add(self, run_id: str) -> None:
        self._ids.append(run_id)
        if self._wake is not None:
            self._wake.set()

    async def __aenter__(self) -> Notifier:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._send())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(Exception):
            await self._flush()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()

    async def _send(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
            except Exception:  # the connection broke: a new one next time
                self._conn = None

    async def _flush(self) -> None:
        if not self._ids:
            return
        import psycopg

        ids, self._ids = self._ids, []
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(conninfo(self._url), autocommit=True)
        await self._conn.execute(
            "SELECT pg_notify(%s, id) FROM unnest(%s::text[]) AS id", (CHANNEL, ids)
        )
