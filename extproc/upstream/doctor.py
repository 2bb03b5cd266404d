"""`doctor`'s checks of each server's ``upstream_auth``: can the gateway obtain the credential it would send?

- token_exchange: discovery gives a token endpoint, and the gateway's client authentication is accepted there. With
  a test identity (``MCP_EXTPROC_DOCTOR_SUBJECT_TOKEN``: a token of a test user) a real exchange is made end to
  end; without one, a deliberately invalid subject token is presented: ``invalid_grant`` means the client was
  authenticated (the IdP looked at the grant), ``invalid_client`` that it was not.
- static: the file is readable and holds one line;
- assertion: the key loads (its kid is what the JWKS publishes).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import httpx
import jwt

from extproc.authn.principal import Principal
from extproc.errors import GatewayError
from extproc.upstream.assertion import AssertionKey
from extproc.upstream.base import ExchangeContext
from extproc.upstream.config import Assertion, Static, TokenExchange
from extproc.upstream.credentials import target
from extproc.upstream.files import WatchedFile
from extproc.upstream.token_exchange import ACCESS_TOKEN, GRANT_TYPE, MAX_RESPONSE_BYTES, TokenExchanger, json_document

if TYPE_CHECKING:
    from extproc.settings import Settings

SUBJECT_TOKEN_ENV = "MCP_EXTPROC_DOCTOR_SUBJECT_TOKEN"
Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True, slots=True)
class Finding:
    name: str
    status: Status
    detail: str
    hint: str = ""


def check_upstream_auth(s: Settings) -> Iterator[Finding]:
    """One finding per server (and backend) with ``upstream_auth``."""
    token = os.environ.get(SUBJECT_TOKEN_ENV, "").strip()
    configured = [(srv.name, srv.upstream_auth) for srv in s.servers] + [
        (target(srv.name, b.name), b.upstream_auth) for srv in s.servers for b in srv.backends or []
    ]
    for upstream, cfg in configured:
        name = f"upstream_auth {upstream}"
        if cfg is None:
            continue
        try:
            if isinstance(cfg, Static):
                WatchedFile(cfg.file, lambda: 0.0).value()
                yield Finding(name, "ok", f"static credential in {cfg.file} readable, sent as {cfg.header}")
            elif isinstance(cfg, Assertion):
                key = AssertionKey(cfg.key_file)
                yield Finding(name, "ok", f"assertion key {key.alg} kid {key.kid} for audience {cfg.audience}")
            elif isinstance(cfg, TokenExchange):
                issuers = [cfg.issuer] if cfg.issuer else [i.issuer for i in (s.auth.issuers if s.auth else [])]
                for issuer in issuers:
                    yield asyncio.run(_probe_exchange(upstream, cfg, issuer, token))
        except (OSError, ValueError) as e:
            yield Finding(name, "fail", f"{type(e).__name__}: {e}", "fix the file named (mounted Secret, mode)")


async def _probe_exchange(server: str, cfg: TokenExchange, issuer: str, subject_token: str) -> Finding:
    name = f"upstream_auth {server} at {issuer}"
    async with httpx.AsyncClient(follow_redirects=False) as http:
        tx = TokenExchanger(server, cfg, http)
        ctx = ExchangeContext("doctor", "doctor", None, subject_token)
        if subject_token:
            claims = jwt.decode(subject_token, options={"verify_signature": False})
            who = Principal(str(claims.get("iss", "")), str(claims.get("sub", "")), str(claims.get("sub", "")))
            if who.issuer != issuer:
                return Finding(name, "skip", f"the test token is of issuer {who.issuer}")
            try:
                headers = await tx.headers_for(who, server, ctx)
            except GatewayError as e:
                return Finding(name, "fail", str(e), "see the IdP's error code: client registration, audience, scopes")
            issued = headers["authorization"].removeprefix("Bearer ")
            return Finding(name, "ok", f"exchanged the test identity's token for one of {len(issued)} bytes")
        try:
            endpoint = await tx.token_endpoint(issuer)
            form = {"grant_type": GRANT_TYPE, "subject_token": "doctor-probe", "subject_token_type": ACCESS_TOKEN}
            form.update({k: v for k, v in (("audience", cfg.audience), ("resource", cfg.resource)) if v})
            headers = {"accept": "application/json"}
            tx.client_authentication(form, headers, endpoint)
            resp = await http.post(endpoint, data=form, headers=headers, timeout=cfg.timeout_s)
        except (GatewayError, httpx.HTTPError, OSError, ValueError) as e:
            return Finding(name, "fail", f"{type(e).__name__}: {e}", f"make {issuer} reachable; check the secret file")
    doc = json_document(resp.content[:MAX_RESPONSE_BYTES])
    code = doc.get("error") if isinstance(doc, dict) else None
    if code in ("invalid_grant", "invalid_request", "invalid_token"):
        detail = f"client {cfg.client_id} authenticated at {endpoint} (set {SUBJECT_TOKEN_ENV} to a test user's token"
        return Finding(name, "ok", detail + " for a full exchange)")
    if code in ("invalid_client", "unauthorized_client"):
        hint = "register the gateway as a confidential client; check client_id and the secret or key"
        return Finding(name, "fail", f"{endpoint} refused client {cfg.client_id}: {code}", hint)
    detail = f"{endpoint} answered HTTP {resp.status_code} {code or ''}".strip()
    return Finding(name, "warn", detail, "does the issuer support token exchange (RFC 8693)?")
