"""Recording events -> OCSF API Activity events (class 6003, OCSF 1.8.0): one per exchange, one per audit access.

The fold reads the events of an exchange as they are chained (live) or read back from the store (backfill): the
start (who, from where, which server), the request (which MCP methods and tools), the policy decisions, and the
end (status, outcome). At the end it yields one OCSF event whose ``unmapped.proof`` points at the exchange's
``exchange.end`` line: session key, writer stream, segment, sequence number and the line's SHA-256, so
``mcp-extproc sessions verify <session> --event <sha256>`` proves exactly that event (its chain holds every
earlier event of the exchange).

``checkpoint`` is null in the exchange's event: it is exported as soon as its end line is chained, and no
transparency-log checkpoint can cover a segment that is not even sealed yet. Holding every event back until one
does (a segment upload plus a checkpoint interval, a minute by default) would blind the SIEM for that long, exactly
when an analyst's alert rules need it. So when the log publishes a checkpoint covering a segment, the exporter
sends one follow-up ``proofs`` event per segment (``proof.checkpoint_event``): the same session, writer and segment as
the pointers it completes, with the checkpoint (log origin, size, leaf index). An analyst joins the two on
``unmapped.proof.{session,writer,segment}``; ``sessions verify --event`` proves the inclusion itself.
A backfill reads the store after the fact and fills ``checkpoint`` in directly when the log covers the segment.

Mapping (closest OCSF fields; the rest under ``unmapped.mcp``):
actor.user         the verified identity (subject, username, groups); actor.idp its issuer
actor.authorizations one per policy decision: decision allow|deny, policy.name = the rule, policy.desc = reason
api.operation      the MCP method (the first of a batch; all under unmapped.mcp.operations), api.service = server
resources          the tools, prompts and resources called (type mcp.tool | mcp.prompt | mcp.resource)
status_id          1 Success: allowed and answered below 400; 2 Failure otherwise; status_code = HTTP status
trace              the exchange's trace (trace profile): its own span when tracing is on (``exchange.end``'s
                   ``trace``; ``trace.context`` in older records), else the trace id of the client's traceparent
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from extproc import __version__

OCSF_VERSION = "1.8.0"
CATEGORY_UID, CLASS_UID = 6, 6003
_ACTIVITIES = {1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"}
_READS = ("tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read", "prompts/get")
MAX_OPEN = 100_000  # exchanges folded at once; past it the oldest is forgotten (its end never came: a crash)

Get = Callable[[str], Any]  # a field of an event: getattr on a live Event, dict.get on a stored line
Make = Callable[["_Open", Get, "Pointer", str], Any]  # an exchange's OCSF event from what the fold knows of it


@dataclass(frozen=True, slots=True)
class Pointer:
    """Where a recorded event is: enough for ``sessions verify --event`` to find and prove it."""

    session: str
    writer: str
    segment: int
    seq: int
    sha256: str

    def to_dict(self, first_seq: int | None = None, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "session": self.session,
            "writer": self.writer,
            "segment": self.segment,
            "seq": self.seq,
            "line": self.seq + 1,
            "sha256": self.sha256,
            # The transparency-log checkpoint covering the segment: null when exported live (the segment is not
            # stored yet when its line is chained: a follow-up ``proofs`` event brings it, see the module docstring).
            "checkpoint": checkpoint,
            "verify": f"mcp-extproc sessions verify {self.session} --event {self.sha256}",
            "prove": f"mcp-extproc evidence prove {self.session}",
        }
        if first_seq is not None:
            out["first_seq"] = first_seq
        return out


@dataclass(slots=True)
class _Open:
    """What the fold knows of an exchange until its end."""

    time: float
    principal: dict[str, Any] | None
    client: str
    server: str
    backend: str
    http_method: str
    traceparent: str
    first_seq: int
    operations: list[str] = field(default_factory=list)
    resources: list[tuple[str, str]] = field(default_factory=list)
    request_ids: list[Any] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    trace_id: str = ""
    span_id: str = ""


class Fold:
    """Feed it a stream's events in chain order; it returns the OCSF events they complete (``make``: how an
    exchange's is made, by default ``exchange_event``; the live exporter's writes its bytes, export/template.py)."""

    def __init__(self, exchanges: bool = True, audit: bool = True, make: Make | None = None) -> None:
        self.exchanges = exchanges
        self.audit = audit
        self.make: Make = make or exchange_event
        self._open: dict[str, _Open] = {}
        self.forgotten = 0  # exchanges dropped unfinished (MAX_OPEN)

    def feed(self, kind: str, get: Get, at: Pointer) -> Any:
        """One event (its type, a field getter, where it is); an OCSF event when this completes one."""
        if kind == "audit.access":
            return audit_event(get, at) if self.audit else None
        if not self.exchanges:
            return None
        exchange = get("exchange") or ""
        if kind == "exchange.start":
            if len(self._open) >= MAX_OPEN:
                self._open.pop(next(iter(self._open)))
                self.forgotten += 1
            headers = get("headers") or {}
            self._open[exchange] = _Open(
                time=get("time") or 0.0,
                principal=get("principal"),
                client=get("client") or "",
                server=get("server") or "",
                backend=get("backend") or "",
                http_method=get("method") or "",
                traceparent=headers.get("traceparent", "") if isinstance(headers, dict) else "",
                first_seq=at.seq,
            )
            return None
        ex = self._open.get(exchange)
        if ex is None:
            return None
        if kind == "mcp.request":
            _note_request(ex, get("messages") or [])
        elif kind == "policy.decision":
            ex.decisions.append(
                {
                    "allowed": bool(get("allowed")),
                    "rule": get("rule") or "",
                    "reason": get("reason") or "",
                    "call": get("call") or "",
                }
            )
        elif kind == "trace.context":  # an older record's trace ids (exchange.end carries them now: ``trace``)
            ex.trace_id, ex.span_id = str(get("trace_id") or ""), str(get("span_id") or "")
        elif kind == "exchange.end":
            del self._open[exchange]
            return self.make(ex, get, at, exchange)
        return None


def _note_request(ex: _Open, messages: list[Any]) -> None:
    for msg in messages:
        if not isinstance(msg, dict) or not isinstance(msg.get("method"), str):
            continue
        method = msg["method"]
        ex.operations.append(method)
        if "id" in msg:
            ex.request_ids.append(msg["id"])
        params = msg.get("params")
        if not isinstance(params, dict):
            continue
        if method == "tools/call" and isinstance(params.get("name"), str):
            ex.resources.append(("mcp.tool", params["name"]))
        elif method == "prompts/get" and isinstance(params.get("name"), str):
            ex.resources.append(("mcp.prompt", params["name"]))
        elif method == "resources/read" and isinstance(params.get("uri"), str):
            ex.resources.append(("mcp.resource", params["uri"]))


def _activity(operation: str) -> int:
    if operation == "initialize":
        return 1
    if operation in _READS or operation == "http/get":
        return 2
    if operation == "http/delete":
        return 4
    return 99


@functools.cache  # five activities: the same members every time (callers unpack it into a fresh dict)
def _classification(activity: int) -> dict[str, Any]:
    name = _ACTIVITIES[activity]
    return {
        "activity_id": activity,
        "activity_name": name,
        "category_uid": CATEGORY_UID,
        "category_name": "Application Activity",
        "class_uid": CLASS_UID,
        "class_name": "API Activity",
        "type_uid": CLASS_UID * 100 + activity,
        "type_name": f"API Activity: {name}",
    }


_PRODUCT = {"name": "mcp-extproc", "vendor_name": "mcp-extproc", "version": __version__}  # never edited: shared


def _metadata(uid: str, session: str, log_name: str, profiles: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": _PRODUCT,
        "uid": uid,
        "correlation_uid": session,
        "log_name": log_name,
    }
    if profiles:
        meta["profiles"] = profiles
    return meta


def _actor(principal: dict[str, Any] | None) -> dict[str, Any]:
    """The verified identity; an anonymous caller (allow_anonymous) is the user ``anonymous``."""
    p = principal or {}
    user: dict[str, Any] = {"uid": str(p.get("subject") or "anonymous"), "name": str(p.get("username") or "anonymous")}
    groups = p.get("groups")
    if isinstance(groups, list) and groups:
        user["groups"] = [{"name": str(g)} for g in groups]
    actor: dict[str, Any] = {"user": user}
    if p.get("issuer"):
        actor["idp"] = {"name": str(p["issuer"]), "issuer": str(p["issuer"])}
    return actor


def _endpoint(client: str) -> dict[str, Any]:
    """A fresh copy of ``_parsed_endpoint`` (callers may edit their event)."""
    return dict(_parsed_endpoint(client))


@functools.lru_cache(maxsize=4096)  # clients repeat (a pod, a NAT): parsing an address is a quarter of the fold
def _parsed_endpoint(client: str) -> dict[str, Any]:
    """``ip:port`` (or ``[v6]:port``, or a bare ip) as an OCSF network endpoint; anything else by name."""
    host, port = client, ""
    if client.startswith("["):
        host, _, port = client[1:].partition("]:")
    elif client.count(":") == 1:
        host, _, port = client.partition(":")
    try:
        out: dict[str, Any] = {"ip": str(ipaddress.ip_address(host))}
    except ValueError:
        return {"name": client or "unknown"}
    if port.isdigit():
        out["port"] = int(port)
    return out


def _trace(traceparent: str) -> dict[str, Any] | None:
    """The W3C traceparent ``00-<trace id>-<span id>-<flags>`` as the OCSF trace object."""
    parts = traceparent.strip().split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    return {"uid": parts[1].lower(), "flags": [parts[3]]}


def exchange_trace(ex: _Open, end: Get, start_ms: int, end_ms: int) -> dict[str, Any] | None:
    """The exchange's own span when it was traced (``exchange.end``'s ``trace``, or an older record's
    ``trace.context``), else the trace of the client's traceparent header, else None."""
    traced = end("trace")
    if isinstance(traced, dict) and traced.get("trace_id"):
        trace_id, span_id = str(traced["trace_id"]), str(traced.get("span_id") or "")
    else:
        trace_id, span_id = ex.trace_id, ex.span_id
    if trace_id:
        return {"uid": trace_id, "span": {"uid": span_id, "start_time": start_ms, "end_time": end_ms}}
    return _trace(ex.traceparent)


