"""End-to-end fixtures: the bundled simulator on 127.0.0.1 in a thread, and the real CLI as a
subprocess with its own data folder, database and a test key."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from demiarch_flow.simulator import Simulator, base_url

FAST = str(Path(__file__).parent.parent / "workflows" / "fast.yaml")
KEY = "sk-or-e2e-secret-0123456789abcdef"


class SimThread:
    """A simulator serving from its own trio loop in a daemon thread."""

    def __init__(self, script: str, latency_s: float = 0.0) -> None:
        self.sim = Simulator(script, latency_s=latency_s)
        self.port = 0
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "simulator did not start"

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            self.port = await nursery.start(self.sim.serve)
            self._ready.set()

    @property
    def url(self) -> str:
        return base_url(self.port)

    def stop(self) -> None:
        if self._scope is not None and self._token is not None:
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Cli:
    """Runs ``python -m demiarch_flow`` with a private home, database and environment."""

    home: Path
    env: dict[str, str]

    @property
    def db_path(self) -> Path:
        return self.home / "flow.db"

    @property
    def db(self) -> str:
        return f"sqlite:///{self.db_path}"

    def __call__(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "demiarch_flow", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=120,
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db_path) as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER_", "DEMIARCH_FLOW_"))
    }
    env.update(
        OPENROUTER_API_KEY=KEY,
        DEMIARCH_FLOW_HOME=str(tmp_path),
        DEMIARCH_FLOW_DB=f"sqlite:///{tmp_path / 'flow.db'}",
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        NO_COLOR="1",
    )
    return Cli(tmp_path, env)


@pytest.fixture
def simulator() -> Iterator[Callable[..., SimThread]]:
    started: list[SimThread] = []

    def start(script: str = "", latency_s: float = 0.0) -> SimThread:
        sim = SimThread(script, latency_s)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()
