"""The pin store: which definition of each listed item a person (or the first sighting) trusted, signed.

One JSON file per item, ``<directory>/<server>/<kind>.<sha256(name)[:24]>.json``, beside the recordings (default
``<recording.directory>/.pins``). Each file is signed with the recording signing key by the same helpers that
sign grants (``extproc/policy/grants.py``), so a pin written or edited by hand is refused, and its definition must
hash to its fingerprint. A file holds:

- the pinned definition and fingerprint: first seen (``approved_by`` = "first-seen") or approved by a person;
- ``candidate``: a changed definition the gateway saw and has not been approved (what ``pins diff`` shows);
- ``rejected``: fingerprints a person refused (never let through, whatever ``on_change`` says).

A change is judged by ``judge`` (pure); what follows from it is the policy's ``on_change`` (surface.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, model_validator

from extproc.errors import ConfigError
from extproc.policy import signed
from extproc.policy.loader import validate
from extproc.tools.fingerprint import DefinitionError, fingerprint
from extproc.yamlfile import parse_yaml

log = logging.getLogger(__name__)

FIRST_SEEN = "first-seen"
Judgement = Literal["new", "same", "changed", "rejected"]
_NAME = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_SERVER = rf"^{_NAME}(@{_NAME})?$"  # a server, or server@backend (see scope)
_FP = r"^sha256:[0-9a-f]{64}$"


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    fingerprint: Annotated[str, Field(pattern=_FP)]
    definition: dict[str, Any]
    seen_at: float


class PinFile(signed.SignedDoc):
    """The on-disk form of one pin. ``sig`` covers every other field."""

    ascii_only: ClassVar[bool] = False

    v: int = Field(1, ge=1, le=1)
    server: Annotated[str, Field(pattern=_SERVER)]
    kind: Literal["tool", "prompt", "resource", "resource_template"]
    name: Annotated[str, Field(min_length=1)]
    fingerprint: Annotated[str, Field(pattern=_FP)]
    definition: dict[str, Any]
    first_seen: float
    pinned_at: float
    approved_by: Annotated[str, Field(min_length=1)]
    candidate: Candidate | None = None
    rejected: list[Annotated[str, Field(pattern=_FP)]] = []
    history: list[dict[str, Any]] = []  # earlier pins: fingerprint, approved_by, pinned_at, replaced_at, replaced_by

    @model_validator(mode="after")
    def _hashes(self) -> PinFile:
        for what, fp, definition in (
            ("definition", self.fingerprint, self.definition),
            *((("candidate", self.candidate.fingerprint, self.candidate.definition),) if self.candidate else ()),
        ):
            try:
                actual = fingerprint(definition)
            except DefinitionError as e:
                raise ValueError(f"{what}: {e}") from None
            if actual != fp:
                raise ValueError(f"{what} does not hash to its fingerprint ({actual} != {fp})")
        return self


def scope(server: str, backend: str | None) -> str:
    """Whose surface a list shows and whose pins judge it: the server, or ``server@backend`` for a server with
    identity-scoped backends (each may be another deployment serving other definitions)."""
    return f"{server}@{backend}" if backend else server


def server_of(scope: str) -> str:
    """The server of a scope (what the policy's rules name)."""
    return scope.partition("@")[0]


def file_name(kind: str, name: str) -> str:
    """The file of one item: kind plus a hash of the name (names may hold '/' or ':' — URIs)."""
    return f"{kind}.{hashlib.sha256(name.encode()).hexdigest()[:24]}.json"


def judge(pin: PinFile | None, fp: str) -> Judgement:
    """How a listed definition stands against its pin: new (no pin), same, changed, or rejected by a person."""
    if pin is None:
        return "new"
    if fp == pin.fingerprint:
        return "same"
    return "rejected" if fp in pin.rejected else "changed"


def first_pin(server: str, kind: str, name: str, definition: dict[str, Any], fp: str, now: float) -> PinFile:
    """The pin of a definition seen for the first time (built from values just computed: not re-validated, the
    hash check is for files read back). Every field is given: pydantic copying defaults in was a third of the cost,
    and a first list of 500 tools builds 500 of these."""
    return _FIRST.model_copy(  # a shallow copy of a template, every per-pin value (lists too) given anew: ~2x faster
        update={"server": server, "kind": kind, "name": name, "fingerprint": fp, "definition": definition,
                "first_seen": now, "pinned_at": now, "rejected": [], "history": []}
    )  # fmt: skip


def _first_pin_template() -> PinFile:
    return PinFile.model_construct(
        server="", kind="tool", name="", fingerprint="", definition={},
        first_seen=0.0, pinned_at=0.0, approved_by=FIRST_SEEN,
        v=1, candidate=None, rejected=[], history=[], key_id="", sig="",
    )  # fmt: skip


_FIRST = _first_pin_template()


def with_candidate(pin: PinFile, definition: dict[str, Any], fp: str, now: float) -> PinFile:
    """The pin with a changed definition waiting for a person (kept until approved or rejected)."""
    if pin.candidate is not None and pin.candidate.fingerprint == fp:
        return pin
    return pin.model_copy(update={"candidate": Candidate(fingerprint=fp, definition=definition, seen_at=now)})


def approve(pin: PinFile, who: str, now: float, fp: str | None = None) -> PinFile:
    """The candidate (or the one with fingerprint ``fp``) becomes the pin, approved by ``who``."""
    cand = pin.candidate
    if cand is None or (fp is not None and cand.fingerprint != fp):
        raise ValueError(f"{pin.kind} {pin.name!r} on {pin.server}: no pending change" + (f" {fp}" if fp else ""))
    old = {"fingerprint": pin.fingerprint, "approved_by": pin.approved_by, "pinned_at": pin.pinned_at,
           "replaced_at": now, "replaced_by": who}  # fmt: skip
    return pin.model_copy(
        update={
            "fingerprint": cand.fingerprint, "definition": cand.definition, "pinned_at": now, "approved_by": who,
            "candidate": None, "rejected": [r for r in pin.rejected if r != cand.fingerprint],
            "history": [*pin.history, old],
        }
    )  # fmt: skip


def reject(pin: PinFile, who: str, now: float) -> PinFile:
    """The candidate is refused for good: it stays hidden (or blocked) even under ``on_change: alarm``."""
    cand = pin.candidate
    if cand is None:
        raise ValueError(f"{pin.kind} {pin.name!r} on {pin.server}: no pending change")
    entry = {"fingerprint": cand.fingerprint, "rejected_by": who, "rejected_at": now}
    return pin.model_copy(
        update={"candidate": None, "rejected": [*pin.rejected, cand.fingerprint], "history": [*pin.history, entry]}
    )


@dataclass(frozen=True, slots=True)
class Loaded:
    pins: dict[tuple[str, str, str], PinFile]  # (server, kind, name) -> pin
    problems: tuple[str, ...]  # file:line: why a file was refused
    refused: frozenset[str] = frozenset()  # "<server>/<file name>" of every refused file


def load_server(directory: Path, server: str, public: Ed25519PublicKey) -> Loaded:
    """Every pin of one server, verified; refused files are listed with the reason."""
    pins: dict[tuple[str, str, str], PinFile] = {}
    problems: list[str] = []
    refused: set[str] = set()
    folder = directory / server
    if not folder.is_dir():
        return Loaded({}, ())
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("."):
            continue
        source = str(path)
        try:
            doc, lines = parse_yaml(path.read_bytes(), source)
            pin = validate(PinFile, doc, source, lines)
        except (ConfigError, OSError) as e:
            problems.extend(str(e).splitlines())
            refused.add(f"{server}/{path.name}")
            continue
        why = signed.verify(public, pin)
        if why is not None:
            problems.append(f"{source}:1: refused: {why}")
            refused.add(f"{server}/{path.name}")
        elif pin.server != server or path.name != file_name(pin.kind, pin.name):
            problems.append(f"{source}:1: refused: file name or folder does not match {pin.kind} {pin.name!r}")
            refused.add(f"{server}/{path.name}")
        else:
            pins[(pin.server, pin.kind, pin.name)] = pin
    return Loaded(pins, tuple(problems), frozenset(refused))


def load_dir(directory: Path, public: Ed25519PublicKey) -> Loaded:
    """Every server's pins (for the CLI)."""
    pins: dict[tuple[str, str, str], PinFile] = {}
    problems: list[str] = []
    refused: set[str] = set()
    if directory.is_dir():
        for folder in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
            loaded = load_server(directory, folder.name, public)
            pins.update(loaded.pins)
            problems.extend(loaded.problems)
            refused |= loaded.refused
    return Loaded(pins, tuple(problems), frozenset(refused))


def write(directory: Path, private: Ed25519PrivateKey, pin: PinFile) -> Path:
    """Sign and write one pin atomically (a reader never sees half a file)."""
    folder = directory / pin.server
    folder.mkdir(parents=True, exist_ok=True)
    name = file_name(pin.kind, pin.name)
    return signed.write(folder / name, signed.sign(private, pin), ascii_only=False)


@dataclass
class PinStore:
    """The pins in force for each server, re-read when its folder changes (one stat per look, as grants)."""

    directory: Path
    public: Ed25519PublicKey
    private: Ed25519PrivateKey | None  # None: read-only (pins are then never written; new items stay unpinned)
    pins: dict[tuple[str, str, str], PinFile] = field(default_factory=dict)
    _pending: dict[str, tuple[PinFile, ...]] = field(default_factory=dict)  # server -> pins with a candidate
    _refused: dict[str, frozenset[str]] = field(default_factory=dict)  # server -> refused "<server>/<file>"
    _seen: dict[str, int] = field(default_factory=dict)

    def _stamp(self, server: str) -> int:
        try:
            st = os.stat(self.directory / server)
        except OSError:
            return -1
        return st.st_mtime_ns ^ st.st_ino

    def refresh_now(self, server: str) -> None:
        """Re-read ``server``'s pins if its folder changed since the last look (blocking; tests and the CLI)."""
        stamp = self._stamp(server)
        if self._seen.get(server) == stamp:
            return
        self._apply(server, stamp, load_server(self.directory, server, self.public))

    async def refresh(self, server: str) -> None:
        """As ``refresh_now``, reading the files off the event loop."""
        stamp = self._stamp(server)
        if self._seen.get(server) == stamp:
            return
        self._apply(server, stamp, await asyncio.to_thread(load_server, self.directory, server, self.public))

    def _apply(self, server: str, stamp: int, loaded: Loaded) -> None:
        for key in [k for k in self.pins if k[0] == server]:
            del self.pins[key]
        self.pins.update(loaded.pins)
        self._refused[server] = loaded.refused
        self._seen[server] = stamp
        self._reindex(server)
        for p in loaded.problems:
            log.error("pin refused: %s", p)

    def _reindex(self, server: str) -> None:
        self._pending[server] = tuple(p for k, p in self.pins.items() if k[0] == server and p.candidate is not None)

    def get(self, server: str, kind: str, name: str) -> PinFile | None:
        return self.pins.get((server, kind, name))

    def forged(self, server: str, kind: str, name: str) -> bool:
        """True when the item's pin file exists but was refused (unsigned, edited, another key): it is never
        overwritten (it is evidence), and the item is judged as changed until someone removes the file."""
        refused = self._refused.get(server)
        return bool(refused) and f"{server}/{file_name(kind, name)}" in refused  # type: ignore[operator]

    def pending(self, server: str) -> tuple[PinFile, ...]:
        """Pins of ``server`` with a change waiting for a person."""
        return self._pending.get(server, ())

    async def save(self, pins: list[PinFile]) -> None:
        """Sign and write pins off the event loop; the in-memory view follows at once."""
        if self.private is None or not pins:
            return
        private = self.private

        def write_all() -> None:
            for pin in pins:
                write(self.directory, private, pin)

        await asyncio.to_thread(write_all)
        for pin in pins:
            self.pins[(pin.server, pin.kind, pin.name)] = pin
        for server in {p.server for p in pins}:
            self._reindex(server)
