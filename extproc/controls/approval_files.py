"""The signed files of an approval (request, decision, use) and what a caller's arguments become in a request.

Every file is a ``policy/signed.py`` document (the one scheme of the gateway's signed files: grants, the revocation
log, pins, approvals), format ``v: 2``. Files of format 1 (signed over RFC 8785 JSON, before approvals shared the
scheme) are still read and verified, never written: an approval lives minutes to hours, so they disappear with the
approvals directory's retention.

A request keeps the arguments for the approver's page at the capture level of the server and tool (``full``,
``redacted``, ``shape``, ``metadata``: nothing), and, when ``recording.encrypt_payloads: per_subject`` is on,
sealed with the caller's data key (``recording/shred.py``): erasing the caller makes them unreadable here too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import rfc8785
from cryptography.exceptions import InvalidTag
from pydantic import Field

from extproc.policy.capture import CaptureLevel
from extproc.policy.signed import SignedDoc
from extproc.recording.shred import ALGORITHM, Keyring

ID = re.compile(r"^ap-[0-9a-f]{20}$")
State = Literal["pending", "approved", "denied", "expired", "used"]
MAX_ARGUMENTS_SHOWN = 16_384  # characters of the arguments kept in a request for the approver to read
FORMAT: Final = 2  # the policy/signed.py scheme; 1: RFC 8785 signatures (read only)


def args_digest(arguments: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the arguments' canonical JSON (RFC 8785): the same call always has the same digest."""
    return hashlib.sha256(rfc8785.dumps(dict(arguments))).hexdigest()


@dataclass(frozen=True, slots=True)
class Binding:
    """What an approval is bound to: the exact call, by this caller, under this policy version."""

    issuer: str
    subject: str
    server: str
    backend: str
    tool: str
    args_sha256: str
    policy_version: str

    def call_key(self) -> str:
        """Names the call (not the policy version) in the index file names: a held call reads only its own
        requests, however many others the directory holds."""
        parts = (self.issuer, self.subject, self.server, self.backend, self.tool, self.args_sha256)
        return hashlib.sha256(rfc8785.dumps(list(parts))).hexdigest()[:32]

    def same_call(self, other: Binding) -> bool:
        """Everything but the policy version (to say "the policy changed" rather than "no approval")."""
        return (self.issuer, self.subject, self.server, self.backend, self.tool, self.args_sha256) == (
            other.issuer, other.subject, other.server, other.backend, other.tool, other.args_sha256,
        )  # fmt: skip


class ApprovalDoc(SignedDoc):
    """An approval file: the shared signed-file scheme, format 2; format 1 files verify over their RFC 8785 form."""

    v: Literal[1, 2] = FORMAT

    def signed_part(self) -> bytes:
        if self.v == FORMAT:
            return super().signed_part()
        doc = self.model_dump(include=self.model_fields_set)  # a format-1 file: exactly the fields it was signed with
        doc.pop("sig", None)
        return rfc8785.dumps(doc)


class Request(ApprovalDoc):
    """``<id>.request.json``: a held call, as the processor saw it (arguments at the call's capture level)."""

    id: Annotated[str, Field(pattern=ID.pattern)]
    issuer: str
    subject: str
    username: str
    server: str
    backend: str
    tool: str
    args_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    policy_version: str
    rule: str
    approvers: str  # as the rule wrote them, for the approver's page
    ttl: float
    count: Annotated[int, Field(ge=1, le=100)]
    requested_at: float
    pending_until: float
    arguments: str  # JSON text at the capture level, cut at MAX_ARGUMENTS_SHOWN ("" when sealed or metadata)
    exchange: str = ""
    capture: CaptureLevel = "redacted"
    sealed: dict[str, str] | None = None  # the arguments sealed with the caller's data key: alg, key, ct

    def binding(self) -> Binding:
        return Binding(
            self.issuer, self.subject, self.server, self.backend, self.tool, self.args_sha256, self.policy_version
        )


class Decision(ApprovalDoc):
    """``<id>.decision.json``: the approver's answer, bound to the request by its signature."""

    id: Annotated[str, Field(pattern=ID.pattern)]
    request_sig: str
    approved: bool
    by_issuer: str
    by_subject: str
    by_username: str
    reason: Annotated[str, Field(max_length=500)]
    at: float
    until: float  # approved: usable until then


