"""Generate the record-format test vectors (docs/record-format.md) beside this file: deterministic keys and times.

    python tests/vectors/record-format/generate.py [--out DIR]

Builds one recorded session exactly as the recorder writes it (the same functions: ``chain.event_line``,
``Manifest`` + ``Signer``, ``Digest`` + ``digest.sign``), exports it as a bundle (``extproc.evidence.bundle``), then
breaks copies of it one way each. Every case gets ``bundle.json`` and ``expected.json`` (the findings the
verifiers must report, sorted); ``good/steps.json`` spells out every intermediate hash, signed byte string and
signature. Each broken case also names, by hand, the finding it exists for (``WANT``); generation fails if the
reference verifier does not report it. tests/unit/evidence/test_vectors.py regenerates and compares byte for byte.

The ``sealed-*`` cases record the same exchanges with ``recording.encrypt_payloads: per_subject`` (sealing.py: the
data key is ``payload-data-key.hex``), in sealed form 1 (older records) and form 2 (written today); each gets
``opened.json``, the events every reader must get back after opening them (generation fails otherwise).
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sealing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from extproc.evidence import bundle
from extproc.recording.chain import event_line
from extproc.recording.digest import Digest, Listed, digest_hash
from extproc.recording.digest import sign as sign_digest
from extproc.recording.events import (
    Event,
    ExchangeEnd,
    ExchangeStart,
    McpRequest,
    McpResponse,
    PolicyDecision,
    ResponseStart,
    body_fields,
)
from extproc.recording.manifest import GENESIS, Manifest, Signer
from extproc.recording.shred import open_events
from extproc.recording.store import StreamData, safe_key

HERE = Path(__file__).resolve().parent
SESSION = "s-vectors-1"
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def key(name: str) -> Ed25519PrivateKey:
    """A fixed Ed25519 key: the seed is the SHA-256 of its name (test material only, never a real key)."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"mcp-extproc test vectors: {name}".encode()).digest())


PUBLISHED = key("published")
ATTACKER = key("attacker")


def exchange(n: int, t: float, session: str = SESSION) -> list[Event]:
    """One tools/call exchange, as the processor records it (non-ASCII on purpose: lines are UTF-8)."""
    ex = f"ex{n}"
    req = {
        "jsonrpc": "2.0",
        "id": n,
        "method": "tools/call",
        "params": {"name": "note", "arguments": {"text": "café ✓"}},
    }
    raw = json.dumps(req, ensure_ascii=False).encode()
    res = {"jsonrpc": "2.0", "id": n, "result": {"content": [{"type": "text", "text": f"saved {n}"}]}}
    raw_res = json.dumps(res).encode()
    who = {"issuer": "https://id.example", "subject": "u-42", "username": "alice", "groups": ["dev"], "token_id": "j1"}
    return [
        ExchangeStart(
            session=session, exchange=ex, index=0, time=t, client="10.0.0.7", server="notes", method="POST",
            path="/mcp",
            headers={"content-type": "application/json"}, credentials_removed=["authorization"], principal=who,
        ),
        McpRequest(
            session=session, exchange=ex, index=1, time=t + 0.001, messages=[req], body=body_fields(raw), size=len(raw)
        ),
        PolicyDecision(
            session=session, exchange=ex, index=2, time=t + 0.002, allowed=True, rule="notes-writers",
            reason="group dev may call note", call="tools/call note", message_id=n,
        ),
        ResponseStart(
            session=session, exchange=ex, index=3, time=t + 0.05, status=200,
            headers={"content-type": "application/json"},
        ),
        McpResponse(
            session=session, exchange=ex, index=4, time=t + 0.051, messages=[res], body=body_fields(raw_res),
            size=len(raw_res),
        ),
        ExchangeEnd(session=session, exchange=ex, index=5, time=t + 0.052, status=200, duration_ms=52.0,
                    bytes_in=len(raw), bytes_out=len(raw_res), ends_session=False),
    ]  # fmt: skip


def stream(
    writer: str, segments: list[list[Event]], signer: Signer, sealed: float, session: str = SESSION
) -> tuple[bytes, list[bytes]]:
    """A writer stream cut into ``segments``, each sealed by a signed manifest, as streams.py + spool.py do."""
    data, manifests, seq, prev, link = b"", [], 0, GENESIS, GENESIS
    for number, events in enumerate(segments):
        first, seg = seq, b""
        for ev in events:
            line = event_line(seq, prev, ev)
            prev, seq, seg = hashlib.sha256(line).hexdigest(), seq + 1, seg + line + b"\n"
        m = Manifest(
            session=session, writer=writer, segment=number, first=first, last=seq - 1, count=seq - first,
            size=len(seg), sha256=hashlib.sha256(seg).hexdigest(), head=prev, prev_manifest=link,
            final=number == len(segments) - 1, open=[], created=sealed + number,
        )  # fmt: skip
        raw = signer.sign(m).to_bytes()
        link = hashlib.sha256(raw).hexdigest()
        data, manifests = data + seg, [*manifests, raw]
    return data, manifests


