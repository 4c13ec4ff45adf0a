"""Re-exports imported on first use: a package names its public objects in one place
(``__all__``) without importing the modules behind them, so a command that needs one light
module does not pay for the heavy ones beside it (``--help``, ``key status`` and the reports
import no trio, httpx or SQLAlchemy)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``exports`` maps a public name to the
    submodule that defines it; the first access imports it and caches the value in the
    package."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        setattr(importlib.import_module(package), name, value)
        return value

    return __getattr__
