"""``Mcp-Param-*`` headers (2026-07-28, SEP-2243) against the ``x-mcp-header`` map of the tool's input schema.

A tool may mark a property ``x-mcp-header: Region``; a client then mirrors the argument into ``Mcp-Param-Region``
so intermediaries (Envoy here) can route on it. The gateway learns each tool's map from the ``tools/list`` results
it passes, per server, and checks a call's headers against it as the server must: a declared header equal to its
argument, present exactly when the argument is, and no undeclared ``Mcp-Param-*`` header at all.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from mcp.shared.inbound import find_invalid_x_mcp_header, validate_mcp_param_headers, x_mcp_header_map

PARAM_PREFIX = "mcp-param-"


class ToolHeaders:
    """One tool's declared headers: a minimal schema holding only the annotated properties (and their types)."""

    __slots__ = ("names", "schema", "size")

    def __init__(self, schema: dict[str, Any], names: frozenset[str]) -> None:
        self.schema, self.names = schema, names
        self.size = len(json.dumps(schema)) + 64

    def mismatch(self, headers: Mapping[str, str], arguments: Mapping[str, Any]) -> str | None:
        """Why ``headers`` disagree with ``arguments`` under this map (the spec's HEADER_MISMATCH), else None."""
        for h in headers:
            if h.startswith(PARAM_PREFIX) and h not in self.names:
                return f"{h} header is not declared by the tool's input schema (x-mcp-header)"
        rejection = validate_mcp_param_headers(self.schema, arguments, headers)
        return rejection.message if rejection is not None else None


def tool_headers(input_schema: Any) -> ToolHeaders | None:
    """The map of one tool's input schema; None when its annotations are invalid (conforming clients drop the
    tool and send no headers for it, so the gateway checks only that a header mirrors some argument)."""
    if find_invalid_x_mcp_header(input_schema) is not None:
        return None
    minimal: dict[str, Any] = {"type": "object", "properties": {}}
    names = set()
    for path, token in x_mcp_header_map(input_schema).items():
        node, out = input_schema, minimal
        for key in path:
            node = node["properties"][key]
            out = out["properties"].setdefault(key, {"type": "object", "properties": {}})
        out.clear()
        out.update({"type": node.get("type"), "x-mcp-header": token})
        names.add(PARAM_PREFIX + token.lower())
    return ToolHeaders(minimal, frozenset(names))


class ParamHeaderMaps:
    """Per server (scope), the tools' header maps from the latest ``tools/list`` passed; bounded in entries and
    bytes (the oldest learned go first), one dictionary lookup per call."""

    def __init__(self, max_tools: int = 20_000, max_bytes: int = 8 << 20) -> None:
        self.max_tools, self.max_bytes = max_tools, max_bytes
        self.bytes = 0
        self._tools: OrderedDict[tuple[str, str], ToolHeaders | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tools)

    def learn(self, scope: str, result: Any) -> None:
        """Remember the maps of the tools a ``tools/list`` result lists (a page replaces only its own tools)."""
        tools = result.get("tools") if isinstance(result, dict) else None
        for tool in tools if isinstance(tools, list) else []:
            name = tool.get("name") if isinstance(tool, dict) else None
            if isinstance(name, str):
                self._put((scope, name), tool_headers(tool.get("inputSchema")))

    def get(self, scope: str, tool: str) -> ToolHeaders | None:
        """The tool's map, or None when unknown (never listed, evicted) or invalid."""
        return self._tools.get((scope, tool))

    def _put(self, key: tuple[str, str], value: ToolHeaders | None) -> None:
        if key in self._tools:
            self.bytes -= _size(key, self._tools.pop(key))
        size = _size(key, value)
        if size > self.max_bytes:
            return
        self._tools[key] = value
        self.bytes += size
        while len(self._tools) > self.max_tools or self.bytes > self.max_bytes:
            k, v = self._tools.popitem(last=False)
            self.bytes -= _size(k, v)


def _size(key: tuple[str, str], value: ToolHeaders | None) -> int:
    return len(key[0]) + len(key[1]) + (value.size if value is not None else 16)
