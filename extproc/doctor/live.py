"""`doctor`'s checks of a running gateway: the processor's workers, their metrics and whether they can record,
each upstream MCP server, and the audit service."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx

from extproc.doctor.check import TIMEOUT, Check
from extproc.doctor.check import fail as _fail
from extproc.doctor.check import ok as _ok
from extproc.envoy.config import Server
from extproc.sections import split_hostport
from extproc.settings import Settings


def check_processor(s: Settings) -> Iterator[Check]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from extproc.launcher import processor_channel
    from extproc.server import SERVICE

    for worker in range(s.processor.workers):
        address = s.processor.endpoint(worker)
        name = f"processor {worker}"
        try:
            with processor_channel(s, address) as ch:
                reply = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=SERVICE), timeout=TIMEOUT
                )
        except (grpc.RpcError, OSError) as e:
            why = e.code().name if isinstance(e, grpc.RpcError) else str(e)
            yield _fail(name, f"{address}: {why}", "start it: mcp-extproc serve (or up); see its log and TLS files")
            continue
        state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        if state == "SERVING":
            yield _ok(name, f"{address}: SERVING")
        else:
            yield _fail(name, f"{address}: {state}", "it is shutting down or starting; see its log")


def check_metrics(s: Settings) -> Iterator[Check]:
    proc = s.processor
    if proc.metrics_port is None:
        yield Check("metrics", "skip", "processor.metrics_port not set", "set it to scrape the processor")
        return
    for worker in range(proc.workers):
        url = f"http://{proc.metrics_address}:{proc.metrics_port + worker}/metrics"
        try:
            text = httpx.get(url, timeout=TIMEOUT).raise_for_status().text
        except httpx.HTTPError as e:
            yield _fail(f"metrics {worker}", f"{url}: {type(e).__name__}", "is the processor running?")
            continue
        if "mcp_extproc_" not in text:
            yield _fail(f"metrics {worker}", f"{url}: no mcp_extproc_ metrics", "another program holds the port?")
        else:
            yield _ok(f"metrics {worker}", url)


def check_recording_available(s: Settings) -> Iterator[Check]:
    """Is there room to record: free space on the spool's disk, and why a running processor refuses, if it does."""
    import os
    import re

    spool = s.recording.spool
    existing = next((p for p in (spool, *spool.parents) if p.exists()), Path("/"))  # the spool may not exist yet
    try:
        st = os.statvfs(existing)
    except OSError as e:
        yield _fail("recording room", f"{existing}: {e.strerror}", "mount a writable volume there (emptyDir or PVC)")
    else:
        free, need = st.f_bavail * st.f_frsize, s.recording.spool_max_bytes
        room = f"{free >> 20} MiB free on the spool's disk ({spool}), spool bound {need >> 20} MiB"
        if free < 1 << 20:
            yield _fail("recording room", f"disk full (ENOSPC): {room}", "free space or grow the spool's volume")
        elif free < need:
            yield Check("recording room", "warn", room, "the disk fills before recording.spool_max_bytes is reached")
        else:
            yield _ok("recording room", room)
    proc = s.processor
    for worker in range(proc.workers if proc.metrics_port is not None else 0):
        assert proc.metrics_port is not None  # the range is empty otherwise
        url = f"http://{proc.metrics_address}:{proc.metrics_port + worker}/metrics"
        try:
            text = httpx.get(url, timeout=TIMEOUT).text
        except httpx.HTTPError:
            continue  # check_metrics says the processor cannot be reached
        reasons = re.findall(r'^mcp_extproc_recording_unavailable\{reason="([a-z_]+)"\} 1\.0$', text, re.M)
        if reasons:
            yield _fail(
                f"recording {worker}",
                f"recording unavailable ({', '.join(reasons)}): new exchanges are refused with 503",
                'the processor\'s log names the errno and path ("recording unavailable")',
            )
        elif "mcp_extproc_recording_unavailable" in text:
            yield _ok(f"recording {worker}", "recording available")


def _upstreams(s: Settings) -> Iterator[tuple[str, str, str, Server]]:
    """(check name, host:port, MCP path, server) for each upstream: a server's own, or each of its backends."""
    for srv in s.servers:
        if srv.upstream is not None:
            yield f"upstream {srv.name}", srv.upstream, srv.path, srv
        for b in srv.backends or []:
            yield f"upstream {srv.name}/{b.name}", b.upstream, b.path or srv.path, srv


def check_upstreams(s: Settings) -> Iterator[Check]:
    """Each MCP server the gateway routes to: a TCP connect, then one GET of its MCP path.

    Any HTTP answer below 500 passes (an MCP server answers a bare GET with 400, 405 or an SSE stream): it proves
    a web server listens there, which is what the gateway needs before a client's call can reach it.
    """
    for name, upstream, path, srv in _upstreams(s):
        host, port = split_hostport(upstream)
        hint = f"start MCP server {srv.name!r} at {upstream}, or fix servers[].upstream (a firewall? the wrong port?)"
        try:
            socket.create_connection((host, port), timeout=TIMEOUT).close()
        except OSError as e:
            yield _fail(name, f"{upstream}: TCP connect failed: {e.strerror or type(e).__name__}", hint)
            continue
        yield _http_probe(name, upstream, path, srv, hint)


def _http_probe(name: str, upstream: str, path: str, srv: Server, hint: str) -> Check:
    host, port = split_hostport(upstream)
    scheme = "https" if srv.tls else "http"
    url = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}{path}"
    verify: bool | str = not srv.tls_insecure_skip_verify and (str(srv.tls_ca_file) if srv.tls_ca_file else True)
    headers = {"accept": "text/event-stream"}
    if srv.host not in ("upstream", "client"):  # the literal Host the gateway sends (else the upstream's own)
        headers["host"] = srv.host
    extensions = {"sni_hostname": srv.tls_server_name} if srv.tls and srv.tls_server_name else {}
    try:
        with httpx.Client(timeout=TIMEOUT, verify=verify, follow_redirects=False) as http:
            with http.stream("GET", url, headers=headers, extensions=extensions) as r:
                status = r.status_code  # headers only: a 200 here is an SSE stream that would not end
    except httpx.HTTPError as e:
        return _fail(name, f"{upstream}: TCP connects, but GET {path} failed: {type(e).__name__}: {e}", hint)
    if status >= 500:
        return _fail(name, f"{upstream}: GET {path} answered {status}", f"see MCP server {srv.name!r}'s log")
    return _ok(name, f"{upstream}: TCP connect, GET {path} answered {status}")


def check_audit(s: Settings) -> Iterator[Check]:
    """The audit service, when configured: it answers its OpenAPI document (no login needed) on its port."""
    audit = s.audit
    if audit is None:
        return
    url = f"http://{audit.address}:{audit.port}{audit.prefix}api/openapi.json"
    try:
        r = httpx.get(url, timeout=TIMEOUT)
        ok = r.status_code == 200 and "openapi" in r.json()
        why = f"answered {r.status_code}"
    except (httpx.HTTPError, ValueError) as e:
        ok, why = False, f"{type(e).__name__}: {e}"
    if ok:
        yield _ok("audit service", f"{url}: answers")
    else:
        yield _fail(
            "audit service",
            f"{url}: {why}",
            "start it: mcp-extproc audit --config gateway.yaml (up starts it when audit: is set); see its log",
        )