def digests(writer: str, periods: list[list[bytes]], signer: Signer, start: float) -> dict[int, bytes]:
    """A writer's digest chain: one digest per period naming the manifests stored in it; the last one closes."""
    out, prev = {}, GENESIS
    for number, listed in enumerate(periods):
        segs = [Listed.of(Manifest.from_bytes(raw)) for raw in listed]
        d = Digest(
            writer, number, start + 300 * number, start + 300 * (number + 1), prev, segs, number == len(periods) - 1
        )
        raw = sign_digest(d, signer)
        out[number], prev = raw, digest_hash(raw)
    return out


class MemoryStore:
    """Just enough of a Store for ``bundle.export``."""

    def __init__(self, key: str, streams: dict[str, StreamData], digest_chains: dict[str, dict[int, bytes]]) -> None:
        self.key, self.streams, self.digest_chains = key, streams, digest_chains

    def read_session(self, session: str) -> dict[str, StreamData]:
        return self.streams if session == self.key else {}

    def read_digests(self) -> dict[str, dict[int, bytes]]:
        return self.digest_chains

    def list_sessions(self) -> list[str]:
        return [self.key]


def recorded(
    private: Ed25519PrivateKey, session: str = SESSION, seal: Callable[[Event], None] | None = None
) -> dict[str, Any]:
    """The session: writer w1 (three exchanges, a segment each), writer w2 (one exchange); both chains closed.
    ``seal``: each event's payload sealed before it is chained, as the recorder does."""
    signer = Signer(private)
    segments = [exchange(0, T0, session), exchange(1, T0 + 10, session), exchange(2, T0 + 20, session)]
    last = exchange(3, T0 + 5, session)
    for ev in (ev for events in [*segments, last] for ev in events):
        if seal is not None:
            seal(ev)
    w1 = stream("w1", segments, signer, T0 + 1, session)
    w2 = stream("w2", [last], signer, T0 + 6, session)
    chains = {
        "w1": digests("w1", [w1[1][:2], w1[1][2:]], signer, T0 - 100),
        "w2": digests("w2", [w2[1]], signer, T0 - 100),
    }
    key = safe_key(session)
    store = MemoryStore(key, {"w1": StreamData(*w1), "w2": StreamData(*w2)}, chains)
    return bundle.export(store, key, private.public_key())  # type: ignore[arg-type]


# --- breaking a bundle --------------------------------------------------------------------------------------------


def _get(doc: dict[str, Any], writer: str) -> dict[str, Any]:
    return next(s for s in doc["streams"] if s["writer"] == writer)


def _lines(st: dict[str, Any]) -> list[bytes]:
    return base64.b64decode(st["data"]).split(b"\n")[:-1]


def _set_lines(st: dict[str, Any], lines: list[bytes], terminated: bool = True) -> None:
    st["data"] = base64.b64encode(b"\n".join(lines) + (b"\n" if terminated and lines else b"")).decode()


def edited_event(doc: dict[str, Any]) -> None:
    """Line 8 of w1 (exchange 1's request): the tool argument changed, nothing else."""
    st = _get(doc, "w1")
    lines = _lines(st)
    lines[7] = lines[7].replace("café".encode(), b"cafe")
    _set_lines(st, lines)


def reordered_events(doc: dict[str, Any]) -> None:
    """Lines 3 and 4 of w1 swapped (the decision written after the response header)."""
    st = _get(doc, "w1")
    lines = _lines(st)
    lines[2], lines[3] = lines[3], lines[2]
    _set_lines(st, lines)


def truncated(doc: dict[str, Any]) -> None:
    """w1's last line removed (a clean cut at a newline)."""
    st = _get(doc, "w1")
    _set_lines(st, _lines(st)[:-1])


def torn_write(doc: dict[str, Any]) -> None:
    """w1 ends in the middle of its last line (no newline): a torn write."""
    st = _get(doc, "w1")
    data = base64.b64decode(st["data"])
    st["data"] = base64.b64encode(data[:-20]).decode()


def deleted_segment(doc: dict[str, Any]) -> None:
    """w1's segment 1 (its lines and its manifest) removed."""
    st = _get(doc, "w1")
    lines = _lines(st)
    _set_lines(st, lines[:6] + lines[12:])
    del st["manifests"][1]


