"""Approvals of one exact call: a person approves this caller's call of this tool with these arguments, once.

A call an ``effect: approve`` rule holds is not forwarded. The processor writes a signed *request* bound to the
caller (issuer + subject), the server and backend, the tool, the SHA-256 of the arguments' canonical JSON (RFC 8785)
and the policy version, and answers with its id and the viewer URL. An approver (never the caller; someone the
rule's ``approvers`` match) approves or denies it in the viewer, the audit API or ``mcp-extproc approvals``: a
signed *decision* beside the request. The identical retry then passes ``count`` times (1 by default) until the
decision's expiry; each pass is a signed *use* file.

Every file is signed with the gateway's Ed25519 key (recording.signing_key, the key that signs manifests; the audit
service holds it too), so a file written by hand is refused. Writes are atomic (temporary file, rename) and the
decision and every use are created with O_EXCL: two workers (or replicas sharing the directory) cannot both consume
one use, and an approval cannot be turned into a denial or back. Layout of the directory::

    <id>.request.json    who asked for which exact call, under which policy version, until when
    <id>.decision.json   approved or denied, by whom, why, usable until when
    <id>.use.<n>.json    the n-th identical call that passed (n = 1 .. count)
    <call>.<id>.call     empty: an index from the call (caller, server, backend, tool, arguments) to its requests
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from extproc.authn.principal import Principal
from extproc.recording.manifest import Signer, check_signed

log = logging.getLogger(__name__)

ID = re.compile(r"^ap-[0-9a-f]{20}$")
State = Literal["pending", "approved", "denied", "expired", "used"]
MAX_ARGUMENTS_SHOWN = 16_384  # characters of the (redacted) arguments kept in a request for the approver to read


class ApprovalError(Exception):
    """An approve/deny that cannot be done; ``status`` is the audit API's answer (400, 403, 404, 409)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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


class _Signed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    key_id: str = ""
    sig: str = ""

    def signed_part(self) -> bytes:
        doc = self.model_dump()
        doc.pop("sig")
        return rfc8785.dumps(doc)


_T = TypeVar("_T", bound=_Signed)


class Request(_Signed):
    """``<id>.request.json``: a held call, as the processor saw it (arguments as the recording shows them)."""

    v: int = Field(1, ge=1, le=1)
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
    arguments: str  # redacted arguments (JSON text, cut at MAX_ARGUMENTS_SHOWN)
    exchange: str = ""

    def binding(self) -> Binding:
        return Binding(
            self.issuer, self.subject, self.server, self.backend, self.tool, self.args_sha256, self.policy_version
        )


class Decision(_Signed):
    """``<id>.decision.json``: the approver's answer, bound to the request by its signature."""

    v: int = Field(1, ge=1, le=1)
    id: Annotated[str, Field(pattern=ID.pattern)]
    request_sig: str
    approved: bool
    by_issuer: str
    by_subject: str
    by_username: str
    reason: Annotated[str, Field(max_length=500)]
    at: float
    until: float  # approved: usable until then


class Use(_Signed):
    """``<id>.use.<n>.json``: the n-th identical call that passed on this approval."""

    v: int = Field(1, ge=1, le=1)
    id: Annotated[str, Field(pattern=ID.pattern)]
    n: Annotated[int, Field(ge=1)]
    at: float
    exchange: str = ""


