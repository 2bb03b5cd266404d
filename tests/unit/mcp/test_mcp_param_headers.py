"""Mcp-Param-* headers against the x-mcp-header map a tools/list result declares (2026-07-28, SEP-2243)."""

from __future__ import annotations

from typing import Any

import pytest

from extproc.errors import HeaderMismatch
from extproc.mcp.param_headers import ParamHeaderMaps, tool_headers
from extproc.mcp.protocol import check_headers

V = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": V, "io.modelcontextprotocol/clientCapabilities": {}}
SCHEMA = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "limit": {"type": "integer", "x-mcp-header": "Limit"},
        "opts": {"type": "object", "properties": {"dry": {"type": "boolean", "x-mcp-header": "Dry"}}},
        "text": {"type": "string", "description": "x" * 1000},
    },
}
LISTED = {"tools": [{"name": "route", "inputSchema": SCHEMA}, {"name": "plain", "inputSchema": {"type": "object"}}]}


def _call(tool: str, args: Any, modern: bool = True) -> dict[str, Any]:
    params = {"name": tool, "arguments": args, **({"_meta": META} if modern else {})}
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}


def _check(tool: str, args: Any, modern: bool = True, **params: str) -> None:
    maps = ParamHeaderMaps()
    maps.learn("demo", LISTED)
    headers = {"mcp-method": "tools/call", "mcp-name": tool, **{f"mcp-param-{k}": v for k, v in params.items()}}
    if modern:
        headers["mcp-protocol-version"] = V
    check_headers(list(headers), headers, [_call(tool, args, modern)], False, lambda name: maps.get("demo", name))


@pytest.mark.parametrize(
    ("args", "params"),
    [
        pytest.param({"region": "eu", "limit": 5, "text": "t"}, {"region": "eu", "limit": "5"}, id="all-present"),
        pytest.param({"region": "eu", "limit": 5.0}, {"region": "eu", "limit": "5"}, id="integer-numerically"),
        pytest.param({"region": "é"}, {"region": "=?base64?w6k=?="}, id="base64-sentinel"),
        pytest.param({"region": "eu", "opts": {"dry": True}}, {"region": "eu", "dry": "true"}, id="nested"),
        pytest.param({"region": None, "text": "t"}, {}, id="null-needs-no-header"),
        pytest.param({"text": "t"}, {}, id="absent-needs-no-header"),
    ],
)
def test_headers_that_mirror_the_declared_arguments_pass(args: dict, params: dict[str, str]) -> None:
    _check("route", args, **params)


@pytest.mark.parametrize(
    ("tool", "args", "params", "why"),
    [
        pytest.param("route", {"region": "eu"}, {}, "missing", id="declared-header-missing"),
        pytest.param("route", {"region": "eu"}, {"region": "us"}, "does not match", id="different-value"),
        pytest.param("route", {"region": "eu"}, {"region": "eu", "zone": "eu"}, "not declared", id="undeclared"),
        pytest.param("route", {"text": "eu"}, {"region": "eu"}, "absent", id="header-without-argument"),
        pytest.param(
            "route", {"region": "eu", "limit": 5}, {"region": "eu", "limit": "5.5"}, "does not match", id="not-integer"
        ),
        pytest.param("plain", {"a": "1"}, {"a": "1"}, "not declared", id="tool-declares-none"),
        pytest.param("route", ["eu"], {"region": "eu"}, "absent", id="arguments-a-list"),
    ],
)
def test_headers_that_disagree_with_the_map_are_refused(tool: str, args: Any, params: dict, why: str) -> None:
    with pytest.raises(HeaderMismatch, match=why):
        _check(tool, args, **params)


def test_a_2025_request_without_param_headers_is_not_held_to_the_map() -> None:
    _check("route", {"region": "eu"}, modern=False)  # 2025 clients never mirror arguments
    with pytest.raises(HeaderMismatch, match="missing"):
        _check("route", {"region": "eu", "limit": 1}, modern=False, region="eu")  # opted in: all of them


def test_an_unlisted_tool_falls_back_to_the_argument_check() -> None:
    _check("unlisted", {"a": "x"}, a="x")
    with pytest.raises(HeaderMismatch, match="does not match any argument"):
        _check("unlisted", {"a": "x"}, a="y")


def test_invalid_annotations_are_not_enforced() -> None:
    bad = {"type": "object", "properties": {"xs": {"type": "array", "x-mcp-header": "Xs"}}}
    assert tool_headers(bad) is None
    assert tool_headers({"type": "object", "properties": {"a": {"type": "string"}}}).names == frozenset()


def test_the_remembered_maps_are_bounded_per_server_in_count_and_bytes_and_in_servers() -> None:
    maps = ParamHeaderMaps(max_tools=3, max_bytes=10_000, max_servers=2)
    for i in range(10):
        maps.learn("demo", {"tools": [{"name": f"t{i}", "inputSchema": SCHEMA}]})
    assert len(maps) == 3 and maps.get("demo", "t9") is not None and maps.get("demo", "t0") is None

    one = tool_headers(SCHEMA)
    assert one is not None
    small = ParamHeaderMaps(max_tools=1000, max_bytes=3 * (one.size + 10), max_servers=2)
    small.learn("quiet", LISTED)
    small.learn("noisy", {"tools": [{"name": f"t{i:03}", "inputSchema": SCHEMA} for i in range(500)]})
    assert small.get("quiet", "route") is not None  # one server's huge list never pushes out another's
    assert small.get("noisy", "t499") is not None and small.get("noisy", "t000") is None
    assert len(small) <= 2 + 3 and small.bytes <= 2 * 3 * (one.size + 10)
    small.learn("third", LISTED)
    assert small.get("quiet", "route") is None and small.get("third", "route") is not None  # least recent server


def test_the_latest_listing_replaces_a_tools_map() -> None:
    maps = ParamHeaderMaps()
    maps.learn("demo", LISTED)
    before = maps.bytes
    maps.learn("demo", {"tools": [{"name": "route", "inputSchema": {"type": "object"}}]})
    assert maps.get("demo", "route").names == frozenset() and maps.bytes < before
    maps.learn("other", {"tools": "not a list"})
    maps.learn("other", [1, 2])
    assert maps.get("other", "route") is None
