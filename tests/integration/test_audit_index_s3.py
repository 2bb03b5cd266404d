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
    return [r[:-1] for r in index.dump()]


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


class _Counted:
    """Counts the S3 requests the index makes (botocore's before-send event: one per HTTP request)."""

    def __init__(self, store: S3Store) -> None:
        self.n = 0
        store.client.meta.events.register("before-send.s3", self._count)

    def _count(self, **_: object) -> None:
        self.n += 1


async def test_a_segment_uploaded_late_under_an_older_date_is_found_through_its_writers_digest(
    s3: S3Store, tmp_path: Path
) -> None:
    from extproc.recording.digest import Digest, Listed

    now = time.time()
    index = SessionIndex(tmp_path / "inc.sqlite", s3)
    for seg in session_segments("today", server="alpha", user="bob", started=now):
        await s3.put_segment(seg)
    await s3.put_digest("w1", 0, Digest("w1", 0, now - 60, now, "0" * 64).to_bytes())
    assert index.refresh() == 1
    assert index.refresh() == 0
    # A writer cut off from S3 for ten days uploads its segments now: they go under their own (old) date, which
    # the date listing no longer looks at; the digest of the period they were stored in names them.
    late = session_segments("late", server="alpha", user="carol", started=now - 10 * 86_400, writer="w2")
    for seg in late:
        await s3.put_segment(seg)
    assert index.get("late") is None
    listed = [Listed("late", "w2", s.number, "0" * 64, 0, 1, final=True) for s in late]
    await s3.put_digest("w2", 0, Digest("w2", 0, now - 30, now, "0" * 64, listed, final=True).to_bytes())
    counted = _Counted(s3)
    assert index.refresh() == 1
    assert index.get("late") is not None and index.get("late").user == "carol"  # type: ignore[union-attr]
    found = counted.n
    counted.n = 0
    assert index.refresh() == 0  # seen once; w2's chain is closed: never listed again
    idle = counted.n
    fresh = SessionIndex(tmp_path / "fresh.sqlite", s3)
    assert fresh.reindex() == 2
    assert _rows(index) == _rows(fresh)
    print(f"\nS3 requests: {found} for the refresh that found the late segment, {idle} for an idle refresh")
