"""S3 requests per index refresh (issue 27): the date listing alone against it plus the per-writer digest listing
that finds segments uploaded late under an older date. moto server on loopback; 30 days of sessions, 8 writers
with open digest chains and 40 closed ones. Run: python bench/audit_index_s3_late_bench.py"""

import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
import boto3
from moto.server import ThreadedMotoServer
from synthetic import session_segments

import extproc.audit.index as ix
from extproc.audit.index import SessionIndex
from extproc.launcher import free_port
from extproc.recording.digest import Digest, Listed
from extproc.recording.store.s3 import S3Store

port = free_port()
srv = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
srv.start()
url = f"http://127.0.0.1:{port}"
bucket = f"b{uuid.uuid4().hex[:8]}"
boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=bucket)
s3 = S3Store(bucket, "rec", endpoint_url=url, region="us-east-1")
n = [0]
s3.client.meta.events.register("before-send.s3", lambda **_: n.__setitem__(0, n[0] + 1))
now = time.time()
WRITERS, CLOSED, DAYS = 8, 40, 30


async def fill():
    for d in range(DAYS):
        for seg in session_segments(f"d{d}", server="a", user="u", started=now - d * 86400):
            await s3.put_segment(seg)
    for w in range(WRITERS + CLOSED):
        for k in range(3):
            await s3.put_digest(
                f"w{w}", k, Digest(f"w{w}", k, now, now, "0" * 64, final=(w >= WRITERS and k == 2)).to_bytes()
            )


asyncio.run(fill())
with tempfile.TemporaryDirectory() as tmp:
    idx = SessionIndex(Path(tmp) / "i.sqlite", s3)
    n[0] = 0
    idx.refresh()
    first = n[0]
    n[0] = 0
    idx.refresh()
    second = n[0]  # closed chains not read on a fresh index: still listed
    n[0] = 0
    idx.refresh()
    idle = n[0]
    orig = ix.s3_late_changes
    ix.s3_late_changes = lambda store, meta: (set(), {})
    n[0] = 0
    idx.refresh()
    dates_only = n[0]
    ix.s3_late_changes = orig

    # a late segment 10 days old, named by a new digest of an open writer
    async def late():
        for seg in session_segments("late", server="a", user="u", started=now - 10 * 86400, writer="w0"):
            await s3.put_segment(seg)
        await s3.put_digest(
            "w0", 3, Digest("w0", 3, now, now, "0" * 64, [Listed("late", "w0", 0, "0" * 64, 0, 1)]).to_bytes()
        )

    asyncio.run(late())
    n[0] = 0
    found = idx.refresh()
    late_n = n[0]
    print(
        f"{DAYS} days of sessions, {WRITERS} open writers + {CLOSED} closed: fresh index {first} requests; "
        f"idle refresh: {idle} with the digest listing, {dates_only} with the date listing alone; "
        f"the refresh finding a 10-day-old late segment: {late_n} requests, {found} session"
    )
    idx.close()
srv.stop()
