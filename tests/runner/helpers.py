"""Shared helpers for runner tests: the fake provider with its records, and the default
workflow."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from demiarch_flow.definition import Workflow, load_workflow, parse_workflow
from demiarch_flow.runner import RunEnv, RunOutcome, RunRequest, run_workflow
from demiarch_flow.store import MemoryStore
from demiarch_flow.testing import FakeOpenRouter, RecordingListener, make_env

from ..conftest import DEFAULT_WORKFLOW

SONNET, HAIKU, GPT4O = "anthropic/claude-sonnet-4", "anthropic/claude-3.5-haiku", "openai/gpt-4o"


def default_workflow() -> Workflow:
    return load_workflow(DEFAULT_WORKFLOW)


def edited(**replacements: str) -> Workflow:
    """The default workflow text with literal replacements (old=new pairs via a dict)."""
    text = DEFAULT_WORKFLOW.read_text("utf-8")
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return parse_workflow(text)


class Harness:
    """FakeOpenRouter played from a fault script, a MemoryStore and a recording listener: the
    environment of a scenario test, with the requests and waits it made at hand.

    Args:
        script: the fault script (:mod:`demiarch_flow.faults`); a model it does not name
            answers ``ok``.
        edit_success: passed to :class:`FakeOpenRouter`, for a success body with other figures
            (a blocking body: run with ``stream=False``, as the default workflow streams).
    """

    def __init__(
        self,
        script: str = "",
        *,
        edit_success: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.fake = FakeOpenRouter(script, edit_success=edit_success)
        self.listener = RecordingListener()
        self.store = MemoryStore()

    @property
    def models(self) -> list[str]:
        """The model of every request, in order."""
        return self.fake.models_called

    @property
    def times(self) -> list[float]:
        """trio's clock at every request."""
        return self.fake.request_times()

    def env(self, seed: int = 0) -> RunEnv:
        return make_env(self.fake, store=self.store, seed=seed, listeners=(self.listener,))

    async def run(
        self,
        wf: Workflow | None = None,
        message: str = "Hi",
        model: str | None = None,
        seed: int = 0,
        stream: bool | None = None,
    ) -> RunOutcome:
        request = RunRequest(message, model=model, stream=stream)
        return await run_workflow(wf or default_workflow(), request, self.env(seed))

    def waits(self) -> list[float]:
        return [r.wait_s for r in self.listener.of_kind("wait") if r.wait_s is not None]
