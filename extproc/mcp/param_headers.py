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
    """Per server (scope), the tools' header maps from the latest ``tools/list`` passed, one dictionary lookup per
    call. Bounded per server in tools and bytes (its oldest learned tools go first, so one server's huge list
    cannot push out another's), and in servers (the least recently listed goes first)."""

    def __init__(self, max_tools: int = 5_000, max_bytes: int = 1 << 20, max_servers: int = 64) -> None:
        self.max_tools, self.max_bytes, self.max_servers = max_tools, max_bytes, max_servers
        self._servers: OrderedDict[str, _ServerMaps] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(m.tools) for m in self._servers.values())

    @property
    def bytes(self) -> int:
        return sum(m.bytes for m in self._servers.values())

    def learn(self, scope: str, result: Any) -> None:
        """Remember the maps of the tools a ``tools/list`` result lists (a page replaces only its own tools)."""
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(tools, list):
            return
        maps = self._servers.pop(scope, None) or _ServerMaps()
        self._servers[scope] = maps  # most recently listed last
        while len(self._servers) > self.max_servers:
            self._servers.popitem(last=False)
        for tool in tools:
            name = tool.get("name") if isinstance(tool, dict) else None
            if isinstance(name, str):
                maps.put(name, tool_headers(tool.get("inputSchema")), self.max_tools, self.max_bytes)

    def get(self, scope: str, tool: str) -> ToolHeaders | None:
        """The tool's map, or None when unknown (never listed, evicted) or invalid."""
        maps = self._servers.get(scope)
        return maps.tools.get(tool) if maps is not None else None


class _ServerMaps:
    __slots__ = ("bytes", "tools")

    def __init__(self) -> None:
        self.tools: OrderedDict[str, ToolHeaders | None] = OrderedDict()
        self.bytes = 0

    def put(self, name: str, value: ToolHeaders | None, max_tools: int, max_bytes: int) -> None:
        if name in self.tools:
            self.bytes -= _size(name, self.tools.pop(name))
        size = _size(name, value)
        if size > max_bytes:
            return
        self.tools[name] = value
        self.bytes += size
        while len(self.tools) > max_tools or self.bytes > max_bytes:
            k, v = self.tools.popitem(last=False)
            self.bytes -= _size(k, v)


def _size(name: str, value: ToolHeaders | None) -> int:
    return len(name) + (value.size if value is not None else 16)
