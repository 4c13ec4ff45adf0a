"""Drawing a workflow: Mermaid ``stateDiagram-v2`` (the default) or Graphviz dot text."""

from __future__ import annotations

from .model import Workflow


def to_mermaid(wf: Workflow) -> str:
    """The workflow as a Mermaid state diagram (renders on GitHub and in most editors)."""
    lines = ["stateDiagram-v2", f"    [*] --> {wf.initial}"]
    for s in wf.states:
        if s.action:
            lines.append(f"    {s.name} : {s.action}")
        for event, target in s.transitions:
            lines.append(f"    {s.name} --> {target} : {event}")
        if s.final:
            lines.append(f"    {s.name} --> [*]")
    return "\n".join(lines) + "\n"


def to_dot(wf: Workflow) -> str:
    """The workflow as a Graphviz digraph (final states drawn with a double border)."""
    lines = [f'digraph "{wf.name}" {{', "    rankdir=LR;", '    __start [shape=point, label=""];']
    for s in wf.states:
        shape = "doublecircle" if s.final else "box"
        label = f"{s.name}\\n({s.action})" if s.action else s.name
        lines.append(f'    "{s.name}" [shape={shape}, label="{label}"];')
    lines.append(f'    __start -> "{wf.initial}";')
    for s in wf.states:
        for event, target in s.transitions:
            lines.append(f'    "{s.name}" -> "{target}" [label="{event}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"
