"""Where a config problem is: file line numbers for YAML paths, and the list of problems found.

Every problem of a file is collected (``ConfigReport``) so one start shows them all, each as
``file:line: field.path: problem``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import yaml

Path_ = tuple[str | int, ...]


def line_map(text: str) -> dict[Path_, int]:
    """Map each key/item path in the YAML document to its 1-based line number."""
    lines: dict[Path_, int] = {}
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is None:
        return lines

    def walk(node: yaml.Node, path: Path_) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                sub = (*path, key)
                lines[sub] = key_node.start_mark.line + 1
                walk(value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                sub = (*path, i)
                lines[sub] = item.start_mark.line + 1
                walk(item, sub)

    lines[()] = root.start_mark.line + 1
    walk(root, ())
    return lines


def format_path(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


@dataclass
class ConfigReport:
    """The problems found in one config file: errors refuse it, warnings are printed at start."""

    where: str
    lines: dict[Path_, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    _warning_lines: list[int] = field(default_factory=list, repr=False)

    def file_path(self, loc: Iterable[str | int]) -> tuple[Path_, int | None]:
        """The path as written in the file (``litellm_params`` vs ``params``) and its closest line."""
        path: list[str | int] = []
        for part in loc:
            if (
                part == "params"
                and (*path, "params") not in self.lines
                and (*path, "litellm_params") in self.lines
            ):
                part = "litellm_params"
            path.append(part)
        probe = tuple(path)
        while probe:
            if probe in self.lines:
                return tuple(path), self.lines[probe]
            probe = probe[:-1]
        return tuple(path), self.lines.get(())

    def at(self, loc: Iterable[str | int]) -> str:
        path, line = self.file_path(loc)
        return f"{self.where}:{line}: {format_path(path)}"

    def error(self, loc: Iterable[str | int], problem: str) -> None:
        self.errors.append(f"{self.at(loc)}: {problem}")

    def warn(self, loc: Iterable[str | int], problem: str) -> None:
        self.warnings.append(f"{self.at(loc)}: {problem}")
        self._warning_lines.append(self.file_path(loc)[1] or 0)

    def warnings_in_file_order(self) -> list[str]:
        """The warnings sorted by line (they are found section by section)."""
        order = sorted(range(len(self.warnings)), key=lambda i: self._warning_lines[i])
        return [self.warnings[i] for i in order]
