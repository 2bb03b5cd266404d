"""What every phase of an exchange shares (phases.py drives them): its state, its end on the record (the access
line, metrics, ``exchange.end``, exactly once), its commit points and the answers the gateway gives itself.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.admission import Admitted
from extproc.authn.principal import Principal
from extproc.envoy import responses
from extproc.errors import GatewayError, RecordingUnavailable, StoreError
from extproc.exchange import guard, request, response, results, upstream
from extproc.exchange.decide import Decisions
from extproc.exchange.surface import SurfaceCheck
from extproc.gateway import Gateway
from extproc.logs import access, verdict_fields
from extproc.mcp.body import Piece, ResponseBody
from extproc.policy.capture import Capture
from extproc.policy.compiled import CompiledPolicy
from extproc.policy.enforce import Verdict
from extproc.recording.events import Outcome, is_synthetic_session, synthetic_session_id
from extproc.recording.exchange_log import ExchangeLog
from extproc.recording.pieces import record_piece
from extproc.telemetry.tracing import ExchangeTrace

log = logging.getLogger(__name__)


class ExchangeState:
    """State of one request/response pair, and what ends it: its record, its commit points, its refusals."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.id = gw.new_id()
        self.started = gw.clock()
        self.log = ExchangeLog(self.id, gw.sink, gw.clock, gw.options.required)
        # Who and where, fixed at admission.
        self.admitted: Admitted | None = None
        self.principal: Principal | None = None
        self.policy: CompiledPolicy | None = None  # one snapshot per exchange: a reload never splits a decision
        self.capture = Capture()  # how much of the payloads is recorded (policy/capture.py), set at admission
        self._header_capture = Capture()
        self.client = ""  # downstream address
        self.request_id = ""  # Envoy's x-request-id: joins our access line to Envoy's
        # Progress.
        self.finished = False
        self.refused = False  # answered by the gateway itself (its record is committed before the answer goes)
        self.ends_session = False  # a DELETE, or the server answered 404 for the session (it no longer knows it)
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.request_ids: list[Any] = []
        # What the request asked for, that shapes the response.
        self._headers: dict[str, str] = {}
        self._header_names: list[str] = []  # as sent, repeats kept: a duplicated MCP header is refused
        self._run: str | None = None  # the recorded run of a stateless request
        self._scope = ""  # the admitted scope, else the server (mcp/param_headers.py, mcp/request_state.py)
        self._server_session: str | None = None  # the server's own session id (the unit adds server and backend)
        self._seal: request.Seal | None = None  # a stateless call whose result may ask for input: its state sealed
        self._deferred: tuple[GatewayError, dict[str, str]] | None = None  # an admission refusal awaiting the body
        self._awaiting: set[str] = set()  # ids of requests in the body still without a response
        self._tools = SurfaceCheck(gw.surface, self.id, self.log, gw.clock)  # tool-surface integrity (surface.py)
        self._decisions = Decisions(gw, self.log, self._tools)  # the verdict, its facts, the lists to filter
        # The response.
        self._body: ResponseBody | None = None
        self._buffered: response.Buffered = None  # the whole body comes in one message
        self._guard_ms: float | None = None  # how long the server's outside guardrail took, when it was asked
        self.trace: ExchangeTrace | None = None  # OpenTelemetry spans (extproc/telemetry/), when tracing is on
        self._screen: results.ResultScreen | None = None  # invisible characters in results: found, maybe stripped
        self._result_guard: guard.ResultGuard | None = None  # the guardrail asked about results (guard.py)
        self._credentials: upstream.CredentialRecorder | None = None  # the upstream credential used, for the end

    @property
    def session(self) -> str | None:
        """The recording unit: the server's session id, a stateless run, or the exchange alone (None until known)."""
        return self.log.unit

    @property
    def verdict(self) -> Verdict | None:
        """What the policy decided for the body's requests (None until decided)."""
        return self._decisions.verdict

    @property
    def recording(self) -> bool:
        return self.admitted is not None

    @property
    def server_name(self) -> str:
        return self.admitted.server.name if self.admitted else ""

    # --- the end, commit points -----------------------------------------------------------------------------

    def finish(self, outcome: Outcome, detail: str = "") -> None:
        """Record the end exactly once. Called at the last body chunk, or by the stream loop when it stops."""
        if self.finished:
            return
        self.finished = True
        if outcome == "reset" and self.request_ids and not self._awaiting and self.status:
            # MCP: a POST's stream is done once every request in it has its response; clients often close
            # the connection right then, before Envoy relays the final empty chunk.
            outcome, detail = "complete", "client closed the stream after the last response"
        duration = self.gw.clock() - self.started
        access(
            exchange=self.id, request_id=self.request_id, session=self.session, server=self.server_name,
            user=self.principal.username if self.principal else "", status=self.status, outcome=outcome,
            duration_ms=duration * 1000, bytes_in=self.bytes_in, bytes_out=self.bytes_out,
            detail=detail, guardrail_ms=self._guard_ms, **verdict_fields(self.verdict),
        )  # fmt: skip
        if self.trace is not None:
            fields = verdict_fields(self.verdict)
            decision, rule = fields.get("decision", ""), fields.get("rule", "")
            self.trace.finish(outcome, self.status, decision, rule, detail, self.session or "")
        if self.admitted is None:
            return
        self.gw.metrics.exchange_ended(self.server_name, outcome, duration)
        if self.session is None:  # refused, or the stream died, before the server named a session
            self.log.set_unit(synthetic_session_id(self.id), must=False)
        if self._body is not None and outcome != "complete":
            for piece in self._body.end()[0]:
                self._record_piece(piece)
        end = upstream.end_type(self._credentials)(
            outcome=outcome,
            status=self.status,
            duration_ms=round(duration * 1000, 3),
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            detail=detail,
            ends_session=self.ends_session or is_synthetic_session(self.session or ""),
        )
        ended = upstream.ending(end, self._credentials)
        self.log.emit(ended if self.trace is None else self.trace.ended(ended), must=False)  # its trace ids too

    async def commit_refusal(self) -> None:
        """A refusal's record (the decision, the end) goes to disk before the answer does. The answer goes either
        way: nothing was forwarded, and failing it would only hide the refusal from the caller."""
        if self.admitted is None:
            return
        try:
            await self.log.commit()
        except StoreError as e:
            log.warning("exchange %s: refusal not on disk before the answer: %s", self.id, e)

    async def _commit(self) -> ep.ProcessingResponse | None:
        """The request goes upstream only once its events are on disk: a processor killed after this leaves the
        exchange recorded (marked incomplete), never executed unrecorded. Refused (503) when that cannot be."""
        if (held := self.log.cannot_hold()) is not None:
            return self._refuse(RecordingUnavailable(str(held)))
        t0 = time.time_ns()
        try:
            await self.log.commit()
        except StoreError as e:
            return self._refuse(RecordingUnavailable(str(e)))
        if self.trace is not None:
            self.trace.mark("recording commit", t0)
        return None

    def _server_unit(self, session: str) -> str:
        return request.server_unit_of(self.admitted, session)

    def _record_piece(self, piece: Piece) -> None:
        """One SSE event, JSON document or raw chunk on the record (recording/pieces.py)."""
        body = self._body
        withheld = body.oversized_reason if body is not None and body.oversized and self.policy is not None else None
        self._awaiting -= record_piece(self.log, self.policy, self.server_name, piece, withheld, self.capture)
        if self._screen is not None:
            self._screen.note(piece)

    # --- refusals --------------------------------------------------------------------------------------------

    def _refuse(
        self, err: GatewayError, headers: dict[str, str] | None = None, doc: object = None
    ) -> ep.ProcessingResponse:
        """Answer the client ourselves; Envoy sends nothing upstream. Recorded if the exchange is."""
        log.info("exchange %s refused: %s %s", self.id, err.refusal_name, err)
        self.gw.metrics.refusals.labels(str(err.status), err.refusal_name).inc()
        self.status = err.status
        self.refused = True
        self.finish("denied", f"{err.refusal_name}: {err.safe_message}")
        # The request id joins the client's report to our access line and log (why, for an operator), never detail.
        headers = {**(headers or {}), "x-request-id": self.request_id or self.id}
        if doc is not None:
            return responses.json_reply(err.status, doc, headers, f"mcp_extproc_{err.refusal_name}")
        msg_id = self.request_ids[0] if len(self.request_ids) == 1 else None
        return responses.error_reply(err, msg_id, headers)
