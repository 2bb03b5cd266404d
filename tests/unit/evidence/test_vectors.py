"""The record-format test vectors, both ways: regenerating them gives the committed bytes, and every verifier (the
library, ``sessions verify --bundle``, the standalone docs/verifier/verify_bundle.py) reports exactly the expected
findings on every case, good and broken."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_mutations import comparable, mutations
from recording_helpers import cli

from extproc.evidence import bundle
from extproc.recording.audit import audit
from extproc.recording.manifest import load_public_key
from extproc.recording.replay import load_session
from extproc.recording.store.file import FileStore

ROOT = Path(__file__).resolve().parents[3]
VECTORS = ROOT / "tests" / "vectors" / "record-format"
PUB = VECTORS / "published.pub"
CASES = sorted(p.name for p in (VECTORS / "cases").iterdir())
STANDALONE = ROOT / "docs" / "verifier" / "verify_bundle.py"


def _expected(case: str) -> dict[str, object]:
    doc = json.loads((VECTORS / "cases" / case / "expected.json").read_bytes())
    return {"findings": doc["findings"], "open": doc["open"], "ok": doc["ok"]}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_there_is_a_good_case_and_every_kind_of_break() -> None:
    assert {"good", "edited-event", "reordered-events", "truncated", "deleted-segment", "wrong-key"} <= set(CASES)


def test_regenerating_gives_the_committed_vectors(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(VECTORS / "generate.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    committed = {k: v for k, v in _files(VECTORS).items() if not k.endswith(".py")}
    assert _files(tmp_path) == committed


@pytest.mark.parametrize("case", CASES)
def test_library_verifier_reports_the_expected_findings(case: str) -> None:
    doc = json.loads((VECTORS / "cases" / case / "bundle.json").read_bytes())
    verdict = bundle.verify(doc, load_public_key(PUB))
    assert {**verdict.to_json(), "ok": verdict.ok()} == _expected(case)


@pytest.mark.parametrize("case", CASES)
def test_sessions_verify_bundle_agrees(case: str) -> None:
    run = cli("sessions", "verify", "--bundle", str(VECTORS / "cases" / case / "bundle.json"), "--public-key", str(PUB),
              "--json")  # fmt: skip
    got = json.loads(run.stdout)
    assert {k: got[k] for k in ("findings", "open", "ok")} == _expected(case)
    assert run.returncode == (0 if got["ok"] else 1)


# The standalone script runs with extproc made unimportable: any import of it, however indirect, fails the run.
WITHOUT_EXTPROC = (
    "import runpy, sys; sys.modules['extproc'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


@pytest.mark.parametrize("case", CASES)
def test_standalone_verifier_agrees(case: str) -> None:
    bundle_path = VECTORS / "cases" / case / "bundle.json"
    run = subprocess.run(
        [sys.executable, "-I", "-c", WITHOUT_EXTPROC, str(STANDALONE), str(bundle_path), "--public-key", str(PUB),
         "--json"],
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert run.returncode in (0, 1), run.stderr
    got = json.loads(run.stdout)
    assert got == _expected(case), run.stderr
    assert run.returncode == (0 if got["ok"] else 1)


def test_standalone_verifier_imports_nothing_from_extproc() -> None:
    imports = [ln for ln in STANDALONE.read_text().splitlines() if ln.startswith(("import ", "from "))]
    assert all("extproc" not in ln for ln in imports), imports
    assert {ln.split()[1].split(".")[0] for ln in imports} <= {
        "__future__", "argparse", "base64", "binascii", "bisect", "hashlib", "itertools", "json", "re", "sys",
        "typing", "cryptography",
    }  # fmt: skip


def _to_file_store(doc: dict[str, object], root: Path) -> None:
    """A bundle's bytes laid out as the file store keeps them."""
    import base64

    folder = root / str(doc["session"])
    folder.mkdir(parents=True)
    for st in doc["streams"]:  # type: ignore[attr-defined]
        (folder / f"{st['writer']}.jsonl").write_bytes(base64.b64decode(st["data"]))
        (folder / f"{st['writer']}.manifests").write_bytes(
            b"".join(base64.b64decode(m) + b"\n" for m in st["manifests"])
        )
    for d in doc["digests"]:  # type: ignore[attr-defined]
        path = root / ".digests" / d["writer"] / f"{d['number']:08d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(d["data"]))


