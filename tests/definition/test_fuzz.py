"""Property: the loader returns a valid workflow or raises the definition-error family, nothing else."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demiarch_flow.definition import Workflow, parse_workflow
from demiarch_flow.errors import DefinitionError

from ..conftest import DEFAULT_WORKFLOW

DEFAULT = DEFAULT_WORKFLOW.read_text("utf-8")
DEFAULT_DOC = yaml.safe_load(DEFAULT)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["on", "Request", "Done", "retry", "backoff", "ok", "-1", "1e400"]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _check(text: str) -> None:
    try:
        result = parse_workflow(text, "fuzz.yaml")
    except DefinitionError as exc:
        assert exc.file == "fuzz.yaml"
        assert str(exc).startswith("fuzz.yaml")
    else:
        assert isinstance(result, Workflow)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    """Arbitrary text, YAML or not."""
    _check(text)


@settings(max_examples=150, deadline=None)
@given(documents)
def test_random_documents(doc: object) -> None:
    """Arbitrary YAML documents."""
    _check(yaml.safe_dump(doc))


paths = st.sampled_from(
    [
        ("version",),
        ("name",),
        ("models",),
        ("request",),
        ("request", "timeout_s"),
        ("retry", "max_retries"),
        ("retry", "backoff_rate"),
        ("retry", "max_delay_s"),
        ("retry", "jitter"),
        ("retry", "when"),
        ("fallback", "when"),
        ("cooldown",),
        ("cooldown", "after_failures"),
        ("initial",),
        ("states",),
        ("states", "Request"),
        ("states", "Request", "transitions"),
        ("states", "Backoff", "transitions", "retry"),
        ("states", "Done", "final"),
        ("states", "Failed", "action"),
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(paths, documents, st.booleans()), min_size=1, max_size=4))
def test_mutations_of_the_default(mutations: list[tuple[tuple[str, ...], object, bool]]) -> None:
    """The default workflow with fields replaced or deleted at random."""
    import copy

    doc = copy.deepcopy(DEFAULT_DOC)
    for path, value, delete in mutations:
        node = doc
        for key in path[:-1]:
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            if isinstance(node, dict):
                if delete:
                    node.pop(path[-1], None)
                else:
                    node[path[-1]] = value
    _check(yaml.safe_dump(doc))


def test_alias_bomb_is_a_definition_error() -> None:
    """Exponential alias expansion is refused, not expanded."""
    text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 8):
        text += f"b{i}: &b{i} [{', '.join(['*' + ('a' if i == 1 else f'b{i - 1}')] * 10)}]\n"
    try:
        parse_workflow(text, "fuzz.yaml")
    except DefinitionError as exc:
        assert "nodes" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("an alias bomb was accepted")
