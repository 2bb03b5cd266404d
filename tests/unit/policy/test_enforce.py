"""Whole-body enforcement helpers: call descriptions recorded with the server's redactions applied."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from extproc.exchange.decide import describe
from extproc.mcp.jsonrpc import McpCall
from extproc.policy.enforce import redact_text
from extproc.policy.engine import describe_call
from extproc.policy.loader import load_policy

POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: read
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [files], resources: ["https://**"]}
recording:
  - servers: [files]
    defaults: true
    redact: [{name: url-key, pattern: 'api_key=(?P<value>[A-Za-z0-9]+)'}]
"""


def test_a_secret_in_a_resource_uri_is_redacted_from_the_call_description(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICY)
    policy = load_policy(tmp_path, {"files"})
    call = McpCall("resources/read", id=1, uri="https://api.example/export?api_key=SECRETKEY123456")

    text = redact_text(policy, "files", describe_call("files", call))

    assert "SECRETKEY123456" not in text
    assert "[REDACTED:" in text and text.startswith("resources/read")  # a built-in rule may win


def test_a_call_description_follows_the_policy_it_is_described_under(tmp_path: Path) -> None:
    """Descriptions are memoized per policy snapshot (exchange/decide.py): a reload with another redaction rule
    is applied to the very next description, and the old snapshot's answer is not reused."""
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    (old_dir / "p.yaml").write_text(POLICY.replace("api_key=", "qa="))
    (new_dir / "p.yaml").write_text(POLICY.replace("api_key=", "qb="))
    old, new = load_policy(old_dir, {"files"}), load_policy(new_dir, {"files"})
    keyed = McpCall("resources/read", id=1, uri="https://api.example/x?qa=SECRETKEY123456")
    token = McpCall("resources/read", id=2, uri="https://api.example/x?qb=OTHERSECRET9876")

    first = [describe(old, "files", keyed), describe(old, "files", token)]
    again = [describe(old, "files", keyed), describe(new, "files", keyed), describe(new, "files", token)]

    assert first == [redact_text(old, "files", describe_call("files", c)) for c in (keyed, token)]
    assert "SECRETKEY123456" not in first[0] and "OTHERSECRET9876" in first[1]
    assert again[0] == first[0]
    assert again[1:] == [redact_text(new, "files", describe_call("files", c)) for c in (keyed, token)]
    assert "SECRETKEY123456" in again[1] and "OTHERSECRET9876" not in again[2]
    assert describe(None, "files", keyed) == describe_call("files", keyed)


LISTS = """
apiVersion: mcp-extproc/v1
rules:
  - name: echo-only
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [echo]}
"""


def _listing(tmp_path: Path):  # type: ignore[no-untyped-def]
    from extproc.authn.principal import Principal

    (tmp_path / "p.yaml").write_text(LISTS)
    return load_policy(tmp_path, {"demo"}), Principal(issuer="i", subject="a", username="a")


def test_a_batch_inside_sse_data_is_filtered_too(tmp_path: Path) -> None:
    import json

    from extproc.policy.enforce import filter_body

    policy, who = _listing(tmp_path)
    batch = [{"jsonrpc": "2.0", "id": 5, "result": {"tools": [{"name": "echo"}, {"name": "delete_repo"}]}}]
    body = f"event: message\ndata: {json.dumps(batch)}\n\n".encode()

    out, hidden = filter_body(policy, who, "demo", {"5": "tools/list"}, body, sse=True)

    assert b"delete_repo" not in out and b'"echo"' in out
    assert hidden == [("tools/list", 5, ["delete_repo"])]


def test_a_list_result_that_is_not_an_object_passes_without_crashing(tmp_path: Path) -> None:
    from extproc.policy.enforce import filter_body

    policy, who = _listing(tmp_path)
    body = b'{"jsonrpc":"2.0","id":5,"result":"odd"}'
    assert filter_body(policy, who, "demo", {"5": "tools/list"}, body, sse=False) == (body, [])


