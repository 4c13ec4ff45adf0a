"""A checked workflow kept between processes, so that a command reading a file it has read
before pays for neither PyYAML, jsonschema nor python-statemachine.

Beside the document, an entry keeps the transition table read off the workflow's
python-statemachine class when the text was checked
(:func:`~.machine.transition_moves`): the runner drives a run on that table, so a ``run`` of a
file checked before imports no python-statemachine either (:func:`known_moves`).

Checking a workflow is cheap; importing what checks it is not (about 0.25 s, more than
``budget`` may take as a whole). So once a text has passed all three checks (YAML, schema,
graph), the document they accepted is written here, and the next process that reads the same
text rebuilds the :class:`~.model.Workflow` from it with the same :func:`~.model.build_workflow`
a full parse ends with. Only the checks are skipped, never the building, so a hit and a miss
give equal workflows (and an entry is written only when they do: the document survives JSON
and builds the very same workflow).

What is kept is keyed so that it can never stand for another text or another judgement:

* the file name is the SHA-256 of the text, and a changed file is another name: it is parsed
  and checked in full, so every error message (``file:line:column``, "did you mean") comes
  from the full parse, and a text that fails is never written;
* the entry records a fingerprint of everything that decides whether a text passes and what it
  means — the cache format, this package's version, the JSON Schema, the definition package's
  own source, and the installed PyYAML, jsonschema and python-statemachine (their files' size
  and modification time) — and an entry with another fingerprint is a miss (then replaced);
* the document carries its own SHA-256, so a truncated or edited entry is a miss too.

Anything unreadable — a missing folder, a torn or foreign file, bad JSON, a wrong field — is a
miss, never an error: the cache only ever saves time. Entries are written to a temporary file
and renamed over the old one, so a reader sees a whole entry or none; a folder that cannot be
written (a read-only home) leaves the cache off.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from .model import Workflow, build_workflow

#: id(workflow) → (workflow, initial, moves) for the workflows this process rebuilt from an
#: entry with a table; the entry holds the workflow, so its id is not reused while it lives.
_MOVES: dict[int, tuple[Workflow, str, dict[str, dict[str, str]]]] = {}


def known_moves(wf: Workflow) -> tuple[str, dict[str, dict[str, str]]] | None:
    """The transition table kept with ``wf``'s cache entry (initial state, state → event →
    target), if ``wf`` was rebuilt from one in this process; ``None`` otherwise."""
    hit = _MOVES.get(id(wf))
    return (hit[1], hit[2]) if hit is not None and hit[0] is wf else None


#: Raised when the layout of an entry changes: older entries are then misses.
CACHE_FORMAT = 2

#: The libraries whose judgement a cached parse stands for.
_CHECKED_BY = ("yaml", "jsonschema", "statemachine")


@cache
def fingerprint() -> str:
    """What a cached parse depends on besides its text (see the module doc), as one digest;
    computed once per process (about a millisecond: a few small files read and hashed)."""
    from .. import __version__
    from .._resources import bundled_path

    digest = hashlib.sha256(f"{CACHE_FORMAT}\0{__version__}\0".encode())
    digest.update(bundled_path("schemas", "workflow.schema.json").read_bytes())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(f"\0{source.name}\0".encode())
        digest.update(source.read_bytes())
    for name in _CHECKED_BY:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        try:
            stat = os.stat(origin) if origin else None
        except OSError:
            stat = None
        seen = f"{origin}:{stat.st_size}:{stat.st_mtime_ns}" if stat else "absent"
        digest.update(f"\0{name}\0{seen}".encode())
    return digest.hexdigest()


def _entry(folder: Path, sha256: str) -> Path:
    return folder / f"{sha256}.json"


def cached(folder: Path, text: str, sha256: str, source: str) -> Workflow | None:
    """The workflow of ``text`` from the cache in ``folder``, or ``None`` (a miss: parse it).

    Args:
        folder: the cache folder (:func:`demiarch_flow.paths.cache_dir`'s ``workflows``).
        text: the file's text; ``sha256`` its digest (UTF-8).
        source: the name the user gave the file, for the workflow's messages and records.
    """
    try:
        entry = json.loads(_entry(folder, sha256).read_bytes())
        doc_text = entry["doc"]
        table_text = entry["table"]
        if (
            entry["format"] != CACHE_FORMAT
            or entry["sha256"] != sha256
            or entry["fingerprint"] != fingerprint()
            or _digest(doc_text, table_text) != entry["doc_sha256"]
        ):
            return None
        wf = build_workflow(json.loads(doc_text), source=source, sha256=sha256, text=text)
        table = json.loads(table_text)
        if table is not None:
            initial, moves = table["initial"], table["moves"]
            if not (
                isinstance(initial, str)
                and isinstance(moves, dict)
                and initial in moves
                and all(
                    isinstance(m, dict)
                    and all(isinstance(t, str) and t in moves for t in m.values())
                    for m in moves.values()
                )
            ):
                return None
            _MOVES[id(wf)] = (wf, initial, moves)
        return wf
    except Exception:  # any unreadable entry is a miss, never an error
        return None


def _digest(doc_text: str, table_text: str) -> str:
    """What an entry's ``doc_sha256`` holds: its document and its table, as written."""
    return hashlib.sha256(f"{doc_text}\0{table_text}".encode()).hexdigest()


def _table_text(wf: Workflow) -> str:
    """The transition table of ``wf``'s class as JSON (``null`` when no table can reproduce
    the class: the runner then derives it, or refuses, as for an unchecked text)."""
    from .machine import machine_class, transition_moves

    try:
        initial, moves = transition_moves(machine_class(wf))
    except TypeError:
        return "null"
    return json.dumps({"initial": initial, "moves": moves}, ensure_ascii=False)


def remember(folder: Path, doc: dict[str, Any], wf: Workflow) -> None:
    """Keep ``doc``, the checked document ``wf`` was built from, for the next process — only if
    it round-trips through JSON to the very same workflow; nothing when it cannot be written."""
    try:
        doc_text = json.dumps(doc, ensure_ascii=False, allow_nan=False)
        again = build_workflow(json.loads(doc_text), source=wf.source, sha256=wf.sha256)
    except (TypeError, ValueError, KeyError, RecursionError):
        return  # a value JSON does not hold as it is (a date, a float that is not finite)
    if again != wf or repr(again) != repr(wf):  # repr: 1 and 1.0, or 1.1 and 1.10, differ
        return
    table_text = _table_text(wf)
    entry = {
        "format": CACHE_FORMAT,
        "sha256": wf.sha256,
        "fingerprint": fingerprint(),
        "doc_sha256": _digest(doc_text, table_text),
        "doc": doc_text,
        "table": table_text,
    }
    with contextlib.suppress(OSError):
        write_atomically(_entry(folder, wf.sha256), json.dumps(entry).encode("utf-8"))


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in its folder renamed over it, so a
    reader sees the old file or the new one, never a part.

    Raises:
        OSError: the folder cannot be created or written (the temporary file is removed).
    """
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
