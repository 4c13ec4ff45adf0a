"""``evolve``: the engine's copy of a run's frozen values, equal to ``dataclasses.replace``."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from demiarch_flow.errors import ErrorClass
from demiarch_flow.runner.records import WaitSource
from demiarch_flow.runner.state import ErrorInfo, Message, RunState, Step, Wait, evolve

STATE = RunState(
    run_id="r", state="Request", chain=("a", "b"), messages=(Message("user", "hi"),),
    last_error=ErrorInfo(ErrorClass.TIMEOUT, "slow"), cost_usd=Decimal("0.5"),
    wait=Wait(1.5, WaitSource.BACKOFF),
)  # fmt: skip


def test_evolve_is_replace() -> None:
    """Every field copied, the changed ones replaced, the original untouched, the type kept."""
    changes = {"state": "Persist", "seq": 4, "wait": None, "model_index": 1}
    new = evolve(STATE, **changes)
    assert new == dataclasses.replace(STATE, **changes)  # type: ignore[arg-type]
    assert type(new) is RunState
    assert STATE.state == "Request"
    assert STATE.seq == 0
    assert evolve(STATE) == STATE
    assert evolve(STATE) is not STATE


def test_evolve_keeps_values_frozen() -> None:
    """A copy is as frozen as one made by the constructor."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        evolve(STATE, seq=1).seq = 2  # type: ignore[misc]


def test_evolve_refuses_a_name_that_is_not_a_field() -> None:
    """As ``replace`` does: a typo is an error, not a silently ignored change — also for a
    kind already copied (its fast path checks the names too)."""
    evolve(STATE, seq=1)
    evolve(STATE, seq=2)
    with pytest.raises(TypeError, match="nope"):
        evolve(STATE, nope=1)
    with pytest.raises(TypeError, match="nope"):
        evolve(STATE, seq=3, nope=1)
    with pytest.raises(TypeError, match="reply_to"):
        evolve(Step("saved", STATE), reply_to=None)


def test_evolve_round_trips_through_json() -> None:
    """A copy checkpoints and reads back like the original."""
    new = evolve(STATE, attempt=2, saved_message_id="m")
    assert RunState.from_json(new.to_json()) == new


def test_evolve_copies_slotted_values_too() -> None:
    """A slotted value (``Wait``, ``ErrorInfo``, the store's rows) is copied field by field."""
    wait = Wait(1.5, WaitSource.BACKOFF, "b")
    assert evolve(wait, seconds=2.0) == dataclasses.replace(wait, seconds=2.0)
    assert evolve(STATE.last_error, message="m") == ErrorInfo(ErrorClass.TIMEOUT, "m")


def test_new_id_is_a_version_4_uuid() -> None:
    """``new_id`` gives what ``str(uuid.uuid4())`` gives: canonical text, version 4, RFC
    variant, fresh each time."""
    import uuid

    from demiarch_flow.runner.context import new_id

    ids = [new_id() for _ in range(200)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_checkpoint_json_is_the_fields_in_order() -> None:
    """The checkpoint text is every field of the state and of its nested values, in field
    order (quick values are encoded as their ``__dict__``): the same text, byte for byte, as
    encoding each dataclass's fields one by one — for a state made by the constructor, copied
    by ``evolve`` and read back from JSON."""
    import json
    from datetime import UTC, datetime

    from demiarch_flow.client import Completion
    from demiarch_flow.runner.state import AttemptInfo

    def by_fields(value: object) -> object:
        if isinstance(value, Decimal):
            return str(value)
        if isinstance(value, datetime):
            return value.isoformat()
        assert dataclasses.is_dataclass(value)
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}

    def expected(state: RunState) -> str:
        doc = {"format": 1, **by_fields(state)}  # type: ignore[dict-item]
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=by_fields)

    done = Completion("answer é", "m", "gen-1", "stop", 3, 4, 7, None, Decimal("0.25"), "p")
    attempt = AttemptInfo(1, "m", "ok", None, 200, None, 12, "gen-1")
    rich = evolve(
        STATE, completion=done, attempts=(attempt,), cost_usd=Decimal("0.25"),
        user_message_at=datetime(2026, 12, 3, tzinfo=UTC), failure=STATE.last_error,
        last_errors=(("a", STATE.last_error),),
    )  # fmt: skip
    for state in (STATE, rich, RunState.from_json(rich.to_json()), evolve(rich, seq=9)):
        assert state.to_json() == expected(state)  # type: ignore[arg-type]
