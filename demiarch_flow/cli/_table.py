"""Aligned plain-text tables (numbers right-aligned), readable on any terminal, and amounts
written plainly."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal


def plain(amount: Decimal) -> str:
    """An amount as a plain decimal string: ``0.000000000``, never ``str()``'s ``0E-9``."""
    return format(amount, "f")


def plain_or_none(amount: Decimal | None) -> str | None:
    """:func:`plain`, passing ``None`` (an unknown amount) through."""
    return None if amount is None else plain(amount)


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], numeric: Sequence[int] = ()
) -> str:
    """Render ``rows`` under ``headers``; columns whose index is in ``numeric`` align right."""
    cells = [
        [str(h) for h in headers],
        *[[_cell(v) for v in row] for row in rows],
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(row: list[str]) -> str:
        parts = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return ""
    return plain(value) if isinstance(value, Decimal) else str(value)