def exchange_event(ex: _Open, end: Get, at: Pointer, exchange: str) -> dict[str, Any]:
    """The OCSF event of one finished exchange."""
    operation = ex.operations[0] if ex.operations else _http_operation(ex.http_method)
    status = int(end("status") or 0)
    outcome = str(end("outcome") or "")
    denied = any(not d["allowed"] for d in ex.decisions)
    ok = not denied and outcome == "complete" and 0 < status < 400
    duration = float(end("duration_ms") or 0.0)
    end_time = float(end("time") or ex.time)
    user = (ex.principal or {}).get("username") or "anonymous"
    what = f"{operation}{f' {ex.resources[0][1]!r}' if ex.resources else ''} on server {ex.server!r}"
    verdict = "denied" if denied else outcome
    trace = exchange_trace(ex, end, int(ex.time * 1000), int(end_time * 1000))
    api: dict[str, Any] = {"operation": operation, "service": {"name": ex.server}}
    if ex.request_ids:
        api["request"] = {"uid": str(ex.request_ids[0])}
    api["response"] = {"code": status, **({"error": outcome, "message": str(end("detail"))} if not ok else {})}
    actor = _actor(ex.principal)
    if ex.decisions:
        actor["authorizations"] = [
            {
                "decision": "allow" if d["allowed"] else "deny",
                "policy": {"name": d["rule"] or "default", "desc": d["reason"] or d["call"]},
            }
            for d in ex.decisions
        ]
    event: dict[str, Any] = {
        **_classification(_activity(operation)),
        "severity_id": 3 if denied else 1,
        "severity": "Medium" if denied else "Informational",
        "time": int(ex.time * 1000),
        "start_time": int(ex.time * 1000),
        "end_time": int(end_time * 1000),
        "duration": int(duration),
        "status_id": 1 if ok else 2,
        "status": "Success" if ok else "Failure",
        "status_code": str(status),
        "message": f"{user} {what}: {verdict}",
        "metadata": _metadata(exchange, at.session, "exchanges", ["trace"] if trace else []),
        "actor": actor,
        "api": api,
        "src_endpoint": _endpoint(ex.client),
        "dst_endpoint": {"svc_name": ex.server, **({"name": ex.backend} if ex.backend else {})},
        "unmapped": {
            "mcp": {
                "session": at.session,
                "exchange": exchange,
                "server": ex.server,
                "outcome": outcome,
                "operations": ex.operations,
                "decisions": ex.decisions,
                "bytes_in": int(end("bytes_in") or 0),
                "bytes_out": int(end("bytes_out") or 0),
            },
            "proof": at.to_dict(ex.first_seq),
        },
    }
    if status:
        event["status_detail"] = str(end("detail") or outcome)
    if ex.resources:
        event["resources"] = [{"name": name, "type": kind} for kind, name in ex.resources]
    if trace is not None:
        event["trace"] = trace
    return event


