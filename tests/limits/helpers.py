"""Workflows with a ``limits`` block."""

from __future__ import annotations

from demiarch_flow.definition import Workflow, parse_workflow

from ..conftest import DEFAULT_WORKFLOW

SONNET, HAIKU, GPT4O = "anthropic/claude-sonnet-4", "anthropic/claude-3.5-haiku", "openai/gpt-4o"


def with_limits(
    limits: str, *, fallback: str | None = None, max_tokens: int | None = 100
) -> Workflow:
    """The default workflow plus a ``limits`` block (YAML text, indented under ``limits:``)."""
    text = DEFAULT_WORKFLOW.read_text("utf-8")
    if max_tokens is not None:
        text = text.replace("  # optional: temperature, max_tokens", f"  max_tokens: {max_tokens}")
    if fallback is not None:
        start = text.index("fallback:")
        end = text.index("\n\n", start)
        text = text[:start] + f"fallback:\n  when: [{fallback}]" + text[end:]
    return parse_workflow(text + "\nlimits:\n" + limits)
