"""DEVELOPMENT-ONLY RFC 8693 token endpoint of the development issuer: a real authorization server for tests.

What it enforces, in order (each failure is the RFC's error code, as a real IdP answers):
1. client authentication (RFC 6749 §2.3): client_secret_basic / client_secret_post against a registered secret,
   or private_key_jwt (RFC 7523: iss = sub = client_id, aud = the token endpoint or issuer, signature by the
   client's registered public key, not expired, jti not replayed) -> 401 ``invalid_client``;
2. the subject token: signed by this issuer, not expired -> 400 ``invalid_grant``;
3. ``may_act`` (RFC 8693 §4.4): when the subject token carries it, the client must be the one it names; with
   ``require_may_act`` a token without it cannot be exchanged -> 400 ``invalid_grant``;
4. audience/resource: every target must be registered -> 400 ``invalid_target``;
5. scopes: only down-scoping (what the target allows, and no more than the subject token has if it has a
   ``scope``) -> 400 ``invalid_scope``.
The issued token: sub/groups/username of the subject, aud = the targets, scope, exp no later than the subject
token's, and ``act`` naming the client (nesting the subject token's own ``act``: the delegation chain).
"""

from __future__ import annotations

import base64
import hmac
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import jwt

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Identity Assertion JWT Authorization Grant (enterprise-managed authorization): the IdP issues an ID-JAG by token
# exchange; the server's authorization server takes it in the JWT bearer grant (RFC 7523).
ID_JAG = "urn:ietf:params:oauth:token-type:id-jag"
ID_JAG_TYP = "oauth-id-jag+jwt"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GRANT_TYPES = (GRANT_TYPE, JWT_BEARER_GRANT)


@dataclass(frozen=True)
class DevClient:
    """A confidential client: a secret, or a public key for private_key_jwt."""

    client_id: str
    secret: str | None = None
    public_key: Any = None


@dataclass(frozen=True)
class DevTarget:
    """An audience or resource tokens may be exchanged for, with the scopes it allows."""

    name: str
    scopes: frozenset[str] = frozenset()
    ttl: int = 300
    clients: Mapping[str, str] = field(default_factory=dict)  # an authorization server: our client -> its client id


