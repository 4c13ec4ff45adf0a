"""The README's database section against the migrations (issue 18: it showed revision 0002 and
listed 0001–0002 while the head was 0005)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from demiarch_flow.store.schema import HEAD, REVISIONS

README = Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    text = README.read_text("utf-8")
    start = text.index("## Database")
    return text[start : text.index("\n## ", start + 1)]


def test_the_db_current_example_shows_the_head() -> None:
    line = next(ln for ln in _section().splitlines() if ln.startswith("demiarch-flow db current"))
    doc = json.loads(line.split("#", 1)[1])
    assert (doc["revision"], doc["head"], doc["is_head"]) == (HEAD, HEAD, True)


def test_every_revision_is_described() -> None:
    """The "Revisions:" paragraph names each revision (a range `0003`–`0005` names its ends and
    what lies between), and no revision this release does not have."""
    para = _section().split("Revisions:", 1)[1].split("\n\n", 1)[0]
    named: set[str] = set()
    for first, last in re.findall(r"`(\d{4})`(?:–`(\d{4})`)?", para):
        end = last or first
        named |= {f"{n:04d}" for n in range(int(first), int(end) + 1)}
    assert named == set(REVISIONS)
