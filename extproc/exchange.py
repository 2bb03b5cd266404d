"""One HTTP exchange = one ext_proc stream: a method per phase, owning all state of the exchange.

Flow per phase: request headers (route, admit) -> request body (parse JSON-RPC, record) ->
response headers (learn the session, pick the body parser) -> response body chunks (record each) -> end.
Events before the MCP session is known (an initialize request) are held and written once the server
names the session in its response headers.
"""

from __future__ import annotations

import json
import logging
from hashlib import sha256
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.authn.challenge import www_authenticate
from extproc.authn.principal import Principal
from extproc.authn.session_binding import bind, unbind
from extproc.authn.verify import identity_headers
from extproc.envoy import responses
from extproc.envoy.headers import recordable, recordable_path, to_dict
from extproc.errors import (
    AuthError,
    GatewayError,
    InvalidRequest,
    NotFound,
    PolicyDenied,
    SessionNotYours,
    StoreError,
)
from extproc.gateway import Gateway
from extproc.mcp.jsonrpc import McpCall, error_response, is_request, parse_body
from extproc.mcp.sse import SseParser
from extproc.policy.compiled import CompiledPolicy
from extproc.policy.enforce import authorize, filter_body, redact_for_record, redact_text
from extproc.policy.engine import describe_call
from extproc.recording.events import (
    Event,
    ExchangeEnd,
    ExchangeStart,
    ListFiltered,
    McpRequest,
    McpResponse,
    PolicyDecision,
    ResponseChunk,
    ResponseStart,
    body_fields,
    is_synthetic_session,
    synthetic_session_id,
)
from extproc.recording.exchange_log import ExchangeLog
from extproc.settings import Server

log = logging.getLogger(__name__)

SESSION_HEADER = "mcp-session-id"
# Never forwarded as the client sent them: the token stays at the gateway (no token passthrough, per the MCP
# spec) and identity headers are only ever set by the gateway itself.
UPSTREAM_REMOVE = ("authorization", "x-mcp-user", "x-mcp-groups")


