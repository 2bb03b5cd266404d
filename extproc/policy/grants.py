"""Just-in-time grants: signed, time-bound permissions the policy honours until they expire, with no reload.

A grant lets one user call some tools of one server (plus the calls a session needs: initialize, ping,
notifications, tools/list, which the grant then filters) from ``not_before`` until ``until``, for a stated reason,
approved by someone other than the user. It is a JSON file in the grants directory, signed with the gateway's
Ed25519 key (the key that signs recording manifests), so a file written by hand is refused; the files and the
revocation log are written by extproc/policy/grant_files.py.

Revocations only accumulate: deleting files must never widen access, so the store remembers every revocation and
the highest revocation-log sequence it has seen. The store notices a change of any file (stat of each: name, size,
mtime, inode) on the next request, so nothing waits for a poll and an in-place edit is seen; reading the files
happens off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from extproc.authn.principal import Principal
from extproc.errors import ConfigError
from extproc.policy.globs import Matcher, compile_globs
from extproc.policy.grant_files import LOG_NAME, GrantFile, Revocation, read_log
from extproc.policy.loader import validate
from extproc.policy.signed import verify
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
        why = verify(public, item)
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
