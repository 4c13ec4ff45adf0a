"""``validate`` and ``graph``: checking and drawing workflow files, no network, no database."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..definition import load_workflow
from ..definition.render import to_dot, to_mermaid
from ..errors import DefinitionError, UsageError


def cmd_validate(args: argparse.Namespace) -> int:
    """Check every file; print ``ok`` lines on stdout and each error on stderr (``--json``:
    one object on stdout for all of them)."""
    failed = 0
    files: list[dict[str, Any]] = []
    for name in args.files:
        try:
            wf = load_workflow(name)
            if wf.limits is not None:
                from ._common import check_budget_prices

                check_budget_prices(wf)
        except (DefinitionError, UsageError) as exc:
            failed += 1
            files.append(_failed(name, exc))
            if not args.json:
                print(f"demiarch-flow: {exc}", file=sys.stderr)
            continue
        files.append(
            {"file": name, "ok": True, "workflow": wf.name, "states": len(wf.states),
             "models": list(wf.models), "max_retries": wf.retry.max_retries}
        )  # fmt: skip
        if not args.json:
            chain = " → ".join(wf.models)
            print(
                f"{name}: ok — workflow {wf.name!r}, {len(wf.states)} states, models {chain}, "
                f"up to {wf.retry.max_retries} retries per model"
            )
    if args.json:
        print(json.dumps({"ok": not failed, "files": files}))
    return 2 if failed else 0


def _failed(name: str, exc: DefinitionError | UsageError) -> dict[str, Any]:
    """``validate --json``'s object for a file that is not valid: each problem with its place."""
    problems = (
        [{"line": p.line, "column": p.column, "path": p.path, "message": p.detail}
         for p in exc.problems]
        if isinstance(exc, DefinitionError)
        else [{"line": 0, "column": 0, "path": "", "message": str(exc)}]
    )  # fmt: skip
    return {"file": name, "ok": False, "error": str(exc), "problems": problems}


def cmd_graph(args: argparse.Namespace) -> int:
    """Print the diagram of one valid workflow on stdout."""
    wf = load_workflow(args.file)
    sys.stdout.write(to_dot(wf) if args.format == "dot" else to_mermaid(wf))
    return 0
