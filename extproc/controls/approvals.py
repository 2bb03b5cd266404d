"""Approvals of one exact call: a person approves this caller's call of this tool with these arguments, once.

A call an ``effect: approve`` rule holds is not forwarded. The processor writes a signed *request* bound to the
caller (issuer + subject), the server and backend, the tool, the SHA-256 of the arguments' canonical JSON (RFC 8785)
and the policy version, and answers with its id and the viewer URL. An approver (never the caller; someone the
rule's ``approvers`` match) approves or denies it in the viewer, the audit API or ``mcp-extproc approvals``: a
signed *decision* beside the request. The identical retry then passes ``count`` times (1 by default) until the
decision's expiry; each pass is a signed *use* file.

Every file is signed with the gateway's Ed25519 key (recording.signing_key, the key that signs manifests; the audit
service holds it too) in the scheme of every signed file (``policy/signed.py``; the files themselves are in
``approval_files.py``), so a file written by hand is refused. Writes are atomic and the decision and every use are
created exclusively: two workers (or replicas sharing the directory) cannot both consume one use, and an approval
cannot be turned into a denial or back. Layout of the directory::

    <id>.request.json    who asked for which exact call, under which policy version, until when
    <id>.decision.json   approved or denied, by whom, why, usable until when
    <id>.use.<n>.json    the n-th identical call that passed (n = 1 .. count)
    <call>.<id>.call     empty: an index from the call (caller, server, backend, tool, arguments) to its requests

An entry's files are removed ``retention`` after nothing can happen to it any more (no longer decidable nor
usable): a processor sweeps the directory in the background, at most every ``SWEEP_EVERY`` seconds, after it wrote
a new request.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from extproc.authn.principal import Principal
from extproc.controls.approval_files import (
    ID,
    MAX_ARGUMENTS_SHOWN,
    ApprovalDoc,
    Binding,
    Decision,
    Entry,
    Outcome,
    Request,
    Use,
    seal_arguments,
)
from extproc.policy import signed
from extproc.policy.capture import CaptureLevel
from extproc.recording.manifest import Signer
from extproc.recording.shred import Keyring

log = logging.getLogger(__name__)

DEFAULT_RETENTION = 7 * 86400.0
SWEEP_EVERY = 600.0  # seconds between two sweeps of the directory by one store
_T = TypeVar("_T", bound=ApprovalDoc)


class ApprovalError(Exception):
    """An approve/deny that cannot be done; ``status`` is the audit API's answer (400, 403, 404, 409)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ApprovalStore:
    """The approvals directory, shared by every processor worker, replica and the audit service."""

    def __init__(
        self,
        directory: Path,
        signer: Signer,
        clock: Callable[[], float],
        *,
        keyring: Keyring | None = None,
        retention: float = DEFAULT_RETENTION,
    ) -> None:
        if signer.public is None:
            raise ValueError("approvals need recording.signing_key (every approval file is signed with it)")
        self.directory = directory
        self.signer = signer
        self.public: Ed25519PublicKey = signer.public
        self.clock = clock
        self.keyring = keyring  # recording.encrypt_payloads: arguments sealed per caller
        self.retention = retention
        self._swept = float("-inf")

    # --- files -----------------------------------------------------------------------------------------------

    def _read(self, path: Path, model: type[_T]) -> _T | None:
        """A verified file, or None (missing; unreadable, invalid or unsigned ones are logged and ignored)."""
        try:
            doc = model.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as e:
            log.error("approval file %s refused: %s", path, str(e).splitlines()[0])
            return None
        why = signed.verify(self.public, doc)
        if why is not None:
            log.error("approval file %s refused: %s", path, why)
            return None
        return doc

    def _create(self, name: str, doc: ApprovalDoc) -> bool:
        """Write ``name`` only if it does not exist yet: False when someone else wrote it first."""
        return signed.create(self.directory / name, signed.sign(self.signer, doc))

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
        return Entry(request, decision, used, self.keyring)

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
        capture: CaptureLevel = "redacted",
        exchange: str = "",
    ) -> Outcome:
        """Pass the call on a matching approval (one use, taken exclusively), else say why it is held: a pending
        request for the same call is reused, otherwise a new one is written (``arguments``: JSON text already at
        the ``capture`` level; sealed here when payloads are encrypted)."""
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
            if state == "approved" and e.decision is not None:
                taken = self._take(e, exchange, now)
                if taken is not None:
                    return Outcome(True, taken, f"approval {r.id} by {e.decision.by_username} (use {taken.used})")
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
        approval_id = f"ap-{secrets.token_hex(10)}"
        shown = arguments[:MAX_ARGUMENTS_SHOWN] if capture != "metadata" else ""
        sealed = None
        if self.keyring is not None and shown:
            subject = f"{binding.issuer}#{binding.subject}"  # as recordings name it (shred.subject_of)
            sealed = seal_arguments(self.keyring, subject, approval_id, binding.args_sha256, shown)
            shown = ""
        request = Request(
            id=approval_id,
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
            arguments=shown,
            exchange=exchange,
            capture=capture,
            sealed=sealed,
        )
        self._create(f"{request.id}.request.json", request)
        (self.directory / f"{binding.call_key()}.{request.id}.call").touch()  # the index entry: after the request
        written = self._read(self.directory / f"{request.id}.request.json", Request)
        if written is None:
            raise OSError(f"approval request {request.id} could not be written or read back")
        entry = Entry(written, None, 0, self.keyring)
        return Outcome(False, entry, "; ".join([f"approval {request.id} requested", *notes]), created=True)

    def _take(self, e: Entry, exchange: str, now: float) -> Entry | None:
        """Consume the next free use of an approved entry (O_EXCL per use: exactly one taker each); None if none is
        left."""
        for n in range(e.used + 1, e.request.count + 1):
            if self._create(f"{e.request.id}.use.{n}.json", Use(id=e.request.id, n=n, at=now, exchange=exchange)):
                return Entry(e.request, e.decision, n, self.keyring)
        return None

    def sweep_due(self) -> bool:
        """True (once per ``SWEEP_EVERY``) when this store should sweep: the caller runs ``sweep`` off the request."""
        now = self.clock()
        if now - self._swept < SWEEP_EVERY:
            return False
        self._swept = now
        return True

    def sweep(self) -> list[str]:
        """Remove the files of every entry that ended more than ``retention`` ago (and index files and temporary
        files left without a request that long); the removed approval ids. The request goes last, so a sweep cut
        short is finished by the next one."""
        now = self.clock()
        self._swept = now
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        removed: list[str] = []
        for name in names:
            if name.endswith(".request.json"):
                e = self.entry(name.removesuffix(".request.json"))
                if e is None:  # refused (logged): removed by age like a stray file
                    self._remove_stray(name, now)
                elif now - e.ends() > self.retention:
                    self._remove(e)
                    removed.append(e.request.id)
            elif name.endswith((".call", ".tmp")):
                self._remove_stray(name, now)
        return removed

    def _remove(self, e: Entry) -> None:
        rid = e.request.id
        uses = [f"{rid}.use.{n}.json" for n in range(e.used, 0, -1)]
        index = f"{e.request.binding().call_key()}.{rid}.call"
        for name in [index, *uses, f"{rid}.decision.json", f"{rid}.request.json"]:
            (self.directory / name).unlink(missing_ok=True)

    def _remove_stray(self, name: str, now: float) -> None:
        """An index or temporary file whose request is gone (or was never written), or a refused request file,
        older than the retention."""
        path = self.directory / name
        if name.endswith(".call") and (self.directory / f"{name.split('.')[1]}.request.json").exists():
            return
        try:
            if now - path.stat().st_mtime > self.retention:
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass

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
            id=r.id, request_sig=r.sig, approved=approve, by_issuer=who.issuer, by_subject=who.subject,
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
