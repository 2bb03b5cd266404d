"""The recording section of gateway.yaml: stores, paths, and no credentials in the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.errors import ConfigError
from extproc.settings import load, parse

S3 = {"bucket": "audit-bucket", "prefix": "mcp"}


def _doc(**recording: object) -> dict:
    return {"servers": [{"name": "a", "upstream": "127.0.0.1:1"}], "allow_anonymous": True, "recording": recording}


@pytest.mark.parametrize("key", ["access_key_id", "secret_access_key", "aws_session_token", "profile"])
def test_credentials_in_the_config_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"recording\.s3: {key}: credentials are never read from gateway\.yaml"):
        parse(_doc(store="s3", s3={**S3, key: "x"}))


@pytest.mark.parametrize(
    ("recording", "message"),
    [
        pytest.param({"store": "s3"}, "store: s3 needs an s3: section", id="s3-without-section"),
        pytest.param({"s3": S3}, "s3: given but store is 'file'", id="section-without-s3"),
        pytest.param({"compression": "lz4"}, "recording.compression", id="unknown-compression"),
        pytest.param(
            {"store": "s3", "s3": {**S3, "object_lock": {"mode": "FOREVER", "retain_days": 1}}},
            "recording.s3.object_lock.mode",
            id="bad-lock-mode",
        ),
    ],
)
def test_invalid_recording_settings_name_the_key(recording: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(_doc(**recording))


def test_s3_settings_parse() -> None:
    rec = parse(
        _doc(
            store="s3",
            s3={
                **S3,
                "endpoint_url": "http://127.0.0.1:9000",
                "object_lock": {"mode": "COMPLIANCE", "retain_days": 30},
            },
            compression="zstd",
        )
    ).recording

    assert rec.s3 is not None and rec.s3.object_lock is not None
    assert (rec.s3.bucket, rec.s3.object_lock.mode, rec.s3.object_lock.retain_days) == (
        "audit-bucket",
        "COMPLIANCE",
        30,
    )


def test_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "g" / "gateway.yaml"
    cfg.parent.mkdir()
    cfg.write_text(
        "servers: [{name: a, upstream: '127.0.0.1:1'}]\nallow_anonymous: true\n"
        "recording: {signing_key: keys/signing.key, spool_directory: spool}\n"
    )

    rec = load(cfg).recording

    assert rec.signing_key == (tmp_path / "g" / "keys" / "signing.key").resolve()
    assert rec.spool == (tmp_path / "g" / "spool").resolve()


def test_spool_defaults_to_a_folder_in_the_recording_directory(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("servers: [{name: a, upstream: '127.0.0.1:1'}]\nallow_anonymous: true\n")

    assert load(cfg).recording.spool == (tmp_path / "recordings" / ".spool").resolve()
