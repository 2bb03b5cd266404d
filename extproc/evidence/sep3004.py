"""SEP-3004 "Tamper-Evident Audit Record Contract": canonical form, record hash chain, and an export of a session.

Follows the proposal as of modelcontextprotocol/modelcontextprotocol PR #3004 head 377f8d26 (2026-07-02), with the
conformance vectors it names (notboatanchor/gif e1f02a95, canon ``gif-audit/2``), vendored with their source in
tests/vectors/sep-3004/. A record is a protected core (``event_id``, ``occurred_at``, ``principal_id``,
``event_type``, ``tool_name``, ``outcome``, ``previous_hash``) plus a type-keyed ``extensions`` object;
``event_hash`` is the SHA-256 of the sorted-key canonical JSON of all of that (§2.3, §2.4).

The export maps a verified session's policy decisions (and failed exchanges) onto records of the
``admission-control`` extension: the SEP names that extension but does not yet specify its fields, so the field
set here is ours (docs/record-format.md §6); each record names the line of our own signed chain it came from.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from extproc.recording import chain
from extproc.recording.replay import load_session
from extproc.recording.store import Store

REVISION = "modelcontextprotocol/modelcontextprotocol#3004@377f8d260ded5b6854871b2ce3c73621ffcaef1d"
CANON = "gif-audit/2"
CORE_PROTECTED = ("event_id", "occurred_at", "principal_id", "event_type", "tool_name", "outcome", "previous_hash")
OUTCOMES = ("allowed", "denied", "deferred", "error")
# Registered extensions (§2.2): required and optional fields of their data.
EXTENSIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "caller-governance": (
        ("purpose_declared",),
        (
            "session_id",
            "invoked_by_principal_id",
            "flagged",
            "sources_touched",
            "sensitivity_encountered",
            "output_disposition",
            "human_actor_id",
        ),
    ),
    "runtime-security": (("drift_status", "severity", "quarantine_decision", "policy_id"), ("evidence_hash",)),
    "admission-control": ((), ()),  # named by the SEP, fields not yet specified
}
MAX_FIELD_LEN = 8192  # UTF-16 code units, as the reference measures
_CONTROL = re.compile("[\u0000-\u001f\u007f]")


class NotConforming(ValueError):
    """A value the canonical form refuses (a control character, a bare number, too long)."""


def normalize(s: str) -> str:
    """§2.3: reject control characters, NFC, trim U+0020 only, cap the length."""
    if _CONTROL.search(s):
        raise NotConforming("control character in protected string field")
    n = unicodedata.normalize("NFC", s).strip(" ")
    if len(n.encode("utf-16-le", "surrogatepass")) // 2 > MAX_FIELD_LEN:
        raise NotConforming("protected string field exceeds length cap")
    return n


_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _string(s: str, normalized: bool) -> str:
    """``JSON.stringify`` of a string (the reference's form): short escapes, other controls and lone surrogates as
    ``\\uHHHH``, everything else as itself (UTF-8)."""
    out = ['"']
    for ch in normalize(s) if normalized else s:
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif ch < " " or "\ud800" <= ch <= "\udfff":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def canonicalize(value: Any) -> str:
    """Sorted-key canonical JSON: no whitespace, string values normalized, keys verbatim; numbers refused."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _string(value, True)
    if isinstance(value, list):
        return "[" + ",".join(canonicalize(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: k.encode("utf-16-be", "surrogatepass"))  # JS sorts UTF-16 code units
        return "{" + ",".join(_string(k, False) + ":" + canonicalize(value[k]) for k in keys) + "}"
    raise NotConforming(f"a bare {type(value).__name__} is not a protected value (encode it as a string)")


def preimage(record: dict[str, Any]) -> str:
    """The canonical protected body: the core (less ``event_hash``) and ``extensions``; unknown fields ignored."""
    # A missing field is left out (as the reference's JavaScript leaves out ``undefined``), not written as null.
    return canonicalize({f: record[f] for f in (*CORE_PROTECTED, "extensions") if f in record})


def event_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(preimage(record).encode("utf-8", "surrogatepass")).hexdigest()


def seal(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its ``event_hash``."""
    return {**record, "event_hash": event_hash(record)}


def check_skeleton(record: dict[str, Any]) -> list[str]:
    """C-REC-1: the core fields present with their types."""
    failures = [
        f"missing required field: {f}" for f in (*CORE_PROTECTED, "event_hash", "extensions") if f not in record
    ]
    if "outcome" in record and not isinstance(record["outcome"], str):
        failures.append("outcome MUST be string")
    elif isinstance(record.get("outcome"), str) and record["outcome"] not in OUTCOMES:
        failures.append(f"outcome {record['outcome']!r} is not one of {', '.join(OUTCOMES)}")
    for name in ("tool_name", "previous_hash"):
        if name in record and record[name] is not None and not isinstance(record[name], str):
            failures.append(f"{name} MUST be string or null")
    if "extensions" in record and not isinstance(record["extensions"], dict):
        failures.append("extensions MUST be a keyed object")
    return failures


def check_extensions(record: dict[str, Any]) -> list[str]:
    """C-REC-1: at least one extension, every one registered, its required fields present and not null."""
    extensions = record.get("extensions") or {}
    failures = [] if extensions else ["extensions MUST declare at least one registered type"]
    for kind, data in extensions.items():
        if kind not in EXTENSIONS:
            failures.append(f"unregistered extension type: {kind}")
            continue
        fields = data if isinstance(data, dict) else {}
        failures += [f"extension {kind} requires {f}" for f in EXTENSIONS[kind][0] if fields.get(f) is None]
    return failures


def check_hash(record: dict[str, Any]) -> list[str]:
    """C-REC-3: ``event_hash`` is the hash of the canonical form."""
    try:
        expected = event_hash(record)
    except NotConforming as e:
        return [f"canonicalization failed on {record.get('event_id')}: {e}"]
    if expected != record.get("event_hash"):
        return [
            f"event_hash mismatch on {record.get('event_id')}: expected {expected}, stored {record.get('event_hash')}"
        ]
    return []


def check_chain(records: list[dict[str, Any]]) -> list[str]:
    """C-REC-4 (§2.6): every record's hash, and ``previous_hash`` threading within the segment."""
    failures: list[str] = []
    for i, rec in enumerate(records):
        failures += check_hash(rec)
        if i == 0 and rec.get("previous_hash") is not None:
            failures.append(f"segment head {rec.get('event_id')} MUST have null previous_hash")
        elif i and rec.get("previous_hash") != records[i - 1].get("event_hash"):
            failures.append(f"broken link at {rec.get('event_id')}: previous_hash does not match the prior event_hash")
    return failures


def check_attestation(manifest: dict[str, Any]) -> list[str]:
    """C-REC-7: the attestation manifest is structured."""
    need = ("storage_mechanism", "chain_algorithm", "canonical_form_version", "verification_procedure_ref")
    return [
        f"attestation manifest missing or empty: {f}"
        for f in need
        if not isinstance(manifest.get(f), str) or not manifest[f].strip()
    ]


# --- export ------------------------------------------------------------------------------------------------------


def rfc3339_ms(t: float) -> str:
    """Unix seconds as ``2026-06-02T12:00:00.000Z`` (``Date.toISOString``: milliseconds, truncated)."""
    ms = math.floor(round(t * 1000, 3))
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def _text(value: Any) -> str | None:
    """A protected string: control characters written as visible escapes (the SEP rejects them), never dropped."""
    if value is None:
        return None
    s = value if isinstance(value, str) else str(value)
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", s)


ATTESTATION = {
    "storage_mechanism": "append-only-file (file store) or s3-object-lock; segments sealed by Ed25519-signed "
    "manifests and per-writer signed digest chains",
    "chain_algorithm": "sha-256",
    "canonical_form_version": f"sep-3004 {CANON}",
    "verification_procedure_ref": "docs/record-format.md; mcp-extproc sessions verify --bundle; "
    "docs/verifier/verify_bundle.py",
}


def records_of(events: list[dict[str, Any]], session_key: str) -> list[dict[str, Any]]:
    """SEP-3004 records (sealed and chained) of a verified session's events, in time order."""
    starts = {e.get("exchange"): e for e in events if e.get("type") == "exchange.start"}
    requests: dict[tuple[Any, str], dict[str, Any]] = {}
    for e in events:
        if e.get("type") == "mcp.request":
            for msg in e.get("messages") or []:
                if isinstance(msg, dict) and "id" in msg:
                    requests[(e.get("exchange"), repr(msg["id"]))] = msg
    out: list[dict[str, Any]] = []
    for e in events:
        kind = e.get("type")
        if kind == "policy.decision":
            outcome, event_type = ("allowed" if e.get("allowed") else "denied"), "policy_decision"
        elif kind == "exchange.end" and e.get("outcome") in ("error", "reset"):
            outcome, event_type = "error", "exchange_failed"
        else:
            continue
        start = starts.get(e.get("exchange")) or {}
        who = start.get("principal") or {}
        msg = requests.get((e.get("exchange"), repr(e.get("message_id")))) if kind == "policy.decision" else None
        params = msg.get("params") if msg is not None and msg.get("method") == "tools/call" else None
        tool = params.get("name") if isinstance(params, dict) else None
        data = {
            "session_id": _text(e.get("session")),
            "server": _text(start.get("server")),
            "exchange": _text(e.get("exchange")),
            "call": _text(e.get("call")),
            "rule": _text(e.get("rule")),
            "reason": _text(e.get("reason") if kind == "policy.decision" else e.get("detail")),
            "message_id": _text(e.get("message_id")),
            "evidence": f"sha256:{e['_line']}" if e.get("_line") else None,
            "writer": _text(e.get("_writer")),
            "seq": _text(e.get("seq")),
        }
        record = {
            "event_id": f"{session_key}/{e.get('_writer')}/{e.get('seq')}",
            "occurred_at": rfc3339_ms(float(e.get("time") or 0.0)),
            "principal_id": _text(f"{who.get('issuer', '')}#{who.get('subject', '')}" if who else "anonymous"),
            "event_type": event_type,
            "tool_name": _text(tool) if isinstance(tool, str) else None,
            "outcome": outcome,
            "previous_hash": out[-1]["event_hash"] if out else None,
            "extensions": {"admission-control": {k: v for k, v in data.items() if v is not None}},
        }
        out.append(seal(record))
    return out


def export(store: Store, key: str, public: Ed25519PublicKey | None) -> dict[str, Any]:
    """The session as one SEP-3004 chain segment; refused (ValueError) when the recording does not verify, since
    a new hash chain over altered events would launder them."""
    session = load_session(store, key, public)
    if session.problems:
        raise ValueError(f"session {key} does not verify ({len(session.problems)} findings): not exported")
    by_seq: dict[
        tuple[Any, Any], str
    ] = {  # each event's line hash: the record names the line of our signed chain it was made from
        (writer, ln.seq): ln.digest
        for writer, stream in store.read_session(key).items()
        for ln in chain.read(stream.data).lines
        if ln.seq is not None
    }
    for e in session.events:
        e["_line"] = by_seq.get((e.get("_writer"), e.get("seq")))
    return {
        "format": "sep-3004",
        "revision": REVISION,
        "canonical_form_version": CANON,
        "session": key,
        "signatures_checked": public is not None,
        "attestation": ATTESTATION,
        "records": records_of(session.events, key),
    }
