"""What changed in a store since the index last looked (file store: manifests' folders; S3: date prefixes and each
writer's late digests), and the index rows of those sessions, read in this process or in worker processes."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from extproc.audit.summary import SessionRow, summarize
from extproc.recording.replay import load_session
from extproc.recording.store import Store
from extproc.recording.store.file import MANIFESTS, FileStore

log = logging.getLogger(__name__)


def summarize_sessions(
    store: Store, public_key: Ed25519PublicKey | None, items: list[tuple[str, str]]
) -> list[tuple[SessionRow, str]]:
    out = []
    for key, mark in items:
        try:
            row = summarize(key, load_session(store, key, public_key))
        except KeyError:
            continue  # listed but nothing readable yet (a segment still being stored)
        except Exception:  # one unreadable session must not stop the index for the others
            log.exception("cannot index session %s", key)
            continue
        out.append((row, ("F" if row.final else "") + mark))  # F: final, skipped until its folder changes
    return out


def summarize_files(job: tuple[Path, bytes | None, list[tuple[str, str]]]) -> list[tuple[SessionRow, str]]:
    """``summarize_sessions`` in a worker process, over a file store at ``root`` (the key as raw bytes: it pickles)."""
    root, key, items = job
    public_key = Ed25519PublicKey.from_public_bytes(key) if key is not None else None
    return summarize_sessions(FileStore(root), public_key, items)


def file_changes(root: Path, marks: dict[str, str]) -> dict[str, str]:
    """Sessions whose manifests changed. A session whose streams are all final is skipped unless its folder
    changed (a new stream is a new file); a growing one costs one stat per manifest file."""
    out: dict[str, str] = {}
    if not root.is_dir():
        return out
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            folder_mtime = entry.stat(follow_symlinks=False).st_mtime_ns
            old = marks.get(entry.name)
            if old is not None and old.startswith(f"F{folder_mtime}:"):
                continue  # final and no new stream since
            sizes = []
            with os.scandir(entry.path) as files:
                for f in files:
                    if f.name.endswith(MANIFESTS):
                        sizes.append(f"{f.name}={f.stat(follow_symlinks=False).st_size}")
            if not sizes:
                continue
            mark = f"{folder_mtime}:{';'.join(sorted(sizes))}"
            if old is None or old.lstrip("F") != mark:
                out[entry.name] = mark
    return out


def s3_changes(store: Any, marks: dict[str, str], watermark: float) -> dict[str, str]:
    """Sessions with manifests under the date prefixes from the day before the watermark on (late uploads of
    older segments are found through the writers' digests: ``s3_late_changes``)."""
    root = f"{store.prefix}/" if store.prefix else ""
    first_day = time.strftime("%Y/%m/%d", time.gmtime(max(0.0, watermark - 86_400))) if watermark else ""
    seen: dict[str, list[str]] = {}
    for day in store._days():
        if day.removeprefix(root).rstrip("/") < first_day:
            continue
        for page in store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=day):
            for obj in page.get("Contents", []):
                rest = obj["Key"].removeprefix(day)
                if rest.endswith(".manifest.json"):
                    seen.setdefault(rest.split("/", 1)[0], []).append(f"{rest}@{obj.get('ETag', '')}")
    out = {}
    for key, names in seen.items():
        mark = hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:24]
        if marks.get(key, "").lstrip("F") != mark:
            out[key] = mark
    return out


def s3_late_changes(store: Any, meta: dict[str, str]) -> tuple[set[str], dict[str, str]]:
    """Sessions named by the digests each writer stored since the last one seen: a segment uploaded late under an
    older date (a writer that was cut off from S3 for days) is in the digest of the period it was stored in.

    Costs one listing of the writers, one listing per writer whose chain is still open (``StartAfter`` its last
    seen digest) and one GET per new digest; a closed chain (its final digest seen) is never listed again. On a
    fresh index the date listing reads every day anyway, so of each writer's digests only the newest is read (to
    note where the writer is, and whether its chain is closed)."""
    from extproc.recording.digest import Digest
    from extproc.recording.store import safe_key
    from extproc.recording.store.s3 import _DIGEST

    def read(key: str) -> Digest | None:
        try:
            return Digest.from_bytes(store._get(key))
        except ValueError:
            log.warning("index: digest %s is not one; skipped (verify reports it)", key)
            return None

    root = f"{store.digest_prefix}/"
    fresh = "watermark" not in meta
    late: set[str] = set()
    seen: dict[str, str] = {}
    for prefix in store._prefixes(root):
        writer = prefix.removeprefix(root).rstrip("/")
        last = meta.get(f"digest:{writer}", "")
        if last.endswith("F"):
            continue  # the writer closed its chain: nothing more comes from it
        after = f"{prefix}{int(last):08d}.json" if last else ""
        newest, newest_key, closed = -1, "", False
        for page in store.client.get_paginator("list_objects_v2").paginate(
            Bucket=store.bucket, Prefix=prefix, StartAfter=after
        ):
            for obj in page.get("Contents", []):
                m = _DIGEST.match(obj["Key"].removeprefix(prefix))
                if m is None:
                    continue
                newest, newest_key = int(m["n"]), obj["Key"]
                if not fresh and (digest := read(obj["Key"])) is not None:
                    late.update(safe_key(s.session) for s in digest.segments)
                    closed = digest.final
        if newest < 0:
            continue
        if fresh:
            closed = (digest := read(newest_key)) is not None and digest.final
        seen[f"digest:{writer}"] = f"{newest}{'F' if closed else ''}"
    return late, seen
