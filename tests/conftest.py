"""Shared fixtures: the default workflow's text and path, an in-memory keyring, seeded randomness,
and a private data folder for every test.

The suite runs on several pytest-xdist workers at once (``scripts/test.sh``), so nothing a test
touches may be shared between two of them: files live under ``tmp_path`` (per worker, per test),
servers listen on port 0, each worker process creates its own PostgreSQL database (see
``tests/store/conftest.py``), the keyring is per process, and the data folder (recovery file,
synced prices) is per test here. Hypothesis's example database (``.hypothesis/``; off on CI,
where its ``ci`` profile applies, and off for the property tests) is safe to share: each test
runs on one worker, keys its entries by its own id, and every entry is written by atomic rename.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from keyring.backend import KeyringBackend

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKFLOW = ROOT / "workflows" / "chat.yaml"


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a given PostgreSQL database on more than one worker: each worker empties the
    database before its tests, so two would drop each other's tables mid-test."""
    workers = config.getoption("numprocesses", default=None) if _has_xdist(config) else None
    if os.environ.get("DEMIARCH_FLOW_TEST_PG_DB") and isinstance(workers, int) and workers > 1:
        raise pytest.UsageError(
            "DEMIARCH_FLOW_TEST_PG_DB names one PostgreSQL database, which the "
            f"{workers} workers of -n {workers} would empty under each other; run with -n 0 "
            "(or -n 1), or unset it so that each worker creates and drops its own."
        )


def _has_xdist(config: pytest.Config) -> bool:
    return config.pluginmanager.hasplugin("xdist")


_homes = itertools.count(1)


@pytest.fixture(scope="session")
def _data_homes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data-homes")


@pytest.fixture(autouse=True)
def _private_data_folder(_data_homes: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the data folder at a fresh path (not created) and drop ``DEMIARCH_FLOW_DB``.

    Without it, a run on an in-memory or PostgreSQL store writes its recovery file into the
    user's real ``~/.local/share/demiarch-flow``, and every runtime reads ``prices.json`` from
    there: a developer's ``models sync`` would change what tests compute, and a test on one
    xdist worker could read the recovery rows another worker's test just wrote.
    """
    home = _data_homes / str(next(_homes))
    monkeypatch.setenv("DEMIARCH_FLOW_HOME", str(home))
    monkeypatch.delenv("DEMIARCH_FLOW_DB", raising=False)
    return home


@pytest.fixture
def default_text() -> str:
    """The text of the bundled default workflow."""
    return DEFAULT_WORKFLOW.read_text("utf-8")


@pytest.fixture
def rng() -> random.Random:
    """A seeded random source, so jitter is reproducible."""
    return random.Random(1234)


class MemoryKeyring(KeyringBackend):
    """A keyring backend that keeps secrets in a dict: tests never touch the OS keyring."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.secrets.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.secrets[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        from keyring.errors import PasswordDeleteError

        if (service, username) not in self.secrets:
            raise PasswordDeleteError("not set")
        del self.secrets[(service, username)]


@pytest.fixture
def memory_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryKeyring]:
    """Install an in-memory keyring and clear OPENROUTER_API_KEY for the test."""
    backend = MemoryKeyring()
    previous = keyring.get_keyring()
    keyring.set_keyring(backend)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each engine (nothing created yet): a SQLite file, or this run's
    own PostgreSQL database emptied before and after (skipped where the server is absent)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'flow.db'}"
        return
    from .store.conftest import PG_URL, drop_everything, postgres_available

    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    drop_everything()
    yield PG_URL
    drop_everything()


@pytest.fixture(scope="session", autouse=True)
def _own_postgres_database() -> Iterator[None]:
    """Drop the PostgreSQL database this run created, if it made one, when the run ends."""
    yield
    from .store.conftest import drop_own_database

    drop_own_database()
