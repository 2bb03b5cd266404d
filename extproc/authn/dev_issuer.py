"""DEVELOPMENT-ONLY OIDC issuer. NEVER USE IT IN PRODUCTION.

It publishes discovery and a JWKS over plain HTTP on loopback, and mints any token for anyone: its login page
(``dev_login.py``) asks only for a name, there is no client authentication and the private keys sit unencrypted
in a directory. It exists so tests, the demo and a developer laptop have a real issuer to talk to.

Key directory layout: ``<kid>.pem`` (RSA private keys, mode 0600), ``current`` (the kid new tokens are signed
with) and ``issuer.url`` (written when serving, so ``token`` can mint without a running server).
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from extproc.authn.dev_login import DevLogin
from extproc.authn.dev_token_exchange import GRANT_TYPE as TOKEN_EXCHANGE
from extproc.authn.dev_token_exchange import GRANT_TYPES, JWT_BEARER_GRANT, DevTokenExchange

log = logging.getLogger(__name__)

WARNING = "DEVELOPMENT-ONLY issuer: mints tokens for anyone, keys unprotected on disk. NEVER USE IN PRODUCTION."
DEFAULT_ISSUER = "http://127.0.0.1:9400"
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]  # token exchange only


class KeyDir:
    """RSA signing keys persisted in a directory; the newest is ``current``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._loaded: dict[str, rsa.RSAPrivateKey] = {}
        if not (self.path / "current").exists():
            self.rotate()

    @property
    def current_kid(self) -> str:
        return (self.path / "current").read_text().strip()

    def private_key(self, kid: str) -> rsa.RSAPrivateKey:
        if kid not in self._loaded:
            pem = (self.path / f"{kid}.pem").read_bytes()
            # Our own freshly generated keys: skip cryptography's slow RSA consistency check.
            key = serialization.load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)
            assert isinstance(key, rsa.RSAPrivateKey)
            self._loaded[kid] = key
        return self._loaded[kid]

    def jwks(self) -> dict[str, Any]:
        """Public halves of every key in the directory."""
        keys = []
        for pem in sorted(self.path.glob("*.pem")):
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key(pem.stem).public_key(), as_dict=True)
            keys.append({**jwk, "kid": pem.stem, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    def rotate(self, keep_previous: bool = True) -> str:
        """Generate a new current key; with ``keep_previous=False`` older keys are deleted (unpublished)."""
        kid = f"dev-{secrets.token_hex(6)}"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        target = self.path / f"{kid}.pem"
        target.touch(mode=0o600)
        target.write_bytes(pem)
        if not keep_previous:
            for old in self.path.glob("*.pem"):
                if old != target:
                    old.unlink()
        (self.path / "current").write_text(kid + "\n")
        return kid

    @property
    def issuer(self) -> str:
        """The issuer URL last served from this directory (or the CLI default)."""
        f = self.path / "issuer.url"
        return f.read_text().strip() if f.exists() else DEFAULT_ISSUER

    def mint(
        self,
        sub: str,
        *,
        aud: str | Sequence[str],
        groups: Sequence[str] = (),
        ttl: int = 3600,
        issuer: str | None = None,
        extra_claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
        kid: str | None = None,
        key: Any = None,
        alg: str = "RS256",
    ) -> str:
        """A signed token. None values in ``extra_claims``/``headers`` delete that entry; ``kid``/``key`` override."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "sub": sub,
            "aud": aud if isinstance(aud, str) else list(aud),
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": secrets.token_hex(8),
            "preferred_username": sub,
            "groups": list(groups),
        }
        for name, value in (extra_claims or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        current = self.current_kid
        signer = key if key is not None else self.private_key(current)
        header = {"kid": kid or current, **(headers or {})}
        header = {name: value for name, value in header.items() if value is not None}
        return jwt.encode(claims, signer, algorithm=alg, headers=header)


def mint_token(key_dir: str | Path, sub: str, *, aud: str | Sequence[str], **kwargs: Any) -> str:
    """Mint with the persisted key, no server needed. DEVELOPMENT ONLY."""
    return KeyDir(key_dir).mint(sub, aud=aud, **kwargs)


class DevIssuer:
    """DEVELOPMENT-ONLY issuer served over real HTTP on loopback. Use as a context manager in tests.

    A stdlib threading HTTP server: two tiny JSON endpoints need no framework, and it stops in milliseconds.
    """

    def __init__(self, key_dir: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        if host not in _LOOPBACK:
            raise ValueError(f"the development issuer only listens on loopback, not {host!r}")
        self.keys = KeyDir(key_dir)
        self._jwks = self.keys.jwks()
        self._jwks_down = False
        self._lock = threading.Lock()
        self._jwks_fetches = 0
        server_class = _HttpServer6 if ":" in host else ThreadingHTTPServer
        self._http = server_class((host, port), _handler(self))
        bound_port = self._http.server_address[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{bound_port}"
        (self.keys.path / "issuer.url").write_text(self.url + "\n")
        self._thread: threading.Thread | None = None
        self.login = DevLogin(self.mint)
        self.token_exchange = DevTokenExchange(lambda: self.url, self.verify, self.mint)

    # --- serving -----------------------------------------------------------------------------------------

    def start(self) -> DevIssuer:
        """Serve in a background thread (the socket already listens, so requests work immediately)."""
        log.warning("%s Serving %s", WARNING, self.url)
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, name="dev-issuer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join()
            self._thread = None
        self._http.server_close()

    def serve_forever(self) -> None:
        """Serve in the calling thread until Ctrl-C (for the CLI)."""
        log.warning("%s Serving %s (Ctrl-C to stop)", WARNING, self.url)
        try:
            self._http.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self._http.server_close()

    def __enter__(self) -> DevIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test controls -----------------------------------------------------------------------------------

    @property
    def jwks_fetches(self) -> int:
        with self._lock:
            return self._jwks_fetches

    def set_jwks_down(self, down: bool) -> None:
        """While down, the JWKS endpoint answers 503 (discovery keeps working)."""
        self._jwks_down = down

    def rotate(self, keep_previous: bool = True) -> str:
        """Publish a new key and sign new tokens with it; returns its kid."""
        kid = self.keys.rotate(keep_previous)
        self._jwks = self.keys.jwks()
        return kid

    def mint(self, sub: str, *, aud: str | Sequence[str], **kwargs: Any) -> str:
        """A token from this issuer; see ``KeyDir.mint`` for the options."""
        kwargs.setdefault("issuer", self.url)
        return self.keys.mint(sub, aud=aud, **kwargs)

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token this issuer signed (any audience); raises ``jwt.PyJWTError``."""
        kid = jwt.get_unverified_header(token).get("kid")
        if not isinstance(kid, str) or not (self.keys.path / f"{kid}.pem").exists():
            raise jwt.InvalidKeyError("unknown key id")
        key = self.keys.private_key(kid).public_key()
        return jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            issuer=self.url,
            options={"verify_aud": False, "require": ["iss", "sub", "exp"]},
        )

    # --- endpoints ---------------------------------------------------------------------------------------

    def respond(self, path: str) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) for a GET of ``path``."""
        if path == "/.well-known/openid-configuration":
            return 200, {
                "issuer": self.url,
                "jwks_uri": f"{self.url}/jwks",
                "id_token_signing_alg_values_supported": ["RS256"],
                "subject_types_supported": ["public"],
                "response_types_supported": ["code"],
                "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token",
                "grant_types_supported": ["authorization_code", TOKEN_EXCHANGE, JWT_BEARER_GRANT],
                "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
                "code_challenge_methods_supported": ["S256"],
                "x-warning": WARNING,
            }
        if path == "/jwks":
            with self._lock:
                self._jwks_fetches += 1
            if self._jwks_down:
                return 503, {"error": "temporarily unavailable"}
            return 200, self._jwks
        return 404, {"error": "not found"}


class _HttpServer6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler(issuer: DevIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if path == "/authorize":
                status, page = issuer.login.login_page(dict(parse_qsl(query)))
                return self._send(status, page.encode(), "text/html; charset=utf-8")
            status, doc = issuer.respond(path)
            self._send(status, json.dumps(doc).encode(), "application/json")

        def do_POST(self) -> None:
            size = min(int(self.headers.get("content-length") or 0), 64 << 10)
            form = dict(parse_qsl(self.rfile.read(size).decode("utf-8", "replace")))
            path = self.path.split("?", 1)[0]
            if path == "/authorize":
                status, doc = issuer.login.authorize(form)
                if status == 302:
                    return self._send(302, b"", "text/plain", {"location": doc["location"]})
            elif path == "/token" and form.get("grant_type") in GRANT_TYPES:
                status, doc = issuer.token_exchange.token(form, self.headers.get("authorization"))
            elif path == "/token":
                status, doc = issuer.login.token(form)
            else:
                status, doc = 404, {"error": "not found"}
            self._send(status, json.dumps(doc).encode(), "application/json", {"cache-control": "no-store"})

        def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("dev issuer: " + format, *args)

    return Handler