class Use(ApprovalDoc):
    """``<id>.use.<n>.json``: the n-th identical call that passed on this approval."""

    id: Annotated[str, Field(pattern=ID.pattern)]
    n: Annotated[int, Field(ge=1)]
    at: float
    exchange: str = ""


# --- the arguments of a request: capture level, sealing -------------------------------------------------------


def _aad(approval_id: str, args_sha256: str) -> bytes:
    """Binds sealed arguments to their request: moved into another request, they do not open."""
    return f"approval.request\n{approval_id}\n{args_sha256}".encode()


def seal_arguments(keyring: Keyring, subject: str, approval_id: str, args_sha256: str, text: str) -> dict[str, str]:
    """``text`` sealed with ``subject``'s (``issuer#subject``) data key, as recordings seal payloads."""
    ref, cipher = keyring.for_writing(subject)
    nonce = secrets.token_bytes(12)
    ct = cipher.encrypt(nonce, text.encode(), _aad(approval_id, args_sha256))
    return {"alg": ALGORITHM, "key": ref, "ct": base64.b64encode(nonce + ct).decode()}


def shown_arguments(r: Request, keyring: Keyring | None) -> str:
    """The arguments for the approver's page: as stored, opened when sealed, or why they cannot be read."""
    if r.sealed is None:
        return r.arguments if r.capture != "metadata" else "[not kept: capture level metadata]"
    ref = r.sealed.get("key", "")
    cipher = keyring.for_reading(ref) if keyring is not None else None
    if cipher is None:
        return "[sealed: no key-store access]" if keyring is None else "[erased: the caller's data key is gone]"
    try:
        blob = base64.b64decode(r.sealed.get("ct", ""))
        return cipher.decrypt(blob[:12], blob[12:], _aad(r.id, r.args_sha256)).decode()
    except (InvalidTag, ValueError):
        return f"[unreadable: does not decrypt with data key {ref}]"


def encode_arguments(arguments: object) -> str:
    """Arguments as JSON text for the approver's page."""
    return json.dumps(arguments, ensure_ascii=False, sort_keys=True, default=str)


# --- what the store answers -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One request with its decision and uses, verified (``keyring`` opens sealed arguments for the page)."""

    request: Request
    decision: Decision | None
    used: int
    keyring: Keyring | None = None

    def state(self, now: float) -> State:
        d = self.decision
        if d is None:
            return "pending" if now < self.request.pending_until else "expired"
        if not d.approved:
            return "denied"
        if self.used >= self.request.count:
            return "used"
        return "approved" if now < d.until else "expired"

    def ends(self) -> float:
        """After this time nothing can happen to the entry any more (decided, used or not): retention counts from
        here."""
        return max(self.request.pending_until, self.decision.until if self.decision is not None else 0.0)

    def to_json(self, now: float) -> dict[str, Any]:
        """The API's and the viewer's form (arguments at the capture level, opened when sealed)."""
        r, d = self.request, self.decision
        return {
            "id": r.id,
            "state": self.state(now),
            "caller": {"issuer": r.issuer, "subject": r.subject, "username": r.username},
            "server": r.server,
            "backend": r.backend,
            "tool": r.tool,
            "arguments": shown_arguments(r, self.keyring),
            "capture": r.capture,
            "args_sha256": r.args_sha256,
            "policy_version": r.policy_version,
            "rule": r.rule,
            "approvers": r.approvers,
            "count": r.count,
            "used": self.used,
            "requested_at": r.requested_at,
            "pending_until": r.pending_until,
            "decision": None
            if d is None
            else {"approved": d.approved, "by": d.by_username, "by_subject": d.by_subject, "reason": d.reason,
                  "at": d.at, "until": d.until},
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the processor does with a held call: pass it (``passed``), or refuse it naming ``entry``."""

    passed: bool
    entry: Entry
    message: str  # for the caller (and the record): why it is held, or which approval let it pass
    created: bool = False  # a new request was written

    def to_record(self, now: float) -> dict[str, Any]:
        """The ``approval`` field of the call's policy.decision event."""
        r, d = self.entry.request, self.entry.decision
        doc: dict[str, Any] = {"id": r.id, "state": "consumed" if self.passed else self.entry.state(now)}
        doc.update(args_sha256=r.args_sha256, policy_version=r.policy_version, requested=self.created)
        if d is not None:
            doc.update(approved=d.approved, by=d.by_username, by_subject=d.by_subject, until=d.until)
            if self.passed:
                doc["use"] = self.entry.used
        return doc
