"""Crypto-shredding through real Envoy and the mcp SDK: payloads sealed per subject, `erase` makes one subject's
unreadable (file store with a key file; S3 with AWS KMS, both on moto), the others' stay readable, and every
session, the erasure's own record included, still verifies."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import yaml
import zstandard
from gateway_parts import ALLOW_ALL, Gateway
from moto.server import ThreadedMotoServer
from recording_helpers import cli

from extproc.authn.dev_issuer import DevIssuer
from extproc.demo.mcp_client import connect
from extproc.launcher import free_port, wait_until
from extproc.recording.manifest import generate_keys

ALICE_TEXT, BOB_TEXT = "alice-secret-Hq73Lm", "bob-secret-Pz58Kd"


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for k, v in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


async def _calls(gw: Gateway, issuer: DevIssuer) -> None:
    for who, text in (("alice", ALICE_TEXT), ("bob", BOB_TEXT)):
        async with connect(gw.url(), token=issuer.mint(who, aud=gw.endpoint)) as conn:
            assert (await conn.client.call_tool("echo", {"text": text})).structured_content == {"result": text}


def _config(gw: Gateway, tmp_path: Path) -> Path:
    """The gateway's own config for the CLI (the running one's file names the same store and keys)."""
    path = tmp_path / "cli-gateway.yaml"
    path.write_text(yaml.safe_dump(gw.config))
    return path


def _show_all(config: Path, sessions: list[str]) -> str:
    out = []
    for sid in sessions:
        shown = cli("sessions", "show", sid, "--config", str(config), "--json")
        assert shown.returncode == 0, shown.stderr
        out.append(shown.stdout)
    return "\n".join(out)


def _verify_all(config: Path, sessions: list[str], pub: Path) -> None:
    for sid in sessions:
        verify = cli("sessions", "verify", sid, "--config", str(config), "--public-key", str(pub))
        assert verify.returncode == 0, verify.stdout + verify.stderr


def _file_sessions(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _file_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*.jsonl"))


async def test_erase_makes_one_subjects_payloads_unreadable_and_every_proof_still_verifies(
    start_mcp_server, start_authed, issuer: DevIssuer, tmp_path: Path
) -> None:
    key, pub = generate_keys(tmp_path / "keys")
    kek = tmp_path / "kek.hex"
    kek.write_text("ab" * 32)
    rec = {"signing_key": str(key), "encrypt_payloads": "per_subject", "payload_keys": {"kek_file": str(kek)}}
    gw = start_authed([start_mcp_server("demo")], policy=ALLOW_ALL, gateway={"recording": rec})
    await _calls(gw, issuer)
    gw.stop()
    root = gw.store.root
    config = _config(gw, tmp_path)
    sessions = _file_sessions(root)

    assert ALICE_TEXT.encode() not in _file_bytes(root) and BOB_TEXT.encode() not in _file_bytes(root)  # sealed
    before = _show_all(config, sessions)
    assert ALICE_TEXT in before and BOB_TEXT in before  # readable with the key store
    keyless = [cli("sessions", "show", s, "--dir", str(root), "--json").stdout for s in sessions]
    assert all(ALICE_TEXT not in k and BOB_TEXT not in k for k in keyless)
    assert any('"name": "echo"' in k for k in keyless)  # what was called stays readable without any key

    erased = cli(
        "erase", "--subject", f"{issuer.url}#alice", "--reason", "GDPR art. 17 #42", "--by", "dpo", "-c", str(config)
    )
    assert erased.returncode == 0, erased.stdout + erased.stderr
    assert "1 data key(s) destroyed" in erased.stdout

    after = _show_all(config, _file_sessions(root))
    assert ALICE_TEXT not in after and BOB_TEXT in after
    assert "erasures" in " ".join(_file_sessions(root))
    _verify_all(config, _file_sessions(root), pub)  # alice's sessions, bob's and the erasure's own record
    shown = [cli("sessions", "show", s, "--config", str(config)).stdout for s in sessions]
    assert any("payloads erased on " in s and "by dpo (GDPR art. 17 #42)" in s for s in shown), shown


def _s3_bytes(client: Any, bucket: str) -> bytes:
    out = []
    for o in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        data = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        out.append(
            zstandard.ZstdDecompressor().decompressobj().decompress(data) if data[:4] == b"\x28\xb5\x2f\xfd" else data
        )
    return b"".join(out)


async def test_erase_on_s3_with_kms_wrapped_keys(
    start_mcp_server, start_authed, issuer: DevIssuer, tmp_path: Path, moto: str
) -> None:
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    bucket = f"shred-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)  # versioned: erasure must delete every version
    kms_key = boto3.client("kms", endpoint_url=moto, region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]
    key, pub = generate_keys(tmp_path / "keys")
    rec = {
        "store": "s3",
        "s3": {"bucket": bucket, "prefix": "rec", "endpoint_url": moto, "region": "us-east-1"},
        "compression": "zstd",
        "signing_key": str(key),
        "segment_max_age_ms": 200,
        "encrypt_payloads": "per_subject",
        "payload_keys": {"kms_key_id": kms_key, "kms_endpoint_url": moto, "kms_region": "us-east-1"},
    }
    gw = start_authed([start_mcp_server("demo")], policy=ALLOW_ALL, gateway={"recording": rec})
    await _calls(gw, issuer)
    gw.stop()
    config = _config(gw, tmp_path)
    stored = _s3_bytes(s3, bucket)
    assert b'"sealed"' in stored and ALICE_TEXT.encode() not in stored and BOB_TEXT.encode() not in stored
    listed = cli("sessions", "list", "--config", str(config), "--json")
    sessions = [r["session"] for r in json.loads(listed.stdout)]
    assert ALICE_TEXT in _show_all(config, sessions)

    erased = cli("erase", "--subject", f"{issuer.url}#alice", "--reason", "request 7", "--by", "dpo", "-c", str(config))
    assert erased.returncode == 0, erased.stdout + erased.stderr
    keys_left = s3.list_object_versions(Bucket=bucket, Prefix="rec-payload-keys/").get("Versions", [])
    assert len([v for v in keys_left if "/erased/" not in v["Key"]]) == 1  # bob's key only, no old version of alice's

    after = _show_all(config, sessions)
    assert ALICE_TEXT not in after and BOB_TEXT in after and '"by": "dpo"' in after
    all_sessions = [r["session"] for r in json.loads(cli("sessions", "list", "-c", str(config), "--json").stdout)]
    assert len(all_sessions) == len(sessions) + 1  # the erasure's own record
    _verify_all(config, all_sessions, pub)


VIEWER_POLICY = (
    ALLOW_ALL
    + """viewers:
  - name: dpo-sees-all
    subjects: {users: [dpo]}
    servers: ["*"]
    sessions: all
