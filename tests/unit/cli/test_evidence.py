"""`mcp-extproc evidence` as an auditor runs it: checkpoint, prove, verify a bundle offline, consistency against a
witness's checkpoint (a rewritten, re-signed log fails), and the RFC 3161 time of a checkpoint from a real TSA."""

from __future__ import annotations

import shutil
from pathlib import Path

from evidence_helpers import ORIGIN, record_logged
from recording_helpers import cli
from tsa_server import LocalTsa, make_ca

from extproc.evidence.note import NoteSigner
from extproc.evidence.proofs import log_keys
from extproc.evidence.tiles import FileBlobs
from extproc.evidence.tlog import TransparencyLog
from extproc.recording.manifest import generate_keys


async def test_prove_verify_and_consistency_and_a_rewritten_log_is_caught(tmp_path: Path) -> None:
    key, pub = await record_logged(tmp_path, {"s-a": 3, "s-b": 2})
    rec, tlog = tmp_path / "rec", tmp_path / "rec" / ".tlog"
    [log] = log_keys(FileBlobs(tlog))

    r = cli("evidence", "checkpoint", "--dir", str(rec), "--public-key", str(pub))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"ok {ORIGIN}/{log} size" in r.stdout

    r = cli("evidence", "checkpoint", "--full", "--dir", str(rec), "--public-key", str(pub))
    assert r.returncode == 0, r.stdout + r.stderr

    witness = tmp_path / "witness.checkpoint"
    shutil.copy(tlog / log / "checkpoint", witness)

    bundle = tmp_path / "bundle.json"
    r = cli("evidence", "prove", "s-a", "--dir", str(rec), "--public-key", str(pub), "--out", str(bundle))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4/4 segments proven" in r.stdout  # three exchanges, and the stream's closing segment
    r = cli("evidence", "verify", str(bundle), "--public-key", str(pub))
    assert r.returncode == 0 and "ok 4 segments of s-a proven" in r.stdout, r.stdout + r.stderr
    _, other = generate_keys(tmp_path / "other")
    assert cli("evidence", "verify", str(bundle), "--public-key", str(other)).returncode == 1

    r = cli("evidence", "consistency", str(witness), "--dir", str(rec), "--public-key", str(pub))
    assert r.returncode == 0 and "consistent" in r.stdout, r.stdout + r.stderr

    # Whoever holds the key rewrites the log (one segment left out) and signs it again: same origin, same key.
    from extproc.evidence.tlog import load_note_signer

    signer: NoteSigner = load_note_signer(ORIGIN, key)
    entries = [e for e in _entries(tlog / log) if b'"segment":1,' not in e or b'"s-a"' not in e]
    forged = TransparencyLog(FileBlobs(tlog), ORIGIN, log, signer)
    forged.publish([(e, None) for e in entries])
    r = cli("evidence", "checkpoint", "--dir", str(rec), "--public-key", str(pub))
    assert r.returncode == 0, "alone, the rewritten log looks fine: " + r.stdout
    r = cli("evidence", "consistency", str(witness), "--dir", str(rec), "--public-key", str(pub))
    assert r.returncode == 1 and "INCONSISTENT" in r.stdout, r.stdout + r.stderr
    r = cli("evidence", "checkpoint", "--full", "--dir", str(rec), "--public-key", str(pub))
    assert r.returncode == 1 and "not consistent with the latest (log rewritten)" in r.stdout, r.stdout + r.stderr


def _entries(folder: Path) -> list[bytes]:
    from extproc.evidence.tiles import unbundle

    out: list[bytes] = []
    for p in sorted((folder / "tile" / "entries").rglob("*")):
        if p.is_file():
            out += unbundle(p.read_bytes())
    return out


async def test_a_checkpoint_existed_no_later_than_the_tsa_time_and_fails_with_another_ca(tmp_path: Path) -> None:
    with LocalTsa(tmp_path / "tsa") as tsa:
        _, pub = await record_logged(tmp_path, {"s": 1}, tsa_url=tsa.url)
        assert tsa.requests >= 1
    tlog = tmp_path / "rec" / ".tlog"
    [log] = log_keys(FileBlobs(tlog))
    checkpoint = tlog / log / "checkpoint"

    r = cli("evidence", "verify", str(checkpoint), "--public-key", str(pub), "--tsa-ca", str(tsa.ca_pem))
    assert r.returncode == 0 and "existed no later than 20" in r.stdout, r.stdout + r.stderr
    r = cli("evidence", "checkpoint", "--dir", str(tmp_path / "rec"), "--public-key", str(pub), "--tsa-ca",
            str(tsa.ca_pem))  # fmt: skip
    assert r.returncode == 0 and "existed no later than" in r.stdout, r.stdout + r.stderr

    make_ca(tmp_path, "another-root")
    r = cli(
        "evidence", "verify", str(checkpoint), "--public-key", str(pub), "--tsa-ca", str(tmp_path / "another-root.pem")
    )
    assert r.returncode == 1 and "does not verify" in r.stdout, r.stdout + r.stderr
