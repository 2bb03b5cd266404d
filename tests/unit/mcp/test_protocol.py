"""Header/body consistency of MCP requests (the spec's ladder) and the recording unit of stateless traffic."""

from __future__ import annotations

from typing import Any

import pytest

from extproc.errors import HeaderMismatch, InvalidEnvelope, RemovedMethod
from extproc.mcp.methods import removed_in
from extproc.mcp.protocol import RunTracker, check_headers, run_key

V = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": V,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "agent", "version": "1"},
}


def _call(name: str = "echo", args: dict[str, Any] | None = None, meta: dict | None = META) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": args or {"text": "hi"}}
    if meta is not None:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}


def _modern(**extra: str) -> dict[str, str]:
    return {"mcp-protocol-version": V, "mcp-method": "tools/call", "mcp-name": "echo", **extra}


def _check(headers: dict[str, str], message: dict, names: list[str] | None = None, batch: bool = False):
    return check_headers(names if names is not None else list(headers), headers, [message], batch)


def test_consistent_modern_request_passes() -> None:
    rev = _check(_modern(), _call())
    assert rev.stateless and rev.revision == V
    assert rev.client_info == {"name": "agent", "version": "1"}


@pytest.mark.parametrize(
    ("headers", "message", "error"),
    [
        pytest.param(_modern(**{"mcp-method": "tools/list"}), _call(), HeaderMismatch, id="method"),
        pytest.param(_modern(**{"mcp-name": "add"}), _call(), HeaderMismatch, id="name"),
        pytest.param({k: v for k, v in _modern().items() if k != "mcp-name"}, _call(), HeaderMismatch, id="no-name"),
        pytest.param(_modern(**{"mcp-protocol-version": "2026-12-31"}), _call(), HeaderMismatch, id="version"),
        pytest.param(_modern(), _call(meta=None), InvalidEnvelope, id="missing-meta"),
        pytest.param(
            _modern(),
            _call(meta={"io.modelcontextprotocol/protocolVersion": V}),
            InvalidEnvelope,
            id="meta-without-capabilities",
        ),
        pytest.param(_modern(**{"mcp-param-text": "bye"}), _call(), HeaderMismatch, id="param-value"),
        pytest.param(
            {"mcp-protocol-version": V, "mcp-method": "tools/list", "mcp-name": "x"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": META}},
            HeaderMismatch,
            id="name-on-unnamed-method",
        ),
        pytest.param(
            {"mcp-protocol-version": V, "mcp-method": "tools/list", "mcp-param-x": "1"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": META}},
            HeaderMismatch,
            id="param-on-list",
        ),
        pytest.param(
            {"mcp-protocol-version": "2025-11-25", "mcp-method": "tools/list"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo"}},
            HeaderMismatch,
            id="wrong-method-on-2025",
        ),
        pytest.param(
            {"mcp-protocol-version": "2025-11-25", "mcp-method": "tools/call", "mcp-name": "add"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo"}},
            HeaderMismatch,
            id="wrong-name-on-2025",
        ),
    ],
)
def test_mismatches_are_refused(headers: dict[str, str], message: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        _check(headers, message)


def test_param_header_matching_an_argument_passes() -> None:
    _check(_modern(**{"mcp-param-region": "eu"}), _call(args={"text": "hi", "where": {"region": "eu"}}))
    _check(_modern(**{"mcp-param-n": "3"}), _call(args={"n": 3}))
    _check(_modern(**{"mcp-param-t": "=?base64?aMOpbGxv?="}), _call(args={"t": "héllo"}))


@pytest.mark.parametrize("header", ["mcp-method", "MCP-Name", "mcp-protocol-version", "Mcp-Param-Text"])
def test_duplicated_routing_header_is_refused(header: str) -> None:
    headers = _modern(**{"mcp-param-text": "hi"})
    with pytest.raises(HeaderMismatch, match="more than once"):
        _check(headers, _call(), names=[*headers, header])


def test_modern_batch_is_refused() -> None:
    with pytest.raises(InvalidEnvelope):
        check_headers(list(_modern()), _modern(), [_call(), _call()], True)


def test_2025_request_without_routing_headers_passes() -> None:
    rev = _check({"mcp-protocol-version": "2025-11-25"}, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert not rev.stateless


def test_2025_request_with_truthful_routing_headers_passes() -> None:
    """Clients speaking both generations send the headers on 2025 requests too; true claims pass."""
    headers = {"mcp-protocol-version": "2025-11-25", "mcp-method": "tools/call", "mcp-name": "echo"}
    _check(headers, {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}})


def test_body_envelope_and_version_header_must_agree() -> None:
    """A 2025 header over a 2026 envelope: a server reading the body would speak another protocol than decided."""
    with pytest.raises(HeaderMismatch):
        _check(_modern(**{"mcp-protocol-version": "2025-11-25"}), _call())


def test_2025_batch_with_routing_headers_is_refused() -> None:
    headers = {"mcp-method": "tools/list"}
    with pytest.raises(HeaderMismatch):
        check_headers(list(headers), headers, [{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}] * 2, True)


def test_body_meta_alone_makes_a_request_stateless() -> None:
    """A client that forgets the version header is still held to the stateless ladder (the header is required)."""
    with pytest.raises(HeaderMismatch):
        _check({}, _call())


KEY = run_key("https://idp", "alice", "demo", "Bearer t1", {"name": "agent", "version": "1"})


def test_requests_of_one_window_are_one_run() -> None:
    runs = RunTracker(window_s=60, secret=b"k" * 32)
    first = runs.unit(KEY, now=1020.0)
    assert runs.unit(KEY, now=1030.0) == first
    assert runs.unit(KEY, now=1079.9) == first  # the window [1020, 1080)
    assert runs.unit(KEY, now=1080.0) != first  # the next window: the next run
    assert first.startswith("r-") and first.endswith(f"-{1020_000:x}") and "/" not in first and "alice" not in first


def test_every_worker_and_replica_names_the_same_run() -> None:
    """No state: two trackers (two workers, two replicas) sharing the session key compute one id per run."""
    worker_1, worker_2 = RunTracker(60, b"k" * 32), RunTracker(60, b"k" * 32)
    assert worker_1.unit(KEY, 1021.0) == worker_2.unit(KEY, 1077.0)
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert worker_1.unit(KEY, 0.0, trace) == worker_2.unit(KEY, 9000.0, trace)


def test_run_ids_cannot_be_computed_without_the_session_key() -> None:
    assert RunTracker(60, b"k" * 32).unit(KEY, 1.0) != RunTracker(60, b"j" * 32).unit(KEY, 1.0)


@pytest.mark.parametrize(
    "other",
    [
        run_key("https://idp", "bob", "demo", "Bearer t1", {"name": "agent", "version": "1"}),
        run_key("https://other", "alice", "demo", "Bearer t1", {"name": "agent", "version": "1"}),
        run_key("https://idp", "alice", "beta", "Bearer t1", {"name": "agent", "version": "1"}),
        run_key("https://idp", "alice", "demo", "Bearer t2", {"name": "agent", "version": "1"}),
        run_key("https://idp", "alice", "demo", "Bearer t1", {"name": "other-agent", "version": "1"}),
    ],
    ids=["subject", "issuer", "server", "token", "client"],
)
def test_any_key_field_makes_another_run(other: tuple[str, ...]) -> None:
    runs = RunTracker(window_s=60)
    assert runs.unit(KEY, 1.0) != runs.unit(other, 1.0)


def test_traceparent_joins_across_gaps_and_splits_traces() -> None:
    runs = RunTracker(window_s=1)
    t1 = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    t2 = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    a = runs.unit(KEY, 0.0, t1)
    assert runs.unit(KEY, 500.0, t1) == a  # one trace, one run, whatever the gap
    assert runs.unit(KEY, 500.5, t2) != a
    assert a.endswith("4bf92f3577b34da6a3ce929d0e0e4736")
    assert runs.unit(KEY, 0.0, "garbage") == runs.unit(KEY, 0.1, None)  # an invalid traceparent is ignored


@pytest.mark.parametrize("method", ["resources/subscribe", "initialize", "ping", "logging/setLevel"])
def test_methods_the_revision_removed_are_not_found(method: str) -> None:
    message = {"jsonrpc": "2.0", "id": 3, "method": method, "params": {"uri": "x", "_meta": META}}
    with pytest.raises(RemovedMethod) as e:
        _check({"mcp-protocol-version": V, "mcp-method": method}, message)
    assert (e.value.status, e.value.jsonrpc_code) == (404, -32601)


def test_removed_methods_are_named_per_revision() -> None:
    assert removed_in("2026-07-28") >= {"initialize", "ping", "resources/subscribe", "resources/unsubscribe"}
    assert "tools/call" not in removed_in("2026-07-28")
    assert removed_in("2025-11-25") == frozenset()


# --- odd shapes: every one is a client error (400), never a crash (500) -----------------------------------------

_ODD_PARAMS: list[Any] = [[1], [], "x", 5, 1.5, True, None]
_ODD_ARGUMENTS: list[Any] = [["hi"], "hi", 7, None, True]


def _odd(params: Any = "absent", arguments: Any = "absent", meta: bool = True, method: Any = "tools/call") -> dict:
    m: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params != "absent":
        m["params"] = params
    elif arguments != "absent":
        m["params"] = {"name": "echo", "arguments": arguments, **({"_meta": META} if meta else {})}
    return m


@pytest.mark.parametrize("modern", [True, False], ids=["2026", "2025"])
@pytest.mark.parametrize(
    "header",
    [
        pytest.param({"mcp-param-x": "1"}, id="param"),
        pytest.param({"mcp-name": "echo"}, id="name"),
        pytest.param({"mcp-method": "tools/call"}, id="method"),
    ],
)
@pytest.mark.parametrize(
    "message",
    [pytest.param(_odd(params=p), id=f"params-{type(p).__name__}-{p!r}") for p in _ODD_PARAMS]
    + [pytest.param(_odd(params="absent"), id="params-absent")]
    + [pytest.param(_odd(arguments=a), id=f"arguments-{type(a).__name__}-{a!r}") for a in _ODD_ARGUMENTS]
    + [pytest.param(_odd(params={"name": ["echo"], "arguments": {}, "_meta": META}), id="name-a-list")]
    + [pytest.param(_odd(params={"name": "echo", "_meta": "x"}), id="meta-a-string")]
    + [pytest.param(_odd(params={"name": "echo", "_meta": [META]}), id="meta-a-list")],
)
def test_odd_shapes_are_client_errors(message: dict, header: dict[str, str], modern: bool) -> None:
    headers = {"mcp-protocol-version": V, **header} if modern else header
    try:
        _check(headers, message)
    except (HeaderMismatch, InvalidEnvelope) as e:
        assert e.status == 400
