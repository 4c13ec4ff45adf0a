"""Safe YAML loading that remembers where every value came from.

PyYAML's ``safe_load`` forgets positions, and every definition error must name a line and a
column. So the text is *composed* into nodes with the safe loader (no object construction ever
happens beyond plain scalars), then walked here into plain data plus a map from field path to
source position. Mapping keys are kept as the text the user wrote: YAML 1.1 turns a bare ``on``
into ``True``, and keeping ``"on"`` lets the schema reject it by name with a hint instead. A plain
key that YAML would read as null, a boolean, a number or a date is noted in
:attr:`Positions.typed_keys`, so that a free-named mapping (rate buckets, states) can refuse it:
``yes:`` or ``~:`` there is never the name the user meant to match.

YAML 1.1 reads ``1:30`` as the base-60 number 90 (and ``1:30.5`` as 90.5), a reading nobody
writing a budget or a delay expects. Such a scalar is kept as the text written instead: where text
belongs (``system: 12:30``) it is what the user wrote, and where a number belongs the schema
refuses it by name, at its line — never a silent 90. The same goes for the integers YAML 1.1
reads in another base where YAML 1.2 (and every other reader of the file) does not: ``010`` is
8 to PyYAML and 10 to YAML 1.2, ``0b11`` is 3 to one and text to the other. ``max_retries: 010``
must not silently mean eight retries.

Hostile input is bounded here, before anything recurses or multiplies: the text size, the nesting
depth (PyYAML's composer recurses once per level, so 5,000 ``[`` would end in ``RecursionError``),
the node count and the expanded text size (alias bombs), and the tags (plain YAML types only).
Every refusal is a :class:`YamlSyntaxError` with the line and column where the limit was hit.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from ..errors import Location, YamlSyntaxError
from ._source import MAX_FILE_BYTES, Path, Positions, shorten

#: Guards against alias bombs ("billion laughs"): no workflow is anywhere near this size.
_MAX_NODES = 20_000

#: Nesting limit: a workflow nests five levels deep; the composer recurses once per level.
MAX_DEPTH = 100

#: Limit on scalar text after alias expansion, so that aliases cannot multiply a long string.
_MAX_EXPANDED_CHARS = 1_000_000

_YAML = "tag:yaml.org,2002:"
#: The tags plain YAML gives values without being asked; anything else (``!!python/object``,
#: ``!!binary``, ``!!set``, custom ``!tags``) has no meaning in a workflow and is refused by name.
_SCALAR_TAGS = frozenset(_YAML + t for t in ("str", "int", "float", "bool", "null", "timestamp"))
_COLLECTION_TAGS = frozenset({_YAML + "seq", _YAML + "map"})
_NUMBER_TAGS = frozenset({_YAML + "int", _YAML + "float"})


def load_yaml(text: str, file: str) -> tuple[Any, Positions]:
    """Parse ``text`` safely into plain data and the positions of its nodes.

    Raises:
        YamlSyntaxError: the text is not YAML, holds several documents, repeats a key, nests
            too deeply, uses tags or merge keys, uses aliases recursively or excessively, or
            is too large.
    """
    if len(text) > MAX_FILE_BYTES:
        raise YamlSyntaxError(
            f"the file is too large ({len(text)} characters; a workflow file may have at most"
            f" {MAX_FILE_BYTES})",
            location=Location(file),
        )
    text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark; columns count without it
    positions = Positions(file)
    try:
        loader = _BoundedLoader(text)
    except yaml.reader.ReaderError as exc:  # the reader rejects control characters up front
        line, col = _line_col(text, exc.position)
        raise YamlSyntaxError(
            f"not valid YAML: the character U+{exc.character:04X} is not allowed in YAML text",
            location=Location(file, line, col),
        ) from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
            problem = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
            raise YamlSyntaxError(
                f"not valid YAML: {problem}", location=Location(file, line, col)
            ) from None
        except yaml.YAMLError as exc:
            raise YamlSyntaxError(f"not valid YAML: {exc}", location=Location(file)) from None
        except RecursionError:  # pragma: no cover - MAX_DEPTH stops the composer long before
            raise YamlSyntaxError(
                "not valid YAML: nesting is too deep", location=Location(file)
            ) from None
        if node is None:
            raise YamlSyntaxError("the file is empty", location=Location(file, 1, 1))
        walker = _Walker(loader, positions)
        return walker.walk(node, ()), positions
    finally:
        loader.dispose()


def _line_col(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of character ``index`` of ``text``."""
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def _tag_name(tag: str) -> str:
    return "!!" + tag.removeprefix(_YAML) if tag.startswith(_YAML) else tag


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader with a limit on nesting depth and node count, checked as it composes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        self.nodes += 1
        if self.depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nesting is deeper than {MAX_DEPTH} levels", event.start_mark
            )
        if self.nodes > _MAX_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"the document has more than {_MAX_NODES} nodes", event.start_mark
            )
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Walker:
    def __init__(self, loader: yaml.SafeLoader, positions: Positions) -> None:
        self.loader = loader
        self.positions = positions
        self.count = 0
        self.chars = 0
        self.stack: set[int] = set()

    def _fail(self, message: str, node: yaml.Node) -> YamlSyntaxError:
        mark = node.start_mark
        return YamlSyntaxError(
            message, location=Location(self.positions.file, mark.line + 1, mark.column + 1)
        )

    def walk(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise self._fail(f"the document has more than {_MAX_NODES} nodes", node)
        if len(path) > MAX_DEPTH:  # aliases can stack nesting beyond what the composer saw
            raise self._fail(f"nesting is deeper than {MAX_DEPTH} levels", node)
        self.positions.values.setdefault(
            path, (node.start_mark.line + 1, node.start_mark.column + 1)
        )
        if id(node) in self.stack:
            raise self._fail("recursive alias: a node contains itself", node)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        if node.tag not in _COLLECTION_TAGS:
            raise self._fail(f"the YAML tag {_tag_name(node.tag)} is not supported here", node)
        self.stack.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.walk(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
        finally:
            self.stack.discard(id(node))
        raise self._fail("unsupported YAML node", node)  # pragma: no cover - composer only makes 3

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag not in _SCALAR_TAGS:
            raise self._fail(f"the YAML tag {_tag_name(node.tag)} is not supported here", node)
        self.chars += len(node.value)
        if self.chars > _MAX_EXPANDED_CHARS:
            raise self._fail(
                f"the document expands to more than {_MAX_EXPANDED_CHARS} characters of text"
                " (aliases repeat their text)",
                node,
            )
        if _is_base_60(node) or _is_prefixed_int(node):
            return str(node.value)
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            problem = exc.problem or "invalid value"
            raise self._fail(
                f"cannot read the value {shorten(node.value)}: {problem}", node
            ) from None
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            raise self._fail(f"cannot read the value {shorten(node.value)}: {exc}", node) from None

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise self._fail("merge keys (<<) are not supported in workflow files", key_node)
            if not isinstance(key_node, yaml.ScalarNode):
                raise self._fail("mapping keys must be plain names", key_node)
            if key_node.tag not in _SCALAR_TAGS:
                raise self._fail(
                    f"the YAML tag {_tag_name(key_node.tag)} is not supported here", key_node
                )
            key = str(key_node.value)
            if key in out:
                raise self._fail(f"duplicate key {shorten(key)}", key_node)
            child = (*path, key)
            mark = key_node.start_mark
            self.positions.keys[child] = (mark.line + 1, mark.column + 1)
            if reading := self._key_reading(key_node):
                self.positions.typed_keys[child] = reading
            out[key] = self.walk(value_node, child)
        return out

    def _key_reading(self, node: yaml.ScalarNode) -> str | None:
        """What YAML reads a key as when that is not text (``None``: text, as keys should be)."""
        kind = node.tag.removeprefix(_YAML)
        if kind == "str" or _is_base_60(node) or _is_prefixed_int(node):
            return None
        if kind == "null":
            return "null"
        if kind == "timestamp":
            return "a date"
        try:
            value = self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError):
            return "a boolean" if kind == "bool" else "a number"
        if isinstance(value, bool):
            return f"the boolean {str(value).lower()}"
        return f"the number {shorten(value)}"


def _is_base_60(node: yaml.ScalarNode) -> bool:
    """A number YAML 1.1 reads in base 60: the only int or float forms with a colon (``1:30``)."""
    return node.tag in _NUMBER_TAGS and ":" in node.value


_OCTAL_OR_BINARY = re.compile(r"[-+]?0(?:[0-7_]+|b[01_]+)")


def _is_prefixed_int(node: yaml.ScalarNode) -> bool:
    """An int YAML 1.1 reads in base 8 (``010``) or base 2 (``0b11``): see the module doc."""
    return node.tag == _YAML + "int" and _OCTAL_OR_BINARY.fullmatch(node.value) is not None
