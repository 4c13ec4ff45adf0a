"""Check 3 of 3: the states form a workflow whose every run ends.

The rules, each a :class:`GraphError` naming the state's line:

* the initial state exists and is not final; every transition target exists;
* a state's transitions are exactly the events its action can emit (none for final states);
* every state is reachable from the initial one, and a final state is reachable from every state;
* every cycle uses up a bounded budget: it contains a Backoff ``retry`` edge (bounded by
  ``max_retries`` per model) or a Fallback ``next_model`` edge (bounded by the chain). This is a
  little stricter than "passes through a backoff or fallback state": a Backoff ``exhausted`` edge
  that leads back to Request would loop forever without waiting, so it does not count.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import DefinitionError, GraphError
from ._source import Positions, format_path
from .model import Workflow
from .vocabulary import ACTION_EVENTS, CONSUMING_EDGES


def _err(message: str, positions: Positions, *path: str) -> GraphError:
    return GraphError(message, location=positions.locate(path, key=True), path=format_path(path))


def check_graph(wf: Workflow, positions: Positions) -> None:
    """Run every graph rule on ``wf``.

    Raises:
        GraphError: every finding, the first (by position) leading.
    """
    problems = list(_local_rules(wf, positions))
    if not problems:
        problems.extend(_reachability(wf, positions))
    if not problems:
        problems.extend(_cycles(wf, positions))
    if problems:
        problems.sort(key=lambda p: (p.line, p.column))
        raise DefinitionError.collect(problems)


def _local_rules(wf: Workflow, positions: Positions) -> Iterator[GraphError]:
    names = set(wf.state_names)
    if wf.initial not in names:
        yield _err(
            f"initial state {wf.initial!r} is not defined under states", positions, "initial"
        )
    elif wf.state(wf.initial).final:
        yield _err(
            f"initial state {wf.initial!r} is final: nothing would run", positions, "initial"
        )
    for s in wf.states:
        base = ("states", s.name)
        if s.final:
            if s.transitions:
                yield _err("a final state has no transitions", positions, *base, "transitions")
            if s.action is not None and ACTION_EVENTS[s.action]:
                yield _err(
                    f"action {s.action!r} emits events, so it cannot run in a final state",
                    positions,
                    *base,
                    "action",
                )
            continue
        if s.action is None:
            yield _err("a state that is not final needs an action", positions, *base)
            continue
        emits = ACTION_EVENTS[s.action]
        if not emits:
            yield _err(
                f"action {s.action!r} ends a run, so its state must be final: true",
                positions,
                *base,
                "action",
            )
            continue
        declared = {ev for ev, _ in s.transitions}
        for ev in sorted(emits - declared):
            yield _err(
                f"action {s.action!r} can emit {ev!r} but the state has no transition for it",
                positions,
                *base,
                "transitions",
            )
        for ev, target in s.transitions:
            if ev not in emits:
                allowed = ", ".join(sorted(emits))
                yield _err(
                    f"action {s.action!r} never emits {ev!r} (it emits: {allowed})",
                    positions,
                    *base,
                    "transitions",
                    ev,
                )
            if target not in names:
                yield _err(
                    f"transition target {target!r} is not a defined state",
                    positions,
                    *base,
                    "transitions",
                    ev,
                )


def _edges(wf: Workflow) -> dict[str, list[tuple[str, str]]]:
    return {s.name: [(ev, t) for ev, t in s.transitions] for s in wf.states}


def _reachable(start: str, edges: dict[str, list[str]]) -> set[str]:
    seen = {start}
    todo = [start]
    while todo:
        for nxt in edges.get(todo.pop(), []):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _reachability(wf: Workflow, positions: Positions) -> Iterator[GraphError]:
    forward = {n: [t for _, t in es] for n, es in _edges(wf).items()}
    reached = _reachable(wf.initial, forward)
    for s in wf.states:
        if s.name not in reached:
            yield _err(
                f"state {s.name!r} is unreachable from {wf.initial!r}", positions, "states", s.name
            )
    backward: dict[str, list[str]] = {n: [] for n in forward}
    for src, targets in forward.items():
        for t in targets:
            backward[t].append(src)
    can_finish: set[str] = set()
    for s in wf.states:
        if s.final:
            can_finish |= _reachable(s.name, backward)
    for s in wf.states:
        if s.name in reached and s.name not in can_finish:
            yield _err(
                f"no final state can be reached from {s.name!r}: a run entering it never ends",
                positions,
                "states",
                s.name,
            )


def _cycles(wf: Workflow, positions: Positions) -> Iterator[GraphError]:
    """Find a cycle in the graph without budget-consuming edges (DFS, colour marking)."""
    free: dict[str, list[str]] = {}
    for s in wf.states:
        free[s.name] = [t for ev, t in s.transitions if (s.action, ev) not in CONSUMING_EDGES]
    colour: dict[str, int] = dict.fromkeys(free, 0)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in free[node]:
            if colour[nxt] == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if colour[nxt] == 0 and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = 2
        return None

    for name in free:
        if colour[name] == 0 and (cycle := visit(name)):
            path = " → ".join(cycle)
            yield _err(
                f"the cycle {path} never takes a backoff 'retry' or a fallback 'next_model'"
                " step, so a run could loop forever",
                positions,
                "states",
                cycle[0],
            )
            return
