"""RFC 3161 trusted time for checkpoints: a Time-Stamp Authority signs "this checkpoint existed at T".

The processor asks the configured TSA (HTTP POST of a ``TimeStampReq``, ``application/timestamp-query``) for a
token over each checkpoint note and stores the ``TimeStampResp`` beside it. ``rfc3161-client`` (the library
sigstore uses) builds the request and verifies the reply: the TSA's signature, its certificate chain up to the
roots the auditor trusts, the critical id-kp-timeStamping key usage, the nonce and the message imprint. Then a
checkpoint is known to have existed no later than the TSA's time, whoever holds our signing key.
"""

from __future__ import annotations

import hashlib
import urllib.request
from datetime import datetime
from pathlib import Path

from cryptography import x509
from rfc3161_client import (
    HashAlgorithm,
    PKIStatus,
    TimestampRequestBuilder,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)


class TsaError(Exception):
    """The TSA did not grant a timestamp, or its token does not verify."""


class TsaClient:
    """Asks one TSA for timestamps (blocking: the log calls it from its worker thread)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout

    def stamp(self, data: bytes) -> bytes:
        """The DER ``TimeStampResp`` over SHA-256(``data``); TsaError unless granted for exactly that."""
        request = (
            TimestampRequestBuilder()
            .data(data)
            .hash_algorithm(HashAlgorithm.SHA256)
            .nonce(nonce=True)
            .cert_request(cert_request=True)
            .build()
        )
        post = urllib.request.Request(
            self.url,
            data=request.as_bytes(),
            headers={"Content-Type": "application/timestamp-query", "Accept": "application/timestamp-reply"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(post, timeout=self.timeout) as reply:
                body: bytes = reply.read()
        except OSError as e:
            raise TsaError(f"TSA {self.url}: {e}") from e
        try:
            response = decode_timestamp_response(body)
        except ValueError as e:
            raise TsaError(f"TSA {self.url} answered something that is not a TimeStampResp: {e}") from e
        if PKIStatus(response.status) != PKIStatus.GRANTED:
            raise TsaError(f"TSA {self.url} refused: status {response.status} {response.status_string}")
        info = response.tst_info
        if info.nonce != request.nonce or info.message_imprint.message != hashlib.sha256(data).digest():
            raise TsaError(f"TSA {self.url} answered for another request (nonce or message imprint)")
        return body


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every PEM certificate in ``path`` (the TSA roots an auditor trusts)."""
    return x509.load_pem_x509_certificates(path.read_bytes())


def verify_token(token: bytes, data: bytes, roots: list[x509.Certificate]) -> datetime:
    """The TSA time at which ``data`` existed; TsaError if ``token`` is not a valid timestamp of it under ``roots``."""
    try:
        response = decode_timestamp_response(token)
    except ValueError as e:
        raise TsaError(f"not an RFC 3161 TimeStampResp: {e}") from e
    builder = VerifierBuilder()
    for root in roots:
        builder = builder.add_root_certificate(root)
    try:
        builder.build().verify_message(response, data)
    except (VerificationError, ValueError) as e:
        raise TsaError(f"timestamp does not verify: {e}") from e
    gen_time: datetime = response.tst_info.gen_time
    return gen_time
