"""Just-in-time grants: signed, time-bound permissions the policy honours until they expire, with no reload.

A grant lets one user call some tools of one server (plus the calls a session needs: initialize, ping,
notifications, tools/list, which the grant then filters) from ``not_before`` until ``until``, for a stated reason,
approved by someone other than the user. It is a JSON file in the grants directory, signed with the gateway's
Ed25519 key (the key that signs recording manifests), so a file written by hand is refused.

Revocations live in one signed log, ``revocations.json``, whose sequence number only grows: each ``grant revoke``
re-signs it with one more entry. Deleting files must never widen access, so the store remembers every revocation
and the highest sequence it has seen; a log that is missing, unsigned, edited, or older than that is refused
(logged) and the store keeps what it knew. Grant files with no log beside them are not honoured at all (the log is
written with the first grant). Legacy ``*.revoked.json`` files still revoke. The store notices a change of any
file (stat of each: name, size, mtime, inode) on the next request, so nothing waits for a poll and an in-place
edit is seen; reading the files happens off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from extproc.authn.principal import Principal
from extproc.errors import ConfigError
from extproc.policy.globs import Matcher, check_glob, compile_globs
from extproc.policy.loader import validate
from extproc.recording.manifest import key_id
from extproc.yamlfile import parse_yaml

log = logging.getLogger(__name__)

# Calls a grant covers besides its tools: what opening and keeping a session needs (tools/list is filtered).
SESSION_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "tools/list",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
    }
)
_ID = re.compile(r"^g-[0-9a-f]{16}$")
LOG_NAME = "revocations.json"
_DURATION = re.compile(r"^(\d+)([smhd])$")
MAX_FOR_S = 7 * 86400


class GrantFile(BaseModel):
    """The on-disk form. ``sig`` covers every other field (canonical JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

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
    key_id: str = ""
    sig: str = ""

    @model_validator(mode="after")
    def _sane(self) -> GrantFile:
        if self.until <= self.not_before:
            raise ValueError("until must be after not_before")
        if self.until - self.not_before > MAX_FOR_S:
            raise ValueError(f"a grant lasts at most {MAX_FOR_S // 86400} days")
        if self.approved_by == self.user:
            raise ValueError("nobody approves their own grant (approved_by is the user)")
        return self

    def signed_part(self) -> bytes:
        doc = self.model_dump()
        doc.pop("sig")
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class Revocation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    v: int = Field(1, ge=1, le=1)
    revokes: Annotated[str, Field(pattern=_ID.pattern)]
    at: float
    by: str = ""
    reason: str = ""
    key_id: str = ""
    sig: str = ""

    def signed_part(self) -> bytes:
        doc = self.model_dump()
        doc.pop("sig")
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class RevocationEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    at: float
    by: str = ""
    reason: str = ""


class RevocationLog(BaseModel):
    """Every revocation, signed as a whole; ``seq`` grows by one with each entry (a rollback is refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    v: int = Field(1, ge=1, le=1)
    seq: Annotated[int, Field(ge=0)]
    revoked: dict[Annotated[str, Field(pattern=_ID.pattern)], RevocationEntry]
    key_id: str = ""
    sig: str = ""

    def signed_part(self) -> bytes:
        doc = self.model_dump()
        doc.pop("sig")
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True, eq=False)
class Grant:
    """A verified grant, ready for the engine (``extproc.policy.facts.GrantLike``)."""

    id: str
    user: str
    server: str
    tools: Matcher
    not_before: float
    until: float
    reason: str
    approved_by: str
    source: GrantFile

    def covers(self, who: Principal, server: str, method: str, tool: str | None, now: float) -> bool:
        if not (self.not_before <= now < self.until and who.username == self.user and server == self.server):
            return False
        return method in SESSION_METHODS or (method == "tools/call" and tool is not None and self.tools(tool))

    def to_record(self) -> dict[str, object]:
        return {"id": self.id, "reason": self.reason, "approved_by": self.approved_by, "until": self.until}


def parse_duration(text: str) -> float:
    """'90s', '15m', '2h', '1d' -> seconds."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise ValueError(f"duration {text!r}: use a number and s, m, h or d (e.g. 2h)")
    seconds = int(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
    if not 0 < seconds <= MAX_FOR_S:
        raise ValueError(f"duration {text!r}: must be more than 0 and at most {MAX_FOR_S // 86400} days")
    return float(seconds)


Signed = GrantFile | Revocation | RevocationLog


def _sign(private: Ed25519PrivateKey, doc: Signed) -> dict[str, Any]:
    doc = doc.model_copy(update={"key_id": key_id(private.public_key()), "sig": ""})
    return {**doc.model_dump(), "sig": base64.b64encode(private.sign(doc.signed_part())).decode()}


def _verify(public: Ed25519PublicKey, doc: Signed) -> str | None:
    if not doc.sig:
        return "unsigned"
    try:
        public.verify(base64.b64decode(doc.sig), doc.signed_part())
    except (InvalidSignature, ValueError):
        return "signature does not match (not issued by this gateway's key, or edited)"
    return None


def _write(directory: Path, name: str, doc: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    tmp = directory / f".{name}.tmp"
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)  # a reader never sees half a file
    return path


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
            _write(directory, LOG_NAME, _sign(private, RevocationLog(v=1, seq=0, revoked={})))
        return g, _write(directory, f"{g.id}.json", _sign(private, g))


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
        return _write(directory, LOG_NAME, _sign(private, log_))


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
    why = _verify(public, log_)
    if why is not None:
        return None, f"{path}:1: refused: {why}"
    return log_, None


@dataclass(frozen=True, slots=True)
class Loaded:
    grants: tuple[Grant, ...]
    revoked: frozenset[str]
    problems: tuple[str, ...]  # file:line: why a file was refused
    log_seq: int = -1  # the verified revocation log's sequence number; -1: no log, or a refused one


def load_dir(directory: Path, public: Ed25519PublicKey) -> Loaded:
    """Every grant and revocation of ``directory``, verified; refused files are listed with file:line reasons."""
    grants: list[Grant] = []
    revoked: set[str] = set()
    problems: list[str] = []
    if not directory.is_dir():
        return Loaded((), frozenset(), ())
    log_, problem = read_log(directory, public)
    if problem is not None:
        problems.append(problem)
    if log_ is not None:
        revoked.update(log_.revoked)
    for path in sorted(directory.glob("*.json")):
        if path.name.startswith(".") or path.name == LOG_NAME:
            continue
        source = str(path)
        try:
            doc, lines = parse_yaml(path.read_bytes(), source)  # JSON is YAML: the same line map, file:line errors
            model: type[GrantFile] | type[Revocation] = Revocation if path.name.endswith(".revoked.json") else GrantFile
            item = validate(model, doc, source, lines)
        except (ConfigError, OSError) as e:
            problems.extend(str(e).splitlines())
            continue
        why = _verify(public, item)
        if why is not None:
            problems.append(f"{source}:1: refused: {why}")
            continue
        if isinstance(item, Revocation):
            revoked.add(item.revokes)
        elif path.name != f"{item.id}.json":
            problems.append(f"{source}:1: refused: file name does not match grant id {item.id!r}")
        else:
            grants.append(
                Grant(item.id, item.user, item.server, compile_globs(item.tools), item.not_before, item.until,
                      item.reason, item.approved_by, item)
            )  # fmt: skip
    if grants and log_ is None and problem is None:
        problems.append(f"{directory / LOG_NAME}:1: refused every grant: the revocation log is missing (deleted?)")
        grants = []  # without the log we cannot know what was revoked: honour nothing
    elif problem is not None:
        grants = []  # a log that does not verify says nothing trustworthy about what was revoked
    seq = log_.seq if log_ is not None else -1
    return Loaded(tuple(g for g in grants if g.id not in revoked), frozenset(revoked), tuple(problems), seq)


Stamp = tuple[tuple[str, int, int, int], ...]


class GrantStore:
    """The grants in force; re-read whenever any file changes (a stat of each on every request).

    Revocations only accumulate here: once seen, a revocation stays in force for the life of the process, and a
    revocation log older than the newest one seen (a lower sequence), or missing after one was seen, is refused.
    """

    def __init__(self, directory: Path, public: Ed25519PublicKey) -> None:
        self.directory = directory
        self.public = public
        self.loaded = Loaded((), frozenset(), ())
        self._seen: Stamp | None = None
        self.reloads = 0
        self.revoked: set[str] = set()  # every revocation ever seen: deleting a file never brings a grant back
        self.log_seq = -1  # the highest revocation-log sequence seen

    def _stamp(self) -> Stamp:
        try:
            with os.scandir(self.directory) as it:
                entries = [(e.name, e.stat()) for e in it if e.name.endswith(".json") and not e.name.startswith(".")]
        except OSError:
            return ()
        return tuple(sorted((n, st.st_size, st.st_mtime_ns, st.st_ino) for n, st in entries))

    async def refresh(self) -> None:
        """Re-read the directory if any file in it changed (in place too) since the last look."""
        stamp = self._stamp()
        if stamp == self._seen:
            return
        loaded = await asyncio.to_thread(load_dir, self.directory, self.public)
        problems = list(loaded.problems)
        if self.log_seq >= 0 and loaded.log_seq < self.log_seq:
            problems.append(
                f"{self.directory / LOG_NAME}:1: refused every grant: revocation log "
                + ("missing or refused" if loaded.log_seq < 0 else f"rolled back to {loaded.log_seq}")
                + f" after sequence {self.log_seq} was seen; keeping the revocations known"
            )
            loaded = Loaded((), loaded.revoked, tuple(problems), loaded.log_seq)
        self.log_seq = max(self.log_seq, loaded.log_seq)
        self.revoked |= loaded.revoked
        kept = tuple(g for g in loaded.grants if g.id not in self.revoked)
        self._seen = stamp
        self.loaded = Loaded(kept, frozenset(self.revoked), tuple(problems), loaded.log_seq)
        self.reloads += 1
        for p in problems:
            log.error("grant refused: %s", p)

    async def active(self, now: float) -> tuple[Grant, ...]:
        """Grants valid at ``now`` (revoked ones are gone)."""
        await self.refresh()
        return tuple(g for g in self.loaded.grants if g.not_before <= now < g.until)


def grant_store(settings: Any) -> GrantStore | None:
    """The store for gateway.yaml's ``grants`` section, verifying with recording.signing_key's public half."""
    from extproc.recording.manifest import load_public_key

    if settings.grants is None:
        return None
    try:
        public = load_public_key(settings.recording.signing_key)
    except (OSError, ValueError) as e:
        raise ConfigError(f"grants: cannot load recording.signing_key {settings.recording.signing_key}: {e}") from e
    return GrantStore(settings.grants.directory, public)
