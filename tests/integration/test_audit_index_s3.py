"""The session index over an S3 store (moto server on loopback): incremental refreshes equal a fresh reindex."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer
from synthetic import session_segments

from extproc.audit.index import SessionIndex
from extproc.launcher import free_port
from extproc.recording.store.s3 import S3Store


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Store]:
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    bucket = f"rec-{uuid.uuid4().hex[:12]}"
    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=bucket)
    yield S3Store(bucket, "rec", endpoint_url=url, region="us-east-1")
    server.stop()


def _rows(index: SessionIndex) -> list[tuple]:
    with index._lock:
        return [r[:-1] for r in index._db.execute("SELECT * FROM sessions ORDER BY key").fetchall()]


async def test_incremental_over_s3_equals_reindex(s3: S3Store, tmp_path: Path) -> None:
    now = time.time()
    inc = SessionIndex(tmp_path / "inc.sqlite", s3)
    for seg in session_segments("s1", server="alpha", user="bob", started=now, final=False):
        await s3.put_segment(seg)
    assert inc.refresh() == 1
    assert inc.get("s1").state == "open"  # type: ignore[union-attr]
    assert inc.refresh() == 0  # nothing new under the watermark's days: nothing re-read
    for seg in session_segments("s2", server="beta", user="carol", started=now + 1, tools=("add",)):
        await s3.put_segment(seg)
    for seg in session_segments("s1", server="alpha", user="bob", started=now + 2, writer="w2"):
        await s3.put_segment(seg)
    assert inc.refresh() == 2
    fresh = SessionIndex(tmp_path / "fresh.sqlite", s3)
    assert fresh.reindex() == 2
    assert _rows(inc) == _rows(fresh)
    assert inc.get("s2").tools == ("add",)  # type: ignore[union-attr]
