"""A workflow's source text: its size limit, and where each of its values was written.

Kept apart from the YAML loader (:mod:`._yaml`) so that what only *names* a place in a file —
a message's ``file:line:column``, a field path, the model-name rule — and the loading of a
cached parse (:mod:`._cache`) do not import PyYAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Location

Path = tuple[str | int, ...]

#: Size limit of a workflow file: the default one is 2 KB; this bounds parse time to about 1 s.
MAX_FILE_BYTES = 256 * 1024


@dataclass
class Positions:
    """Source positions of values (and of mapping keys) by field path."""

    file: str
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)
    typed_keys: dict[Path, str] = field(default_factory=dict)
    """Plain keys that YAML reads as a value, not text: what it reads (``"the boolean true"``)."""

    def locate(self, path: Path, *, key: bool = False) -> Location:
        """The closest known location of ``path`` (walking up to a parent when needed)."""
        table = self.keys if key else self.values
        probe = path
        while True:
            if probe in table:
                line, col = table[probe]
                return Location(self.file, line, col)
            if probe in self.values:
                line, col = self.values[probe]
                return Location(self.file, line, col)
            if not probe:
                return Location(self.file, 1, 1)
            probe = probe[:-1]


def format_path(path: Path) -> str:
    """``("retry", "when", 2)`` → ``retry.when[2]``; a key with unprintable characters is quoted.

    Quoting keeps a message on its line and keeps escape sequences out of the terminal.
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if part.isprintable() else shorten(part)
            out += f".{name}" if out else name
    return out


def shorten(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: messages must stay one paragraph."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
