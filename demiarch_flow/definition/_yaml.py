"""Safe YAML loading that remembers where every value came from.

PyYAML's ``safe_load`` forgets positions, and every definition error must name a line and a
column. So the text is *composed* into nodes with the safe loader (no object construction ever
happens beyond plain scalars), then walked here into plain data plus a map from field path to
source position. Mapping keys are kept as the text the user wrote: YAML 1.1 turns a bare ``on``
into ``True``, and keeping ``"on"`` lets the schema reject it by name with a hint instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import Location, YamlSyntaxError

Path = tuple[str | int, ...]

#: Guards against alias bombs ("billion laughs"): no workflow is anywhere near this size.
_MAX_NODES = 20_000


@dataclass
class Positions:
    """Source positions of values (and of mapping keys) by field path."""

    file: str
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Path, *, key: bool = False) -> Location:
        """The closest known location of ``path`` (walking up to a parent when needed)."""
        table = self.keys if key else self.values
        probe = path
        while True:
            if probe in table:
                line, col = table[probe]
                return Location(self.file, line, col)
            if probe in self.values:
                line, col = self.values[probe]
                return Location(self.file, line, col)
            if not probe:
                return Location(self.file, 1, 1)
            probe = probe[:-1]


def format_path(path: Path) -> str:
    """``("retry", "when", 2)`` → ``retry.when[2]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def load_yaml(text: str, file: str) -> tuple[Any, Positions]:
    """Parse ``text`` safely into plain data and the positions of its nodes.

    Raises:
        YamlSyntaxError: the text is not YAML, holds several documents, repeats a key, or
            uses aliases recursively or excessively.
    """
    positions = Positions(file)
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # the reader rejects control characters up front
        raise YamlSyntaxError(f"not valid YAML: {exc}", location=Location(file)) from None
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
        if node is None:
            raise YamlSyntaxError("the file is empty", location=Location(file, 1, 1))
        walker = _Walker(loader, positions)
        return walker.walk(node, ()), positions
    finally:
        loader.dispose()


class _Walker:
    def __init__(self, loader: yaml.SafeLoader, positions: Positions) -> None:
        self.loader = loader
        self.positions = positions
        self.count = 0
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
        self.positions.values.setdefault(
            path, (node.start_mark.line + 1, node.start_mark.column + 1)
        )
        if id(node) in self.stack:
            raise self._fail("recursive alias: a node contains itself", node)
        if isinstance(node, yaml.ScalarNode):
            try:
                return self.loader.construct_object(node, deep=True)
            except (yaml.YAMLError, ValueError, OverflowError) as exc:
                raise self._fail(f"cannot read scalar {node.value!r}: {exc}", node) from None
        self.stack.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.walk(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
        finally:
            self.stack.discard(id(node))
        raise self._fail("unsupported YAML node", node)  # pragma: no cover - composer only makes 3

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise self._fail("merge keys (<<) are not supported in workflow files", key_node)
            if not isinstance(key_node, yaml.ScalarNode):
                raise self._fail("mapping keys must be plain names", key_node)
            key = str(key_node.value)
            if key in out:
                raise self._fail(f"duplicate key {key!r}", key_node)
            child = (*path, key)
            mark = key_node.start_mark
            self.positions.keys[child] = (mark.line + 1, mark.column + 1)
            out[key] = self.walk(value_node, child)
        return out
