"""Reading recordings back: verify hash chains, merge writers into one ordered session, pair requests/responses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from extproc.authn.state_binding import unsealed_view
from extproc.recording import chain, jsonio
from extproc.recording.chain import Problem
from extproc.recording.shred import Keyring, open_events
from extproc.recording.store import Store
from extproc.recording.verify import check_parsed
from extproc.tools.provenance import definition_links

_LEVEL_ORDER = ["full", "redacted", "shape", "metadata"]


def _level_rank(level: str) -> int:
    return _LEVEL_ORDER.index(level) if level in _LEVEL_ORDER else len(_LEVEL_ORDER)


def verify_stream(writer: str, data: bytes) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Parse one writer's stream and check its chain: every line's ``prev`` is the SHA-256 of the line before."""
    stream = chain.read(data)
    return chain.events(stream), chain.check(writer, stream)


@dataclass(slots=True)
class Session:
    """One MCP session merged across writers; ``problems`` empty means every chain verified."""

    id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    writers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)  # streams without a final manifest, and why
    signatures_checked: bool = False  # manifests checked against a public key (else: hashes and chains only)

    @property
    def exchanges(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for ev in self.events:
            out.setdefault(ev.get("exchange", ""), []).append(ev)
        return out

    def summary(self) -> dict[str, Any]:
        """One row for ``sessions list``."""
        starts = [e for e in self.events if e.get("type") == "exchange.start"]
        ends = {e.get("exchange") for e in self.events if e.get("type") == "exchange.end"}
        marked = {e.get("exchange") for e in self.events if e.get("type") == "exchange.incomplete"} - ends
        unended = [e for e in starts if e.get("exchange") not in ends]
        if marked:
            state = "incomplete"  # a processor died mid-exchange; what it wrote before is kept
        elif unended or self.unfinished:
            state = "open"
        else:
            state = "complete"
        principal = next((e["principal"] for e in starts if e.get("principal")), None)
        return {
            "session": self.id,
            "server": starts[0].get("server", "") if starts else "",
            "user": (principal or {}).get("username", ""),
            "started": self.events[0]["time"] if self.events else None,
            "ended": self.events[-1]["time"] if self.events else None,
            "exchanges": len(starts),
            "incomplete": len(unended),
            "state": state,
            "events": len(self.events),
            # Every chain and manifest intact; the same boolean the audit API gives. It says "signed" only with
            # signatures_checked: hashes alone can be recomputed by whoever edits the files.
            "verified": not self.problems,
            "signatures_checked": self.signatures_checked,
            "capture": self.capture(),
        }

    def capture(self) -> str:
        """The capture level(s) the session was recorded at (policy/capture.py), e.g. ``shape`` or
        ``redacted+metadata`` when a policy change or a per-tool level mixed them; ``redacted`` for recordings
        made before levels were recorded (they kept what the redaction rules allowed)."""
        seen: dict[str, None] = {}
        for e in self.events:
            if e.get("type") == "exchange.start":
                seen[e.get("capture") or "redacted"] = None
            elif e.get("type") in ("mcp.request", "mcp.response", "http.chunk"):
                level = (e.get("body") or {}).get("capture")
                if isinstance(level, str):
                    seen[level] = None
        return "+".join(sorted(seen, key=_level_rank)) if seen else ""


def load_session(
    store: Store, key: str, public_key: Ed25519PublicKey | None = None, keyring: Keyring | None = None
) -> Session:
    """Read, verify (chains, manifests, signatures when a key is given) and merge one session in time order.
    Payloads sealed per subject (``shred.py``) are opened with ``keyring`` once the chains were checked over the
    ciphertext; an erased subject's payloads say when and by whom they were erased."""
    session = Session(id=key)
    session.signatures_checked = public_key is not None
    for writer, stream in store.read_session(key).items():
        parsed = chain.read(stream.data)  # each stream split, parsed and hashed once for both checks
        events, problems = chain.events(parsed), chain.check(writer, parsed)
        check = check_parsed(key, writer, stream.manifests, parsed, public_key)
        session.writers.append(writer)
        session.problems.extend(problems)
        session.problems.extend(check.problems)
        session.notes.extend(check.notes)
        if check.unfinished:
            session.unfinished.append(check.unfinished)
        for ev in events:
            ev["_writer"] = writer
        session.events.extend(events)
    if not session.writers:
        raise KeyError(key)
    session.events.sort(key=lambda e: (e.get("time", 0.0), e["_writer"], e.get("seq", 0)))
    open_events(session.events, keyring)  # after every check: chains and manifests cover the ciphertext
    session.problems.extend(definition_links(session.events))  # what each call was shown (extproc/tools/)
    real_id = next((e.get("session") for e in session.events if e.get("session")), None)
    session.id = real_id or key
    return session


def pair_messages(session: Session) -> list[dict[str, Any]]:
    """JSON-RPC requests paired with their responses by id, in request order.

    Messages from the client arrive in ``mcp.request`` events, from the server in ``mcp.response`` events.
    A notification the server sends while a request of the same exchange is open (progress) is attached
    to that request; other notifications stand alone.
    """
    calls: list[dict[str, Any]] = []
    open_calls: dict[tuple[str, bytes], dict[str, Any]] = {}  # (who asked, id) -> call awaiting its response
    for ev in session.events:
        kind = ev.get("type")
        if kind not in ("mcp.request", "mcp.response"):
            continue
        sender = "client" if kind == "mcp.request" else "server"
        for msg in ev.get("messages", []):
            if "method" not in msg:  # a response: closes the call the other side opened
                asker = "server" if sender == "client" else "client"
                call = open_calls.pop((asker, jsonio.dumps(msg.get("id"))), None)
                if call is not None:
                    call["response"], call["response_time"] = msg, ev["time"]
                continue
            if sender == "server" and "id" not in msg:
                parent = next(
                    (
                        c
                        for c in reversed(calls)
                        if c["exchange"] == ev.get("exchange") and c["from"] == "client" and c["response"] is None
                    ),
                    None,
                )
                if parent is not None:
                    parent["notifications"].append({"time": ev["time"], "message": msg})
                    continue
            call = {
                "from": sender,
                "exchange": ev.get("exchange"),
                "time": ev["time"],
                "request": msg,
                "response": None,
                "response_time": None,
                "notifications": [],
            }
            calls.append(call)
            if "id" in msg:
                open_calls[(sender, jsonio.dumps(msg["id"]))] = call
    return _link_rounds(calls)


def _state(msg: dict[str, Any] | None, where: str) -> str | None:
    part = (msg or {}).get(where)
    value = part.get("requestState") if isinstance(part, dict) else None
    return unsealed_view(value) if isinstance(value, str) else None


def _link_rounds(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Multi-round-trip requests (2026-07-28): a retry carrying the request state an earlier round's
    ``input_required`` result handed out is a further round of that call, listed under it in ``rounds``."""
    waiting: dict[str, dict[str, Any]] = {}  # request state handed out -> the call it continues
    out: list[dict[str, Any]] = []
    for call in calls:
        call.setdefault("rounds", [])
        first = waiting.pop(state, None) if (state := _state(call["request"], "params")) else None
        if first is not None:
            first["rounds"].append(call)
        else:
            out.append(call)
        if (handed := _state(call["response"], "result")) is not None:
            waiting[handed] = first or call
    return out
