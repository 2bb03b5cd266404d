"""The processor's side of approvals: a call an approve rule holds passes on a matching approval, or is refused
naming the request (and where to approve it); the optional webhook is told about new requests.

``hold`` is called by the exchange (extproc/exchange/decide.py) only when a decision carries ``approval``, so a
policy without approve rules costs nothing here. The store's file work runs off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from extproc.authn.principal import Principal
from extproc.controls.approval_files import Binding, Outcome, args_digest, encode_arguments
from extproc.controls.approvals import ApprovalStore, viewer_url
from extproc.errors import (
    ApprovalInputRequired,
    ApprovalRequired,
    ApprovalsUnavailable,
    GatewayError,
    InvalidRequest,
    PolicyDenied,
)
from extproc.mcp.jsonrpc import error_response
from extproc.mcp.methods import is_stateless
from extproc.mcp.protocol import META_VERSION
from extproc.policy.capture import Capture
from extproc.policy.compiled import CompiledPolicy
from extproc.policy.enforce import Verdict
from extproc.policy.engine import redact

log = logging.getLogger(__name__)

WEBHOOK_QUEUE = 100  # notices waiting for the webhook; more are dropped (logged), never waited for


@dataclass
class Approvals:
    """The approvals store of a processor, the viewer's URL for a request, and the webhook (if any)."""

    store: ApprovalStore
    public_url: str | None = None
    prefix: str | None = None  # the audit service's prefix (None: no audit service configured)
    webhook_url: str | None = None
    webhook_timeout: float = 2.0
    capture_salt: bytes = b""  # recording.capture_salt_file: the arguments of a request at capture level shape
    _sending: set[asyncio.Task[None]] = field(default_factory=set)

    def url(self, approval_id: str) -> str | None:
        return viewer_url(self.public_url, self.prefix, approval_id)

    def sweep_later(self) -> None:
        """Sweep the directory in a thread when due (``ApprovalStore.sweep_due``): a held call never waits for it."""
        if not self.store.sweep_due():
            return
        task = asyncio.create_task(self._sweep())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _sweep(self) -> None:
        try:
            removed = await asyncio.to_thread(self.store.sweep)
        except OSError as e:
            log.warning("approvals store %s: sweep failed: %s", self.store.directory, e)
            return
        if removed:
            log.info("approvals: removed %d entries past their retention", len(removed))

    def notify(self, outcome: Outcome) -> None:
        """POST the new request to the webhook in the background: bounded, never awaited by the request."""
        if self.webhook_url is None or not outcome.created:
            return
        if len(self._sending) >= WEBHOOK_QUEUE:
            log.warning("approvals webhook: %d notices in flight; %s not sent", WEBHOOK_QUEUE, outcome.entry.request.id)
            return
        task = asyncio.create_task(self._post(webhook_notice(outcome, self.url(outcome.entry.request.id))))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _post(self, notice: dict[str, Any]) -> None:
        assert self.webhook_url is not None
        try:
            async with httpx.AsyncClient(timeout=self.webhook_timeout) as client:
                r = await client.post(self.webhook_url, json=notice)
            if r.status_code >= 300:
                log.warning("approvals webhook answered %d for %s", r.status_code, notice["approval_id"])
        except httpx.HTTPError as e:
            log.warning("approvals webhook failed for %s: %s", notice["approval_id"], e)


def webhook_notice(outcome: Outcome, url: str | None) -> dict[str, Any]:
    """The documented webhook body (README, "Approvals"): plain JSON, arguments not included (see the viewer)."""
    r = outcome.entry.request
    return {
        "type": "approval.requested",
        "approval_id": r.id,
        "url": url,
        "caller": {"issuer": r.issuer, "subject": r.subject, "username": r.username},
        "server": r.server,
        "tool": r.tool,
        "rule": r.rule,
        "approvers": r.approvers,
        "requested_at": r.requested_at,
        "pending_until": r.pending_until,
    }


# The key of the gateway's own input request in a 2026-07-28 input_required result (and of the client's answer in
# the retry's inputResponses, which is taken out before the server sees the call: the server never asked).
INPUT_KEY = "mcp-extproc/approval"
_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"


def asks_by_url(message: Mapping[str, Any]) -> bool:
    """A 2026-07-28 request from a client that can open a URL elicitation (``elicitation.url`` in the capabilities
    its ``_meta`` declares): it gets an ``input_required`` result instead of an error, and retries by itself."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict) or not is_stateless(v if isinstance(v := meta.get(META_VERSION), str) else None):
        return False
    caps = meta.get(_CAPABILITIES)
    elicitation = caps.get("elicitation") if isinstance(caps, dict) else None
    return isinstance(elicitation, dict) and isinstance(elicitation.get("url"), dict)


def declined(message: Mapping[str, Any]) -> bool:
    """The retry answers the gateway's URL elicitation with decline or cancel: the caller gave up waiting."""
    params = message.get("params")
    responses = params.get("inputResponses") if isinstance(params, dict) else None
    answer = responses.get(INPUT_KEY) if isinstance(responses, dict) else None
    return isinstance(answer, dict) and answer.get("action") in ("decline", "cancel")


def strip_input_response(body: bytes) -> bytes | None:
    """The body without the gateway's own entry in ``params.inputResponses`` (None when it has none)."""
    doc = json.loads(body)
    params = doc.get("params") if isinstance(doc, dict) else None
    responses = params.get("inputResponses") if isinstance(params, dict) else None
    if not isinstance(responses, dict) or INPUT_KEY not in responses:
        return None
    assert isinstance(params, dict)
    rest = {k: v for k, v in responses.items() if k != INPUT_KEY}
    kept = {k: v for k, v in params.items() if k != "inputResponses"} | ({"inputResponses": rest} if rest else {})
    return json.dumps({**doc, "params": kept}, separators=(",", ":")).encode()  # ASCII: a lone surrogate stays escaped