def deleted_last_segment(doc: dict[str, Any]) -> None:
    """w1's final segment removed: what remains is a consistent, shorter stream; only the digests know better."""
    st = _get(doc, "w1")
    _set_lines(st, _lines(st)[:12])
    del st["manifests"][2]


def reordered_segments(doc: dict[str, Any]) -> None:
    """w1's segments 0 and 1 swapped, lines and manifests."""
    st = _get(doc, "w1")
    lines = _lines(st)
    _set_lines(st, lines[6:12] + lines[:6] + lines[12:])
    st["manifests"][0], st["manifests"][1] = st["manifests"][1], st["manifests"][0]


def deleted_stream(doc: dict[str, Any]) -> None:
    """w2's whole stream removed (the session looks complete without it)."""
    doc["streams"] = [s for s in doc["streams"] if s["writer"] != "w2"]


def edited_manifest(doc: dict[str, Any]) -> None:
    """w1's manifest 0 claims another sealing time (not re-signed)."""
    st = _get(doc, "w1")
    raw = base64.b64decode(st["manifests"][0])
    st["manifests"][0] = base64.b64encode(raw.replace(b'"created":1800000001.0', b'"created":1800000002.0')).decode()


def deleted_digest(doc: dict[str, Any]) -> None:
    """w1's first digest removed."""
    doc["digests"] = [d for d in doc["digests"] if not (d["writer"] == "w1" and d["number"] == 0)]


def wrong_key(doc: dict[str, Any]) -> None:
    """History rewritten and re-signed, consistently, with another key (embedded in the bundle as its key)."""
    forged = recorded(ATTACKER)
    doc.clear()
    doc.update(forged)


def unsigned(doc: dict[str, Any]) -> None:
    """Everything rebuilt without signatures (hashes alone can be recomputed by whoever edits the files)."""
    signer = Signer(None)
    w1 = stream("w1", [exchange(0, T0), exchange(1, T0 + 10), exchange(2, T0 + 20)], signer, T0 + 1)
    _get(doc, "w1")["manifests"] = [base64.b64encode(m).decode() for m in w1[1]]


def unicode_session(doc: dict[str, Any]) -> None:
    """Not broken: a session id that is no file name (stored under its hash) and holds non-ASCII, so manifests
    escape it (\\u00fc) while lines and digests keep it as UTF-8."""
    doc.clear()
    doc.update(recorded(PUBLISHED, "sess:\u00fcber/\u2603"))


def spliced_stream(doc: dict[str, Any]) -> None:
    """w2's stream replaced by w2's stream of another session, correctly signed (a splice across sessions)."""
    other = recorded(PUBLISHED, "s-vectors-2")
    for i, st in enumerate(doc["streams"]):
        if st["writer"] == "w2":
            doc["streams"][i] = _get(other, "w2")


SEALED_1, SEALED_2 = "s-vectors-sealed-1", "s-vectors-sealed-2"


def sealed_form_1(doc: dict[str, Any]) -> None:
    """Not broken: the session recorded with payloads sealed in form 1 (no "v": the plaintext holds every sealed
    field), as records written before form 2 are; chains and manifests cover the ciphertext."""
    doc.clear()
    doc.update(recorded(PUBLISHED, SEALED_1, sealing.Form1(prefix=1).seal))


def sealed_form_2(doc: dict[str, Any]) -> None:
    """Not broken: the session recorded with payloads sealed in form 2 ("v": 2; a raw body's parsed messages are
    not in the plaintext), as the processor writes them."""
    doc.clear()
    doc.update(recorded(PUBLISHED, SEALED_2, sealing.form_2(prefix=2).seal))


def sealed_edited_ciphertext(doc: dict[str, Any]) -> None:
    """Form 2, line 8 of w1 (exchange 1's sealed request): one base64 character of its ciphertext changed."""
    sealed_form_2(doc)
    st = _get(doc, "w1")
    lines = _lines(st)
    at = lines[7].index(b'"ct":"') + 10
    lines[7] = lines[7][:at] + (b"A" if lines[7][at : at + 1] != b"A" else b"B") + lines[7][at + 1 :]
    _set_lines(st, lines)


