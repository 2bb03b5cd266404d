"""What every audit endpoint needs: identity, policy, index, store, trail; and the one way to answer an error."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.requests import Request
from starlette.responses import JSONResponse

from extproc.audit.authz import grants_for
from extproc.audit.index import Grant, SessionIndex
from extproc.audit.trail import AuditTrail
from extproc.authn.challenge import www_authenticate
from extproc.authn.errors import AuthError
from extproc.authn.principal import Principal
from extproc.authn.verify import Authenticator
from extproc.controls.approvals import ApprovalStore
from extproc.policy.compiled import CompiledPolicy
from extproc.recording.shred import Keyring
from extproc.recording.store import Store

log = logging.getLogger(__name__)


class PolicySource(Protocol):
    current: CompiledPolicy


class ApiError(Exception):
    """An API refusal with a status and a message safe to show."""

    def __init__(self, status: int, message: str, result: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.result = result  # the word the audit trail records


def not_found() -> ApiError:
    """The same answer for "no such session" and "not yours to see": existence is never revealed."""
    return ApiError(404, "no such session", "not_found")


class CookieLogins(Protocol):
    def principal(self, request: Request) -> Principal | None: ...


@dataclass
class AuditContext:
    authenticator: Authenticator
    policy: PolicySource
    index: SessionIndex
    store: Store
    trail: AuditTrail
    public_key: Ed25519PublicKey | None
    metadata_url: str  # the gateway's resource metadata URL, named in every 401 challenge
    logins: CookieLogins | None = None
    approvals: ApprovalStore | None = None  # held calls (effect: approve) people approve here

    keyring: Keyring | None = None  # opens payloads sealed per subject (recording.encrypt_payloads)

    async def identify(self, request: Request) -> Principal:
        """The caller: a web viewer login (cookie) or a bearer token, verified by the gateway's own code."""
        if self.logins is not None and "authorization" not in request.headers:
            who = await asyncio.to_thread(self.logins.principal, request)  # may read the shared index
            if who is not None:
                return who
        return await self.authenticator.authenticate(request.headers.get("authorization"))

    def grants(self, who: Principal) -> list[Grant]:
        return grants_for(self.policy.current, who)


def client_of(request: Request) -> str:
    """From where: the caller as the gateway's listener saw it (x-forwarded-for's last hop), else the peer."""
    forwarded = request.headers.get("x-forwarded-for", "")
    peer = request.client.host if request.client else ""
    last = forwarded.rsplit(",", 1)[-1].strip()
    return f"{last} via {peer}" if last else peer


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status, headers=headers)


def auth_error_response(e: AuthError, metadata_url: str) -> JSONResponse:
    """401 with the WWW-Authenticate challenge the gateway gives; 503 when the issuer's keys are unavailable."""
    headers = {"www-authenticate": www_authenticate(e, metadata_url)} if e.status == 401 else {}
    return error_response(e.status, e.safe_message, headers)


def json_default(o: Any) -> Any:
    return str(o)