class Exchange:
    """State and handlers for one request/response pair."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.id = gw.new_id()
        self.started = gw.clock()
        # Who and where, set when the request headers are admitted.
        self.server: Server | None = None
        self.principal: Principal | None = None
        self.policy: CompiledPolicy | None = None  # one snapshot per exchange: a reload never splits a decision
        self.session: str | None = None  # the MCP server's session id (None until known)
        # Progress.
        self.recording = False
        self.finished = False
        self.ends_session = False  # a DELETE, or the server answered 404 for the session (it no longer knows it)
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.request_ids: list[Any] = []
        # Internals of recording and filtering.
        self.record_log = ExchangeLog(gw.recorder, self.id, gw.clock, gw.settings.recording.required)
        self._awaiting: set[str] = set()  # ids of requests in the body still without a response
        self._lists: dict[str, str] = {}  # list requests whose responses are filtered
        self._filtering = False
        self._withhold = False  # an oversized JSON body under a policy: its chunks are hashed, not stored
        self._sse: SseParser | None = None
        self._json: bytearray | None = None

    # --- phases ----------------------------------------------------------------------------------------------

    async def on_request_headers(self, msg: ep.HttpHeaders, attributes: Any = None) -> ep.ProcessingResponse:
        """Admit the request: route, authenticate, check the session's owner; record its start.

        The order is the security order: nothing is recorded or forwarded for an unknown path or an
        unauthenticated caller (those are logged and counted); a caller presenting someone else's session
        is refused and the refusal recorded under the caller's identity.
        """
        headers = to_dict(msg.headers)
        path = headers.get(":path", "")
        gw = self.gw
        if gw.auth is not None and path.split("?", 1)[0] == gw.metadata_path:
            self.finished = True
            return responses.json_reply(200, gw.metadata)
        try:
            self.server = gw.router.match(path)
            if self.server is None:
                raise NotFound(f"no server for path {path.split('?', 1)[0][:200]!r}")
            if gw.auth is not None:
                gw.auth.check_origin(headers.get("origin"))
                self.principal = await gw.auth.authenticate(headers.get("authorization"))
            if gw.settings.recording.required and not gw.recorder.accepting:
                raise StoreError("recorder not accepting events")
        except AuthError as e:
            challenge = {"www-authenticate": www_authenticate(e, gw.metadata_url)} if e.status == 401 else {}
            return self._refuse(e, challenge)
        except GatewayError as e:
            return self._refuse(e)

        self.recording = True
        self.ends_session = headers.get(":method") == "DELETE"
        self.policy = gw.policy.current if gw.policy is not None else None
        client_session = headers.get(SESSION_HEADER) or None
        denied: GatewayError | None = None
        if client_session is not None and self.principal is not None:
            try:
                client_session = unbind(client_session, self.principal, gw.session_key)
            except SessionNotYours as e:
                denied, client_session = e, synthetic_session_id(self.id)  # a refused exchange is a session of its own
        if client_session is not None:
            self._set_session(client_session)
        kept, dropped = recordable({**headers, ":path": recordable_path(path)})
        self._emit(
            ExchangeStart(
                client=_client_address(attributes, headers),
                server=self.server.name,
                method=headers.get(":method", ""),
                path=recordable_path(path),
                headers=kept,
                credentials_removed=dropped,
                principal=self.principal.to_record() if self.principal else None,
            )
        )
        if denied is not None:
            return self._refuse(denied)
        if msg.end_of_stream and (held := self._held_refusal()) is not None:
            return self._refuse(held)
        return responses.request_headers(self._upstream_headers(), remove=UPSTREAM_REMOVE)

    def _held_refusal(self) -> StoreError | None:
        """Events held until the server names the session (initialize, stateless servers) are not queued yet: the
        request may go upstream only if the recorder can still take them."""
        return self.record_log.held_refusal()

    def _upstream_headers(self) -> dict[str, str]:
        """What the MCP server gets instead of the caller's token: the server's own session id, maybe who."""
        out = {}
        if self.principal is not None and self.session is not None:
            out[SESSION_HEADER] = self.session
        if self.principal is not None and self.gw.settings.auth and self.gw.settings.auth.forward_identity_headers:
            out.update(identity_headers(self.principal))
        return out

    async def on_request_body(self, msg: ep.HttpBody) -> ep.ProcessingResponse:
        """Parse, record and authorize the (buffered) JSON-RPC body; allowed bodies go upstream unchanged."""
        if not self.recording:  # a body whose headers were never admitted: config drift; never let it pass
            raise RuntimeError("ext_proc request body without admitted request headers")
        body = msg.body
        self.bytes_in += len(body)
        parsed = parse_body(body, strict=True)  # what the policy decides on must be what the server reads
        self.request_ids = [m.get("id") for m in parsed.messages if "id" in m]
        self._awaiting = {json.dumps(m["id"]) for m in parsed.messages if "id" in m and is_request(m)}
        messages, raw, redactions = redact_for_record(self.policy, self._server_name, list(parsed.messages), body)
        self._emit(
            McpRequest(
                messages=messages,
                batch=parsed.batch,
                error=parsed.error,
                body=body_fields(raw) if raw is not None else {"raw_redacted": True},
                size=len(body),
                redactions=redactions,
            )
        )
        if parsed.error:  # what cannot be parsed cannot be authorized: refuse it, recorded
            return self._refuse(InvalidRequest(f"request body is not valid JSON-RPC ({parsed.error})"))
        if self.policy is None or self.principal is None:
            held = self._held_refusal()
            return self._refuse(held) if held is not None else responses.request_body()
        verdict = authorize(self.policy, self.principal, self._server_name, parsed.messages)
        decided = self.gw.metrics.decisions
        for call, d in zip(verdict.calls, verdict.decisions, strict=True):
            decided.labels(self._server_name, "true" if d.allowed else "false").inc()
            self._emit(
                PolicyDecision(
                    allowed=d.allowed,
                    rule=d.rule,
                    reason=d.reason,
                    call=self._describe(call),
                    message_id=call.id,
                )
            )
        if (denied := verdict.denied) is not None:
            call, d = denied
            err = PolicyDenied(d.rule, self._describe(call))
            if parsed.batch:  # one denied element denies the batch: every request gets the error
                errors = [
                    error_response(c.id, err.jsonrpc_code, err.safe_message) for c in verdict.calls if c.id is not None
                ]
                return self._refuse(err, doc=errors)
            return self._refuse(err)
        self._lists = verdict.lists
        if (held := self._held_refusal()) is not None:
            return self._refuse(held)
        return responses.request_body()

    def _describe(self, call: McpCall) -> str:
        """'tools/call x on server y' with the server's redactions applied: a resource URI may carry a secret."""
        text = describe_call(self._server_name, call)
        return redact_text(self.policy, self._server_name, text) if self.policy is not None else text

    @property
    def _server_name(self) -> str:
        return self.server.name if self.server else ""

    async def on_response_headers(self, msg: ep.HttpHeaders) -> ep.ProcessingResponse:
        """Learn the session (from an initialize response) and how the body is framed."""
        headers = to_dict(msg.headers)
        self.status = int(headers.get(":status", "0") or 0)
        server_session = headers.get(SESSION_HEADER)
        if self.session is None:
            self._set_session(server_session or synthetic_session_id(self.id))
        self.ends_session |= self.status == 404 and not is_synthetic_session(self.session or "")
        content_type = headers.get("content-type", "")
        if content_type.startswith("text/event-stream"):
            self._sse = SseParser()
        elif content_type.startswith("application/json"):
            self._json = bytearray()
        kept, dropped = recordable(headers)
        self._emit(ResponseStart(status=self.status, headers=kept, credentials_removed=dropped))
        if msg.end_of_stream:
            self.finish("complete")
        bound = {}
        if server_session and self.principal is not None:  # the client only ever sees the bound id
            bound = {SESSION_HEADER: bind(server_session, self.principal, self.gw.session_key)}
        # List responses are rewritten for the caller, so this one body is buffered; all others keep streaming.
        self._filtering = bool(self._lists) and 200 <= self.status < 300 and not msg.end_of_stream
        return responses.response_headers(bound, buffer_body=self._filtering)

    async def on_response_body(self, msg: ep.HttpBody) -> ep.ProcessingResponse:
        """Record one streamed chunk: SSE events as they complete, a JSON body at its end, other bytes as is."""
        chunk = msg.body
        self.bytes_out += len(chunk)
        sse = self._sse is not None
        if self._sse is not None:
            for event in self._sse.feed(chunk):
                self._emit_sse(event.data, event.event, event.id, event.raw)
        elif self._json is not None:
            self._json += chunk
            if len(self._json) > self.gw.settings.recording.max_event_body_bytes:
                # Too big to hold: the rest is recorded chunk by chunk. Path and key redactions need the parsed
                # document, so with a policy the content is withheld (size and SHA-256 kept), never stored raw.
                self._withhold = self.policy is not None
                self._emit_chunk(bytes(self._json))
                self._json = None
        elif chunk:
            self._emit_chunk(chunk)
        reply = responses.response_body()
        if self._filtering and self.policy is not None and self.principal is not None:  # the whole body, buffered
            body, hidden = filter_body(self.policy, self.principal, self._server_name, self._lists, chunk, sse)
            for method, msg_id, names in hidden:
                self._emit(ListFiltered(method=method, message_id=msg_id, hidden=names))
            reply = responses.response_body(replace=body)
        if msg.end_of_stream:
            self._end_body()
            self.finish("complete")
        return reply

    def finish(self, outcome: str, detail: str = "") -> None:
        """Record the end exactly once. Called at the last body chunk, or by the stream loop when it stops."""
        if self.finished:
            return
        self.finished = True
        if outcome == "reset" and self.request_ids and not self._awaiting and self.status:
            # MCP: a POST's stream is done once every request in it has its response; clients often close
            # the connection right then, before Envoy relays the final empty chunk.
            outcome, detail = "complete", "client closed the stream after the last response"
        if not self.recording:
            return
        self.gw.metrics.exchanges.labels(self._server_name, outcome).inc()
        if self.session is None:  # refused, or the stream died, before the server named a session
            self._set_session(synthetic_session_id(self.id), must=False)
        if outcome != "complete":
            self._end_body()
        self._emit(
            ExchangeEnd(
                outcome=outcome,
                status=self.status,
                duration_ms=round((self.gw.clock() - self.started) * 1000, 3),
                bytes_in=self.bytes_in,
                bytes_out=self.bytes_out,
                detail=detail,
                ends_session=self.ends_session or is_synthetic_session(self.session or ""),
            ),
            must=False,
        )

    # --- helpers ---------------------------------------------------------------------------------------------

    def _end_body(self) -> None:
        if self._sse is not None:
            tail = self._sse.finish()
            if tail.strip():
                self._emit_chunk(tail)
        elif self._json is not None:
            raw, self._json = bytes(self._json), None
            parsed = parse_body(raw)
            self._emit_response(list(parsed.messages), parsed.error, raw, keep_raw=True)

    def _emit_sse(self, data: str, event: str, event_id: str | None, raw: bytes) -> None:
        parsed = parse_body(data.encode()) if data else None
        messages = list(parsed.messages) if parsed else []
        error = parsed.error if parsed else None
        self._emit_response(messages, error, raw, keep_raw=error is not None, sse_event=event, sse_id=event_id)

    def _emit_response(
        self, messages: list[dict[str, Any]], error: str | None, raw: bytes, keep_raw: bool, **sse: Any
    ) -> None:
        """One mcp.response event, redacted by the policy's recording rules before it is queued."""
        for m in messages:
            if "id" in m and "method" not in m:
                self._awaiting.discard(json.dumps(m["id"]))
        messages, kept, redactions = redact_for_record(self.policy, self._server_name, messages, raw)
        body = {"raw_redacted": True} if kept is None else (body_fields(kept) if keep_raw else {})
        self._emit(McpResponse(messages=messages, error=error, body=body, size=len(raw), redactions=redactions, **sse))

    def _emit_chunk(self, raw: bytes) -> None:
        if self._withhold:
            body = {"withheld": "JSON body over recording.max_event_body_bytes", "sha256": sha256(raw).hexdigest()}
            self._emit(ResponseChunk(body=body, size=len(raw)))
            return
        _, kept, _ = redact_for_record(self.policy, self._server_name, [], raw)  # text patterns still apply
        self._emit(ResponseChunk(body=body_fields(kept if kept is not None else b""), size=len(raw)))

    def _set_session(self, session: str, must: bool = True) -> None:
        self.session = session
        self.record_log.name_session(session, must)  # releases held events; fails closed (the stream loop aborts)

    def _emit(self, ev: Event, must: bool = True) -> None:
        self.record_log.emit(ev, must)

    def _refuse(
        self, err: GatewayError, headers: dict[str, str] | None = None, doc: object = None
    ) -> ep.ProcessingResponse:
        """Answer the client ourselves; Envoy sends nothing upstream. Recorded if the exchange is."""
        log.info("exchange %s refused: %s %s", self.id, type(err).__name__, err)
        self.gw.metrics.refusals.labels(str(err.status), type(err).__name__).inc()
        self.status = err.status
        self.finish("denied", f"{type(err).__name__}: {err.safe_message}")
        if doc is not None:
            return responses.json_reply(err.status, doc, headers, f"mcp_extproc_{type(err).__name__}")
        msg_id = self.request_ids[0] if len(self.request_ids) == 1 else None
        return responses.error_reply(err, msg_id, headers)


def _client_address(attributes: Any, headers: dict[str, str]) -> str:
    """The downstream address Envoy saw (ext_proc attribute), else the last X-Forwarded-For hop."""
    if attributes is not None:
        struct = attributes.get("envoy.filters.http.ext_proc")
        if struct is not None and "source.address" in struct.fields:
            return struct.fields["source.address"].string_value
    xff = headers.get("x-forwarded-for", "")
    return xff.rsplit(",", 1)[-1].strip()