class _Refusal(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


@dataclass
class DevTokenExchange:
    """The token-exchange grant; ``verify`` checks a token of this issuer, ``mint`` signs one."""

    issuer: Callable[[], str]
    verify: Callable[[str], dict[str, Any]]
    mint: Callable[..., str]
    clients: dict[str, DevClient] = field(default_factory=dict)
    targets: dict[str, DevTarget] = field(default_factory=dict)
    require_may_act: bool = False
    cap_to_subject: bool = True  # issued tokens expire no later than the subject token (some IdPs do not)
    trusted_idps: dict[str, str] = field(default_factory=dict)  # as an authorization server: IdP issuer -> JWKS URL
    state: str = "up"  # test control: "up", "down" (503), "hang" (answers only when set up again)
    exchanges: int = 0  # token requests answered 200
    requests: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)  # (client, sub, targets, scope, outcome) per request
    _seen_jti: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _released: threading.Event = field(default_factory=threading.Event)

    def register_client(self, client_id: str, *, secret: str | None = None, public_key: Any = None) -> None:
        self.clients[client_id] = DevClient(client_id, secret, public_key)

    def add_target(
        self, name: str, scopes: Iterable[str] = (), ttl: int = 300, clients: Mapping[str, str] | None = None
    ) -> None:
        """``clients``: for an authorization server ID-JAGs are issued for, who each client is known as there."""
        self.targets[name] = DevTarget(name, frozenset(scopes), ttl, dict(clients or {}))

    def set_state(self, state: str) -> None:
        self.state = state
        if state == "hang":
            self._released.clear()
        else:
            self._released.set()

    def token(self, form: Mapping[str, str], authorization: str | None) -> tuple[int, dict[str, Any]]:
        """Answer one token-exchange request: (status, JSON body)."""
        with self._lock:
            self.requests += 1
        if self.state == "hang":
            self._released.wait(30)
        if self.state == "down":
            return 503, {"error": "temporarily_unavailable", "error_description": "token endpoint down (test)"}
        entry: dict[str, Any] = {"client": None, "sub": None, "targets": [], "scope": form.get("scope", "")}
        try:
            client = self._client(form, authorization)
            entry["client"] = client.client_id
            doc = self._exchange(form, client, entry)
        except _Refusal as r:
            entry["outcome"] = r.error
            with self._lock:
                self.log.append(entry)
            return r.status, {"error": r.error, "error_description": r.description}
        entry["outcome"] = "issued"
        with self._lock:
            self.log.append(entry)
            self.exchanges += 1
        return 200, doc

    # --- steps -----------------------------------------------------------------------------------------------

    def _client(self, form: Mapping[str, str], authorization: str | None) -> DevClient:
        if form.get("client_assertion_type") == JWT_BEARER:
            return self._assertion_client(form)
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):
            try:
                raw = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            except ValueError:
                raise _Refusal(401, "invalid_client", "malformed basic credentials") from None
            user, _, password = raw.partition(":")
            client_id, secret = unquote(user), unquote(password)
        client = self.clients.get(client_id or "")
        if client is None or client.secret is None or secret is None or not _equal(secret, client.secret):
            raise _Refusal(401, "invalid_client", "client authentication failed")
        return client

    def _assertion_client(self, form: Mapping[str, str]) -> DevClient:
        assertion = form.get("client_assertion", "")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _Refusal(401, "invalid_client", "client assertion is not a JWT") from None
        client = self.clients.get(str(unverified.get("iss", "")))
        if client is None or client.public_key is None:
            raise _Refusal(401, "invalid_client", "unknown client")
        issuer = self.issuer()
        try:
            claims = jwt.decode(
                assertion,
                client.public_key,
                algorithms=["RS256", "ES256", "EdDSA"],
                audience=[issuer, issuer + "/token"],
                options={"require": ["iss", "sub", "aud", "exp", "jti"]},
            )
        except jwt.PyJWTError as e:
            raise _Refusal(401, "invalid_client", f"client assertion rejected: {e}") from None
        if claims["sub"] != client.client_id or form.get("client_id", client.client_id) != client.client_id:
            raise _Refusal(401, "invalid_client", "client assertion sub is not the client")
        with self._lock:
            if claims["jti"] in self._seen_jti:
                raise _Refusal(401, "invalid_client", "client assertion replayed")
            self._seen_jti.add(claims["jti"])
        return client

    def trust_idp(self, issuer: str, jwks_url: str) -> None:
        """As the server's authorization server: accept ID-JAGs of this enterprise IdP."""
        self.trusted_idps[issuer] = jwks_url

    def _exchange(self, form: Mapping[str, str], client: DevClient, entry: dict[str, Any]) -> dict[str, Any]:
        if form.get("grant_type") == JWT_BEARER_GRANT:
            return self._jwt_bearer(form, client, entry)
        if form.get("grant_type") != GRANT_TYPE:
            raise _Refusal(400, "unsupported_grant_type", "only token exchange and the JWT bearer grant here")
        if form.get("subject_token_type") not in (ACCESS_TOKEN, "urn:ietf:params:oauth:token-type:jwt"):
            raise _Refusal(400, "invalid_request", "subject_token_type must be an access token")
        if "actor_token" in form:
            raise _Refusal(400, "invalid_request", "actor tokens are not supported; the client is the actor")
        try:
            subject = self.verify(form.get("subject_token", ""))
        except jwt.PyJWTError as e:
            raise _Refusal(400, "invalid_grant", f"subject token rejected: {e}") from None
        entry["sub"] = subject["sub"]
        may_act = subject.get("may_act")
        if may_act is not None and (not isinstance(may_act, dict) or may_act.get("sub") != client.client_id):
            raise _Refusal(400, "invalid_grant", f"client {client.client_id} may not act for {subject['sub']}")
        if may_act is None and self.require_may_act:
            raise _Refusal(400, "invalid_grant", "subject token has no may_act claim")
        names = [v for k in ("audience", "resource") if (v := form.get(k))]
        entry["targets"] = names
        if not names:
            raise _Refusal(400, "invalid_target", "audience or resource required")
        unknown = [n for n in names if n not in self.targets]
        if unknown:
            raise _Refusal(400, "invalid_target", f"unknown target {unknown[0]!r}")
        targets = [self.targets[n] for n in names]
        allowed = frozenset.intersection(*(t.scopes for t in targets))
        if isinstance(subject.get("scope"), str):
            allowed &= frozenset(subject["scope"].split())
        requested = frozenset(form.get("scope", "").split())
        if requested - allowed:
            raise _Refusal(400, "invalid_scope", f"scope {' '.join(sorted(requested - allowed))} not allowed")
        granted = requested or allowed
        now = int(time.time())
        if form.get("requested_token_type") == ID_JAG:
            return self._id_jag(form, client, subject, names, granted, now)
        exp = now + min(t.ttl for t in targets)
        exp = min(exp, int(subject["exp"])) if self.cap_to_subject else exp
        act: dict[str, Any] = {"sub": client.client_id}
        if isinstance(subject.get("act"), dict):
            act["act"] = subject["act"]
        token = self.mint(
            subject["sub"],
            aud=names[0] if len(names) == 1 else names,
            groups=subject.get("groups") or [],
            ttl=exp - now,
            extra_claims={
                "scope": " ".join(sorted(granted)),
                "act": act,
                "client_id": client.client_id,
                "preferred_username": subject.get("preferred_username", subject["sub"]),
            },
        )
        return {
            "access_token": token,
            "issued_token_type": ACCESS_TOKEN,
            "token_type": "Bearer",
            "expires_in": exp - now,
            "scope": " ".join(sorted(granted)),
        }

    def _id_jag(
        self,
        form: Mapping[str, str],
        client: DevClient,
        subject: dict[str, Any],
        names: list[str],
        granted: frozenset[str],
        now: int,
    ) -> dict[str, Any]:
        """An ID-JAG for the authorization server named in ``audience`` (the targets were checked)."""
        audience, resource = form.get("audience"), form.get("resource")
        if not audience or not resource:
            raise _Refusal(400, "invalid_request", "an ID-JAG needs audience (the authorization server) and resource")
        jag = self.mint(
            subject["sub"],
            aud=audience,
            groups=subject.get("groups") or [],
            ttl=min(300, int(subject["exp"]) - now),
            headers={"typ": ID_JAG_TYP},
            extra_claims={
                "client_id": self.targets[audience].clients.get(client.client_id, client.client_id),
                "resource": resource,
                "scope": " ".join(sorted(granted)),
            },
        )
        return {"access_token": jag, "issued_token_type": ID_JAG, "token_type": "N_A", "expires_in": 300}

    def _jwt_bearer(self, form: Mapping[str, str], client: DevClient, entry: dict[str, Any]) -> dict[str, Any]:
        """As the server's authorization server: an ID-JAG of a trusted IdP in, an access token for its resource out.
        The ID-JAG must be for this server (aud), typed as one, and issued to the client presenting it."""
        assertion = form.get("assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            iss = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
            if header.get("typ") != ID_JAG_TYP:
                raise jwt.InvalidTokenError(f"typ {header.get('typ')!r} is not {ID_JAG_TYP}")
            jwks = self.trusted_idps.get(str(iss))
            if jwks is None:
                raise jwt.InvalidIssuerError(f"issuer {iss!r} not trusted")
            key = jwt.PyJWKClient(jwks).get_signing_key_from_jwt(assertion).key
            claims = jwt.decode(
                assertion, key, algorithms=["RS256"], audience=self.issuer(), issuer=iss,
                options={"require": ["exp", "sub", "aud", "client_id", "resource"]},
            )  # fmt: skip
        except jwt.PyJWTError as e:
            raise _Refusal(400, "invalid_grant", f"assertion rejected: {e}") from None
        entry["sub"], entry["targets"] = claims["sub"], [claims["resource"]]
        if claims["client_id"] != client.client_id:
            raise _Refusal(400, "invalid_grant", "the ID-JAG was issued to another client")
        target = self.targets.get(claims["resource"])
        if target is None:
            raise _Refusal(400, "invalid_target", f"unknown resource {claims['resource']!r}")
        scopes = frozenset(str(claims.get("scope", "")).split()) & target.scopes
        token = self.mint(
            claims["sub"],
            aud=target.name,
            groups=claims.get("groups") or [],
            ttl=target.ttl,
            extra_claims={"scope": " ".join(sorted(scopes)), "client_id": client.client_id, "src_iss": iss},
        )
        return {"access_token": token, "issued_token_type": ACCESS_TOKEN, "token_type": "Bearer",
                "expires_in": target.ttl, "scope": " ".join(sorted(scopes))}  # fmt: skip


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
