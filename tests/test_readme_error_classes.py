"""The README names every error class the code can produce, and no other (issue 18:
`all_models_failed` and the runner's own classes were not documented)."""

from __future__ import annotations

import re
from pathlib import Path

from demiarch_flow.errors import ErrorClass

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_lists_every_error_class() -> None:
    text = README.read_text("utf-8")
    start = text.index("- **Error classes**")
    block = text[start : text.index("\n- **", start + 1)]
    named = set(re.findall(r"`([a-z_]+)`", block))
    classes = {c.value for c in ErrorClass}
    assert classes <= named, f"undocumented: {sorted(classes - named)}"
    words = named - {"retry.when", "fallback.when", "retry", "refused"}
    unknown = {w for w in words if "_" in w or w in classes} - classes
    assert not unknown, f"documented but not in ErrorClass: {sorted(unknown)}"
