"""Tamper evidence through the real CLI: each kind of tampering makes `sessions verify` fail and name it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import zygote

from extproc.recording.events import ExchangeEnd, ExchangeStart, McpRequest
from extproc.recording.manifest import Signer, generate_keys
from extproc.recording.recorder import Recorder
from extproc.recording.spool import Spool
from extproc.recording.store.file import FileStore
from extproc.recording.writer import RecorderOptions


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}  # one problem per line, unwrapped
    return zygote.run_command([sys.executable, "-m", "extproc", *args], timeout=60, env=env)


async def _record(root: Path, key: Path, session: str, exchanges: int = 4) -> None:
    """``exchanges`` exchanges of one session: one segment each (a segment ends at every exchange end)."""
    store = FileStore(root)
    rec = Recorder(store, Spool.beside(store, "w"), RecorderOptions(flush_interval=0.01), signer=Signer.from_file(key))
    await rec.start()
    t = 1000.0
    for x in range(exchanges):
        ex = f"{session}-ex{x}"
        rec.emit(ExchangeStart(session=session, exchange=ex, time=t, method="POST", server="demo"))
        rec.emit(McpRequest(session=session, exchange=ex, index=1, time=t + 0.1, messages=[{"id": x, "n": x}]))
        rec.emit(ExchangeEnd(session=session, exchange=ex, index=2, time=t + 0.2))
        await rec.flushed()
        t += 1
    await rec.close()


@pytest.fixture
async def recorded(tmp_path: Path) -> tuple[Path, Path]:
    key, pub = generate_keys(tmp_path / "keys")
    root = tmp_path / "rec"
    await _record(root, key, "sess-a")
    await _record(root, key, "sess-b")
    return root, pub


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _segments(root: Path, session: str) -> tuple[list[list[bytes]], list[bytes]]:
    """Stream lines grouped by segment (from the manifests), and the manifest lines."""
    lines = _lines(root / session / "w.jsonl")
    manifests = _lines(root / session / "w.manifests")
    groups = []
    for m in manifests:
        doc = json.loads(m)
        groups.append(lines[doc["first"] : doc["last"] + 1])
    return groups, manifests


def _write(root: Path, groups: list[list[bytes]], manifests: list[bytes], session: str = "sess-a") -> None:
    (root / session / "w.jsonl").write_bytes(b"".join(b"".join(g) for g in groups))
    (root / session / "w.manifests").write_bytes(b"".join(manifests))


def change_one_byte(root: Path) -> None:
    path = root / "sess-a" / "w.jsonl"
    data = path.read_bytes().replace(b'"n":1', b'"n":7', 1)
    path.write_bytes(data)


def drop_a_segment(root: Path) -> None:
    groups, manifests = _segments(root, "sess-a")
    del groups[1]
    _write(root, groups, manifests)


def drop_a_segment_and_its_manifest(root: Path) -> None:
    groups, manifests = _segments(root, "sess-a")
    del groups[1], manifests[1]
    _write(root, groups, manifests)


def swap_two_segments(root: Path) -> None:
    groups, manifests = _segments(root, "sess-a")
    groups[1], groups[2] = groups[2], groups[1]
    _write(root, groups, manifests)


def truncate_the_last_segment(root: Path) -> None:
    path = root / "sess-a" / "w.jsonl"
    path.write_bytes(b"".join(_lines(path)[:-1]))  # the last event of the last non-empty segment is gone


def cut_off_the_last_segments(root: Path) -> None:
    groups, manifests = _segments(root, "sess-a")
    _write(root, groups[:-2], manifests[:-2])  # whole segments and their manifests: the final manifest is gone


def splice_a_segment_from_another_session(root: Path) -> None:
    groups, manifests = _segments(root, "sess-a")
    other_groups, other_manifests = _segments(root, "sess-b")
    groups[2], manifests[2] = other_groups[2], other_manifests[2]
    _write(root, groups, manifests)


def strip_a_signature(root: Path) -> None:
    groups, manifests = _segments(root, "sess-a")
    doc = json.loads(manifests[1])
    doc["sig"] = ""
    manifests[1] = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    _write(root, groups, manifests)


def append_unsigned_data(root: Path) -> None:
    with (root / "sess-a" / "w.jsonl").open("ab") as f:
        f.write(b'{"seq":99,"prev":"x","type":"mcp.request","session":"sess-a"}\n')


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        pytest.param(change_one_byte, ["segment 1: content differs from its signed manifest (edited)"], id="byte"),
        pytest.param(drop_a_segment, ["segment 1: missing: events 3..5 are gone (segment deleted)"], id="drop"),
        pytest.param(
            drop_a_segment_and_its_manifest,
            ["segment 1: manifest of segment 2 found here: a segment is missing or reordered"],
            id="drop-with-manifest",
        ),
        pytest.param(swap_two_segments, ["segment 2: stored before segment 1 (segments reordered)"], id="swap"),
        pytest.param(truncate_the_last_segment, ["segment 3: truncated: ends at event 10"], id="truncate"),
        pytest.param(cut_off_the_last_segments, ["no final manifest after segment 2"], id="cut-off-end"),
        pytest.param(
            splice_a_segment_from_another_session,
            ["segment 2: manifest belongs to session 'sess-b' (spliced from another session)"],
            id="splice",
        ),
        pytest.param(strip_a_signature, ["segment 1: manifest unsigned"], id="strip-signature"),
        pytest.param(append_unsigned_data, ["not covered by any signed manifest (unsigned data)"], id="unsigned"),
    ],
)
async def test_verify_names_the_tampering(
    recorded: tuple[Path, Path], tamper: Callable[[Path], None], expected: list[str]
) -> None:
    root, pub = recorded
    assert _cli("sessions", "verify", "sess-a", "--dir", str(root), "--public-key", str(pub)).returncode == 0

    tamper(root)
    verify = _cli("sessions", "verify", "sess-a", "--dir", str(root), "--public-key", str(pub))

    assert verify.returncode == 1, verify.stdout
    for phrase in expected:
        assert phrase in verify.stdout, verify.stdout
    assert _cli("sessions", "verify", "sess-b", "--dir", str(root), "--public-key", str(pub)).returncode == 0


async def test_verify_with_another_public_key_fails(recorded: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = recorded
    _, other = generate_keys(tmp_path / "other")

    verify = _cli("sessions", "verify", "sess-a", "--dir", str(root), "--public-key", str(other))

    assert verify.returncode == 1
    assert "manifest signed by another key" in verify.stdout


async def test_intact_recording_verifies_and_says_what_was_checked(recorded: tuple[Path, Path]) -> None:
    root, pub = recorded

    verify = _cli("sessions", "verify", "sess-a", "--dir", str(root), "--public-key", str(pub))

    assert verify.returncode == 0
    assert "OK: 12 events in 1 stream(s), signatures checked" in verify.stdout
