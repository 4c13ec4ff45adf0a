"""Ctrl-C and SIGTERM, received in one place for every command.

A signal never kills a command outright: it becomes a trio cancellation, so shielded cleanup
runs and each run in progress is recorded as cancelled before the process exits 130 (Ctrl-C)
or 143 (SIGTERM). What a signal *does* is the command's choice, given as a callback: a single
run stops at the first one; ``batch`` stops reading on the first Ctrl-C and cancels its runs on
the second (or at once on SIGTERM).
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import trio

from ..errors import Terminated


class Signals:
    """The SIGINT and SIGTERM a command received, in order."""

    def __init__(self) -> None:
        self.received: list[int] = []

    @property
    def interrupted(self) -> bool:
        """Any signal arrived (the work in progress was cancelled or cut short)."""
        return bool(self.received)

    @property
    def terminated(self) -> bool:
        """SIGTERM arrived (exit 143 rather than 130)."""
        return signal.SIGTERM in self.received

    async def watch(self, on_signal: Callable[[int], bool]) -> None:
        """Receive SIGINT and SIGTERM while this task runs (start it in a nursery); each is
        recorded and passed to ``on_signal``, which returns ``True`` to stop listening."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                self.received.append(signum)
                if on_signal(signum):
                    return

    def raise_if_stopped(self, terminated: str) -> None:
        """After the work ended: :class:`~demiarch_flow.errors.Terminated` (message
        ``terminated``, exit 143) if SIGTERM arrived, :class:`KeyboardInterrupt` (exit 130) if
        Ctrl-C did; nothing otherwise."""
        if self.terminated:
            raise Terminated(terminated)
        if self.interrupted:
            raise KeyboardInterrupt
