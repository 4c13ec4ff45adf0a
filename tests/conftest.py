"""Shared fixtures: the default workflow's text and path, an in-memory keyring, seeded randomness."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from keyring.backend import KeyringBackend

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKFLOW = ROOT / "workflows" / "chat.yaml"


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
