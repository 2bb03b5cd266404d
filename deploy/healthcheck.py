#!/usr/bin/env python3
"""Health checks run inside the gateway containers: Kubernetes exec probes and Compose healthchecks.

    mcp-extproc-healthcheck grpc unix:/run/mcp-extproc/processor.sock   # the processor's gRPC health service
    mcp-extproc-healthcheck http http://127.0.0.1:9901/ready             # Envoy's admin /ready

Why a script: kubelet's `grpc` and `httpGet` probes dial the pod IP over TCP, but the processor listens on a Unix
socket and Envoy's admin port is bound to 127.0.0.1. A command run inside the container reaches both.
Exit status 0 when healthy, 1 otherwise with one line on stderr saying why.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request


def check_grpc(address: str, service: str, timeout: float) -> str | None:
    """None when the gRPC health service at ``address`` reports SERVING, else the reason."""
    import grpc  # imported here so the http check does not pay for loading gRPC
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as e:
            return f"{address}: {e.code().name}: {e.details()}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def check_http(url: str, timeout: float) -> str | None:
    """None when ``url`` answers 200, else the reason."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return None if reply.status == 200 else f"{url}: HTTP {reply.status}"
    except urllib.error.HTTPError as e:
        return f"{url}: HTTP {e.code}"
    except OSError as e:
        return f"{url}: {e}"


def drain(admin: str, wait: float, timeout: float) -> int:
    """Envoy stops accepting new connections and closes idle ones (HTTP/1 `Connection: close`, HTTP/2 GOAWAY);
    in-flight streams go on for ``wait`` seconds while the endpoint removal reaches the load balancers."""
    import time

    url = admin.rstrip("/") + "/drain_listeners?graceful&inbound_only"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=timeout) as reply:
            ok = reply.status == 200
    except OSError as e:
        print(f"drain: {url}: {e}", file=sys.stderr)
        ok = False
    time.sleep(wait)  # the processor (a sidecar) stops only after Envoy exits: it then flushes recordings
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Run one check; the exit status is the probe result."""
    parser = argparse.ArgumentParser(prog="mcp-extproc-healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds (keep below the probe's timeoutSeconds)")
    sub = parser.add_subparsers(dest="kind", required=True)
    grpc_p = sub.add_parser("grpc", help="gRPC health check (grpc.health.v1)")
    grpc_p.add_argument("address", help="unix:/path.sock or host:port")
    grpc_p.add_argument("--service", default="", help="service name; '' is the whole server")
    http_p = sub.add_parser("http", help="HTTP GET that must answer 200")
    http_p.add_argument("url")
    drain_p = sub.add_parser("drain", help="preStop: ask Envoy to drain its listeners, then wait")
    drain_p.add_argument("admin", help="Envoy admin base URL, e.g. http://127.0.0.1:9901")
    drain_p.add_argument("--wait", type=float, default=15.0, help="seconds to keep serving in-flight streams")
    args = parser.parse_args(argv)

    if args.kind == "drain":
        return drain(args.admin, args.wait, args.timeout)
    if args.kind == "grpc":
        problem = check_grpc(args.address, args.service, args.timeout)
    else:
        problem = check_http(args.url, args.timeout)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
