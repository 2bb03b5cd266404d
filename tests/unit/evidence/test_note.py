"""C2SP signed notes and checkpoints: Go's sumdb/note vectors, and what a verifier must refuse."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from extproc.evidence.note import Checkpoint, NoteError, NoteSigner, Verifier, open_checkpoint, open_note

# golang.org/x/mod/sumdb/note's example key and note (its tests and documentation).
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY_SEED = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"  # from PRIVATE+KEY+PeterNeumann+c74f20a3+...
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
SIG = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
SIGNED = f"{TEXT}\n\u2014 PeterNeumann {SIG}\n"


def peter() -> NoteSigner:
    seed = base64.b64decode(PETER_SKEY_SEED)[1:]
    return NoteSigner("PeterNeumann", Ed25519PrivateKey.from_private_bytes(seed))


def test_the_go_example_key_id_and_signature_are_reproduced() -> None:
    assert peter().verifier.vkey() == PETER_VKEY
    assert peter().sign(TEXT) == SIGNED
    assert open_note(SIGNED, Verifier.parse(PETER_VKEY)) == TEXT


@pytest.mark.parametrize(
    "note",
    [
        pytest.param(SIGNED.replace("answer", "answers"), id="text-edited"),
        pytest.param(SIGNED.replace("x08go", "x08gp"), id="signature-edited"),
        pytest.param(SIGNED.replace("PeterNeumann x", "PeterNeuman x"), id="other-name"),
        pytest.param(TEXT, id="unsigned"),
        pytest.param(SIGNED.replace("\n\n", "\n"), id="no-blank-line"),
        pytest.param(SIGNED.replace("\u2014", "-"), id="hyphen-not-em-dash"),
        pytest.param(SIGNED.replace("problem,", "problem,\x07"), id="control-character"),
    ],
)
def test_a_note_that_is_not_exactly_signed_is_refused(note: str) -> None:
    with pytest.raises(NoteError):
        open_note(note, Verifier.parse(PETER_VKEY))


def test_a_note_signed_by_another_key_of_the_same_name_is_refused() -> None:
    other = NoteSigner("PeterNeumann", Ed25519PrivateKey.generate())
    with pytest.raises(NoteError, match="not signed by"):
        open_note(other.sign(TEXT), Verifier.parse(PETER_VKEY))


@pytest.mark.parametrize("vkey", [PETER_VKEY[:-2], PETER_VKEY.replace("c74f", "c75f"), "PeterNeumann", "+c74f20a3+"])
def test_a_mangled_verifier_key_is_refused(vkey: str) -> None:
    with pytest.raises(NoteError):
        Verifier.parse(vkey)


def test_a_checkpoint_body_is_origin_size_root_and_round_trips() -> None:
    cp = Checkpoint("example.com/log/w1", 12345, bytes(range(32)))
    assert cp.text() == f"example.com/log/w1\n12345\n{base64.b64encode(bytes(range(32))).decode()}\n"
    signer = NoteSigner("example.com/log", Ed25519PrivateKey.generate())
    note = signer.sign(cp.text())
    assert note.startswith(cp.text() + "\n\u2014 example.com/log ")
    assert open_checkpoint(note, signer.verifier, "example.com/log/w1") == cp
    with pytest.raises(NoteError, match=r"not 'example\.com/other'"):
        open_checkpoint(note, signer.verifier, "example.com/other")


@pytest.mark.parametrize(
    "body",
    [
        "log\n012\nAAAA\n",
        "log\n1\n" + base64.b64encode(bytes(32)).decode() + "\n\nx\n",
        "log\nten\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "log\n1\nAAAA\n",
        "log\n1\n",
    ],
)
def test_a_malformed_checkpoint_is_refused(body: str) -> None:
    signer = NoteSigner("log", Ed25519PrivateKey.generate())
    with pytest.raises(NoteError):
        open_checkpoint(signer.sign(body), signer.verifier)
