"""Just-in-time grants: signed, time-bound, revocable; honoured by the engine with no reload; the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from extproc.authn.principal import Principal
from extproc.cli import app
from extproc.mcp.jsonrpc import McpCall
from extproc.policy import grant_files, grants, signed
from extproc.policy.engine import decide, filter_list
from extproc.policy.facts import Facts
from extproc.policy.loader import load_policy
from extproc.recording.manifest import generate_keys, load_public_key

KEY = Ed25519PrivateKey.generate()
BOB = Principal("https://idp", "bob-sub", "bob", ("eng",))
NOW = 1_800_000_000.0
POLICY = """apiVersion: mcp-extproc/v1
rules:
  - name: no-drops
    effect: deny
    subjects: {users: ["*"]}
    targets: {servers: ["*"], tools: ["query_drop*"]}
"""


def _grant(tmp_path: Path, **kw: object) -> tuple[grant_files.GrantFile, Path]:
    args: dict = dict(user="bob", server="prod", tools=["query_*"], seconds=3600, reason="INC-123", approved_by="alice")
    return grant_files.create(tmp_path / "grants", KEY, now=NOW, **{**args, **kw})


def _store(tmp_path: Path) -> grants.GrantStore:
    return grants.GrantStore(tmp_path / "grants", KEY.public_key())


async def test_a_signed_grant_allows_its_tools_until_it_expires(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "p.yaml").write_text(POLICY)
    policy = load_policy(tmp_path / "p", {"prod", "dev"})
    store = _store(tmp_path)
    assert await store.active(NOW) == ()
    g, _ = _grant(tmp_path)  # written while the store runs: seen at the next request, no reload

    active = await store.active(NOW + 10)
    assert [a.id for a in active] == [g.id]
    facts = Facts(grants=active, now=NOW + 10)
    d = decide(policy, BOB, "prod", McpCall("tools/call", tool="query_orders"), facts)
    assert (
        d.allowed
        and d.rule == f"grant:{g.id}"
        and d.grant
        == {
            "id": g.id,
            "reason": "INC-123",
            "approved_by": "alice",
            "until": NOW + 3600,
        }
    )
    assert decide(policy, BOB, "prod", McpCall("initialize"), facts).allowed  # what a session needs
    assert not decide(policy, BOB, "prod", McpCall("tools/call", tool="delete_all"), facts).allowed
    assert not decide(policy, BOB, "dev", McpCall("tools/call", tool="query_orders"), facts).allowed
    alice = Principal("https://idp", "a", "alice")
    assert not decide(policy, alice, "prod", McpCall("tools/call", tool="query_orders"), facts).allowed
    drop = decide(policy, BOB, "prod", McpCall("tools/call", tool="query_drop_table"), facts)
    assert not drop.allowed and drop.rule == "no-drops"  # an explicit deny beats a grant
    listed = filter_list(policy, BOB, "prod", "tools/list", {"tools": [{"name": "query_a"}, {"name": "x"}]}, facts)
    assert listed == {"tools": [{"name": "query_a"}]}
    later = Facts(grants=await store.active(NOW + 3600), now=NOW + 3600)
    assert not decide(policy, BOB, "prod", McpCall("tools/call", tool="query_orders"), later).allowed


async def test_revocation_stops_a_grant_at_the_next_request(tmp_path: Path) -> None:
    store = _store(tmp_path)
    g, _ = _grant(tmp_path)
    assert len(await store.active(NOW + 1)) == 1
    grant_files.revoke(tmp_path / "grants", KEY, g.id, "carol", "done", NOW + 2)
    assert await store.active(NOW + 3) == ()
    assert store.loaded.revoked == {g.id}


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        pytest.param(lambda d: {**d, "sig": ""}, "refused: unsigned", id="unsigned"),
        pytest.param(lambda d: {**d, "until": d["until"] + 86400}, "signature does not match", id="extended"),
        pytest.param(lambda d: {**d, "user": "mallory"}, "signature does not match", id="other-user"),
    ],
)
async def test_hand_made_or_edited_grants_are_refused(tmp_path: Path, tamper, problem: str) -> None:
    _, path = _grant(tmp_path)
    path.write_text(json.dumps(tamper(json.loads(path.read_text()))))
    store = _store(tmp_path)
    assert await store.active(NOW + 1) == ()
    assert any(problem in p and str(path) in p for p in store.loaded.problems)


async def test_a_grant_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    other = Ed25519PrivateKey.generate()
    grant_files.create(tmp_path / "grants", other, user="bob", server="prod", tools=["*"], seconds=60, reason="x",
                  approved_by="alice", now=NOW)  # fmt: skip
    store = _store(tmp_path)
    assert await store.active(NOW + 1) == () and "signature does not match" in store.loaded.problems[0]


def test_malformed_grants_are_file_line_errors(tmp_path: Path) -> None:
    d = tmp_path / "grants"
    d.mkdir()
    (d / "g-0000000000000001.json").write_text(
        '{\n  "v": 1,\n  "id": "g-0000000000000001",\n  "user": "bob",\n  "tools": "x"\n}\n'
    )
    (d / "broken.json").write_text('{\n  "v": 1,\n  "id": [\n')
    loaded = grants.load_dir(d, KEY.public_key())
    assert loaded.grants == ()
    text = "\n".join(loaded.problems)
    assert f"{d / 'g-0000000000000001.json'}:5: tools: must be a valid list" in text
    assert f"{d / 'g-0000000000000001.json'}:1: missing required key 'server'" in text
    assert f"{d / 'broken.json'}:4: not valid YAML" in text or f"{d / 'broken.json'}:3: not valid YAML" in text


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"approved_by": "bob"}, "nobody approves their own grant"),
        ({"seconds": 8 * 86400}, "at most 7 days"),
        ({"tools": ["[z-a]"]}, "invalid glob"),
    ],
)
def test_invalid_grants_are_not_written(tmp_path: Path, kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _grant(tmp_path, **kw)


def test_cli_create_list_revoke(tmp_path: Path) -> None:
    key, _ = generate_keys(tmp_path / "keys")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(POLICY)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "servers": [{"name": "prod", "upstream": "127.0.0.1:9"}],
                "auth": {"public_url": "https://gw.test", "issuers": [{"issuer": "https://idp.test"}]},
                "policy": {"directory": "policies"},
                "recording": {"signing_key": str(key)},
                "grants": {"directory": "grants"},
            }
        )
    )
    run = CliRunner().invoke
    args = ["grant", "create", "--user", "bob", "--server", "prod", "--tools", "query_*", "--for", "2h"]
    r = run(app, [*args, "--reason", "INC-123", "--approved-by", "alice", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    gid = r.output.split()[0]
    assert "bob may use query_* on prod until" in r.output
    r = run(app, ["grant", "list", "--config", str(cfg)])
    assert gid in r.output and "active" in r.output and "INC-123" in r.output
    loaded = grants.load_dir(tmp_path / "grants", load_public_key(key))
    assert [g.id for g in loaded.grants] == [gid]
    r = run(app, [*args[:5], "nope", *args[6:], "--reason", "x", "--approved-by", "alice", "--config", str(cfg)])
    assert r.exit_code == 2 and "server 'nope' is not defined in gateway.yaml (known: prod)" in r.output
    r = run(app, [*args, "--reason", "mine", "--approved-by", "bob", "--config", str(cfg)])
    assert r.exit_code == 2 and "nobody approves their own grant" in r.output
    r = run(app, ["grant", "revoke", gid, "--reason", "done", "--config", str(cfg)])
    assert r.exit_code == 0 and "revoked" in r.output
    assert grants.load_dir(tmp_path / "grants", load_public_key(key)).grants == ()


def _legacy_revoke(tmp_path: Path, grant_id: str) -> Path:
    """A revocation as the previous release wrote it: one signed ``*.revoked.json`` file."""
    r = grant_files.Revocation(v=1, revokes=grant_id, at=NOW + 2, by="carol", reason="done")
    path = tmp_path / "grants" / f"{grant_id}.revoked.json"
    path.write_text(json.dumps(signed.sign(KEY, r)))
    return path


def _log(tmp_path: Path) -> Path:
    return tmp_path / "grants" / grant_files.LOG_NAME


@pytest.mark.parametrize(
    "undo",
    [
        pytest.param(lambda p: p.unlink(), id="log-deleted"),
        pytest.param(lambda p: p.write_text(p.read_text().replace('"seq": 1', '"seq": 7')), id="log-edited"),
        pytest.param(lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "revoked": {}})), id="shrunk"),
        pytest.param(lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "sig": ""})), id="unsigned"),
        pytest.param(lambda p: p.write_text("{\n"), id="truncated"),
    ],
)
async def test_undoing_the_revocation_log_never_brings_a_grant_back(tmp_path: Path, undo) -> None:
    store = _store(tmp_path)
    g, _ = _grant(tmp_path)
    assert len(await store.active(NOW + 1)) == 1
    grant_files.revoke(tmp_path / "grants", KEY, g.id, "carol", "done", NOW + 2)
    assert await store.active(NOW + 3) == ()
    undo(_log(tmp_path))
    assert await store.active(NOW + 4) == ()
    assert g.id in store.loaded.revoked and any(grant_files.LOG_NAME in p for p in store.loaded.problems)
    fresh = _store(tmp_path)  # a restarted processor that never saw the log: fails closed too
    assert await fresh.active(NOW + 4) == ()


async def test_a_rolled_back_revocation_log_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    g, _ = _grant(tmp_path)
    older = _log(tmp_path).read_bytes()  # a signed copy kept from before the revocation
    grant_files.revoke(tmp_path / "grants", KEY, g.id, "carol", "done", NOW + 2)
    assert await store.active(NOW + 3) == ()
    _log(tmp_path).write_bytes(older)
    assert await store.active(NOW + 4) == ()
    assert any("rolled back to 0 after sequence 1" in p for p in store.loaded.problems)


async def test_deleting_a_legacy_revocation_file_never_brings_a_grant_back(tmp_path: Path) -> None:
    store = _store(tmp_path)
    g, _ = _grant(tmp_path)
    assert len(await store.active(NOW + 1)) == 1
    _legacy_revoke(tmp_path, g.id)
    assert await store.active(NOW + 3) == ()
    _legacy_revoke(tmp_path, g.id).unlink()
    assert await store.active(NOW + 4) == ()


async def test_grants_with_no_revocation_log_are_not_honoured(tmp_path: Path) -> None:
    _grant(tmp_path)
    _log(tmp_path).unlink()
    store = _store(tmp_path)
    assert await store.active(NOW + 1) == ()
    assert "revocation log is missing" in store.loaded.problems[0]


async def test_an_in_place_edit_of_a_grant_file_is_noticed(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _, path = _grant(tmp_path)
    assert len(await store.active(NOW + 1)) == 1
    d = path.parent
    before = d.stat().st_mtime_ns
    with path.open("r+") as f:  # same inode, same directory entry: the directory's mtime does not move
        doc = json.loads(f.read())
        f.seek(0)
        f.write(json.dumps({**doc, "until": doc["until"] + 86400}))
        f.truncate()
    assert d.stat().st_mtime_ns == before
    assert await store.active(NOW + 2) == ()
    assert any("signature does not match" in p and str(path) in p for p in store.loaded.problems)
