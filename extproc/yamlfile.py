"""YAML files we read (gateway.yaml, policies, policy tests): parsed with the line of every key, errors in our words.

Problems are ``file:line: message``; PyYAML's silent "last duplicate key wins" is refused.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import yaml

from extproc.errors import ConfigError

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built in: same nodes and marks, ~5x faster
Lines = dict[tuple[str, ...], int]


def parse_yaml(data: bytes, source: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    """Parse one YAML document; returns the data and the 1-based line of every key path."""
    try:
        loader = _Loader(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}:1: not UTF-8 text ({e.reason})") from None
    try:
        node = loader.get_single_node()
        doc = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        raise ConfigError(f"{source}:{_syntax_error(e)}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}:1: not valid YAML: {e}") from None
    finally:
        loader.dispose()
    if node is None:
        raise ConfigError(f"{source}:1: empty file; expected a mapping starting with apiVersion: mcp-extproc/v1")
    lines: dict[tuple[str, ...], int] = {}
    errors: list[str] = []
    _mark_lines(node, (), lines, errors, source)
    if errors:
        raise ConfigError("\n".join(errors))
    return doc, lines


# Errors the scanner notices only where the next token starts, past blank and comment lines: a key missing its ':'
# is reported at the next key, an unclosed quote at the end of the file. The context mark is the line to fix.
_AT_CONTEXT = ("while scanning a simple key", "while scanning a quoted scalar")


def _syntax_error(e: yaml.MarkedYAMLError) -> str:
    """``line: not valid YAML: problem`` at the line that holds the mistake, with the parser's context."""
    problem = e.problem_mark.line + 1 if e.problem_mark else 1
    context = e.context_mark.line + 1 if e.context_mark else None
    line = context if context is not None and e.context in _AT_CONTEXT else problem
    where = f" ({e.context} at line {context})" if e.context and context is not None and context != line else ""
    return f"{line}: not valid YAML: {e.problem}{where}"


def _mark_lines(
    node: yaml.Node, path: tuple[str, ...], lines: dict[tuple[str, ...], int], errors: list[str], source: str
) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if not isinstance(key_node, yaml.ScalarNode):
                errors.append(f"{source}:{key_node.start_mark.line + 1}: keys must be plain strings")
                continue
            if (*path, key) in lines:  # PyYAML silently keeps the last of duplicate keys; we refuse
                errors.append(f"{source}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
            lines[(*path, key)] = key_node.start_mark.line + 1
            _mark_lines(value_node, (*path, key), lines, errors, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _mark_lines(item, (*path, str(i)), lines, errors, source)


def line_of(lines: Lines, loc: Iterable[object]) -> int:
    """The line of the deepest key of ``loc`` that is in the file (1 when none is)."""
    key = tuple(str(p) for p in loc)
    while key and key not in lines:
        key = key[:-1]
    return lines.get(key, 1)


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest known key, or ''."""
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
