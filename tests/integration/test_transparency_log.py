"""The transparency log through real parts: Envoy, the processor, a real SDK session, the audit service.

The processor logs what it stores and publishes checkpoints; a witness follows the log through the audit API
(checkpoints and hash tiles only), checks a mirrored copy offline, and an auditor proves the session's segments.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from evidence_helpers import ORIGIN
from gateway_parts import recording_key
from recording_helpers import cli

from extproc.authn.dev_issuer import DevIssuer
from extproc.demo.mcp_client import run_session
from extproc.evidence.note import open_checkpoint
from extproc.evidence.proofs import verifier_for
from extproc.evidence.witness import needed_tiles
from extproc.launcher import free_port, wait_until
from extproc.recording.manifest import generate_keys, load_public_key

POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: allow-everything
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: ["*"]}
viewers:
  - name: auditors
    subjects: {groups: [auditors]}
    servers: ["*"]
    sessions: all
"""


async def test_a_witness_follows_the_log_through_the_audit_api_and_a_session_is_proven(
    start_mcp_server, start_authed, issuer: DevIssuer, tmp_path: Path
) -> None:
    key, pub = generate_keys(tmp_path / "keys")
    gateway = {
        "recording": {
            "signing_key": str(key),
            "segment_max_age_ms": 100,
            "flush_interval_ms": 20,
            "transparency_log": {"origin": ORIGIN, "checkpoint_interval_s": 0.2},
        },
        "audit": {"port": free_port(), "index_interval_ms": 100},
    }
    gw = start_authed([start_mcp_server("alpha")], policy=POLICY, gateway=gateway)
    token = issuer.mint("ann", aud=gw.endpoint, groups=["auditors"])
    result = await run_session(gw.url("alpha"), token=token, progress=False, mode="legacy")
    session = recording_key(result.session_id, "alpha")
    base, auth = f"{gw.endpoint}/audit/api/log", {"authorization": f"Bearer {token}"}
    public = load_public_key(pub)

    def get(path: str = "", headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.get(f"{base}{path}", headers=auth if headers is None else headers, timeout=30)

    def proven() -> bool:  # the session's segments are in some checkpoint
        r = cli("evidence", "prove", session, "--dir", gw.config["recording"]["directory"], "--public-key", str(pub))
        return r.returncode == 0

    wait_until(proven, 60, "the session's segments to be in a checkpoint", interval=0.5)

    # A witness follows the logs through the API alone (checkpoints and hash tiles), twice: the second round
    # proves the newer checkpoints consistent with the ones it kept.
    mirror = tmp_path / "mirror"
    witness = ("evidence", "witness", "--api", f"{gw.endpoint}/audit/", "--token", token, "--mirror", str(mirror),
               "--public-key", str(pub))  # fmt: skip
    r = cli(*witness)
    assert r.returncode == 0 and "new tiles" in r.stdout, r.stdout + r.stderr
    logs = sorted(p.name for p in mirror.iterdir() if (p / "checkpoint").is_file())
    assert logs and set(logs) <= set(get().json()["logs"])
    sizes = {log: open_checkpoint(note, verifier_for(note, public)).size for log in logs
             if (note := (mirror / log / "checkpoint").read_bytes())}  # fmt: skip
    assert max(sizes.values()) > 0
    for log in logs:
        note = (mirror / log / "checkpoint").read_bytes()
        cp = open_checkpoint(note, verifier_for(note, public))
        assert cp.origin == f"{ORIGIN}/{log}"
        for tile in list(needed_tiles(cp.size))[:1]:  # a log that logged nothing yet has no tiles
            assert get(f"/{log}/{tile}").headers["cache-control"].endswith("immutable")
        assert get(f"/{log}/checkpoint").headers["cache-control"] == "no-cache"
    await run_session(gw.url("alpha"), token=token, progress=False, mode="legacy")  # the log grows
    r = cli(*witness)
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli("evidence", "checkpoint", "--tiles", str(mirror), "--public-key", str(pub))
    assert r.returncode == 0, r.stdout + r.stderr

    # Entry bundles and the session index name sessions: not served. Nobody anonymous reads anything.
    assert get(f"/{logs[0]}/tile/entries/000.p/1").status_code == 404
    assert get(f"/{logs[0]}/where").status_code == 404
    assert get(f"/{logs[0]}/checkpoint", headers={}).status_code == 401

    # Later checkpoints are consistent with the one the witness kept.
    r = cli("evidence", "consistency", str(mirror / logs[0] / "checkpoint"), "--dir",
            gw.config["recording"]["directory"], "--public-key", str(pub))  # fmt: skip
    assert r.returncode == 0 and "consistent" in r.stdout, r.stdout + r.stderr
