"""Approval records: bound to the exact call, signed, single use (O_EXCL), decided by someone else."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import rfc8785

from extproc.authn.principal import Principal
from extproc.controls.approval_files import Binding, Request, args_digest
from extproc.controls.approvals import DEFAULT_RETENTION, SWEEP_EVERY, ApprovalError, ApprovalStore
from extproc.policy import signed
from extproc.recording.manifest import Signer, generate_keys
from extproc.recording.shred import FileKek, FileKeyStore, Keyring, subject_of

ALICE = Principal("https://idp", "sub-alice", "alice")
BOB = Principal("https://idp", "sub-bob", "bob", ("sre",))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> ApprovalStore:
    key, _ = generate_keys(tmp_path / "keys")
    return ApprovalStore(tmp_path / "approvals", Signer.from_file(key), Clock())


def _binding(who: Principal = ALICE, args: dict | None = None, version: str = "v1") -> Binding:
    return Binding(who.issuer, who.subject, "demo", "", "delete_repo", args_digest(args or {"repo": "x"}), version)


def _settle(store: ApprovalStore, b: Binding, who: Principal = ALICE, count: int = 1, arguments: str = "{}"):
    return store.settle(b, who, rule="r", approvers="groups ['sre']", ttl=600, count=count, arguments=arguments)


def _approve(store: ApprovalStore, approval_id: str, who: Principal = BOB) -> None:
    store.decide(approval_id, who, True, "looks fine", lambda r: None)


def test_args_digest_is_canonical() -> None:
    assert args_digest({"b": 1, "a": [1.0, "x"]}) == args_digest({"a": [1, "x"], "b": 1})
    assert args_digest({"a": 1}) != args_digest({"a": "1"})


def test_identical_retry_passes_exactly_once(store: ApprovalStore) -> None:
    held = _settle(store, _binding())
    assert not held.passed and held.created
    again = _settle(store, _binding())
    assert not again.passed and again.entry.request.id == held.entry.request.id  # the pending one, not a new one
    _approve(store, held.entry.request.id)

    first = _settle(store, _binding())
    assert first.passed and first.entry.used == 1
    second = _settle(store, _binding())
    assert not second.passed and "already used" in second.message
    assert second.entry.request.id != held.entry.request.id


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(_binding(args={"repo": "y"}), id="other-arguments"),
        pytest.param(_binding(who=Principal("https://idp", "sub-carol", "carol")), id="other-caller"),
        pytest.param(
            Binding("https://other-idp", "sub-alice", "demo", "", "delete_repo", args_digest({"repo": "x"}), "v1"),
            id="same-subject-other-issuer",
        ),
        pytest.param(
            Binding(ALICE.issuer, ALICE.subject, "demo", "b2", "delete_repo", args_digest({"repo": "x"}), "v1"),
            id="other-backend",
        ),
        pytest.param(_binding(version="v2"), id="policy-changed"),
    ],
)
def test_an_approval_covers_only_its_exact_call(store: ApprovalStore, changed: Binding) -> None:
    held = _settle(store, _binding())
    _approve(store, held.entry.request.id)
    other = _settle(store, changed)
    assert not other.passed and other.entry.request.id != held.entry.request.id
    if changed.policy_version == "v2":
        assert "policy changed" in other.message
    assert _settle(store, _binding()).passed  # the approval itself is still unused


def test_expired_approval_refused(store: ApprovalStore) -> None:
    held = _settle(store, _binding())
    _approve(store, held.entry.request.id)
    store.clock.now += 601  # type: ignore[attr-defined]
    late = _settle(store, _binding())
    assert not late.passed and "expired" in late.message


def test_count_lets_that_many_identical_calls_pass(store: ApprovalStore) -> None:
    held = _settle(store, _binding(), count=2)
    _approve(store, held.entry.request.id)
    assert [_settle(store, _binding()).passed for _ in range(3)] == [True, True, False]


def test_deciding_rules(store: ApprovalStore) -> None:
    held = _settle(store, _binding())
    aid = held.entry.request.id
    with pytest.raises(ApprovalError, match="their own call") as own:
        _approve(store, aid, ALICE)
    assert own.value.status == 403
    with pytest.raises(ApprovalError, match="not an approver"):
        store.decide(aid, BOB, True, "", lambda r: "not an approver")
    with pytest.raises(ApprovalError, match="needs a reason"):
        store.decide(aid, BOB, False, " ", lambda r: None)
    store.decide(aid, BOB, False, "no deletes on Fridays", lambda r: None)
    with pytest.raises(ApprovalError, match="already denied") as twice:
        _approve(store, aid)
    assert twice.value.status == 409
    denied = _settle(store, _binding())
    assert not denied.passed and "denied by bob: no deletes on Fridays" in denied.message
    with pytest.raises(ApprovalError) as missing:
        _approve(store, "ap-00000000000000000000")
    assert missing.value.status == 404


def test_an_expired_request_cannot_be_approved(store: ApprovalStore) -> None:
    held = _settle(store, _binding())
    store.clock.now += 601  # type: ignore[attr-defined]
    with pytest.raises(ApprovalError, match="expired"):
        _approve(store, held.entry.request.id)


def test_files_written_by_hand_are_refused(store: ApprovalStore, tmp_path: Path) -> None:
    held = _settle(store, _binding())
    aid = held.entry.request.id
    _approve(store, aid)
    decision = store.directory / f"{aid}.decision.json"
    doc = json.loads(decision.read_text())
    doc["until"] += 86400  # stretch the approval: the signature no longer matches
    decision.write_text(json.dumps(doc))
    assert store.entry(aid).decision is None  # type: ignore[union-attr]
    assert not _settle(store, _binding()).passed
    # files signed with another key are not the gateway's
    other_key, _ = generate_keys(tmp_path / "other")
    forger = ApprovalStore(store.directory, Signer.from_file(other_key), store.clock)
    assert forger.entry(aid) is None


def test_two_workers_cannot_both_consume_one_approval(store: ApprovalStore) -> None:
    held = _settle(store, _binding())
    _approve(store, held.entry.request.id)
    workers = [ApprovalStore(store.directory, store.signer, store.clock) for _ in range(8)]
    start = threading.Barrier(len(workers))
    passed: list[bool] = []

    def run(s: ApprovalStore) -> None:
        start.wait()
        passed.append(_settle(s, _binding()).passed)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert passed.count(True) == 1


def test_approval_files_use_the_one_signed_file_scheme(store: ApprovalStore) -> None:
    held = _settle(store, _binding())
    aid = held.entry.request.id
    _approve(store, aid)
    assert _settle(store, _binding()).passed
    for name in (f"{aid}.request.json", f"{aid}.decision.json", f"{aid}.use.1.json"):
        doc = json.loads((store.directory / name).read_text())
        assert doc["v"] == 2 and doc["key_id"] == store.signer.key_id
    request = Request.model_validate_json((store.directory / f"{aid}.request.json").read_bytes())
    assert signed.verify(store.public, request) is None  # policy/signed.py's verify, as grants and pins


@pytest.mark.parametrize(
    ("suffix", "field", "value"),
    [
        pytest.param("request.json", "tool", "drop_database", id="request-tool"),
        pytest.param("request.json", "count", 100, id="request-count"),
        pytest.param("request.json", "subject", "sub-mallory", id="request-caller"),
        pytest.param("decision.json", "approved", False, id="decision-flipped"),
        pytest.param("decision.json", "by_username", "carol", id="decision-approver"),
    ],
)
def test_a_tampered_approval_file_is_refused(store: ApprovalStore, suffix: str, field: str, value: object) -> None:
    held = _settle(store, _binding())
    aid = held.entry.request.id
    _approve(store, aid)
    path = store.directory / f"{aid}.{suffix}"
    doc = json.loads(path.read_text())
    doc[field] = value
    path.write_text(json.dumps(doc))
    entry = store.entry(aid)
    assert entry is None or entry.decision is None  # the edited file is refused as if absent
    assert not _settle(store, _binding()).passed


def _legacy(store: ApprovalStore, doc: dict) -> dict:
    """A format-1 file as the store wrote them before approvals shared the scheme: signed over RFC 8785 JSON."""
    doc = {**doc, "v": 1, "key_id": store.signer.key_id, "sig": ""}
    del doc["sig"]
    return {**doc, "sig": store.signer.sign_bytes(rfc8785.dumps(doc))}


def test_format_1_files_are_still_read_and_checked(store: ApprovalStore) -> None:
    b = _binding()
    aid = "ap-0123456789abcdef0123"
    request = {
        "id": aid, "issuer": b.issuer, "subject": b.subject, "username": "alice", "server": b.server,
        "backend": b.backend, "tool": b.tool, "args_sha256": b.args_sha256, "policy_version": b.policy_version,
        "rule": "r", "approvers": "groups ['sre']", "ttl": 600.0, "count": 1, "requested_at": 1000.0,
        "pending_until": 1600.0, "arguments": "{}", "exchange": "",
    }  # fmt: skip
    old = _legacy(store, request)
    store.directory.mkdir(parents=True)
    (store.directory / f"{aid}.request.json").write_text(json.dumps(old))
    (store.directory / f"{b.call_key()}.{aid}.call").touch()
    _approve(store, aid)  # the decision is written in format 2, bound to the format-1 request's signature
    assert _settle(store, b).passed
    (store.directory / f"{aid}.request.json").write_text(json.dumps({**old, "count": 5}))
    assert store.entry(aid) is None


def _keyring(tmp_path: Path) -> Keyring:
    (tmp_path / "kek").write_bytes(b"k" * 32)
    return Keyring(FileKeyStore(tmp_path / "keys-store"), FileKek(tmp_path / "kek"))


def test_arguments_are_sealed_per_caller_when_payloads_are_encrypted(store: ApprovalStore, tmp_path: Path) -> None:
    keyring = _keyring(tmp_path)
    sealing = ApprovalStore(store.directory, store.signer, store.clock, keyring=keyring)
    held = _settle(sealing, _binding(), arguments='{"repo": "x-secret-repo"}')
    aid = held.entry.request.id
    assert "x-secret-repo" not in "".join(p.read_text() for p in store.directory.iterdir())
    assert sealing.entry(aid).to_json(0)["arguments"] == '{"repo": "x-secret-repo"}'  # type: ignore[union-attr]
    assert store.entry(aid).to_json(0)["arguments"].startswith("[sealed")  # type: ignore[union-attr]
    keyring.erase(subject_of({"issuer": ALICE.issuer, "subject": ALICE.subject}) or "")
    assert sealing.entry(aid).to_json(0)["arguments"].startswith("[erased")  # type: ignore[union-attr]


def test_metadata_capture_keeps_no_arguments(store: ApprovalStore) -> None:
    held = store.settle(
        _binding(), ALICE, rule="r", approvers="a", ttl=600, count=1, arguments='{"repo": "x"}', capture="metadata"
    )
    r = held.entry.request
    assert (r.arguments, r.capture) == ("", "metadata")
    assert held.entry.to_json(0)["arguments"] == "[not kept: capture level metadata]"  # what the approver reads


def test_old_requests_are_swept_after_the_retention(store: ApprovalStore) -> None:
    clock = store.clock
    done = _settle(store, _binding(args={"repo": "old"}))
    _approve(store, done.entry.request.id)
    assert _settle(store, _binding(args={"repo": "old"})).passed
    stray = store.directory / f"{'0' * 32}.ap-ffffffffffffffffffff.call"  # an index entry without its request
    stray.touch()
    assert store.sweep_due() and not store.sweep_due()  # at most once per SWEEP_EVERY
    clock.now += 600 + DEFAULT_RETENTION + 1  # type: ignore[attr-defined]
    live = _settle(store, _binding(args={"repo": "new"}))
    assert store.sweep_due()
    assert store.sweep() == [done.entry.request.id]
    names = sorted(p.name for p in store.directory.iterdir())
    assert all(done.entry.request.id not in n for n in names)  # request, decision, use and index: all gone
    assert any(live.entry.request.id in n for n in names)
    assert stray.exists()  # a stray's age is its file time: not past the retention in real time
    clock.now += SWEEP_EVERY  # type: ignore[attr-defined]
    assert store.sweep() == []  # the live request is pending, then usable: kept
    assert store.entry(live.entry.request.id) is not None
    os.utime(stray, (0, 0))  # older than the retention by the store's clock
    store.sweep()
    assert not stray.exists()
