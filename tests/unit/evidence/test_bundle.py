"""``sessions export`` writes a bundle of a real recording that ``sessions verify --bundle`` (and the standalone
verifier) check offline; tampering in the store before the export shows in the bundle's verdict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from recording_helpers import cli, record_with_digests

from extproc.evidence import bundle
from extproc.recording.manifest import generate_keys
from extproc.recording.store.file import FileStore

STANDALONE = Path(__file__).resolve().parents[3] / "docs" / "verifier" / "verify_bundle.py"


@pytest.fixture
async def recorded(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two sessions by writer w (their digests, and the closing one); returns the store, the key and its pub."""
    key, pub = generate_keys(tmp_path / "keys")
    root = tmp_path / "rec"
    await record_with_digests(FileStore(root), root / ".spool", key, ["sess-a", "sess-b"], exchanges=3)
    return root, key, pub


def _export(root: Path, pub: Path, out: Path, session: str = "sess-a") -> subprocess.CompletedProcess[str]:
    return cli("sessions", "export", session, "--dir", str(root), "--public-key", str(pub), "--out", str(out))


def _standalone(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", str(STANDALONE), str(path), *extra], capture_output=True, text=True, timeout=60
    )


async def test_export_then_verify_offline(recorded: tuple[Path, Path, Path], tmp_path: Path) -> None:
    root, _, pub = recorded
    out = tmp_path / "bundle.json"
    assert _export(root, pub, out).returncode == 0
    doc = json.loads(out.read_bytes())
    assert doc["format"] == bundle.FORMAT and doc["session"] == "sess-a"
    assert [s["writer"] for s in doc["streams"]] == ["w"] and {d["writer"] for d in doc["digests"]} == {"w"}
    assert doc["public_key"]["key_id"]

    ok = cli("sessions", "verify", "--bundle", str(out), "--public-key", str(pub))
    assert ok.returncode == 0, ok.stdout
    assert "OK: 9 events, signatures checked with key" in ok.stdout
    assert _standalone(out, "--public-key", str(pub)).returncode == 0
    # Without a published key the bundle's own key is used, and the verdict says so.
    own = cli("sessions", "verify", "--bundle", str(out))
    assert own.returncode == 0 and "key inside the bundle" in own.stdout


async def test_a_removed_last_segment_is_caught_in_the_bundle(
    recorded: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    root, _, pub = recorded
    data, manifests = root / "sess-a" / "w.jsonl", root / "sess-a" / "w.manifests"
    keep = json.loads(manifests.read_bytes().splitlines()[1])["last"] + 1
    data.write_bytes(b"".join(data.read_bytes().splitlines(keepends=True)[:keep]))
    manifests.write_bytes(b"".join(manifests.read_bytes().splitlines(keepends=True)[:2]))
    out = tmp_path / "bundle.json"
    assert _export(root, pub, out).returncode == 0

    run = cli("sessions", "verify", "--bundle", str(out), "--public-key", str(pub), "--allow-open")
    assert run.returncode == 1
    assert "session 'sess-a': stream w: segment 2 missing (deleted), listed by digest 0 of writer w" in run.stdout
    assert _standalone(out, "--public-key", str(pub), "--allow-open").returncode == 1


async def test_export_refuses_to_overwrite_and_names_a_missing_session(
    recorded: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    root, _, pub = recorded
    out = tmp_path / "bundle.json"
    out.write_bytes(b"keep me")
    run = _export(root, pub, out)
    assert run.returncode == 1 and "refusing to overwrite" in run.stdout
    assert out.read_bytes() == b"keep me"
    missing = _export(root, pub, tmp_path / "other.json", session="nope")
    assert missing.returncode == 1 and "no recorded session 'nope'" in missing.stdout
    assert not (tmp_path / "other.json").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"not json", "cannot read bundle", id="not-json"),
        pytest.param(b'{"format": "other"}', "not a session bundle", id="other-format"),
        pytest.param(
            b'{"format": "mcp-extproc/session-bundle", "version": 2}', "bundle version 2 is not supported", id="version"
        ),
        pytest.param(
            b'{"format": "mcp-extproc/session-bundle", "version": 1, "session": "s", "public_key": null, '
            b'"streams": [{"writer": "w", "data": "%%%", "manifests": []}], "digests": []}',
            "streams[0].data: not base64",
            id="bad-base64",
        ),
    ],
)
def test_a_file_that_is_not_a_bundle_is_exit_2_and_named(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "b.json"
    path.write_bytes(content)
    run = cli("sessions", "verify", "--bundle", str(path))
    assert run.returncode == 2 and message in run.stdout, run.stdout
    assert _standalone(path).returncode == 2
