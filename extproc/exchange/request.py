"""The request side of an exchange, as plain functions the phases call (phases.py): what is recorded of the
request (its start, its body), who sent it from where, which requests await an answer, and the recorded run a
stateless (2026-07-28) request belongs to.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.admission import Admitted
from extproc.authn.principal import Principal
from extproc.envoy import responses
from extproc.envoy.headers import recordable
from extproc.gateway import Gateway
from extproc.mcp.jsonrpc import ParsedBody, is_request
from extproc.mcp.methods import INPUT_REQUIRED
from extproc.mcp.protocol import run_key
from extproc.mcp.request_state import RequestState
from extproc.policy.compiled import CompiledPolicy
from extproc.policy.enforce import record_redactor, redact_for_record
from extproc.recording.events import ExchangeStart, McpRequest, body_fields, server_unit

Seal = Callable[[dict[str, Any]], dict[str, Any]]


def public_document(gw: Gateway, path: str) -> ep.ProcessingResponse | None:
    """RFC 9728 metadata, and the public keys of the gateway's identity assertions: answered by the gateway."""
    opts = gw.options
    if opts.metadata and path.split("?", 1)[0] == opts.metadata_path:
        return responses.json_reply(200, dict(opts.metadata))
    if gw.upstream is not None and gw.upstream.serves_jwks(path):
        return responses.json_reply(200, gw.upstream.jwks)
    return None


def start_event(
    policy: CompiledPolicy | None, admission: Admitted, headers: dict[str, str], client: str
) -> ExchangeStart:
    """exchange.start: who, where, and the request's headers with credentials removed and secrets redacted."""
    kept, dropped, found = recordable(headers, record_redactor(policy, admission.server.name))
    who = admission.principal
    return ExchangeStart(
        client=client,
        server=admission.server.name,
        backend=admission.backend.name if admission.backend else "",
        method=headers.get(":method", ""),
        path=kept.get(":path", ""),
        headers=kept,
        credentials_removed=dropped,
        redactions=found,
        principal=who.to_record() if who else None,
    )


def request_event(policy: CompiledPolicy | None, server: str, parsed: ParsedBody, body: bytes) -> McpRequest:
    """mcp.request: the body's messages, redacted for the record (the raw body too, unless a redaction hit it)."""
    messages, raw, redactions = redact_for_record(policy, server, list(parsed.messages), body)
    return McpRequest(
        messages=messages,
        batch=parsed.batch,
        error=parsed.error,
        body=body_fields(raw) if raw is not None else {"raw_redacted": True},
        size=len(body),
        redactions=redactions,
    )


def request_ids(parsed: ParsedBody) -> tuple[list[Any], set[str]]:
    """Every message id of the body (to pair responses), and the JSON ids of requests still without a response."""
    ids = [m.get("id") for m in parsed.messages if "id" in m]
    awaiting = {json.dumps(m["id"]) for m in parsed.messages if "id" in m and is_request(m)}
    return ids, awaiting


def run_unit(
    gw: Gateway,
    who: Principal | None,
    client: str,
    server: str,
    headers: Mapping[str, str],
    client_info: Mapping[str, Any] | None,
) -> str:
    """The recorded run a stateless request belongs to (extproc/mcp/protocol.py RunTracker)."""
    key = run_key(
        who.issuer if who else "",
        who.subject if who else f"anonymous@{client}",
        server,
        headers.get("authorization", ""),
        client_info,
    )
    return gw.runs.unit(key, gw.clock(), headers.get("traceparent"))


def server_unit_of(admitted: Admitted | None, session: str) -> str:
    """The recording unit of a server's session: keyed by server and backend, so no upstream reaches another's."""
    server = admitted.server.name if admitted is not None else ""
    backend = admitted.backend.name if admitted is not None and admitted.backend else ""
    return server_unit(server, backend, session)


def client_address(attributes: Any, headers: Mapping[str, str]) -> str:
    """The downstream address Envoy saw (ext_proc attribute), else the last X-Forwarded-For hop."""
    if attributes is not None:
        struct = attributes.get("envoy.filters.http.ext_proc")
        if struct is not None and "source.address" in struct.fields:
            address: str = struct.fields["source.address"].string_value  # protobuf Struct (untyped generated code)
            return address
    xff = headers.get("x-forwarded-for", "")
    return xff.rsplit(",", 1)[-1].strip()


def open_state(key: bytes, who: Principal, scope: str, message: dict[str, Any]) -> tuple[Seal | None, bytes | None]:
    """Multi-round-trip request state (2026-07-28, mcp/request_state.py) of a stateless call by a known identity:
    a retry's sealed state is opened (the body to forward when it changed, else None), and a call whose result
    may ask for input gets that state sealed to this caller (the sealer, else None)."""
    state = RequestState(who, scope, key)
    seal = state.seal if message.get("method") in INPUT_REQUIRED else None
    return seal, state.open(message)
