"""YAML data files that remember where each value came from.

Topology and scenario files are written by people; when one is wrong the error must name the
file, the line and the field. PyYAML's plain loader forgets lines, so this builds plain
Python values from the node tree and keeps a map from field path to line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed.errors import InvalidFile

FieldPath = tuple[str | int, ...]
# A scenario or topology a person wrote has hundreds of values; a file whose aliases expand
# past this is a mistake (or an attack) that would otherwise take minutes and gigabytes.
MAX_NODES = 100_000


def format_path(path: FieldPath) -> str:
    """`('servers', 'idb1', 'port')` -> `servers.idb1.port`; list items as `wan[0]`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


@dataclass
class DataFile:
    """A parsed file: its plain data and the line of every field in it."""

    source: str
    data: Any
    lines: dict[FieldPath, int] = field(default_factory=dict)

    def line_of(self, path: FieldPath) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())

    def error(self, path: FieldPath, message: str) -> InvalidFile:
        """An `InvalidFile` naming file, line and field in one line."""
        line = self.line_of(path)
        where = f"{self.source}, line {line}" if line else self.source
        return InvalidFile(f"{where}: {format_path(path)}: {message}")


def load(path: str | Path) -> DataFile:
    """Parse a YAML (or JSON) file; a missing or malformed file is an `InvalidFile`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidFile(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise InvalidFile(f"{path}: not a text file (not UTF-8 at byte {exc.start})") from None
    except OSError as exc:
        raise InvalidFile(f"{path}: cannot read: {exc.strerror or exc}") from None
    return loads(text, source=str(path))


def loads(text: str, source: str = "<string>") -> DataFile:
    """Parse YAML text; syntax errors become one `InvalidFile` line with the position."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise InvalidFile(f"{source}{line}: not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise InvalidFile(f"{source}: not valid YAML: {exc}") from None
    result = DataFile(source=source, data=None)
    if root is not None:
        size = _expanded_size(root, {})
        if size > MAX_NODES:
            raise InvalidFile(
                f"{source}: expands to more than {MAX_NODES:,} values (YAML aliases repeating"
                " aliases): write the steps out, or use fewer nested anchors"
            )
        result.data = _build(root, (), result)
    return result


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values the node tree becomes once every alias is expanded, counted on the
    tree as composed (an alias is the same node object again: each is counted once, so a
    "billion laughs" file costs a pass over what was written, not over what it means)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(item, sizes) for item in node.value)
    sizes[id(node)] = size = min(size, MAX_NODES + 1)
    return size


_scalars = yaml.SafeLoader("")


def _build(node: yaml.Node, path: FieldPath, into: DataFile) -> Any:
    into.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise into.error(path, "keys must be plain names")
            key = _scalars.construct_object(key_node)
            if key in mapping:
                into.lines[(*path, key)] = key_node.start_mark.line + 1
                raise into.error((*path, key), "appears twice")
            mapping[key] = _build(value_node, (*path, key), into)
            into.lines[(*path, key)] = key_node.start_mark.line + 1
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), into) for i, item in enumerate(node.value)]
    try:
        return _scalars.construct_object(node)
    except yaml.YAMLError as exc:
        raise into.error(path, f"bad value: {exc}") from None
