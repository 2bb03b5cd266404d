"""Authentication refusals (401, and 503 when the issuer's keys are out of reach): the ``AuthError`` branch of the
one refusal tree drawn at the top of ``extproc/errors.py``. Each knows its RFC 6750 ``error`` code for
WWW-Authenticate (``extproc/authn/challenge.py``) besides its status, JSON-RPC code and safe message.
"""

from __future__ import annotations

from extproc.errors import GatewayError


class AuthError(GatewayError):
    """The caller is not authenticated. ``client_message`` goes into WWW-Authenticate's error_description."""

    status = 401
    jsonrpc_code = -32001
    client_message = "authentication required"
    oauth_error: str | None = "invalid_token"  # RFC 6750 error code; None for "no credentials at all"

    def __init__(self, description: str | None = None) -> None:
        super().__init__(description or self.client_message)
        if description:
            self.client_message = description


class MissingToken(AuthError):
    """No bearer token in the Authorization header."""

    client_message = "bearer token required"
    oauth_error = None


class TokenError(AuthError):
    """A token was presented but is not acceptable."""

    client_message = "invalid token"


class TokenTooLarge(TokenError):
    client_message = "token too large"


class MalformedToken(TokenError):
    client_message = "token is not a well-formed JWT"


class TokenExpired(TokenError):
    client_message = "token expired"


class TokenNotYetValid(TokenError):
    client_message = "token not yet valid"


class WrongAudience(TokenError):
    client_message = "token audience is not this resource"


class WrongIssuer(TokenError):
    """The token's ``iss`` is none of the configured issuers. The client reads its own token's issuer back; the
    log (the exception text) also names the trusted ones, which are configuration and stay inside."""

    client_message = "token issuer is not trusted"

    def __init__(self, issuer: str | None = None, trusted: tuple[str, ...] = ()) -> None:
        if issuer is None:
            GatewayError.__init__(self, self.client_message)
            return
        named = repr(issuer[:200])  # the caller's own claim: safe to echo, shortened (it is attacker-chosen)
        GatewayError.__init__(self, f"token issuer {named} is not trusted; trusted: {', '.join(trusted) or 'none'}")
        self.client_message = f"token issuer {named} is not trusted"


class BadSignature(TokenError):
    client_message = "token signature invalid"


class AlgorithmNotAllowed(TokenError):
    def __init__(self, alg: str) -> None:
        super().__init__(f"token algorithm {alg!r} not allowed")


class MissingClaim(TokenError):
    def __init__(self, claim: str) -> None:
        super().__init__(f"token is missing required claim {claim!r}")


class UnknownKeyId(TokenError):
    """The token names a signing key the issuer does not publish."""

    def __init__(self, kid: str) -> None:
        # The kid is attacker-chosen: keep it short in the message.
        super().__init__(f"token signed with unknown key id {kid[:64]!r}")


class IssuerUnavailable(AuthError):
    """No signing keys could be obtained from the issuer (cold start with the IdP unreachable)."""

    status = 503
    jsonrpc_code = -32002
    client_message = "identity provider keys unavailable; try again later"
    oauth_error = None