def input_required(msg_id: object, approval_id: str, message: str, url: str) -> dict[str, Any]:
    """The 2026-07-28 answer to a held call: an input_required result with one URL elicitation (the viewer's page)."""
    ask = {"mode": "url", "message": message, "url": url, "elicitationId": approval_id}
    result = {
        "resultType": "input_required",
        "inputRequests": {INPUT_KEY: {"method": "elicitation/create", "params": ask}},
    }
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


Held = tuple[Verdict, GatewayError | None, Any, dict[int, dict[str, Any]]]
"""The verdict (a consumed approval turns its decision into an allow), the refusal and its JSON-RPC answer (None
when the call passes), and the ``approval`` record of each decision by index."""


async def hold(
    approvals: Approvals | None,
    policy: CompiledPolicy,
    who: Principal,
    server: str,
    backend: str,
    batch: bool,
    verdict: Verdict,
    exchange: str,
    message: Mapping[str, Any] | None = None,
) -> Held:
    """The first held call of ``verdict``: pass it on an approval of exactly this call, or refuse it."""
    i, call, d = next((i, c, d) for i, (c, d) in enumerate(zip(verdict.calls, verdict.decisions, strict=True))
                      if d.approval is not None)  # fmt: skip
    need = d.approval
    assert need is not None
    if batch:
        return (
            verdict,
            PolicyDenied(d.rule, "a call that needs approval cannot be part of a batch; send it alone"),
            None,
            {},
        )
    if approvals is None:
        log.error("rule %s holds a call for approval but gateway.yaml has no approvals section; refused", d.rule)
        return verdict, ApprovalsUnavailable(), None, {}
    try:
        digest = args_digest(call.arguments)
    except Exception as e:  # rfc8785 refuses integers beyond 2**53 and non-finite floats: no exact binding, no pass
        return verdict, InvalidRequest(f"arguments cannot be canonicalized for an approval: {e}"), None, {}
    binding = Binding(who.issuer, who.subject, server, backend, call.tool or "", digest, policy.fingerprint)
    capture = Capture(policy.capture(server, [call.tool] if call.tool else ()), approvals.capture_salt)
    try:
        outcome = await asyncio.to_thread(
            approvals.store.settle, binding, who, rule=d.rule, approvers=need.text, ttl=need.ttl, count=need.count,
            arguments=shown_arguments(policy, server, capture, call.arguments), capture=capture.level,
            exchange=exchange,
        )  # fmt: skip
    except OSError as e:
        log.error("approvals store %s: %s; refused", approvals.store.directory, e)
        return verdict, ApprovalsUnavailable(), None, {}
    record = {i: outcome.to_record(approvals.store.clock())}
    if outcome.passed:
        decisions = list(verdict.decisions)
        decisions[i] = replace(d, allowed=True, reason=f"{d.reason}: {outcome.message}", approval=None)
        return Verdict(verdict.calls, tuple(decisions)), None, None, record
    approvals.notify(outcome)
    if outcome.created:
        approvals.sweep_later()
    approval_id = outcome.entry.request.id
    url = approvals.url(approval_id)
    if url is not None and message is not None and asks_by_url(message) and not declined(message):
        text = f"{d.reason[:300]}. Open the page, ask an approver; the call is retried once it is approved."
        return (
            verdict,
            ApprovalInputRequired(approval_id, outcome.message, url),
            input_required(call.id, approval_id, text, url),
            record,
        )
    err = ApprovalRequired(approval_id, outcome.message, url)
    data = {"approval_id": approval_id, "url": url, "state": outcome.entry.state(approvals.store.clock())}
    doc = error_response(call.id, err.jsonrpc_code, err.safe_message, data) if call.id is not None else None
    return verdict, err, doc, record


def shown_arguments(policy: CompiledPolicy, server: str, capture: Capture, arguments: Mapping[str, Any]) -> str:
    """The arguments a request keeps for the approver's page, at the call's capture level (as its recording)."""
    if capture.level == "metadata":
        return ""
    if capture.level == "full":
        return encode_arguments(dict(arguments))
    shown, _ = redact(policy, server, dict(arguments))
    return encode_arguments(capture.shape(shown) if capture.level == "shape" else shown)


def approvals_from_settings(settings: Any) -> Approvals | None:
    """gateway.yaml's ``approvals`` section, signing with recording.signing_key (None: no section); request
    arguments sealed per caller when recording.encrypt_payloads is on."""
    from extproc.recording.manifest import Signer
    from extproc.recording.shred import build_keyring
    from extproc.secrets import load_salt

    cfg = settings.approvals
    if cfg is None:
        return None
    signer = Signer.from_file(settings.recording.signing_key)
    audit = settings.audit
    return Approvals(
        store=ApprovalStore(
            cfg.directory, signer, time.time, keyring=build_keyring(settings.recording), retention=cfg.retention_s()
        ),
        public_url=settings.auth.public_url if settings.auth is not None else None,
        prefix=audit.prefix if audit is not None else None,
        webhook_url=cfg.webhook_url,
        webhook_timeout=cfg.webhook_timeout_ms / 1000,
        capture_salt=load_salt(settings.recording.capture_salt_file),
    )
