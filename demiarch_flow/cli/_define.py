"""``validate`` and ``graph``: checking and drawing workflow files, no network, no database."""

from __future__ import annotations

import argparse
import sys

from ..definition import load_workflow
from ..definition.render import to_dot, to_mermaid
from ..errors import DefinitionError, UsageError


def cmd_validate(args: argparse.Namespace) -> int:
    """Check every file; print ``ok`` lines on stdout and each error on stderr."""
    failed = 0
    for name in args.files:
        try:
            wf = load_workflow(name)
            if wf.limits is not None:
                from ._common import check_budget_prices

                check_budget_prices(wf)
        except (DefinitionError, UsageError) as exc:
            failed += 1
            print(f"demiarch-flow: {exc}", file=sys.stderr)
            continue
        chain = " → ".join(wf.models)
        print(
            f"{name}: ok — workflow {wf.name!r}, {len(wf.states)} states, models {chain}, "
            f"up to {wf.retry.max_retries} retries per model"
        )
    return 2 if failed else 0


def cmd_graph(args: argparse.Namespace) -> int:
    """Print the diagram of one valid workflow on stdout."""
    wf = load_workflow(args.file)
    sys.stdout.write(to_dot(wf) if args.format == "dot" else to_mermaid(wf))
    return 0
