"""Two error hierarchies: refusals the client reads, and failures only the operator can fix.

A ``GatewayError`` knows its safe client message, HTTP status and JSON-RPC code. Internal detail (stack, upstream
text, key ids) goes to the log bound to the exchange id; only ``client_message`` ever leaves the gateway. The
mapping to an HTTP reply lives in ``extproc.envoy.responses``. An ``OperatorError`` never reaches a client as
itself: it stops a load (``ConfigError``) or fails a write (``StoreError``), and where a request depends on it the
exchange answers with the matching refusal (``RecordingUnavailable``) instead.

    Exception
    ├── OperatorError                   no HTTP status: a file, a disk or a bucket to fix
    │   ├── ConfigError                 gateway.yaml, a policy, a grant, a key: names the file and the key
    │   └── StoreError                  the spool or the store failed a write
    └── GatewayError                    a refusal: status, JSON-RPC code, safe client message
        ├── NotFound                    404 no MCP server at this path
        ├── MethodNotAllowed            405
        ├── BodyTooLarge                413
        ├── InvalidRequest              400 not JSON-RPC we can forward
        │   ├── HeaderMismatch          400 stateless headers disagree with the body
        │   └── InvalidEnvelope         400 stateless request without params._meta
        ├── RemovedMethod               404 a method the request's revision removed
        ├── AuthError                   401 (WWW-Authenticate); this family lives in extproc/authn/errors.py
        │   ├── MissingToken
        │   ├── TokenError              TokenTooLarge, MalformedToken, TokenExpired, TokenNotYetValid,
        │   │                           WrongAudience, WrongIssuer, BadSignature, AlgorithmNotAllowed,
        │   │                           MissingClaim, UnknownKeyId
        │   └── IssuerUnavailable       503 no signing keys from the issuer
        ├── Forbidden                   403 OriginNotAllowed, SessionNotYours, PolicyDenied,
        │                               UpstreamIdentityRefused (the IdP refused the server's credential),
        │                               ToolWithheld (a changed or unapproved tool, prompt or resource),
        │                               ApprovalRequired (an approve rule holds the call until a person approves;
        │                               ApprovalInputRequired: 200, to a 2026-07-28 client an input_required result
        │                               with a URL elicitation instead of the error),
        │                               GuardrailDenied (the server's outside guardrail said deny)
        ├── AuthorizationUnavailable    503 a SubjectAccessReview gave no answer
        ├── BudgetExceeded              429 a rule's limit is spent (Retry-After)
        ├── BudgetUnavailable           503 the budget counter store failed, the rule fails closed


        ├── ApprovalsUnavailable        503 an approve rule holds the call and the approvals store cannot be used
        ├── GuardrailUnavailable        503 the server's guardrail gave no valid answer in time (on_error: closed)
        ├── ReservedSessionId           502 the server named its session like a gateway recording unit
        ├── EncodedResponse             502 a Content-Encoding the processor cannot read
        ├── Overloaded                  503 the worker's event loop is too far behind
        ├── RecordingUnavailable        503 with recording.required, the exchange cannot be recorded
        ├── UpstreamIdentityUnavailable 503 no credential for the server (IdP down, secret unreadable)
        └── (routing.UpstreamUnresolved, and refusals of other modules)
"""

from __future__ import annotations

from typing import ClassVar


class OperatorError(Exception):
    """Base class: a failure the operator fixes (a file, a disk, a bucket); it has no HTTP status."""


class ConfigError(OperatorError):
    """gateway.yaml (or another config file) is invalid; the message names the file and key."""


class StoreError(OperatorError):
    """The recording spool or store failed; with recording.required a request depending on it is refused
    (``RecordingUnavailable``)."""


class GatewayError(Exception):
    """Base class: something the gateway refuses, with a message safe to show the client."""

    status: int = 500
    jsonrpc_code: int = -32603  # JSON-RPC "internal error"
    client_message: str = "internal gateway error"
    # The refusal's name in the refusals metric, the recorded reason and Envoy's response details; default: the
    # class name. Set only to keep a published name when a class is renamed.
    published_name: ClassVar[str] = ""

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.client_message)

    @property
    def safe_message(self) -> str:
        """What the client may read."""
        return self.client_message

    @property
    def refusal_name(self) -> str:
        """The name metrics, recordings and Envoy's response details give this refusal."""
        return self.published_name or type(self).__name__


