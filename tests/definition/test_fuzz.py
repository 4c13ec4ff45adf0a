"""Property: the loader returns a valid workflow or raises the definition-error family, nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demiarch_flow.definition import Workflow, check_model_name, load_workflow, parse_workflow
from demiarch_flow.errors import DefinitionError

from ..conftest import DEFAULT_WORKFLOW

DEFAULT = DEFAULT_WORKFLOW.read_text("utf-8")
DEFAULT_DOC = yaml.safe_load(DEFAULT)
#: Lines of the default workflow that carry a value (where a fragment can be spliced in).
_LINES = {
    i for i, line in enumerate(DEFAULT.splitlines()) if ": " in line and not line.startswith("#")
}

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
        # one line per problem, and nothing a terminal would act on
        assert all(line.isprintable() for line in str(exc).split("\n")), repr(str(exc))
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


#: Pieces of YAML that have broken parsers: nesting, anchors, tags, odd numbers, odd characters.
hostile_tokens = st.sampled_from(
    [
        "[",
        "]",
        "{",
        "}",
        "- ",
        ": ",
        "? ",
        ", ",
        "\n",
        "\n  ",
        "\t",
        "#",
        "'",
        '"',
        "|",
        ">",
        "&a ",
        "*a",
        "&b ",
        "*b",
        "<<: ",
        "!!python/object:os.system ",
        "!!binary ",
        "!!set ",
        "!foo ",
        "!!str ",
        "--- ",
        "...",
        "%YAML 1.1\n",
        ".nan",
        ".inf",
        "-.inf",
        "-0.0",
        "1.0e+400",
        "1e400",
        "18446744073709551616",
        "0x1F",
        "0o17",
        "1_000",
        "2024-01-31",
        "on",
        "yes",
        "~",
        "null",
        "\ufeff",
        "\x00",
        "\\0",
        "\\ud800",
        "\x85",
        "\u2028",
        "version: 1\n",
        "models: ",
        "retry: ",
        "states: ",
        "Request: ",
        "transitions: ",
    ]
)


nesting = st.builds(
    lambda opener, depth, tail: opener * depth + tail,
    st.sampled_from(["[", "{a: ", "- ", "&x [", "!!seq [", "? ", "a:\n "]),
    st.integers(0, 400),
    st.lists(hostile_tokens, max_size=10).map("".join),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(hostile_tokens, max_size=60).map("".join), nesting))
def test_hostile_token_soup(text: str) -> None:
    """Text stitched from the pieces that break YAML loaders."""
    _check(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(hostile_tokens, max_size=30).map("".join), st.sampled_from(sorted(_LINES)))
def test_hostile_tokens_spliced_into_the_default(fragment: str, line: int) -> None:
    """The default workflow with one line's value replaced by hostile pieces."""
    lines = DEFAULT.splitlines()
    key, sep, _ = lines[line].partition(": ")
    lines[line] = key + sep + fragment
    _check("\n".join(lines))


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "fuzz.yaml"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=400),
        st.builds(
            lambda b, i: DEFAULT.encode()[:i] + b, st.binary(max_size=40), st.integers(0, 2000)
        ),
    )
)
def test_arbitrary_bytes_from_a_file(fuzz_file: Path, data: bytes) -> None:
    """Any bytes at all on disk: a workflow or a DefinitionError naming the file."""
    fuzz_file.write_bytes(data)
    try:
        result = load_workflow(fuzz_file)
    except DefinitionError as exc:
        assert exc.file == str(fuzz_file)
        assert str(exc).startswith(str(fuzz_file))
    else:
        assert isinstance(result, Workflow)


model_names = st.one_of(
    st.text(max_size=250),
    st.text(st.characters(codec="ascii"), min_size=190, max_size=210),
    st.sampled_from(["openai/gpt-4o-mini", "x" * 200, "x" * 201, " a", "a\n", "a b", "a\u200bb"]),
)


@settings(max_examples=300, deadline=None)
@given(model_names)
def test_model_name_rule_and_format_agree(name: str) -> None:
    """A workflow accepts exactly the model names that check_model_name accepts."""
    problem = check_model_name(name)
    if name in ("anthropic/claude-sonnet-4", "anthropic/claude-3.5-haiku"):
        return  # a repeated model: another rule
    text = DEFAULT.replace("- openai/gpt-4o", "- " + json.dumps(name, ensure_ascii=False), 1)
    try:
        wf = parse_workflow(text, "fuzz.yaml")
    except DefinitionError as exc:
        assert problem is not None, str(exc)
    else:
        assert problem is None
        assert wf.models[-1] == name
