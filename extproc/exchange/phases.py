"""One HTTP exchange = one ext_proc stream: a method per phase, each delegating to the part that owns the job.

request headers -> admission (admission.py) and the exchange's start, recorded
request body    -> JSON-RPC parsing, header/body consistency (mcp/protocol.py), policy (policy/enforce.py)
response headers-> the recording unit, how the body is framed and rewritten (mcp/body.py)
response body   -> every SSE event / JSON document recorded (redacted) as it passes; lists filtered
end             -> exchange.end, exactly once (state.py: the state every phase shares, commit points, refusals)

Events go through the exchange log (recording/exchange_log.py): numbered, held until the recording unit is
known, sent fail-closed.
"""

from __future__ import annotations

import time
from functools import partial
from time import perf_counter
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.admission import SESSION_HEADER, Admitted, Unrecorded, admit
from extproc.authn.state_binding import RequestStateNotYours
from extproc.controls.hold import strip_input_response
from extproc.envoy import responses
from extproc.envoy.fields import UPSTREAM_HEADER
from extproc.envoy.headers import to_dict, to_dict_and_names
from extproc.errors import EncodedResponse, GatewayError, InvalidRequest, RemovedMethod, ReservedSessionId
from extproc.exchange import guard, request, response, results, upstream
from extproc.exchange.state import ExchangeState
from extproc.exchange.upstream import UPSTREAM_REMOVE, caller_token, credential_recorder
from extproc.mcp.body import dumps, rewrite_json
from extproc.mcp.jsonrpc import ParsedBody, parse_body
from extproc.mcp.methods import HTTP_METHODS
from extproc.mcp.protocol import check_headers, classify
from extproc.policy.capture import Capture
from extproc.recording.events import ResponseStart, is_synthetic_session, synthetic_session_id
from extproc.reserved import is_reserved_unit
from extproc.telemetry.tracing import with_headers
from extproc.upstream.base import ExchangeContext

__all__ = ["IDENTITY_ENCODINGS", "Exchange"]

IDENTITY_ENCODINGS = ("", "identity")