# --- request shape -------------------------------------------------------------------------------------------


class NotFound(GatewayError):
    """The path does not belong to any configured MCP server."""

    status = 404
    jsonrpc_code = -32601
    client_message = "no MCP server at this path"


class MethodNotAllowed(GatewayError):
    """An HTTP method MCP's Streamable HTTP transport does not use (only POST, GET and DELETE are)."""

    status = 405
    jsonrpc_code = -32600
    client_message = "method not allowed; MCP uses POST, GET and DELETE"

    def __init__(self, method: str) -> None:
        super().__init__(f"HTTP method {method[:20]!r} not allowed")


class BodyTooLarge(GatewayError):
    """Request body over the configured limit."""

    status = 413
    jsonrpc_code = -32600
    client_message = "request body too large"


class InvalidRequest(GatewayError):
    """The body is not a JSON-RPC request we can forward."""

    status = 400
    jsonrpc_code = -32700
    client_message = "request body is not valid JSON-RPC"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.client_message = detail


class HeaderMismatch(InvalidRequest):
    """A stateless (2026-07-28) request whose MCP headers disagree with its body: the spec's HEADER_MISMATCH."""

    jsonrpc_code = -32020


class RemovedMethod(GatewayError):
    """A stateless request naming a method its revision removed: the spec's answer, METHOD_NOT_FOUND."""

    status = 404
    jsonrpc_code = -32601

    def __init__(self, method: str, revision: str) -> None:
        super().__init__(f"method {method[:80]!r} does not exist at {revision}")
        self.client_message = f"Method not found: {method[:80]}"


class InvalidEnvelope(InvalidRequest):
    """A request claiming a stateless revision without the ``params._meta`` envelope it requires."""

    jsonrpc_code = -32602


# --- authorization (403) -------------------------------------------------------------------------------------


class Forbidden(GatewayError):
    status = 403
    jsonrpc_code = -32003
    client_message = "forbidden"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.client_message = detail


class OriginNotAllowed(Forbidden):
    def __init__(self, origin: str) -> None:
        super().__init__(f"origin {origin[:200]!r} not allowed")


class SessionNotYours(Forbidden):
    def __init__(self) -> None:
        super().__init__("session belongs to another identity")


class PolicyDenied(Forbidden):
    """A policy rule (or the default) denied the call."""

    def __init__(self, rule: str, what: str) -> None:
        super().__init__(f"denied by policy rule {rule!r}: {what}")
        self.rule = rule


class ToolWithheld(Forbidden):
    """Tool-surface integrity: the item's definition changed since it was pinned (or a screen flagged it) and is
    hidden, or its server is blocked, until a person approves (``mcp-extproc pins approve``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"refused by tool-surface integrity: {reason[:300]}")


class GuardrailDenied(Forbidden):
    """The server's outside guardrail (``servers[].guardrail``) denied a call the policy allowed."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"denied by the guardrail: {what}" + (f" ({reason[:300]})" if reason else ""))


class GuardrailUnavailable(GatewayError):
    """The server's guardrail gave no valid answer in time and fails closed: the call is refused."""

    status = 503
    jsonrpc_code = -32005
    client_message = "guardrail unavailable; request refused"


class AuthorizationUnavailable(GatewayError):
    """A policy rule needs an outside authority's answer (a Kubernetes SubjectAccessReview) and it gave none."""

    status = 503
    jsonrpc_code = -32005
    client_message = "authorization service unavailable; request refused"


# --- budgets (extproc/controls/budgets.py) -------------------------------------------------------------------


class BudgetExceeded(GatewayError):
    """The call would spend more than one of its rule's limits allow (``limits:``): HTTP 429 with Retry-After."""

    status = 429
    jsonrpc_code = -32029
    client_message = "budget exceeded"

    def __init__(self, rule: str, limit: str, retry_after: int) -> None:
        super().__init__(f"budget of policy rule {rule!r} exceeded: {limit}; retry after {retry_after} s")
        self.client_message = str(self)
        self.rule, self.limit, self.retry_after = rule, limit, retry_after


