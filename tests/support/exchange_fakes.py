"""Fakes behind the exchange's ports (authenticator, policy source, event sink) and ext_proc message builders, for
unit tests of the exchange and the stream loop without gRPC or Envoy."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.authn.errors import MissingToken
from extproc.authn.principal import Principal
from extproc.gateway import Gateway
from extproc.policy.compiled import CompiledPolicy
from extproc.policy.loader import load_policy
from extproc.recording.events import Event
from extproc.routing import Router
from extproc.runtime import ExchangeOptions
from extproc.settings import parse

KEY = b"k" * 32
SCOPE = "demo/"  # a static server's one backend: session ids are bound to server and backend
ALICE = Principal(issuer="https://idp", subject="alice", username="alice", groups=("eng",))
POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: basics
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: [initialize, "notifications/*", tools/list]}
  - name: echo
    effect: allow
    subjects: {groups: [eng]}
    targets: {servers: [demo], tools: [echo]}
"""


class FakeAuth:
    """Bearer 'alice' is alice; anything else has no token."""

    async def authenticate(self, authorization: str | None) -> Principal:
        if authorization == "Bearer alice":
            return ALICE
        raise MissingToken()


@dataclass
class FakePolicy:
    current: CompiledPolicy


@dataclass
class FakeSink:
    """Collects events; ``takes`` False makes every emit fail (a full queue)."""

    accepting: bool = True
    takes: bool = True
    events: list[Event] = field(default_factory=list)
    commits: list[int] = field(default_factory=list)  # len(events) at each commit point
    write_error: Exception | None = None  # raised at a commit point (a failing spool)

    def emit(self, event: Event) -> bool:
        if self.takes:
            self.events.append(event)
        return self.takes

    async def written(self) -> None:
        self.commits.append(len(self.events))
        if self.write_error is not None:
            raise self.write_error

    def types(self) -> list[str]:
        return [e.type for e in self.events]


def load_fake_policy(directory: Path) -> FakePolicy:
    (directory / "p.yaml").write_text(POLICY)
    return FakePolicy(load_policy(directory, {"demo"}))


def _gateway(sink: FakeSink, policy: FakePolicy | None, auth: bool = True, required: bool = True) -> Gateway:
    settings = parse({"servers": [{"name": "demo", "upstream": "127.0.0.1:9"}], "allow_anonymous": True})
    ids = iter(f"ex{i}" for i in range(1, 100))
    return Gateway(
        options=ExchangeOptions(required=required, max_event_body_bytes=2048, session_key=KEY),
        sink=sink,
        router=Router(settings),
        auth=FakeAuth() if auth else None,
        policy=policy,
        clock=lambda: 1000.0,
        new_id=lambda: next(ids),
    )


def _headers(values: dict[str, str], end: bool = False) -> ep.HttpHeaders:
    pairs = [base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()]
    return ep.HttpHeaders(headers=base_pb2.HeaderMap(headers=pairs), end_of_stream=end)


def _request(token: str | None = "alice", session: str | None = None, method: str = "POST") -> ep.HttpHeaders:
    h = {":method": method, ":path": "/demo/mcp", ":authority": "gw", "content-type": "application/json"}
    if token:
        h["authorization"] = f"Bearer {token}"
    if session:
        h["mcp-session-id"] = session
    return _headers(h)


def _body(doc: Any, end: bool = True) -> ep.HttpBody:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return ep.HttpBody(body=data, end_of_stream=end)


def _call(tool: str, msg_id: int = 1, **args: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": {"name": tool, "arguments": args}}


def _status(reply: ep.ProcessingResponse) -> int | None:
    return reply.immediate_response.status.code if reply.HasField("immediate_response") else None