"""
)


async def test_the_audit_service_shows_an_erasure_made_while_it_runs(
    start_mcp_server, start_authed, issuer: DevIssuer, tmp_path: Path
) -> None:
    key, _ = generate_keys(tmp_path / "keys")
    kek = tmp_path / "kek.hex"
    kek.write_text("cd" * 32)
    rec = {
        "signing_key": str(key),
        "segment_max_age_ms": 100,
        "flush_interval_ms": 20,
        "encrypt_payloads": "per_subject",
        "payload_keys": {"kek_file": str(kek)},
    }
    audit = {"port": free_port(), "index_interval_ms": 100, "client_id": "audit-viewer"}
    gw = start_authed([start_mcp_server("demo")], policy=VIEWER_POLICY, gateway={"recording": rec, "audit": audit})
    await _calls(gw, issuer)
    headers = {"authorization": f"Bearer {issuer.mint('dpo', aud=gw.endpoint)}"}

    def show(key: str) -> dict[str, Any]:
        r = httpx.get(f"{gw.endpoint}/audit/api/sessions/{key}", headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def by_user() -> dict[str, str]:
        r = httpx.get(f"{gw.endpoint}/audit/api/sessions", headers=headers, timeout=30)
        return {s["user"]: s["session"] for s in r.json()["sessions"]} if r.status_code == 200 else {}

    wait_until(lambda: {"alice", "bob"} <= set(by_user()), 20, "both sessions indexed", interval=0.2)
    sessions = by_user()
    wait_until(lambda: ALICE_TEXT in json.dumps(show(sessions["alice"])), 20, "alice's echo call stored")

    config = _config(gw, tmp_path)
    erased = cli("erase", "--subject", f"{issuer.url}#alice", "--reason", "art. 17", "--by", "dpo", "-c", str(config))
    assert erased.returncode == 0, erased.stdout + erased.stderr

    alice, bob = show(sessions["alice"]), show(sessions["bob"])
    assert ALICE_TEXT not in json.dumps(alice) and BOB_TEXT in json.dumps(bob)
    marks = [x["erased"] for x in alice["exchanges"] if x["erased"]]
    assert marks and all(m["by"] == "dpo" and m["reason"] == "art. 17" for m in marks)
    assert alice["verification"]["verified"] and alice["summary"]["capture"] == "redacted"
    await _viewer_shows_the_erasure(f"{gw.endpoint}/audit/", sessions["alice"])


async def _viewer_shows_the_erasure(base: str, key: str) -> None:
    """The web viewer in headless Chromium (as tests/integration/test_audit_browser.py drives it)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        try:
            page = await (await browser.new_context()).new_page()
            page.set_default_timeout(15_000)
            await page.goto(base)
            await page.click("#login")
            await page.fill("#username", "dpo")
            await page.click("#sign-in")
            await page.wait_for_selector(f'tr[data-session="{key}"]')
            await page.goto(f"{base}s/{key}")
            await page.wait_for_selector("#exchanges .erased")
            erased = await page.locator("#exchanges .erased").first.text_content() or ""
            assert erased.startswith("payloads erased on ") and erased.endswith(" by dpo (art. 17)"), erased
            assert (await page.text_content("#capture")) == "capture redacted"
            assert ALICE_TEXT not in (await page.content())
        finally:
            await browser.close()
