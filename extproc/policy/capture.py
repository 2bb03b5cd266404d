"""Capture levels: how much of a server's payloads a recording keeps (policy ``recording[].capture``).

- ``full``: every payload as it passed, no redaction rule applied (credential headers are still left out).
- ``redacted`` (the default): full minus the redaction rules (``policy/redact.py``).
- ``shape``: the structure without values. Method, id, tool/prompt name and every object key stay; each other
  value (string, number, boolean) becomes ``[shape:<type>:<size>:<hmac>]``: its JSON type, its size (UTF-8 bytes
  of a string, else of its JSON text) and HMAC-SHA256 of its JSON text under the deployment's capture salt
  (truncated to 128 bits). A hash can be matched against a value one already knows, never guessed without the salt.
- ``metadata``: who, when, what (method, id, tool or prompt name, an error's code, a tool result's ``isError``),
  decision, status and sizes. No value, no hash.

Levels order from ``full`` (keeps most) to ``metadata`` (keeps least); where several policy entries name a server
(or a tool) the strictest wins, so an entry can only take away. Pure functions on plain data: the exchange calls
them where it calls redaction today, for request bodies, JSON responses, SSE events and raw chunks.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, Literal, get_args

CaptureLevel = Literal["full", "redacted", "shape", "metadata"]
LEVELS: tuple[CaptureLevel, ...] = get_args(CaptureLevel)
DEFAULT_LEVEL: CaptureLevel = "redacted"
_RANK = {level: i for i, level in enumerate(LEVELS)}
HASH_HEX = 32  # 128 bits of HMAC-SHA256: enough to match a known value, short enough to store per leaf

# Header values kept at shape and metadata: what says who, when and how (never an argument: Mcp-Param-* headers
# carry tool arguments, 2026-07-28). Every other header keeps its name; its value is shaped or dropped.
_PROTOCOL_HEADERS = frozenset(
    {
        ":method", ":scheme", ":authority", ":status", "content-type", "content-length", "accept", "user-agent",
        "mcp-session-id", "mcp-protocol-version", "last-event-id", "traceparent", "tracestate", "x-request-id",
        "date", "server", "cache-control", "connection", "transfer-encoding", "mcp-method", "accept-encoding",
        "x-forwarded-for", "x-forwarded-proto", "x-envoy-external-address",
    }
)  # fmt: skip
_NAMED = {"tools/call": "name", "prompts/get": "name"}  # the "what" a metadata record keeps of params


def stricter(a: CaptureLevel, b: CaptureLevel) -> CaptureLevel:
    """The level that keeps less of the two."""
    return a if _RANK[a] >= _RANK[b] else b


def drops_values(level: str) -> bool:
    """True for levels that store no payload value (shape, metadata)."""
    return level in ("shape", "metadata")


@dataclass(frozen=True, slots=True)
class Capture:
    """One exchange's capture level and the deployment's salt."""

    level: CaptureLevel = DEFAULT_LEVEL
    salt: bytes = b""

    @property
    def drops_values(self) -> bool:
        return drops_values(self.level)

    def digest(self, data: bytes) -> str:
        """Salted hash of ``data`` (HMAC-SHA256, truncated)."""
        return hmac.new(self.salt, data, sha256).hexdigest()[:HASH_HEX]

    def leaf(self, value: object) -> str:
        """The shape of one scalar: type, size and salted hash of its JSON text."""
        if isinstance(value, str):
            kind, data, size = "string", json.dumps(value, ensure_ascii=False).encode(), len(value.encode())
        else:
            kind = "boolean" if isinstance(value, bool) else "integer" if isinstance(value, int) else "number"
            data = json.dumps(value).encode()
            size = len(data)
        return f"[shape:{kind}:{size}:{self.digest(data)}]"

    def shape(self, value: Any) -> Any:
        """``value`` with every scalar replaced by its shape; keys, arrays and nulls kept as they are."""
        if isinstance(value, dict):
            return {k: self.shape(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.shape(v) for v in value]
        if value is None:
            return None
        return self.leaf(value)

    def message(self, msg: Any) -> Any:
        """One JSON-RPC message at this level (``shape`` or ``metadata``)."""
        if not isinstance(msg, dict):
            return self.shape(msg) if self.level == "shape" else {"capture": self.level}
        out: dict[str, Any] = {k: msg[k] for k in ("jsonrpc", "id", "method") if k in msg}
        params, named = msg.get("params"), _NAMED.get(str(msg.get("method")))
        if isinstance(params, dict):
            kept = {named: params[named]} if named and isinstance(params.get(named), str) else {}
            if self.level == "shape":
                out["params"] = {**self.shape({k: v for k, v in params.items() if k not in kept}), **kept}
            elif kept:
                out["params"] = kept
        elif params is not None and self.level == "shape":
            out["params"] = self.shape(params)
        if "result" in msg:
            result = msg["result"]
            if self.level == "shape":
                out["result"] = self.shape(result)
            else:
                out["result"] = {"isError": result["isError"]} if _is_error_flag(result) else {}
        if isinstance(msg.get("error"), dict):
            err = msg["error"]
            out["error"] = {"code": err.get("code")}
            if self.level == "shape":
                out["error"].update(self.shape({k: v for k, v in err.items() if k != "code"}))
        return out

    def messages(self, msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.message(m) for m in msgs]

    def body(self, raw: bytes) -> dict[str, Any]:
        """What a dropped raw body leaves: the level, and at ``shape`` its salted hash."""
        return {"capture": self.level, "hmac": self.digest(raw)} if self.level == "shape" else {"capture": self.level}

    def withheld(self, reason: str) -> dict[str, Any]:
        """A body too big to hold: its reason, never the plain SHA-256 (a plain hash of a short value is guessable)."""
        return {"withheld": reason, "capture": self.level}

    def headers(self, kept: dict[str, str]) -> dict[str, str]:
        """Recorded header values at this level: protocol headers kept, others shaped or dropped; no query."""
        if not self.drops_values:
            return kept
        out: dict[str, str] = {}
        for name, value in kept.items():
            if name == ":path":
                base, sep, query = value.partition("?")
                out[name] = base + (f"?{self.leaf(query)}" if sep and self.level == "shape" else "")
            elif name.lower() in _PROTOCOL_HEADERS:
                out[name] = value
            else:
                out[name] = self.leaf(value) if self.level == "shape" else f"[capture:{self.level}]"
        return out

    def path(self, path: str) -> str:
        return self.headers({":path": path})[":path"] if self.drops_values else path


def _is_error_flag(result: Any) -> bool:
    return isinstance(result, dict) and isinstance(result.get("isError"), bool)
