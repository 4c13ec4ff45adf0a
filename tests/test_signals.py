"""The one signal helper: what a command raises after SIGINT/SIGTERM (the subprocess tests in
tests/e2e pin the exit codes end to end)."""

from __future__ import annotations

import signal

import pytest

from demiarch_flow.cli._signals import Signals
from demiarch_flow.errors import Terminated


def test_no_signal_raises_nothing() -> None:
    """Work that ended on its own: not interrupted, nothing raised."""
    signals = Signals()
    signals.raise_if_stopped("unused")
    assert (signals.interrupted, signals.terminated) == (False, False)


def test_ctrl_c_is_a_keyboard_interrupt() -> None:
    """SIGINT (once or twice): KeyboardInterrupt, which the command line maps to 130."""
    signals = Signals()
    signals.received += [signal.SIGINT, signal.SIGINT]
    assert (signals.interrupted, signals.terminated) == (True, False)
    with pytest.raises(KeyboardInterrupt):
        signals.raise_if_stopped("unused")


def test_sigterm_wins_over_ctrl_c() -> None:
    """SIGTERM, even after a Ctrl-C: Terminated (exit 143) with the command's message."""
    signals = Signals()
    signals.received += [signal.SIGINT, signal.SIGTERM]
    with pytest.raises(Terminated, match="batch terminated") as caught:
        signals.raise_if_stopped("batch terminated by SIGTERM")
    assert caught.value.exit_code == 143