# name -> (how it breaks, the finding it exists for: a substring the reference verifier must report)
CASES: dict[str, tuple[Callable[[dict[str, Any]], None] | None, str]] = {
    "good": (None, ""),
    "edited-event": (edited_event, "segment 1: content differs from its signed manifest (edited)"),
    "reordered-events": (reordered_events, "sequence 3, expected 2 (line removed or reordered)"),
    "truncated": (truncated, "truncated: ends at event 16, its manifest says 17"),
    "torn-write": (torn_write, "last line is not terminated (truncated write)"),
    "deleted-segment": (deleted_segment, "manifest of segment 2 found here: a segment is missing or reordered"),
    "deleted-last-segment": (deleted_last_segment, "stream w1: segment 2 missing (deleted), listed by digest 1"),
    "reordered-segments": (reordered_segments, "manifest of segment 1 found here"),
    "deleted-stream": (deleted_stream, "stream w2 missing (deleted)"),
    "edited-manifest": (edited_manifest, "manifest signature does not match its content (manifest edited)"),
    "deleted-digest": (deleted_digest, "digest 0 of writer w1: missing (deleted)"),
    "wrong-key": (wrong_key, "manifest signed by another key"),
    "unsigned": (unsigned, "manifest unsigned"),
    "unicode-session": (unicode_session, ""),
    "spliced-stream": (spliced_stream, "manifest belongs to session 's-vectors-2' (spliced from another session)"),
    "sealed-form-1": (sealed_form_1, ""),
    "sealed-form-2": (sealed_form_2, ""),
    "sealed-edited-ciphertext": (sealed_edited_ciphertext, "segment 1: content differs from its signed manifest"),
}
PLAIN = {"sealed-form-1": SEALED_1, "sealed-form-2": SEALED_2}  # sealed case -> its session id


def events(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each stream's events as stored (without ``seq`` and ``prev``), by writer."""
    out = {}
    for st in doc["streams"]:
        out[st["writer"]] = [{k: v for k, v in json.loads(ln).items() if k not in ("seq", "prev")} for ln in _lines(st)]
    return out


def opened(doc: dict[str, Any], session: str) -> dict[str, list[dict[str, Any]]]:
    """The sealed session's events opened with the data key; generation fails unless they are the plain events."""
    got = events(doc)
    for evs in got.values():
        open_events(evs, sealing.keyring())
    if got != events(recorded(PUBLISHED, session)):
        raise SystemExit(f"session {session}: the sealed events do not open to the events as recorded in the clear")
    return got


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, indent=1, ensure_ascii=False).encode() + b"\n"


def steps(doc: dict[str, Any]) -> dict[str, Any]:
    """Every intermediate value of the good case, for an implementer to check step by step."""
    out: dict[str, Any] = {"streams": [], "digests": []}
    for st in doc["streams"]:
        lines = _lines(st)
        manifests = [Manifest.from_bytes(base64.b64decode(m)) for m in st["manifests"]]
        out["streams"].append({
            "writer": st["writer"],
            "lines": [{"text": ln.decode(), "sha256": hashlib.sha256(ln).hexdigest()} for ln in lines],
            "manifests": [
                {"signed_part": m.signed_part().decode(), "sig": m.sig, "key_id": m.key_id, "digest": m.digest()}
                for m in manifests
            ],
        })  # fmt: skip
    for d in doc["digests"]:
        raw = base64.b64decode(d["data"])
        parsed = Digest.from_bytes(raw)
        out["digests"].append({
            "writer": d["writer"], "number": d["number"], "signed_part": parsed.signed_part().decode(),
            "sig": parsed.sig, "hash_of_stored_bytes": digest_hash(raw),
        })  # fmt: skip
    return out


def generate(out: Path) -> None:
    good = recorded(PUBLISHED)
    out.mkdir(parents=True, exist_ok=True)
    pem = PUBLISHED.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (out / "published.pub").write_bytes(pem)
    (out / "payload-data-key.hex").write_text(sealing.DATA_KEY.hex() + "\n")
    for name, (breaker, want) in CASES.items():
        doc = copy.deepcopy(good)
        if breaker is not None:
            breaker(doc)
        verdict = bundle.verify(doc, PUBLISHED.public_key())
        every = verdict.findings + verdict.open
        if want and not any(want in f for f in every):
            raise SystemExit(f"{name}: the verifier did not report {want!r}; it said {every}")
        if not want and every:
            raise SystemExit(f"{name}: a good case has findings: {every}")
        folder = out / "cases" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "bundle.json").write_bytes(dumps(doc))
        why = " ".join((breaker.__doc__ or "").split()) if breaker else "The session as recorded: every check passes."
        expected = {"case": name, "what": why, "want": want, "ok": verdict.ok(), **verdict.to_json()}
        (folder / "expected.json").write_bytes(dumps(expected))
        if name in PLAIN:
            (folder / "opened.json").write_bytes(dumps({"key": sealing.KEY_REF, "events": opened(doc, PLAIN[name])}))
    (out / "cases" / "good" / "steps.json").write_bytes(dumps(steps(good)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: beside this script)")
    generate(parser.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
