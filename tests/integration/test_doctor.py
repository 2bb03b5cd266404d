"""`mcp-extproc doctor` against real parts: a running gateway (Envoy + processor), the dev issuer, moto S3.

A healthy setup passes every check; each broken part (issuer down, bucket without Object Lock, unreadable
signing key, bad policy) is named by its own failing check, and the exit status is 1.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
import zygote
from moto.server import ThreadedMotoServer

from extproc.doctor.check import Check
from extproc.doctor.run import run_checks
from extproc.launcher import free_port
from extproc.recording.manifest import generate_keys


def _doctor(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "extproc", "doctor", "--config", str(config), "--json", *extra]
    return zygote.run_command(cmd, timeout=120)


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def _failed(checks: list[Check]) -> set[str]:
    return {c.name for c in checks if c.status == "fail"}


def _config(tmp_path: Path, issuer_url: str, **overrides: Any) -> Path:
    """A gateway.yaml for offline checks: dev issuer, allow-all policy, signing key, file store."""
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "p.yaml").write_text(
        "apiVersion: mcp-extproc/v1\nrules:\n  - name: all\n    effect: allow\n"
        "    subjects: {users: ['*']}\n    targets: {servers: ['*'], methods: ['*']}\n"
    )
    key = tmp_path / "keys" / "signing.key"
    if not key.exists():
        generate_keys(key.parent)
    doc: dict[str, Any] = {
        "listen": {"port": free_port()},
        "processor": {"address": f"127.0.0.1:{free_port()}"},
        "admin": {"port": free_port()},
        "servers": [{"name": "demo", "upstream": "127.0.0.1:9"}],
        "recording": {"directory": str(tmp_path / "rec"), "signing_key": str(key)},
        "auth": {"public_url": "http://127.0.0.1:8080", "issuers": [{"issuer": issuer_url}]},
        "policy": {"directory": str(policies)},
    }
    for k, v in overrides.items():
        doc[k] = {**doc[k], **v} if isinstance(v, dict) else v
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_healthy_running_gateway_passes_every_check(start_mcp_server, start_authed, tmp_path: Path) -> None:
    key, _ = generate_keys(tmp_path / "gwkeys")
    gw = start_authed(
        [start_mcp_server("demo")],
        gateway={"processor": {"metrics_port": free_port()}, "recording": {"signing_key": str(key)}},
    )
    run = _doctor(gw.stack.config)
    doc = json.loads(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    assert doc["ok"] is True
    statuses = {c["name"]: c["status"] for c in doc["checks"]}
    for name in (
        "config",
        "policy",
        "store",
        "spool",
        "signing key",
        "envoy",
        "processor 0",
        "metrics 0",
        "upstream demo",
    ):
        assert statuses[name] == "ok", doc
    assert any(n.startswith("issuer ") and s == "ok" for n, s in statuses.items())


def test_a_down_upstream_is_named_with_its_address(start_mcp_server, start_gateway, tmp_path: Path) -> None:
    """The gateway runs and one MCP server answers; the other was stopped: doctor names it, not "all passed"."""
    up, down = start_mcp_server("demo"), start_mcp_server("github")
    gw = start_gateway([up, down])
    assert _failed(run_checks(gw.stack.config)) == set()
    down.proc.terminate()
    down.proc.wait(10)
    run = subprocess.run(
        [sys.executable, "-m", "extproc", "doctor", "--config", str(gw.stack.config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stdout
    line = next(x for x in run.stdout.splitlines() if "upstream github" in x)
    assert line.startswith("FAIL") and down.upstream in line and "fix: start MCP server 'github'" in line
    assert next(x for x in run.stdout.splitlines() if "upstream demo" in x).startswith(" OK")
    assert "all checks passed" not in run.stdout and "1 failure(s)" in run.stdout


def test_a_listening_port_that_is_not_http_fails_the_upstream_check(start_gateway, tmp_path: Path) -> None:
    """A TCP connect alone would pass here; the HTTP request finds nothing serves MCP."""
    import socket
    import threading

    with socket.socket() as raw:
        raw.bind(("127.0.0.1", 0))
        raw.listen()
        stop = threading.Event()

        def answer_garbage() -> None:
            while not stop.is_set():
                try:
                    conn, _ = raw.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(1024)
                    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

        threading.Thread(target=answer_garbage, daemon=True).start()
        address = f"127.0.0.1:{raw.getsockname()[1]}"
        gw = start_gateway([], server_entries=[{"name": "demo", "upstream": address}])
        checks = _by_name(run_checks(gw.stack.config))
        stop.set()
    assert checks["upstream demo"].status == "fail"
    assert "TCP connects, but GET /mcp failed" in checks["upstream demo"].detail


def test_audit_service_down_is_named(tmp_path: Path, issuer) -> None:
    config = _config(tmp_path, issuer.url)
    doc = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**doc, "audit": {"port": free_port()}}))  # configured, not running
    checks = _by_name(run_checks(config))
    assert checks["audit service"].status == "fail"
    assert "/audit/api/openapi.json" in checks["audit service"].detail


def test_plain_output_names_the_failure_with_a_fix(tmp_path: Path, issuer) -> None:
    config = _config(tmp_path, issuer.url)
    (tmp_path / "policies" / "p.yaml").write_text(
        "apiVersion: mcp-extproc/v1\nrules:\n  - name: x\n    effect: maybe\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "extproc", "doctor", "--config", str(config), "--offline"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    policy_line = next(line for line in run.stdout.splitlines() if " policy:" in line)
    assert policy_line.startswith("FAIL") and "p.yaml:" in policy_line and "fix:" in policy_line
    assert "1 failure(s)" in run.stdout


def test_issuer_down_is_named(tmp_path: Path, issuer) -> None:
    config = _config(tmp_path, issuer.url)
    assert _failed(run_checks(config, running=False)) == set()
    issuer.stop()
    checks = run_checks(config, running=False)
    assert _failed(checks) == {f"issuer {issuer.url}"}
    assert "reachable" in _by_name(checks)[f"issuer {issuer.url}"].hint


def test_bad_policy_is_named_with_file_and_line(tmp_path: Path, issuer) -> None:
    config = _config(tmp_path, issuer.url)
    (tmp_path / "policies" / "p.yaml").write_text(
        "apiVersion: mcp-extproc/v1\nrules:\n  - name: x\n    effect: allow\n    subjects: {users: ['*']}\n"
        "    targets: {servers: [nosuch], methods: ['*']}\n"
    )
    checks = run_checks(config, running=False)
    assert _failed(checks) == {"policy"}
    assert "p.yaml" in _by_name(checks)["policy"].detail


@pytest.mark.parametrize("kind", ["directory", "not-a-key", "missing"])
def test_unreadable_signing_key_is_named(tmp_path: Path, issuer, kind: str) -> None:
    bad = tmp_path / "bad.key"
    if kind == "directory":
        bad.mkdir()
    elif kind == "not-a-key":
        bad.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    config = _config(tmp_path, issuer.url, recording={"directory": str(tmp_path / "rec"), "signing_key": str(bad)})
    checks = run_checks(config, running=False)
    assert _failed(checks) == {"signing key"}
    assert str(bad) in _by_name(checks)["signing key"].detail


def test_not_running_processor_fails_and_exit_status_is_one(tmp_path: Path, issuer) -> None:
    config = _config(tmp_path, issuer.url)
    run = _doctor(config)
    assert run.returncode == 1
    doc = json.loads(run.stdout)
    # _config's upstream 127.0.0.1:9 (discard) runs nothing either
    assert {c["name"] for c in doc["checks"] if c["status"] == "fail"} == {"processor 0", "upstream demo"}


def test_broken_config_is_the_only_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("servers: [{name: BAD, upstream: nope}]\nlisten: {port: 0}\n")  # every problem, in one run
    checks = run_checks(path)
    assert [c.name for c in checks] == ["config"] and checks[0].status == "fail"
    assert "servers" in checks[0].detail and "listen.port" in checks[0].detail


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    yield url, boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    server.stop()


@pytest.mark.parametrize("locked", [True, False], ids=["object-lock", "no-object-lock"])
def test_s3_store_and_object_lock(tmp_path: Path, issuer, moto_s3: tuple[str, Any], locked: bool) -> None:
    url, client = moto_s3
    bucket = f"doc-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=locked)
    s3 = {
        "bucket": bucket,
        "endpoint_url": url,
        "region": "us-east-1",
        "object_lock": {"mode": "GOVERNANCE", "retain_days": 1},
    }
    config = _config(
        tmp_path,
        issuer.url,
        recording={
            "store": "s3",
            "s3": s3,
            "directory": str(tmp_path / "rec"),
            "signing_key": str(tmp_path / "keys/signing.key"),
        },
    )
    checks = run_checks(config, running=False)
    by = _by_name(checks)
    assert by[f"store s3://{bucket}"].status == "ok"
    if locked:
        assert _failed(checks) == set()
    else:
        assert _failed(checks) == {"object lock"}
        assert "object-lock-enabled-for-bucket" in by["object lock"].hint


def test_budgets_store_up_and_down_is_named(tmp_path: Path, issuer) -> None:
    from redis_server import RedisServer

    redis = RedisServer(tmp_path / "redis").start()
    try:
        config = _config(tmp_path, issuer.url)
        config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "budgets": {"store": redis.url}}))
        up = _by_name(run_checks(config, running=False))["budgets store"]
        redis.stop()
        down = _by_name(run_checks(config, running=False))["budgets store"]
    finally:
        redis.stop()
    assert up.status == "ok" and "counting script loaded" in up.detail
    assert down.status == "fail" and f"127.0.0.1:{redis.port}" in down.detail and "on_store_error" in down.hint
