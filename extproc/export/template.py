"""The live exporter's OCSF exchange event, written as bytes from parts kept per route and identity.

``ocsf.exchange_event`` builds the event as a nested dict (the reference: backfill and the tests read it); the tap
on the recorder's chain makes the same JSON here, for every exchange, on the recorder's writer. What repeats
between exchanges, the event's classification and status members, the actor (identity and policy decisions), the
source and destination endpoints and the resources, is serialized once per distinct value and kept (bounded);
an exchange fills in only its own fields (ids, times, sizes, the proof pointer, the trace) and the whole is
serialized by one ``orjson.dumps`` with the kept parts as ``orjson.Fragment``s. ``tests/unit/export`` holds the
result equal to ``exchange_event`` for the same exchanges and valid against the OCSF schema.
"""

from __future__ import annotations

from typing import Any

import orjson

from extproc import __version__
from extproc.export.ocsf import (
    OCSF_VERSION,
    Get,
    Pointer,
    _activity,
    _actor,
    _classification,
    _http_operation,
    _Open,
    _parsed_endpoint,
    exchange_event,
    exchange_trace,
)
from extproc.export.sinks import Entry, prepare

KEEP = 4096  # distinct values kept per part; past it the part's cache starts over (never grows without bound)
_Fragment, _dumps = orjson.Fragment, orjson.dumps
_PRODUCT = _Fragment(_dumps({"name": "mcp-extproc", "vendor_name": "mcp-extproc", "version": __version__}))
_heads: dict[tuple[int, bool, bool, int], bytes] = {}
_actors: dict[tuple[Any, ...], orjson.Fragment] = {}
_endpoints: dict[str, orjson.Fragment] = {}
_routes: dict[tuple[str, str], orjson.Fragment] = {}
_resources: dict[tuple[tuple[str, str], ...], orjson.Fragment] = {}


def _keep(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    """``value`` kept under ``key`` (a miss of ``cache.get(key) or _keep(...)``)."""
    if len(cache) >= KEEP:
        cache.clear()
    cache[key] = value
    return value


def _head(activity: int, denied: bool, ok: bool, status: int) -> bytes:
    """The event's opening members, serialized: classification, severity, status."""
    members = {
        **_classification(activity),
        "severity_id": 3 if denied else 1,
        "severity": "Medium" if denied else "Informational",
        "status_id": 1 if ok else 2,
        "status": "Success" if ok else "Failure",
        "status_code": str(status),
    }
    return b"{" + _dumps(members)[1:-1] + b","


def _actor_part(principal: dict[str, Any] | None, decisions: list[dict[str, Any]]) -> orjson.Fragment:
    actor = _actor(principal)
    if decisions:
        actor["authorizations"] = [
            {
                "decision": "allow" if d["allowed"] else "deny",
                "policy": {"name": d["rule"] or "default", "desc": d["reason"] or d["call"]},
            }
            for d in decisions
        ]
    return _Fragment(_dumps(actor))


def exchange_entry(ex: _Open, end: Get, at: Pointer, exchange: str) -> Entry:
    """``prepare(exchange_event(ex, end, at, exchange))``, made from kept parts."""
    try:
        return _entry(ex, end, at, exchange)
    except TypeError:  # a value that cannot be a key (a principal's group that is not a string): the long way
        return prepare(exchange_event(ex, end, at, exchange))


def _entry(ex: _Open, end: Get, at: Pointer, exchange: str) -> Entry:
    operation = ex.operations[0] if ex.operations else _http_operation(ex.http_method)
    status = int(end("status") or 0)
    outcome = str(end("outcome") or "")
    decisions = ex.decisions
    denied = not all(d["allowed"] for d in decisions) if decisions else False
    ok = not denied and outcome == "complete" and 0 < status < 400
    start = int(ex.time * 1000)
    end_ms = int(float(end("time") or ex.time) * 1000)
    p = ex.principal or {}
    route = (ex.server, ex.backend)
    user = p.get("username") or "anonymous"
    resources = ex.resources
    what = f"{operation}{f' {resources[0][1]!r}' if resources else ''} on server {ex.server!r}"
    trace = exchange_trace(ex, end, start, end_ms)
    groups = p.get("groups")
    actor_key = (
        p.get("subject"), user, p.get("issuer"), tuple(groups) if isinstance(groups, list) else None,
        *[(d["allowed"], d["rule"], d["reason"], d["call"]) for d in decisions],
    )  # fmt: skip
    response: dict[str, Any] = {"code": status}
    if not ok:
        response["error"], response["message"] = outcome, str(end("detail"))
    api: dict[str, Any] = {"operation": operation, "service": {"name": ex.server}}
    if ex.request_ids:
        api["request"] = {"uid": str(ex.request_ids[0])}
    api["response"] = response
    proof = {
        "session": at.session, "writer": at.writer, "segment": at.segment, "seq": at.seq, "line": at.seq + 1,
        "sha256": at.sha256, "checkpoint": None,
        "verify": f"mcp-extproc sessions verify {at.session} --event {at.sha256}",
        "prove": f"mcp-extproc evidence prove {at.session}", "first_seq": ex.first_seq,
    }  # fmt: skip
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION, "product": _PRODUCT, "uid": exchange, "correlation_uid": at.session,
        "log_name": "exchanges",
    }  # fmt: skip
    if trace is not None:
        metadata["profiles"] = ["trace"]
    event: dict[str, Any] = {
        "time": start,
        "start_time": start,
        "end_time": end_ms,
        "duration": int(float(end("duration_ms") or 0.0)),
        "message": f"{user} {what}: {'denied' if denied else outcome}",
        "metadata": metadata,
        "actor": _actors.get(actor_key) or _keep(_actors, actor_key, _actor_part(ex.principal, decisions)),
        "api": api,
        "src_endpoint": _endpoints.get(ex.client) or _keep(_endpoints, ex.client, _endpoint(ex.client)),
        "dst_endpoint": _routes.get(route) or _keep(_routes, route, _dst(*route)),
        "unmapped": {
            "mcp": {
                "session": at.session, "exchange": exchange, "server": ex.server, "outcome": outcome,
                "operations": ex.operations, "decisions": decisions, "bytes_in": int(end("bytes_in") or 0),
                "bytes_out": int(end("bytes_out") or 0),
            },
            "proof": proof,
        },
    }  # fmt: skip
    if status:
        event["status_detail"] = str(end("detail") or outcome)
    if resources:
        key = tuple(resources)
        event["resources"] = _resources.get(key) or _keep(_resources, key, _resource_list(key))
    if trace is not None:
        event["trace"] = trace
    kind = (_activity(operation), denied, ok, status)
    head = _heads.get(kind) or _keep(_heads, kind, _head(*kind))
    pointer = (
        ("session", at.session), ("writer", at.writer), ("segment", str(at.segment)), ("seq", str(at.seq)),
        ("sha256", at.sha256),
    )  # fmt: skip
    return head + _dumps(event)[1:], start, 3 if denied else 1, "exchanges", pointer


def _dst(server: str, backend: str) -> orjson.Fragment:
    return _Fragment(_dumps({"svc_name": server, **({"name": backend} if backend else {})}))


def _endpoint(client: str) -> orjson.Fragment:
    return _Fragment(_dumps(_parsed_endpoint(client)))


def _resource_list(resources: tuple[tuple[str, str], ...]) -> orjson.Fragment:
    return _Fragment(_dumps([{"name": name, "type": kind} for kind, name in resources]))
