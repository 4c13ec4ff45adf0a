"""Where demiarch-flow keeps its files by default (overridable by flags and environment).

* data folder: ``$DEMIARCH_FLOW_HOME``, else ``$XDG_DATA_HOME/demiarch-flow``, else
  ``~/.local/share/demiarch-flow`` (``~/Library/Application Support/demiarch-flow`` on macOS,
  ``%APPDATA%\\demiarch-flow`` on Windows);
* database: ``--db URL``, else ``$DEMIARCH_FLOW_DB``, else ``sqlite:///<data folder>/demiarch-flow.db``;
* synced prices: ``<data folder>/prices.json``; recovery file: beside a SQLite database, else in
  the data folder;
* cache (checked workflows, safe to delete): ``$DEMIARCH_FLOW_HOME/cache``, else
  ``$XDG_CACHE_HOME/demiarch-flow``, else ``~/.cache/demiarch-flow``
  (``~/Library/Caches/demiarch-flow`` on macOS, ``%LOCALAPPDATA%\\demiarch-flow\\Cache`` on
  Windows).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def data_dir() -> Path:
    """The per-user data folder (not created here)."""
    if home := os.environ.get("DEMIARCH_FLOW_HOME"):
        return Path(home)
    if xdg := os.environ.get("XDG_DATA_HOME"):
        return Path(xdg) / "demiarch-flow"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "demiarch-flow"
    if sys.platform == "win32" and (appdata := os.environ.get("APPDATA")):
        return Path(appdata) / "demiarch-flow"
    return Path.home() / ".local" / "share" / "demiarch-flow"


def cache_dir() -> Path:
    """The per-user cache folder (not created here): what is in it only saves time, and any of
    it may be deleted at any moment."""
    if home := os.environ.get("DEMIARCH_FLOW_HOME"):
        return Path(home) / "cache"
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "demiarch-flow"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "demiarch-flow"
    if sys.platform == "win32" and (local := os.environ.get("LOCALAPPDATA")):
        return Path(local) / "demiarch-flow" / "Cache"
    return Path.home() / ".cache" / "demiarch-flow"


def database_url(explicit: str | None = None) -> str:
    """The database URL to use: the flag, else ``$DEMIARCH_FLOW_DB``, else the default file."""
    if explicit:
        return explicit
    if env := os.environ.get("DEMIARCH_FLOW_DB"):
        return env
    return f"sqlite:///{data_dir() / 'demiarch-flow.db'}"


def prices_path() -> Path:
    """Where ``models sync`` writes the refreshed price table."""
    return data_dir() / "prices.json"