class Exchange(ExchangeState):
    """The handlers of one request/response pair; its state, end and refusals are ExchangeState's (state.py)."""

    # --- phases ----------------------------------------------------------------------------------------------

    async def on_request_headers(self, msg: ep.HttpHeaders, attributes: Any = None) -> ep.ProcessingResponse:
        """Admit the request (admission.py) and record its start; a refusal of a known caller is recorded too."""
        headers, names = to_dict_and_names(msg.headers)
        self._headers = headers
        self.request_id = headers.get("x-request-id", "")[:128]
        if self.gw.tracing is not None:
            self.trace = self.gw.tracing.exchange(self.id, headers.get("traceparent"))
        if (public := request.public_document(self.gw, headers.get(":path", ""))) is not None:
            self.finished = True  # public, and not an exchange
            return public
        t0 = time.time_ns()
        admission = await admit(self.gw, headers, self.id)
        if self.trace is not None:
            self.trace.mark("authenticate", t0)
        if isinstance(admission, Unrecorded):
            return self._refuse(admission.error, dict(admission.headers))
        self._admit(admission, names, attributes)
        if admission.refusal is not None:
            if msg.end_of_stream or headers.get(":method") != "POST":
                return self._refuse(admission.refusal, dict(admission.refusal_headers))
            # Answered once the (buffered) body is read, so the error names the request's id. Envoy holds these
            # headers until the body's answer, which is this refusal: nothing reaches the server.
            self._deferred = (admission.refusal, dict(admission.refusal_headers))
            return responses.request_headers(None, (*UPSTREAM_REMOVE, UPSTREAM_HEADER))
        method = headers.get(":method", "")
        if method in HTTP_METHODS and (refused := self._authorize_http(HTTP_METHODS[method])) is not None:
            return refused
        backend = admission.backend.name if admission.backend else None
        credentials: dict[str, str] = {}
        if self.gw.upstream is not None:  # the server's own credential for this caller (extproc/upstream/)
            try:  # none to be had: refused, recorded
                self._credentials = credential_recorder(self.gw, self.log)
                ctx = ExchangeContext(self.id, self.request_id, self.session, caller_token(headers), self._credentials)
                credentials = await upstream.credentials(self.gw, self.principal, self.server_name, ctx, backend)
            except GatewayError as e:
                return self._refuse(e)
        if msg.end_of_stream and (refused := await self._commit()) is not None:  # a GET or DELETE goes upstream now
            return refused
        route = admission.route_headers
        ours = upstream.gateway_headers(self.gw, self.principal, self.server_name, self._server_session, backend)
        set_headers, remove = upstream.request_headers({**ours, **credentials}, route)
        if self.trace is not None and msg.end_of_stream:  # a GET or DELETE: its trace context goes upstream now
            set_headers.update(self.trace.forward((), self.session, self.server_name))
        return responses.request_headers(set_headers, remove, clear_route_cache=bool(route))

    async def on_request_body(self, msg: ep.HttpBody) -> ep.ProcessingResponse:
        """Parse, record and authorize the (buffered) JSON-RPC body; allowed bodies go upstream as decided."""
        if self.admitted is None:  # a body whose headers were never admitted: config drift; never let it pass
            raise RuntimeError("ext_proc request body without admitted request headers")
        body = msg.body
        self.bytes_in += len(body)
        parsed = parse_body(body, strict=True)  # what the policy decides on must be what the server reads
        if self.trace is not None:  # its parent may be the request's params._meta.traceparent (SEP-414)
            self.trace.begin(parsed.messages, self.session, self.server_name)
        self._note_request(parsed)
        if self._deferred is not None:  # refused at admission (someone else's session...): only the id was missing
            return self._refuse(*self._deferred)
        self._record_request(parsed, body)
        if parsed.error:  # what cannot be parsed cannot be authorized: refuse it, recorded
            return self._refuse(InvalidRequest(f"request body is not valid JSON-RPC ({parsed.error})"))
        try:  # the headers Envoy and the server read must say what the decided body says
            declared = partial(self.gw.param_headers.get, self._scope)  # the tools' x-mcp-header maps
            check_headers(self._header_names, self._headers, parsed.messages, parsed.batch, declared)
            forward = self._open_request_state(parsed.messages)  # a retry continues only its own round
        except (InvalidRequest, RemovedMethod, RequestStateNotYours) as e:
            return self._refuse(e)
        if (refused := await self._decide(parsed)) is not None:
            return refused
        if self._decisions.approved_retry:  # the server never asked for the answer to the gateway's elicitation
            forward = strip_input_response(forward if forward is not None else body) or forward

        if self.gw.guardrails is not None:  # the server's outside guardrail, when it has one (guard.py)
            refused, forward = await self._guard(parsed, forward)
            if refused is not None:
                return refused
        if (refused := await self._commit()) is not None:  # the server executes only what is on disk
            return refused
        if self.trace is not None:
            return with_headers(
                responses.request_body(forward),
                self.trace.forward(parsed.messages, self.session, self.server_name),
            )
        return responses.request_body(forward)

    async def _guard(
        self, parsed: ParsedBody, forward: bytes | None
    ) -> tuple[ep.ProcessingResponse | None, bytes | None]:
        """Each allowed call asked of the server's guardrail; a body it modified is checked and decided again."""
        if self.policy is None or self.admitted is None:
            return None, forward
        base = parse_body(forward, strict=True) if forward is not None else parsed
        backend = self.admitted.backend.name if self.admitted.backend else ""
        t0 = perf_counter()
        err, changed = await guard.ask(self.gw, self.log, self.policy, self.principal, (self.server_name, backend),
                                       (self.id, self.request_id), base.messages, self._decisions.shown)  # fmt: skip
        self._guard_ms = (perf_counter() - t0) * 1000
        if err is not None:
            return self._refuse(err), None
        if changed is None:
            return None, forward
        modified = ParsedBody(tuple(changed), base.batch)
        declared = partial(self.gw.param_headers.get, self._scope)
        try:
            check_headers(self._header_names, self._headers, modified.messages, modified.batch, declared)
        except InvalidRequest as e:
            return self._refuse(e), None
        if (refused := await self._decide(modified)) is not None:  # what the server executes is decided on
            return refused, None
        return None, dumps(changed if base.batch else changed[0]).encode()

    async def on_response_headers(self, msg: ep.HttpHeaders) -> ep.ProcessingResponse:
        """Learn the recording unit (the server names its session) and how the body is framed."""
        headers = to_dict(msg.headers)
        self.status = int(headers.get(":status", "0") or 0)
        if self.trace is not None:
            self.trace.answered(self.status)
        server_session = headers.get(SESSION_HEADER)
        if server_session and is_reserved_unit(server_session):  # it would write into another recording unit
            return self._refuse(ReservedSessionId(server_session))
        if self.session is None:
            self.log.set_unit(self._server_unit(server_session) if server_session else synthetic_session_id(self.id))
        self.ends_session |= self.status == 404 and not is_synthetic_session(self.session or "")
        kept, dropped, found = request.recordable_headers(self.policy, self.server_name, headers, self._header_capture)
        self.log.emit(ResponseStart(status=self.status, headers=kept, credentials_removed=dropped, redactions=found))
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding not in IDENTITY_ENCODINGS and self.policy is not None and not msg.end_of_stream:
            # Envoy asks servers for identity bodies; one that compresses anyway cannot be filtered or redacted.
            return self._refuse(EncodedResponse(encoding))
        if msg.end_of_stream:
            self.finish("complete")
            await self.log.commit()
        ok = 200 <= self.status < 300 and not msg.end_of_stream
        withheld = lambda: response.withheld_body(self.id, self._awaiting)  # noqa: E731
        self._screen = self._results_screen() if ok else None  # what results hold, found and dealt with (results.py)
        refusing = self._screen.sse_rewrite() if self._screen is not None else None
        if ok and self._decisions.verdict is not None:  # the server's guardrail asked about results too (guard.py)
            calls = self._decisions.verdict.calls
            self._result_guard = guard.ResultGuard.of(self.gw, self.log, self.policy, self.server_name, calls)
            refusing = refusing or (guard.HOLD_EVENTS if self._result_guard is not None else None)
        lists = bool(self._decisions.lists)
        framing = response.framing(self.gw.options, headers, ok, self._seal, lists, withheld, refusing)
        self._body, self._buffered = framing
        if self._screen is not None:
            self._screen.buffering = self._buffered is not None
        stripping = self._screen is not None and self._screen.stripper is not None and not self._buffered
        remove = ("content-length",) if self._body.rewriting or stripping else ()
        who, key = self.principal, self.gw.options.session_key
        set_headers = response.client_headers(key, who, self.admitted, server_session, self._run)
        return responses.response_headers(set_headers, remove, self._buffered is not None)

    async def on_response_body(self, msg: ep.HttpBody) -> ep.ProcessingResponse:
        """Record one chunk: SSE events as they complete, a JSON body at its end, other bytes as they are."""
        assert self._body is not None, "response body before response headers"
        chunk = msg.body
        self.bytes_out += len(chunk)
        pieces, released = self._body.feed(chunk)
        if msg.end_of_stream:
            more, tail = self._body.end()
            pieces, released = pieces + more, (released + tail if released is not None else None)
        for piece in pieces:
            self._record_piece(piece)
        if self._result_guard is not None and pieces:  # asked before the result's bytes go (guard.py)
            backend = self.admitted.backend.name if self.admitted and self.admitted.backend else ""
            where, ids = (self.server_name, backend), (self.id, self.request_id)
            await self._result_guard.review(pieces, self.principal, where, ids)
            released = self._result_guard.sse(released) if released is not None else None
        stripper = self._screen.stripper if self._screen is not None and not self._buffered else None
        if stripper is not None:  # invisible characters out of results as the body streams (results.py)
            stripped = stripper.feed(chunk if released is None else released, final=msg.end_of_stream)
            released = stripped if stripped is not None else released
        if self._buffered == "filter":
            await self._tools.refresh_pins(self.server_name)  # the list is judged against today's pins
        reply = self._rewrite_buffered(chunk) if self._buffered else None
        if self._tools.surface is not None:  # tool-surface integrity off: nothing to save (an attribute test)
            await self._tools.save_pins()
        if msg.end_of_stream:
            self.finish("complete")
        if self.admitted is not None:
            await self.log.commit()  # the client sees only what is on disk; a failing spool fails the stream
        if reply is not None:
            return reply
        return responses.streamed_body(released) if released is not None else responses.response_body()

    # --- request side ----------------------------------------------------------------------------------------

    def _admit(self, admission: Admitted, names: list[str], attributes: Any) -> None:
        """From here on the exchange is recorded: who, where, which session; then its start."""
        headers = self._headers
        self.admitted, self.principal = admission, admission.principal
        self._decisions.backend = admission.backend.name if admission.backend else ""
        self._tools.backend = admission.backend.name if admission.backend else None
        self._scope = admission.scope or admission.server.name  # whose tools' x-mcp-header maps, request state
        self.policy = self.gw.policy.current if self.gw.policy is not None else None
        self.ends_session = headers.get(":method") == "DELETE"
        self.client = request.client_address(attributes, headers)
        self._header_names = names
        if admission.refusal is not None and admission.session == synthetic_session_id(self.id):
            self.log.set_unit(admission.session)  # refused: a unit of its own (admission.py), never the named one
        elif admission.session is not None:
            self._server_session = admission.session
            self.log.set_unit(self._server_unit(admission.session))
        # Without a policy: the default level (the built-in header redactions, as before levels existed).
        salt = self.gw.options.capture_salt
        server = admission.server.name
        self._header_capture = Capture(self.policy.header_capture(server) if self.policy else "redacted", salt)
        self.capture = Capture(self.policy.capture(server) if self.policy else "redacted", salt)
        self.log.emit(request.start_event(self.policy, admission, headers, self.client, self._header_capture))

    def _note_request(self, parsed: ParsedBody) -> None:
        """Request ids (to pair responses) and, for a stateless request, the run it belongs to."""
        self.request_ids, self._awaiting = request.request_ids(parsed)
        if self.session is None and not parsed.error:
            rev = classify(self._headers, parsed.messages)
            if rev.stateless:  # no session id at 2026-07-28: the unit is the client's run, known before recording
                self._run = request.run_unit(
                    self.gw, self.principal, self.client, self.server_name, self._headers, rev.client_info
                )
                self.log.set_unit(self._run)

    def _record_request(self, parsed: ParsedBody, body: bytes) -> None:
        salt = self.gw.options.capture_salt
        self.capture = request.request_capture(self.policy, self.server_name, parsed, salt) or self.capture
        self.log.emit(request.request_event(self.policy, self.server_name, parsed, body, self.capture))

    async def _decide(self, parsed: ParsedBody) -> ep.ProcessingResponse | None:
        """Every request of the body decided and recorded (decide.py); one denial refuses the whole body."""
        if self.policy is None or self.principal is None:
            return None
        t0 = time.time_ns()
        refusal = await self._decisions.body(self.policy, self.principal, self.server_name, self.session, parsed)
        if self.trace is not None:
            self.trace.mark("policy", t0)
        headers = self._decisions.reply_headers
        return self._refuse(refusal[0], headers, doc=refusal[1]) if refusal is not None else None

    def _authorize_http(self, name: str) -> ep.ProcessingResponse | None:
        """GET (open the server's stream) and DELETE (end the session) are decided like methods, named ``name``."""
        if self.policy is None or self.principal is None:
            return None
        err = self._decisions.http(self.policy, self.principal, self.server_name, name)
        return self._refuse(err) if err is not None else None

    def _open_request_state(self, messages: tuple[dict[str, Any], ...]) -> bytes | None:
        """A stateless call by a known identity (request.open_state); the body to forward when it changed."""
        if self._run is None or self.principal is None or len(messages) != 1:
            return None
        self._seal, forward = request.open_state(self.gw.options.session_key, self.principal, self._scope, messages[0])
        return forward

    # --- response side ---------------------------------------------------------------------------------------

    def _rewrite_buffered(self, body: bytes) -> ep.ProcessingResponse | None:
        """The whole (buffered) body rewritten for the caller: lists filtered, or request state sealed."""
        if self._buffered in ("seal", "screen"):
            sealed = rewrite_json(body, self._seal) if self._seal is not None else body
            sealed = self._results_whole(sealed, False)
            return responses.response_body(replace=sealed) if sealed != body else None
        if self.policy is None or self.principal is None:
            return None
        sse = self._body is not None and self._body.sse
        review = self._review_list if self._tools.surface is not None else None
        who, server = self.principal, self.server_name
        learn = response.learn_tools(self.gw.param_headers, self._scope)
        after = self._results_whole if self._screen is not None or self._result_guard is not None else None
        return response.filtered_lists(self.policy, who, server, self._decisions, body, sse, learn, review, after)

    def _results_whole(self, body: bytes, sse: bool) -> bytes:
        """A whole buffered body's call results as the client gets them: the guardrail's answers (guard.py), then
        the screens' refusals and strips (results.py)."""
        if self._result_guard is not None:
            body = self._result_guard.whole(body, sse)
        if self._screen is not None:
            body = self._screen.buffered(body, sse)
        return body

    def _review_list(self, method: str, result: dict[str, Any]) -> dict[str, Any]:
        """One list result fingerprinted, screened and judged against the pins (extproc/tools/surface.py)."""
        assert self.policy is not None
        unit = self.session or synthetic_session_id(self.id)
        return self._tools.review_list(self.policy, self.server_name, unit, method, result)

    def _results_screen(self) -> results.ResultScreen | None:
        verdict = self._decisions.verdict
        if self.policy is None or verdict is None:
            return None
        return results.ResultScreen.of(self.policy, self.server_name, self.log, verdict.calls, self._tools.surface)