@dataclass(frozen=True, slots=True)
class Entry:
    """One request with its decision and uses, verified."""

    request: Request
    decision: Decision | None
    used: int

    def state(self, now: float) -> State:
        d = self.decision
        if d is None:
            return "pending" if now < self.request.pending_until else "expired"
        if not d.approved:
            return "denied"
        if self.used >= self.request.count:
            return "used"
        return "approved" if now < d.until else "expired"

    def to_json(self, now: float) -> dict[str, Any]:
        """The API's and the viewer's form (arguments as recorded, redactions applied)."""
        r, d = self.request, self.decision
        return {
            "id": r.id,
            "state": self.state(now),
            "caller": {"issuer": r.issuer, "subject": r.subject, "username": r.username},
            "server": r.server,
            "backend": r.backend,
            "tool": r.tool,
            "arguments": r.arguments,
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


class ApprovalStore:
    """The approvals directory, shared by every processor worker, replica and the audit service."""

    def __init__(self, directory: Path, signer: Signer, clock: Callable[[], float]) -> None:
        if signer.public is None:
            raise ValueError("approvals need recording.signing_key (every approval file is signed with it)")
        self.directory = directory
        self.signer = signer
        self.public: Ed25519PublicKey = signer.public
        self.clock = clock

    # --- files -----------------------------------------------------------------------------------------------

    def _sign(self, doc: _Signed) -> dict[str, Any]:
        doc = doc.model_copy(update={"key_id": self.signer.key_id, "sig": ""})
        return {**doc.model_dump(), "sig": self.signer.sign_bytes(doc.signed_part())}

    def _read(self, path: Path, model: type[_T]) -> _T | None:
        """A verified file, or None (missing; unreadable, invalid or unsigned ones are logged and ignored)."""
        try:
            doc = model.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as e:
            log.error("approval file %s refused: %s", path, str(e).splitlines()[0])
            return None
        why = check_signed(doc.sig, doc.key_id, doc.signed_part(), self.public, "approval file")
        if why is not None:
            log.error("approval file %s refused: %s", path, why)
            return None
        return doc

    def _create(self, name: str, doc: _Signed) -> bool:
        """Write ``name`` only if it does not exist yet (O_EXCL on a link of a complete temporary file): False
        when someone else wrote it first."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{name}.{secrets.token_hex(6)}.tmp"
        tmp.write_text(json.dumps(self._sign(doc), sort_keys=True) + "\n")
        try:
            os.link(tmp, self.directory / name)  # atomic and exclusive: fails when the name exists
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def entry(self, approval_id: str) -> Entry | None:
        """The request ``approval_id`` with its decision and uses, or None when there is no (valid) such request."""
        if not ID.match(approval_id):
            return None
        request = self._read(self.directory / f"{approval_id}.request.json", Request)
        if request is None or request.id != approval_id:
            return None
        decision = self._read(self.directory / f"{approval_id}.decision.json", Decision)
        if decision is not None and (decision.id != approval_id or decision.request_sig != request.sig):
            log.error("approval %s: decision does not belong to the request; ignored", approval_id)
            decision = None
        used = 0
        while (self.directory / f"{approval_id}.use.{used + 1}.json").exists():
            used += 1
        return Entry(request, decision, used)

    def entries(self) -> list[Entry]:
        """Every valid request, newest first."""
        try:
            names = [p.name for p in self.directory.iterdir() if p.name.endswith(".request.json")]
        except FileNotFoundError:
            return []
        found = [e for n in names if (e := self.entry(n.removesuffix(".request.json"))) is not None]
        return sorted(found, key=lambda e: -e.request.requested_at)

    def _same_call(self, binding: Binding) -> list[Entry]:
        """The requests indexed under this call (``<call key>.<id>.call``, empty files). The index only narrows
        what is read: each request is verified and compared in full, so a stray index file widens nothing."""
        prefix = binding.call_key() + "."
        try:
            names = [n for n in os.listdir(self.directory) if n.startswith(prefix) and n.endswith(".call")]
        except FileNotFoundError:
            return []
        found = [e for n in names if (e := self.entry(n[len(prefix) : -len(".call")])) is not None]
        return sorted(found, key=lambda e: -e.request.requested_at)

    # --- the processor's side --------------------------------------------------------------------------------

    def settle(
        self,
        binding: Binding,
        who: Principal,
        *,
        rule: str,
        approvers: str,
        ttl: float,
        count: int,
        arguments: str,
        exchange: str = "",
    ) -> Outcome:
        """Pass the call on a matching approval (one use, taken exclusively), else say why it is held: a pending
        request for the same call is reused, otherwise a new one is written."""
        now = self.clock()
        notes: list[str] = []
        waiting: Entry | None = None
        for e in self._same_call(binding):
            r = e.request
            if not r.binding().same_call(binding):
                continue
            state = e.state(now)
            if r.policy_version != binding.policy_version:
                if state in ("pending", "approved"):
                    notes.append(f"approval {r.id} was asked under another policy version (the policy changed)")
                continue
            if state == "approved":
                taken = self._take(e, exchange, now)
                if taken is not None:
                    return Outcome(True, taken, f"approval {r.id} by {e.decision.by_username} (use {taken.used})")  # type: ignore[union-attr]
                state = "used"
            if state == "pending" and waiting is None:
                waiting = e
            elif state == "used":
                notes.append(f"approval {r.id} was already used")
            elif state == "expired" and e.decision is not None:
                notes.append(f"approval {r.id} expired")
            elif state == "denied" and e.decision is not None:
                notes.append(f"approval {r.id} was denied by {e.decision.by_username}: {e.decision.reason[:200]}")
        if waiting is not None:
            return Outcome(False, waiting, "; ".join([f"approval {waiting.request.id} is still pending", *notes]))
        request = Request(
            v=1,
            id=f"ap-{secrets.token_hex(10)}",
            issuer=binding.issuer,
            subject=binding.subject,
            username=who.username,
            server=binding.server,
            backend=binding.backend,
            tool=binding.tool,
            args_sha256=binding.args_sha256,
            policy_version=binding.policy_version,
            rule=rule,
            approvers=approvers,
            ttl=ttl,
            count=count,
            requested_at=now,
            pending_until=now + ttl,
            arguments=arguments[:MAX_ARGUMENTS_SHOWN],
            exchange=exchange,
        )
        self._create(f"{request.id}.request.json", request)
        (self.directory / f"{binding.call_key()}.{request.id}.call").touch()  # the index entry: after the request
        signed = self._read(self.directory / f"{request.id}.request.json", Request)
        if signed is None:
            raise OSError(f"approval request {request.id} could not be written or read back")
        entry = Entry(signed, None, 0)
        return Outcome(False, entry, "; ".join([f"approval {request.id} requested", *notes]), created=True)

    def _take(self, e: Entry, exchange: str, now: float) -> Entry | None:
        """Consume the next free use of an approved entry (O_EXCL per use: exactly one taker each); None if none is
        left."""
        for n in range(e.used + 1, e.request.count + 1):
            if self._create(f"{e.request.id}.use.{n}.json", Use(v=1, id=e.request.id, n=n, at=now, exchange=exchange)):
                return Entry(e.request, e.decision, n)
        return None

    # --- the approver's side ---------------------------------------------------------------------------------

    def decide(
        self,
        approval_id: str,
        who: Principal,
        approve: bool,
        reason: str,
        may_approve: Callable[[Request], str | None],
    ) -> Entry:
        """Approve or deny a pending request; ApprovalError says why not. ``may_approve`` checks the policy: None
        when ``who`` is one of the rule's approvers under the request's policy version, else why not."""
        now = self.clock()
        e = self.entry(approval_id)
        if e is None:
            raise ApprovalError(404, "no such approval request")
        r = e.request
        if (who.issuer, who.subject) == (r.issuer, r.subject):
            raise ApprovalError(403, "nobody approves or denies their own call")
        if (why := may_approve(r)) is not None:
            raise ApprovalError(403, why)
        if e.decision is not None:
            raise ApprovalError(409, f"approval {r.id} was already {'approved' if e.decision.approved else 'denied'}")
        if now >= r.pending_until:
            raise ApprovalError(409, f"approval request {r.id} expired; the caller retries to ask again")
        if len(reason) > 500:
            raise ApprovalError(400, "reason: at most 500 characters")
        if not approve and not reason.strip():
            raise ApprovalError(400, "a denial needs a reason")
        decision = Decision(
            v=1, id=r.id, request_sig=r.sig, approved=approve, by_issuer=who.issuer, by_subject=who.subject,
            by_username=who.username, reason=reason, at=now, until=now + r.ttl if approve else now,
        )  # fmt: skip
        if not self._create(f"{r.id}.decision.json", decision):
            raise ApprovalError(409, f"approval {r.id} was decided by someone else just now")
        decided = self.entry(r.id)
        if decided is None:
            raise OSError(f"approval {r.id}: decision written but the request cannot be read back")
        return decided


def viewer_url(public_url: str | None, prefix: str | None, approval_id: str) -> str | None:
    """Where an approver opens a request in the web viewer (None without a public URL or an audit service)."""
    if not public_url or prefix is None:
        return None
    return f"{public_url.rstrip('/')}{prefix}approvals/{approval_id}"


def encode_arguments(arguments: object) -> str:
    """Redacted arguments as JSON text for the approver's page."""
    return json.dumps(arguments, ensure_ascii=False, sort_keys=True, default=str)