def _http_operation(method: str) -> str:
    return {"GET": "http/get", "DELETE": "http/delete"}.get(method, f"http/{method.lower()}" if method else "unknown")


def audit_event(get: Get, at: Pointer) -> dict[str, Any]:
    """The OCSF event of one access to the audit service (an ``audit.access`` line of the trail)."""
    action = str(get("action") or "api")
    result = str(get("result") or "")
    ok = result == "ok"
    activity = 2 if action in ("list", "show", "events", "replay", "export", "verify", "me") else 99
    if action == "redrive":
        activity = 1
    target = str(get("target") or "")
    t = float(get("time") or 0.0)
    actor = _actor(get("principal"))
    event: dict[str, Any] = {
        **_classification(activity),
        "severity_id": 1 if ok else 3,
        "severity": "Informational" if ok else "Medium",
        "time": int(t * 1000),
        "status_id": 1 if ok else 2,
        "status": "Success" if ok else "Failure",
        "status_code": str(get("status") or 0),
        "status_detail": result,
        "message": f"{actor['user']['name']} audit {action}{f' {target}' if target else ''}: {result}",
        "metadata": _metadata(str(get("exchange") or ""), at.session, "audit", []),
        "actor": actor,
        "api": {"operation": f"audit/{action}", "service": {"name": "audit"}, "response": {"code": get("status") or 0}},
        "src_endpoint": _endpoint(str(get("client") or "")),
        "unmapped": {
            "mcp": {"audit_action": action, "result": result, "query": get("query") or {}},
            "proof": at.to_dict(),
        },
    }
    if target:
        event["resources"] = [{"uid": target, "type": "mcp.recording"}]
    return event
