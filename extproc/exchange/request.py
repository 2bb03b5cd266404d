"""The request side of an exchange, as plain functions the phases call (phases.py): what is recorded of the
request (its start, its body), who sent it from where, which requests await an answer, and the recorded run a
stateless (2026-07-28) request belongs to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.admission import Admitted
from extproc.authn.principal import Principal
from extproc.envoy import responses
from extproc.envoy.headers import recordable
from extproc.gateway import Gateway
from extproc.mcp.jsonrpc import ParsedBody, id_text, is_request
from extproc.mcp.methods import INPUT_REQUIRED
from extproc.mcp.protocol import run_key
from extproc.mcp.request_state import RequestState
from extproc.policy.capture import Capture
from extproc.policy.compiled import CompiledPolicy
from extproc.policy.enforce import record_redactor
from extproc.recording.events import ExchangeStart, McpRequest
from extproc.recording.pieces import payload_for_record
from extproc.reserved import server_unit

Seal = Callable[[dict[str, Any]], dict[str, Any]]


def public_document(gw: Gateway, path: str) -> ep.ProcessingResponse | None:
    """RFC 9728 metadata, and the public keys of the gateway's identity assertions: answered by the gateway."""
    opts = gw.options
    if opts.metadata and path.split("?", 1)[0] == opts.metadata_path:
        return responses.json_reply(200, dict(opts.metadata))
    if gw.upstream is not None and gw.upstream.serves_jwks(path):
        return responses.json_reply(200, gw.upstream.jwks)
    return None


def recordable_headers(
    policy: CompiledPolicy | None, server: str, headers: Mapping[str, str], capture: Capture
) -> tuple[dict[str, str], list[str], list[dict[str, Any]]]:
    """Headers as recorded at ``capture``'s level: credentials always left out; no redaction rule at ``full``;
    protocol headers only (others shaped or dropped) at ``shape`` and ``metadata``."""
    redactor = None if capture.level == "full" else record_redactor(policy, server)
    kept, dropped, found = recordable(dict(headers), redactor)
    return capture.headers(kept), dropped, found


def start_event(
    policy: CompiledPolicy | None, admission: Admitted, headers: dict[str, str], client: str, capture: Capture
) -> ExchangeStart:
    """exchange.start: who, where, and the request's headers as ``capture`` (the server's header level) keeps them."""
    kept, dropped, found = recordable_headers(policy, admission.server.name, headers, capture)
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
        capture=capture.level,
    )


def request_capture(policy: CompiledPolicy | None, server: str, parsed: ParsedBody, salt: bytes) -> Capture | None:
    """A per-tool capture level for the call's bodies, both ways (None: the server's level stays)."""
    tools = [str(m["params"].get("name")) for m in parsed.messages if _calls_tool(m)]
    return Capture(policy.capture(server, tools), salt) if policy is not None and tools else None


def request_event(
    policy: CompiledPolicy | None, server: str, parsed: ParsedBody, body: bytes, capture: Capture
) -> McpRequest:
    """mcp.request: the body's messages as ``capture`` keeps them (redacted by default; the raw body too, unless
    a redaction hit it)."""
    messages, fields, redactions = payload_for_record(policy, server, capture, list(parsed.messages), body)
    return McpRequest(
        messages=messages, batch=parsed.batch, error=parsed.error, body=fields, size=len(body), redactions=redactions
    )


def _calls_tool(m: dict[str, Any]) -> bool:
    return m.get("method") == "tools/call" and isinstance(m.get("params"), dict) and "name" in m["params"]


def request_ids(parsed: ParsedBody) -> tuple[list[Any], set[str]]:
    """Every message id of the body (to pair responses), and the JSON ids of requests still without a response."""
    ids = [m.get("id") for m in parsed.messages if "id" in m]
    awaiting = {id_text(m["id"]) for m in parsed.messages if "id" in m and is_request(m)}
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