@pytest.mark.parametrize("case", CASES)
def test_the_store_checks_agree_on_the_same_bytes(case: str, tmp_path: Path) -> None:
    """``sessions verify`` (load_session) and ``store verify`` (audit) on the bundle's bytes in a file store name
    exactly the bundle verifier's findings: the bundle adds nothing and hides nothing."""
    doc = json.loads((VECTORS / "cases" / case / "bundle.json").read_bytes())
    _to_file_store(doc, tmp_path)
    store, key = FileStore(tmp_path), doc["session"]
    session = load_session(store, key, load_public_key(PUB)) if store.read_session(key) else None
    problems = [str(p) for p in session.problems] if session else []
    sid = session.id if session else ""
    whole = audit(store, load_public_key(PUB)).findings
    listing = [f for f in whole if not any(f == f"session {sid!r}: {p}" for p in problems)]
    want = _expected(case)
    assert sorted(problems + listing) == want["findings"]
    assert sorted(session.unfinished if session else []) == want["open"]


def test_the_standalone_verifier_agrees_on_random_edits() -> None:
    """Beyond the named cases: 400 seeded one-byte edits of the good bundle, library against standalone."""
    spec = importlib.util.spec_from_file_location("verify_bundle", STANDALONE)
    assert spec is not None and spec.loader is not None
    standalone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standalone)
    key = load_public_key(PUB)
    for n, doc in enumerate(mutations(seed=3004, count=400)):
        ours = bundle.verify(doc, key)
        theirs = standalone.verify(doc, key)
        assert (comparable(ours.findings), sorted(ours.open)) == (comparable(theirs.findings), sorted(theirs.open)), n


SEALED = [c for c in CASES if (VECTORS / "cases" / c / "opened.json").exists()]


@pytest.mark.parametrize("case", SEALED)
def test_sealed_vectors_open_to_the_published_events(case: str, tmp_path: Path) -> None:
    """Forms 1 and 2 open with the published data key (wrapped into a real key store, read by a real keyring) to
    exactly ``opened.json``; without the key nothing of a payload is readable."""
    import base64

    from extproc.recording.key_stores import FileKek, FileKeyStore
    from extproc.recording.shred import Keyring, open_events

    want = json.loads((VECTORS / "cases" / case / "opened.json").read_bytes())
    sid, kid = want["key"].split("/")
    (tmp_path / "kek").write_text("5e" * 32)
    kek, store = FileKek(tmp_path / "kek"), FileKeyStore(tmp_path / "keys")
    data_key = bytes.fromhex((VECTORS / "payload-data-key.hex").read_text())
    store.create(
        sid, kid, json.dumps({"kid": kid, "wrapped": base64.b64encode(kek.wrap(data_key, sid)).decode()}).encode()
    )
    doc = json.loads((VECTORS / "cases" / case / "bundle.json").read_bytes())
    for st in doc["streams"]:
        lines = [json.loads(ln) for ln in base64.b64decode(st["data"]).splitlines()]
        sealed = [{k: v for k, v in ev.items() if k not in ("seq", "prev")} for ev in lines]
        assert "café" not in json.dumps(sealed, ensure_ascii=False)
        locked = json.loads(json.dumps(sealed))
        open_events(sealed, Keyring(store, kek))
        assert sealed == want["events"][st["writer"]]
        open_events(locked, None)
        assert "café" not in json.dumps(locked, ensure_ascii=False)
        assert all(ev["unreadable"] == "no key-store access" for ev in locked if "unreadable" in ev)