class BudgetUnavailable(GatewayError):
    """The shared budget counter (Redis) did not answer and the rule says ``on_store_error: closed``."""

    status = 503
    jsonrpc_code = -32005
    client_message = "budget counter unavailable; request refused"


class ApprovalRequired(Forbidden):
    """An ``effect: approve`` rule holds the call: it passes once a person approves this exact call (the error
    names the approval id and where to approve it); an identical retry after that passes."""

    jsonrpc_code = -32006

    def __init__(self, approval_id: str, message: str, url: str | None) -> None:
        where = f"; approve at {url}" if url else f"; approve with `mcp-extproc approvals approve {approval_id}`"
        super().__init__(f"approval required: {message[:600]}{where}; then retry the identical call")
        self.approval_id = approval_id
        self.url = url


class ApprovalInputRequired(ApprovalRequired):
    """The same hold, answered to a 2026-07-28 client that can open URLs as an ``input_required`` result (HTTP 200)
    asking it to open the approval page: its SDK shows the URL and retries the call by itself."""

    status = 200


class ApprovalsUnavailable(GatewayError):
    """An approve rule holds the call and the approvals store is not configured or cannot be written: refused."""

    status = 503
    jsonrpc_code = -32005
    client_message = "approvals unavailable; a call that needs approval is refused"


# --- upstream (502) -----------------------------------------------------------------------------------------


class ReservedSessionId(GatewayError):
    """The server named its session like a name the gateway reserves (see extproc/reserved.py)."""

    status = 502
    jsonrpc_code = -32603
    client_message = "MCP server sent a session id the gateway cannot record under"

    def __init__(self, session: str) -> None:
        super().__init__(f"upstream session id {session[:60]!r} uses a reserved recording prefix")


class EncodedResponse(GatewayError):
    """The server answered with a Content-Encoding the processor cannot read, where it must filter or redact."""

    status = 502
    jsonrpc_code = -32603
    client_message = "MCP server sent an encoded response the gateway cannot inspect"

    def __init__(self, encoding: str) -> None:
        super().__init__(f"upstream response has content-encoding {encoding[:40]!r}")


class Overloaded(GatewayError):
    """The worker's event loop runs too far behind: a new exchange is refused before it adds to the queue."""

    status = 503
    jsonrpc_code = -32005
    client_message = "gateway overloaded; retry later"


# --- recording (503) -----------------------------------------------------------------------------------------


class RecordingUnavailable(GatewayError):
    """With recording.required, the exchange cannot be recorded (the spool or store failed, or the recorder is
    not accepting events): it is refused before anything goes upstream."""

    status = 503
    jsonrpc_code = -32004
    client_message = "recording unavailable; request refused"
    published_name = "StoreError"  # the refusal's name in metrics and replies before operator errors had a base


# --- identity to the upstream (extproc/upstream/) -----------------------------------------------------------


class UpstreamIdentityUnavailable(GatewayError):
    """The credential for the server could not be obtained (the IdP down, slow or answering nonsense, a secret
    file unreadable): the call is refused, never sent with a weaker identity."""

    status = 503
    jsonrpc_code = -32005

    def __init__(self, detail: str, request_id: str = "") -> None:
        super().__init__(detail)
        self.refused: dict[str, object] | None = None  # what is recorded: the IdP's answer, or why there was none
        self.client_message = "upstream identity unavailable" + (f" (request {request_id[:64]})" if request_id else "")


class UpstreamIdentityRefused(Forbidden):
    """The identity provider refused to issue a credential for this caller and server (RFC 6749 error code)."""

    def __init__(self, code: str, server: str, request_id: str = "") -> None:
        GatewayError.__init__(self, f"identity provider refused a credential for server {server!r}: {code}")
        self.code, self.server = code, server
        self.refused: dict[str, object] | None = None
        rid = f" (request {request_id[:64]})" if request_id else ""
        self.client_message = f"identity provider refused a credential for server {server!r}: {code}{rid}"
