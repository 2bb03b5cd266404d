"""IRSA end to end: the processor has no AWS keys, only AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE (what EKS injects
for an annotated ServiceAccount); boto3's default chain trades the token at STS (moto server, reached through
AWS_ENDPOINT_URL_STS) for temporary credentials, and a recorded session lands in the bucket with them."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import boto3
import pytest
from gateway_parts import unit_key
from moto.core import DEFAULT_ACCOUNT_ID
from moto.server import ThreadedMotoServer
from moto.sts.models import sts_backends

from extproc.demo.mcp_client import run_session
from extproc.launcher import free_port, wait_until
from extproc.recording.manifest import generate_keys, load_public_key
from extproc.recording.replay import load_session
from extproc.recording.store.s3 import S3Store

ROLE = "arn:aws:iam::123456789012:role/mcp-extproc-recordings"
# A projected ServiceAccount token's shape (moto does not check its signature; the real STS checks it against the
# cluster's OIDC provider).
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bWNwLWV4dHByb2M6bWNwLWV4dHByb2MifQ.c2ln"


async def test_session_lands_in_s3_with_web_identity_credentials(
    start_mcp_server, start_gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    try:
        url, bucket = f"http://127.0.0.1:{port}", f"rec-{uuid.uuid4().hex[:12]}"
        admin = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="admin",
                             aws_secret_access_key="admin")  # fmt: skip
        admin.create_bucket(Bucket=bucket)
        token = tmp_path / "token"
        token.write_text(TOKEN)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(k, raising=False)
        for k, v in {
            "AWS_ROLE_ARN": ROLE,
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
            "AWS_ROLE_SESSION_NAME": "mcp-extproc",
            "AWS_ENDPOINT_URL_STS": url,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            monkeypatch.setenv(k, v)
        key, pub = generate_keys(tmp_path / "keys")
        recording = {
            "store": "s3",
            "s3": {"bucket": bucket, "prefix": "rec", "endpoint_url": url, "region": "us-east-1"},
            "signing_key": str(key),
            "segment_max_age_ms": 200,
        }
        gw = start_gateway([start_mcp_server("demo")], recording=recording)
        result = await run_session(gw.url())
        gw.stop()

        assumed = sts_backends[DEFAULT_ACCOUNT_ID]["global"].assumed_roles
        assert ROLE in [r.role_arn for r in assumed]  # the credentials came from STS, for this role
        store = S3Store(bucket, "rec", endpoint_url=url, region="us-east-1",
                        client=admin)  # fmt: skip
        wait_until(lambda: bool(store.list_sessions()), 10, "session in the bucket")
        session = load_session(store, unit_key(store, result.session_id), load_public_key(pub))
        assert session.problems == [] and any(e["type"] == "mcp.request" for e in session.events)
    finally:
        moto.stop()
