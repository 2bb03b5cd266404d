"""RFC 3161 against a real local TSA (`openssl ts -reply` with its own CA): granted, stored, verified, and refused
with another CA or for other data."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tsa_server import LocalTsa, make_ca

from extproc.evidence.note import NoteSigner
from extproc.evidence.proofs import check_checkpoint
from extproc.evidence.tiles import FileBlobs
from extproc.evidence.tlog import TransparencyLog
from extproc.evidence.tsa import TsaClient, TsaError, load_certificates, verify_token


@pytest.fixture(scope="module")
def tsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTsa]:
    with LocalTsa(tmp_path_factory.mktemp("tsa")) as server:
        yield server


def test_a_token_from_the_tsa_verifies_against_its_ca_and_gives_its_time(tsa: LocalTsa) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=2)
    token = TsaClient(tsa.url).stamp(b"checkpoint note")
    when = verify_token(token, b"checkpoint note", load_certificates(tsa.ca_pem))
    assert before <= when <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)


def test_a_token_fails_against_another_ca_or_for_other_data(tsa: LocalTsa, tmp_path: Path) -> None:
    token = TsaClient(tsa.url).stamp(b"checkpoint note")
    _, other = make_ca(tmp_path, "another-root")
    with pytest.raises(TsaError):
        verify_token(token, b"checkpoint note", [other])
    with pytest.raises(TsaError):
        verify_token(token, b"checkpoint note, edited", load_certificates(tsa.ca_pem))
    with pytest.raises(TsaError):
        verify_token(b"\x30\x03\x02\x01\x00", b"checkpoint note", load_certificates(tsa.ca_pem))


def test_a_tsa_that_is_down_is_an_error_not_a_hang(tmp_path: Path) -> None:
    with LocalTsa(tmp_path / "gone") as gone:
        url = gone.url
    with pytest.raises(TsaError):
        TsaClient(url, timeout=5).stamp(b"x")


def test_each_checkpoint_is_timestamped_and_the_token_stored_beside_it(tsa: LocalTsa, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    blobs = FileBlobs(tmp_path)
    tlog = TransparencyLog(blobs, "gw.example/log", "w", NoteSigner("gw.example/log", key), stamper=TsaClient(tsa.url))
    assert tlog.publish([(b"leaf", None)])
    checked = check_checkpoint(blobs, "w", key.public_key())
    assert checked.problems == [] and checked.token is not None
    assert (tmp_path / "w/checkpoints/000000000001.tsr").read_bytes() == checked.token
    verify_token(checked.token, checked.note, load_certificates(tsa.ca_pem))


def test_a_tsa_failure_costs_the_timestamp_never_the_checkpoint(tmp_path: Path) -> None:
    with LocalTsa(tmp_path / "gone") as gone:
        url = gone.url
    key = Ed25519PrivateKey.generate()
    tlog = TransparencyLog(FileBlobs(tmp_path), "o", "w", NoteSigner("o", key), stamper=TsaClient(url, timeout=5))
    assert tlog.publish([(b"leaf", None)])
    assert (tmp_path / "w/checkpoint").is_file() and not (tmp_path / "w/checkpoints/000000000001.tsr").exists()
    assert (tmp_path / "w/checkpoint.tsr").read_bytes() == b""  # "not timestamped", never an older token
    assert check_checkpoint(FileBlobs(tmp_path), "w", key.public_key()).token is None


def test_after_a_tsa_failure_the_latest_checkpoint_never_shows_an_older_token(tsa: LocalTsa, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    blobs = FileBlobs(tmp_path / "log")
    tlog = TransparencyLog(blobs, "o", "w", NoteSigner("o", key), stamper=TsaClient(tsa.url))
    assert tlog.publish([(b"one", None)]) and (tmp_path / "log/w/checkpoint.tsr").read_bytes()
    with LocalTsa(tmp_path / "gone") as gone:
        tlog.stamper = TsaClient(gone.url, timeout=5)
    assert tlog.publish([(b"two", None)])
    checked = check_checkpoint(blobs, "w", key.public_key())
    assert checked.checkpoint is not None and checked.checkpoint.size == 2 and checked.token is None
