"""The OpenAPI document of the audit API, written out (not generated) so it reads as the contract it is.

A unit test checks that its paths are exactly the API routes.
"""

from __future__ import annotations

from typing import Any

_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"status": {"type": "integer"}, "message": {"type": "string"}},
            "required": ["status", "message"],
        }
    },
}
_SESSION = {
    "type": "object",
    "properties": {
        "session": {"type": "string", "description": "recording key; use it in the paths below"},
        "id": {"type": "string", "description": "the MCP session id as recorded"},
        "server": {"type": "string"},
        "user": {"type": "string"},
        "started": {"type": "number", "description": "Unix seconds"},
        "ended": {"type": "number"},
        "state": {"enum": ["complete", "incomplete", "open"]},
        "verified": {"type": "boolean", "description": "every hash chain and manifest intact"},
        "exchanges": {"type": "integer"},
        "events": {"type": "integer"},
        "tools": {"type": "array", "items": {"type": "string"}},
        "denied": {"type": "integer", "description": "exchanges the gateway refused (policy denials and others)"},
    },
}


def _q(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "bad filter, cursor or session id", 401: "no or invalid bearer token (WWW-Authenticate challenge)",
            404: "no such session, or not one the caller may see (the two are not told apart)",
            503: "audit trail or identity provider unavailable: nothing served"}  # fmt: skip
    return {
        str(c): {
            "description": text[c],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for c in codes
    }


_KEY = {
    "name": "key",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
}


def _session_op(
    summary: str, media: str, schema: dict[str, Any], extra: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": [_KEY, *(extra or [])],
            "responses": {
                "200": {"description": "ok", "content": {media: {"schema": schema}}},
                **_errors(400, 401, 404, 503),
            },
        }
    }


def _approval_paths(p: str) -> dict[str, Any]:
    """Held calls (policy rules with ``effect: approve``); approving and denying are on the audit trail."""
    decide = [_KEY, _q("reason", "why (required to deny; at most 500 characters)")]
    errors = {**_errors(400, 401, 404, 503), "403": {"description": "not an approver, own call, or CSRF token missing"},
              "409": {"description": "already decided, or the request expired"}}  # fmt: skip
    one = {"200": {"description": "the request with its decision", "content": {"application/json": {}}}}
    return {
        f"{p}/api/approvals": {
            "get": {
                "summary": "held calls the caller may see (caller, tool, redacted arguments, state, may_decide)",
                "parameters": [_q("state", "pending (default), approved, denied, expired, used or all")],
                "responses": {"200": {"description": "ok"}, **_errors(400, 401, 503)},
            }
        },
        f"{p}/api/approvals/{{key}}": {
            "get": {"summary": "one held call", "parameters": [_KEY], "responses": {**one, **_errors(401, 404, 503)}}
        },
        f"{p}/api/approvals/{{key}}/approve": {
            "post": {"summary": "approve one exact call (never one's own)", "parameters": decide,
                     "responses": {**one, **errors}}
        },
        f"{p}/api/approvals/{{key}}/deny": {
            "post": {"summary": "deny one exact call", "parameters": decide, "responses": {**one, **errors}}
        },
    }  # fmt: skip


def openapi_document(prefix: str) -> dict[str, Any]:
    """The document for a service mounted at ``prefix`` (e.g. ``/audit/``)."""
    p = prefix.rstrip("/")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mcp-extproc audit API",
            "version": "1",
            "description": "Recorded MCP sessions for the viewers the policy names. Every access is on the audit "
            "trail (sessions audit-YYYY-MM-DD, server 'audit' in viewer rules).",
        },
        "components": {
            "schemas": {"Error": _ERROR, "Session": _SESSION},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            f"{p}/api/me": {
                "get": {
                    "summary": "the caller and the viewer rules that match it",
                    "responses": {"200": {"description": "ok"}, **_errors(401)},
                }
            },
            f"{p}/api/sessions": {
                "get": {
                    "summary": "sessions the caller may see, newest first",
                    "parameters": [
                        _q("server", "MCP server name ('audit' for the audit trail)"),
                        _q("user", "username of the session's owner"),
                        _q(
                            "since",
                            "started at or after: ISO 8601 (no zone = UTC), Unix seconds, or an age (30m, 24h, 7d)",
                        ),
                        _q("until", "started before: ISO 8601 (no zone = UTC), Unix seconds, or an age (30m, 24h, 7d)"),
                        _q("state", "complete, incomplete or open", {"enum": ["complete", "incomplete", "open"]}),
                        _q("tool", "a tool called in the session"),
                        _q(
                            "limit",
                            "page size, 1 to 500 (default 50)",
                            {"type": "integer", "minimum": 1, "maximum": 500},
                        ),
                        _q("cursor", "next_cursor of the previous page"),
                    ],
                    "responses": {
                        "200": {
                            "description": "one page",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "sessions": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/Session"},
                                            },
                                            "next_cursor": {"type": ["string", "null"]},
                                            "signatures_checked": {
                                                "type": "boolean",
                                                "description": "verified includes manifest signatures",
                                            },
                                        },
                                    }
                                }
                            },
                        },
                        **_errors(400, 401, 503),
                    },
                }
            },
            f"{p}/api/sessions/{{key}}": _session_op(
                "one session: exchanges (each with its upstream credential: kind, SHA-256, expiry, delegation, "
                "IdP refusal), JSON-RPC calls paired with responses and progress, decisions, refusals, the tool "
                "definition each call was listed (fingerprint, listed_at, flag), what the result screens found "
                "and did (screened) and the guardrail's verdicts (guardrail) per call and exchange, what a list hid "
                "(filtered) and screened listed definitions (definitions) per exchange, redaction markers, "
                "verification",
                "application/json",
                {"type": "object"},
            ),
            f"{p}/api/sessions/{{key}}/events": _session_op(
                "every stored event in time order", "application/x-ndjson", {"type": "string"}
            ),
            f"{p}/api/sessions/{{key}}/verify": _session_op(
                "hash chains, manifests and signatures checked", "application/json", {"type": "object"}
            ),
            f"{p}/api/sessions/{{key}}/export": _session_op(
                "segments and signed manifests (tar.gz in the file-store layout; check offline with "
                "`mcp-extproc sessions verify KEY --dir DIR --public-key signing.pub`)",
                "application/gzip",
                {"type": "string", "format": "binary"},
            ),
            f"{p}/api/sessions/{{key}}/replay": _session_op(
                "the events again as server-sent events at their recorded pace",
                "text/event-stream",
                {"type": "string"},
                [
                    _q("speed", "pace factor, 0.1 to 100 (default 1)", {"type": "number"}),
                    _q("start", "skip the first N seconds of the session (default 0)", {"type": "number"}),
                ],
            ),
            **_approval_paths(p),
            f"{p}/api/log": {
                "get": {
                    "summary": "the transparency logs (one per writer) with a published checkpoint",
                    "responses": {"200": {"description": "ok: {logs: [name, ...]}"}, **_errors(401, 503)},
                }
            },
            f"{p}/api/log/{{path}}": {
                "get": {
                    "summary": "read-only for witnesses: <log>/checkpoint (signed note), <log>/checkpoint.tsr "
                    "(RFC 3161), <log>/checkpoints/<size>[.tsr], <log>/tile/<L>/<N>[.p/<W>] (c2sp.org/tlog-tiles)",
                    "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "ok"}, **_errors(401, 404, 503)},
                }
            },
            f"{p}/api/openapi.json": {
                "get": {"summary": "this document", "security": [], "responses": {"200": {"description": "ok"}}}
            },
        },
    }
