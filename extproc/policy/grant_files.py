"""Grant files and the revocation log: the signed documents ``grant create`` and ``grant revoke`` write.

Revocations live in one signed log, ``revocations.json``, whose sequence number only grows: each ``grant revoke``
re-signs it with one more entry. Deleting files must never widen access, so the store (extproc/policy/grants.py)
remembers every revocation and the highest sequence it has seen; a log that is missing, unsigned, edited, or older
than that is refused. Grant files with no log beside them are not honoured at all (the log is written with the
first grant). Legacy ``*.revoked.json`` files still revoke.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
from pathlib import Path
from typing import Annotated

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from extproc.errors import ConfigError
from extproc.policy.globs import check_glob
from extproc.policy.loader import validate
from extproc.policy.signed import SignedDoc, sign, verify, write
from extproc.timespec import parse_duration as _parse_duration
from extproc.yamlfile import parse_yaml

_ID = re.compile(r"^g-[0-9a-f]{16}$")
LOG_NAME = "revocations.json"
MAX_FOR_S = 7 * 86400


class GrantFile(SignedDoc):
    """The on-disk form. ``sig`` covers every other field (canonical JSON)."""

    v: int = Field(1, ge=1, le=1)
    id: Annotated[str, Field(pattern=_ID.pattern)]
    user: Annotated[str, Field(min_length=1)]
    server: Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    tools: Annotated[list[Annotated[str, AfterValidator(check_glob)]], Field(min_length=1)]
    not_before: float
    until: float
    reason: Annotated[str, Field(min_length=1, max_length=500)]
    approved_by: Annotated[str, Field(min_length=1)]
    created_by: str = ""

    @model_validator(mode="after")
    def _sane(self) -> GrantFile:
        if self.until <= self.not_before:
            raise ValueError("until must be after not_before")
        if self.until - self.not_before > MAX_FOR_S:
            raise ValueError(f"a grant lasts at most {MAX_FOR_S // 86400} days")
        if self.approved_by == self.user:
            raise ValueError("nobody approves their own grant (approved_by is the user)")
        return self


class Revocation(SignedDoc):
    v: int = Field(1, ge=1, le=1)
    revokes: Annotated[str, Field(pattern=_ID.pattern)]
    at: float
    by: str = ""
    reason: str = ""


class RevocationEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    at: float
    by: str = ""
    reason: str = ""


class RevocationLog(SignedDoc):
    """Every revocation, signed as a whole; ``seq`` grows by one with each entry (a rollback is refused)."""

    v: int = Field(1, ge=1, le=1)
    seq: Annotated[int, Field(ge=0)]
    revoked: dict[Annotated[str, Field(pattern=_ID.pattern)], RevocationEntry]


def parse_duration(text: str) -> float:
    """'90s', '15m', '2h', '1d' -> seconds; a grant lasts at most a week."""
    seconds = _parse_duration(text)
    if seconds > MAX_FOR_S:
        raise ValueError(f"duration {text!r}: must be more than 0 and at most {MAX_FOR_S // 86400} days")
    return seconds


def create(
    directory: Path,
    private: Ed25519PrivateKey,
    *,
    user: str,
    server: str,
    tools: list[str],
    seconds: float,
    reason: str,
    approved_by: str,
    created_by: str = "",
    now: float,
) -> tuple[GrantFile, Path]:
    """Write a signed grant; ValueError (pydantic's) when it is not a valid one."""
    g = GrantFile(
        v=1,
        id=f"g-{secrets.token_hex(8)}",
        user=user,
        server=server,
        tools=tools,
        not_before=now,
        until=now + seconds,
        reason=reason,
        approved_by=approved_by,
        created_by=created_by,
    )
    with _log_lock(directory):
        if not (directory / LOG_NAME).exists():  # the log comes first: grants with no log beside are refused
            write(directory / LOG_NAME, sign(private, RevocationLog(v=1, seq=0, revoked={})))
        return g, write(directory / f"{g.id}.json", sign(private, g))


def revoke(directory: Path, private: Ed25519PrivateKey, grant_id: str, by: str, reason: str, now: float) -> Path:
    """Add ``grant_id`` to the signed revocation log, one sequence number up (the grant stops at the next request).

    A log that does not verify is not extended (ConfigError): restore it from a backup first, since re-signing a
    shortened log would make a deleted revocation legitimate.
    """
    with _log_lock(directory):
        current, problem = read_log(directory, private.public_key())
        if problem is not None:
            raise ConfigError(problem)
        old = current or RevocationLog(v=1, seq=0, revoked={})
        entry = RevocationEntry(at=now, by=by, reason=reason)
        log_ = RevocationLog(v=1, seq=old.seq + 1, revoked={**old.revoked, grant_id: entry})
        return write(directory / LOG_NAME, sign(private, log_))


class _log_lock:  # a plain ``with`` block
    """An exclusive flock on ``.revocations.lock`` so two ``grant revoke`` runs cannot lose each other's entry."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fd = -1

    def __enter__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.directory / ".revocations.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def read_log(directory: Path, public: Ed25519PublicKey) -> tuple[RevocationLog | None, str | None]:
    """The verified revocation log (None when there is none), or a ``file:line: why`` problem."""
    path = directory / LOG_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"{path}:1: cannot read: {e.strerror}"
    try:
        doc, lines = parse_yaml(data, str(path))
        log_ = validate(RevocationLog, doc, str(path), lines)
    except ConfigError as e:
        return None, str(e).replace("\n", "; ")
    why = verify(public, log_)
    if why is not None:
        return None, f"{path}:1: refused: {why}"
    return log_, None