def _tools_event(msg_id: int, *names: str) -> str:
    import json

    return "data: " + json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": {"tools": [{"name": n} for n in names]}})


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(("id: 1\r" + _tools_event(5, "echo", "delete_repo") + "\r\r").encode(), id="bare-cr-last-event"),
        pytest.param((_tools_event(5, "echo", "delete_repo") + "\r\n\r").encode(), id="crlf-then-final-cr"),
        pytest.param(("\ufeff" + _tools_event(5, "echo", "delete_repo") + "\r\r").encode(), id="bom-and-cr"),
    ],
)
def test_sse_list_events_ended_by_a_final_bare_cr_are_filtered(tmp_path: Path, body: bytes) -> None:
    from extproc.policy.enforce import filter_body

    policy, who = _listing(tmp_path)

    out, hidden = filter_body(policy, who, "demo", {"5": "tools/list"}, body, sse=True)

    assert b"delete_repo" not in out and b'"echo"' in out
    assert hidden == [("tools/list", 5, ["delete_repo"])]


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(_tools_event(6, "delete_repo"), id="unterminated-event"),
        pytest.param(_tools_event(6, "delete_repo") + "\n", id="event-without-blank-line"),
        pytest.param("data: not json delete_repo\n\n", id="non-json-event"),
        pytest.param("DATA: " + _tools_event(6, "delete_repo")[6:] + "\n\n", id="field-a-lenient-client-might-read"),
    ],
)
def test_a_filtered_sse_body_holds_only_what_the_filter_understood(tmp_path: Path, tail: str) -> None:
    from extproc.mcp.sse import SseParser
    from extproc.policy.enforce import filter_body

    policy, who = _listing(tmp_path)
    body = (": keepalive\nretry: 300\n\nid: 4\ndata:\n\n" + _tools_event(5, "echo") + "\n\n" + tail).encode()

    out, _ = filter_body(policy, who, "demo", {"5": "tools/list", "6": "tools/list"}, body, sse=True)

    assert b"delete_repo" not in out
    parser = SseParser()
    events = parser.feed(out)
    assert parser.finish() == ([], b"")  # ends cleanly: nothing half-written
    assert [(e.data[:20], e.id, e.retry) for e in events] == [
        ("", None, 300),
        ("", "4", None),
        ('{"jsonrpc":"2.0","id', None, None),
    ]


def test_a_json_list_behind_a_bom_is_filtered(tmp_path: Path) -> None:
    from extproc.policy.enforce import filter_body

    policy, who = _listing(tmp_path)
    body = b"\xef\xbb\xbf" + _tools_event(5, "echo", "delete_repo").removeprefix("data: ").encode()

    out, hidden = filter_body(policy, who, "demo", {"5": "tools/list"}, body, sse=False)

    assert b"delete_repo" not in out and b'"echo"' in out
    assert hidden == [("tools/list", 5, ["delete_repo"])]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"delete_repo"},]},}', id="trailing-commas"),
        pytest.param(b"{'jsonrpc':'2.0','id':5,'result':{'tools':[{'name':'delete_repo'}]}}", id="single-quotes"),
        pytest.param(b"[" * 100_000, id="too-deep"),
        pytest.param(b'{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"delete_repo","x":NaN}]}}', id="nan"),
        pytest.param(b'{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"delete_repo"}],"n":-Infinity}}', id="-inf"),
    ],
)
def test_a_json_list_the_filter_cannot_read_is_withheld(tmp_path: Path, body: bytes) -> None:
    import json

    from extproc.policy.enforce import filter_body

    policy, who = _listing(tmp_path)

    out, _ = filter_body(policy, who, "demo", {"5": "tools/list"}, body, sse=False)

    assert b"delete_repo" not in out
    doc = json.loads(out)
    assert doc["id"] == 5 and doc["error"]["code"] == -32603


class _CountingJson:
    """The json module as enforce.py sees it, counting whole bodies written by json.dumps (ensure_ascii=False)."""

    def __init__(self) -> None:
        self.bodies = 0

    def dumps(self, obj: object, **kw: Any) -> str:
        if kw.get("ensure_ascii") is False:
            self.bodies += 1
        return json.dumps(obj, **kw)

    loads = staticmethod(json.loads)


@pytest.mark.parametrize("sse", [False, True], ids=["json", "sse"])
def test_a_filtered_list_is_written_by_orjson_and_what_it_cannot_write_by_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sse: bool
) -> None:
    # json.dumps took ~3.3 ms of the ~10 ms a 500-tool list spent in the filter; orjson writes it in ~0.6 ms. An
    # integer beyond 64 bits (which the parser keeps exact) still goes out exactly, through json.dumps.
    from extproc.policy import enforce

    counting = _CountingJson()
    monkeypatch.setattr(enforce, "json", counting)
    policy, who = _listing(tmp_path)
    tools = [{"name": "echo", "description": 'd\u00e9j\u00e0 "q" \\ \n \x1f \u2028', "x": 1.5}, {"name": "delete_repo"}]
    for big, written_by_json in ((7, 0), (2**70, 1)):
        msg = {"jsonrpc": "2.0", "id": 5, "result": {"tools": tools, "big": big}}
        body = (f"data: {json.dumps(msg)}\n\n" if sse else json.dumps(msg)).encode()
        out, hidden = enforce.filter_body(policy, who, "demo", {"5": "tools/list"}, body, sse=sse)
        data = out.decode().removeprefix("data: ").strip() if sse else out.decode()
        assert json.loads(data) == {**msg, "result": {"tools": tools[:1], "big": big}}
        assert hidden == [("tools/list", 5, ["delete_repo"])]
        assert counting.bodies == written_by_json
