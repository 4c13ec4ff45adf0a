"""``quick``: a frozen dataclass made through one ``__dict__`` update is the same value as one
made by the generated ``__init__`` — fields, defaults, argument errors, equality, hash,
immutability, pickling — for every class of the run's hot path that uses it."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import pytest

from demiarch_flow._frozen import evolve, quick
from demiarch_flow.client import Attempt, Completion
from demiarch_flow.pricing import Cost
from demiarch_flow.runner.attempt._open import AttemptResult
from demiarch_flow.runner.engine import RunOutcome
from demiarch_flow.runner.records import FlowRecord
from demiarch_flow.runner.state import AttemptInfo, Message, RunState, Step
from demiarch_flow.store.base import (
    AttemptRow,
    BeganRun,
    Checkpoint,
    JournalEntry,
    NewRun,
    Reply,
    RunEnd,
    StoredMessage,
)

QUICK = (
    RunState, Step, AttemptInfo, FlowRecord, Completion, Attempt, AttemptResult, RunOutcome,
    # the store's values a run makes (were slotted: a slot-wrapper call per field)
    AttemptRow, BeganRun, Checkpoint, JournalEntry, NewRun, Reply, RunEnd, StoredMessage,
    Cost, Message,
)  # fmt: skip


def _twin(cls: type) -> type:
    """``cls``'s fields in a plain frozen dataclass: what the generated ``__init__`` makes."""
    fields = [(f.name, f.type, f) for f in dataclasses.fields(cls)]
    return dataclasses.make_dataclass(f"Plain{cls.__name__}", fields, frozen=True)


def _required(cls: type) -> list[Any]:
    return [f"v-{f.name}" for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
def test_quick_init_makes_what_the_generated_one_makes(cls: type) -> None:
    plain = _twin(cls)
    args = _required(cls)
    made, expected = cls(*args), plain(*args)
    names = [f.name for f in dataclasses.fields(cls)]
    assert [getattr(made, n) for n in names] == [getattr(expected, n) for n in names]
    assert list(vars(made)) == names  # every field in the instance, in field order
    last = names[-1]
    by_keyword = cls(*args[:-1], **{last: "k"}) if len(args) == len(names) else cls(*args)
    assert by_keyword == evolve(made, **({last: "k"} if len(args) == len(names) else {}))
    assert cls(*args) == made
    assert hash(cls(*args)) == hash(made)
    assert pickle.loads(pickle.dumps(made)) == made
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, names[0], "x")


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
def test_quick_init_refuses_what_the_generated_one_refuses(cls: type) -> None:
    args = _required(cls)
    with pytest.raises(TypeError):
        cls(*args[:-1])  # a required argument missing
    with pytest.raises(TypeError):
        cls(*args, not_a_field=1)
    with pytest.raises(TypeError):
        cls(*args, *range(len(dataclasses.fields(cls))))  # too many positional arguments


def test_quick_keeps_defaults_and_keywords() -> None:
    """A record made with a few keywords has every other field at its default."""
    rec = FlowRecord("wait", "r", 1.0, None, wait_s=2.0, model="m")  # type: ignore[arg-type]
    plain = _twin(FlowRecord)("wait", "r", 1.0, None, wait_s=2.0, model="m")
    for f in dataclasses.fields(FlowRecord):
        assert getattr(rec, f.name) == getattr(plain, f.name), f.name
    assert rec == evolve(rec)
    assert evolve(rec, model="n").model == "n"


def test_quick_refuses_what_it_cannot_make_alike() -> None:
    """Slots, a ``__post_init__``, a factory or a keyword-only field: the generated
    ``__init__`` is needed."""

    @dataclasses.dataclass(frozen=True, slots=True)
    class Slotted:
        a: int

    @dataclasses.dataclass(frozen=True)
    class Post:
        a: int

        def __post_init__(self) -> None: ...

    @dataclasses.dataclass(frozen=True)
    class Factory:
        a: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True)
    class KwOnly:
        a: int = dataclasses.field(kw_only=True)

    @dataclasses.dataclass
    class Mutable:
        a: int

    for cls in (Slotted, Post, Factory, KwOnly, Mutable):
        with pytest.raises(TypeError):
            quick(cls)
