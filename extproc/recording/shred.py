"""Erasure that keeps proofs (crypto-shredding): ``recording.encrypt_payloads: per_subject``.

Before an event is chained, its payload fields are encrypted (AES-256-GCM) with a data key of the subject the
exchange ran as (``issuer#subject``); the chain, manifests and digests are computed over the ciphertext. Data keys
are wrapped by a key-encryption key and kept in a key store beside the recordings (``key_stores.py``). Erasing a
subject deletes its wrapped data keys and stores a signed erasure record: its payloads can no longer be read
anywhere, and every chain, manifest and digest still verifies because none of them ever covered the plaintext.

What stays readable is listed field by field in docs/payload-protection.md. Each JSON-RPC message keeps its outline
(jsonrpc, id, method, the tool or prompt name, an error's code, a result's isError: capture level ``metadata``);
the whole message list, the raw body and the header values are sealed into ``sealed``. Form 2 (``"v": 2``) leaves
out what the reader rebuilds: messages beside their raw body (re-parsed), a path equal to ``:path``; form 1 is read.

Keys are looked up once per subject and process and cached (unwrapped); a subject's first exchange in a process
pays one key-store read, or one write when the subject is new (and one KMS call with KMS).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from extproc.errors import StoreError
from extproc.mcp.jsonrpc import loads
from extproc.policy.capture import Capture
from extproc.recording.events import (
    Event,
    ExchangeEnd,
    ExchangeStart,
    GuardrailVerdict,
    McpRequest,
    McpResponse,
    ResponseChunk,
    ResponseStart,
    body_bytes,
)
from extproc.recording.key_stores import FileKek, FileKeyStore, Kek, KeyStore, KmsKek, S3KeyStore
from extproc.recording.manifest import Signer
from extproc.tasks import cancel

if TYPE_CHECKING:
    from extproc.recording.config import Recording

log = logging.getLogger(__name__)

ALGORITHM = "aes-256-gcm"
FORM = 2  # the sealed form written (``v``); a seal without ``v`` is form 1
_OUTLINE = Capture("metadata")
_SEALED_TYPES = frozenset({McpRequest, McpResponse, ResponseChunk, ExchangeStart, ResponseStart, GuardrailVerdict})


def subject_of(principal: dict[str, Any] | None) -> str | None:
    """``issuer#subject`` of a recorded principal; None for an anonymous exchange (nobody to erase)."""
    if not principal or not principal.get("subject"):
        return None
    return f"{principal.get('issuer', '')}#{principal['subject']}"


def subject_id(subject: str) -> str:
    """The subject as a key-store name: a hash, so the store's listing does not name people."""
    return hashlib.sha256(subject.encode()).hexdigest()[:40]


def _aad(ev: dict[str, Any], kind: str) -> bytes:
    """Binds a ciphertext to its place (as ``PayloadSealer.seal`` writes it): moved to another event, it fails."""
    return f"{kind}\n{ev.get('session', '')}\n{ev.get('exchange', '')}\n{ev.get('index', 0)}".encode()


# --- the keyring: cached data keys ----------------------------------------------------------------------------


@dataclass
class Keyring:
    """Data keys by subject: created on first use, cached unwrapped; erased on request."""

    store: KeyStore
    kek: Kek
    _cache: dict[str, tuple[str, AESGCM]] = field(default_factory=dict)  # subject -> (sid/kid, cipher) for writing
    _read: dict[tuple[str, str], AESGCM | None] = field(default_factory=dict)  # (sid, kid) -> cipher, None: gone
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def for_writing(self, subject: str) -> tuple[str, AESGCM]:
        """``(sid/kid, cipher)`` of the subject's data key; one key-store round trip per subject and process."""
        found = self._cache.get(subject)
        if found is not None:
            return found
        with self._lock:
            if (found := self._cache.get(subject)) is None:
                found = self._cache[subject] = self._load_or_create(subject_id(subject))
        return found

    def _load_or_create(self, sid: str) -> tuple[str, AESGCM]:
        for kid, record in self.store.keys(sid).items():
            key = self._unwrap(sid, record)
            if key is not None:
                return f"{sid}/{kid}", AESGCM(key)
        kid, key = secrets.token_hex(8), AESGCM.generate_key(bit_length=256)
        doc = {"kid": kid, "kek": self.kek.name, "wrapped": base64.b64encode(self.kek.wrap(key, sid)).decode()}
        try:
            self.store.create(sid, kid, json.dumps({**doc, "created": time.time()}).encode())
        except Exception as e:
            raise StoreError(f"cannot store a data key for subject {sid}") from e
        return f"{sid}/{kid}", AESGCM(key)

    def _unwrap(self, sid: str, record: bytes) -> bytes | None:
        doc = json.loads(record)
        try:
            return self.kek.unwrap(base64.b64decode(doc["wrapped"]), sid)
        except Exception:
            log.warning("data key %s/%s does not unwrap with KEK %s", sid, doc.get("kid"), self.kek.name)
            return None

    def for_reading(self, key_ref: str, seen: dict[str, dict[str, bytes]] | None = None) -> AESGCM | None:
        """The cipher of ``sid/kid``, or None when it no longer exists (erased) or does not unwrap. The key store
        is asked on every reading (``seen``: its answers within one), so a long-running reader (the audit service)
        stops opening a subject's payloads once it is erased; unwrapping (a KMS call) is cached."""
        sid, _, kid = key_ref.partition("/")
        listed = seen.get(sid) if seen is not None else None
        if listed is None:
            listed = self.store.keys(sid)
            if seen is not None:
                seen[sid] = listed
        record = listed.get(kid)
        if record is None:
            self._read.pop((sid, kid), None)
            return None
        if (sid, kid) not in self._read:
            key = self._unwrap(sid, record)
            self._read[(sid, kid)] = AESGCM(key) if key is not None else None
        return self._read[(sid, kid)]

    def revalidate(self) -> int:
        """Forget the writing keys of subjects erased since they were loaded (a background round, never on the
        data path): their next exchange gets a new key. Returns how many were forgotten."""
        forgotten = 0
        for subject, (ref, _) in list(self._cache.items()):
            sid, _, kid = ref.partition("/")
            if kid not in self.store.keys(sid):
                with self._lock:
                    if self._cache.get(subject, (None,))[0] == ref:
                        self._cache.pop(subject)
                        forgotten += 1
        return forgotten

    def erase(self, subject: str) -> tuple[str, list[str]]:
        """Destroy the subject's data keys (every copy the store holds); its id and the key ids destroyed."""
        sid = subject_id(subject)
        with self._lock:
            self._cache.pop(subject, None)
            for k in [k for k in self._read if k[0] == sid]:
                self._read.pop(k)
            return sid, self.store.destroy(sid)

    def erasure(self, sid: str) -> dict[str, Any] | None:
        record = self.store.erasure(sid)
        doc = json.loads(record) if record is not None else None
        return doc if isinstance(doc, dict) else None


def build_keyring(rec: Recording) -> Keyring | None:
    """The keyring of ``recording:`` (None unless ``encrypt_payloads: per_subject``)."""
    keys = rec.payload_keys
    if rec.encrypt_payloads != "per_subject" or keys is None:
        return None
    kek: Kek = (
        FileKek(keys.kek_file)
        if keys.kek_file is not None
        else KmsKek(str(keys.kms_key_id), keys.kms_region, keys.kms_endpoint_url)
    )
    store: KeyStore
    if rec.store == "s3" and rec.s3 is not None and keys.directory is None:
        import boto3

        client = boto3.client("s3", region_name=rec.s3.region, endpoint_url=rec.s3.endpoint_url)
        store = S3KeyStore(client, rec.s3.bucket, rec.s3.prefix.rstrip("/") + "-payload-keys")
    else:
        store = FileKeyStore(keys.directory or rec.directory / ".payload-keys")
    return Keyring(store, kek)


class KeyWatch:
    """Every ``interval`` s, in a thread: ``Keyring.revalidate`` (a processor stops writing with an erased key)."""

    def __init__(self, keyring: Keyring, interval: float = 30.0) -> None:
        self.keyring, self.interval = keyring, interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="payload-keys")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                if forgotten := await asyncio.to_thread(self.keyring.revalidate):
                    log.info("payload keys: %d erased subject(s) get a new key from now on", forgotten)
            except Exception:  # the key store is unreachable: keep the keys, try again next round
                log.exception("payload keys: revalidation failed")


# --- sealing events (writing) and opening them (reading) --------------------------------------------------------


class PayloadSealer:
    """Encrypts each event's payload fields with its subject's data key, before chaining. On the request path, so
    the least Python per event: one dispatch on its class, one AES-GCM call over one serialization of the sealed
    fields, one base64 pass, the keyring's cached cipher, a counter as nonce (``_next_nonce``)."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._subjects: dict[str, str] = {}  # exchange -> subject (from its exchange.start)
        self._nonce = _nonce_prefix()
        self._head: dict[str, str] = {}  # key ref -> the start of its seal as JSON text (the ref escaped once)

    def _next_nonce(self) -> bytes:
        """A 96-bit GCM nonce never repeated in the process: a random 64-bit prefix (redrawn before the counter
        wraps; processors sharing a key differ in it), then a 32-bit counter. No system call per event."""
        n = self._nonce
        self._nonce = n + 1 if (n + 1) & 0xFFFFFFFF else _nonce_prefix()
        return n.to_bytes(12, "big")

    def seal(self, ev: Event) -> None:
        """Seal ``ev``'s payload fields in place (O(event): one AES-GCM pass, no I/O once the key is cached)."""
        kind = type(ev)
        if kind is ExchangeStart:
            subject = subject_of(ev.principal)  # type: ignore[attr-defined]
            if subject is None:
                return
            self._subjects[ev.exchange] = subject
        elif kind not in _SEALED_TYPES:
            if isinstance(ev, ExchangeEnd):  # also ExchangeEndNaming (extproc/upstream/base.py)
                self._subjects.pop(ev.exchange, None)
            return
        elif (subject := self._subjects.get(ev.exchange)) is None:
            return
        ref, cipher = self.keyring.for_writing(subject)
        if kind is McpRequest or kind is McpResponse:
            r = cast(McpRequest, ev)
            # form 2: messages beside their raw body are its parse (redacted, shaped, withheld, SSE: no raw body)
            kept = r.error is None and ("raw" in r.body or "raw_b64" in r.body)
            fields: dict[str, Any] = {"body": r.body} if kept else {"messages": r.messages, "body": r.body}
            r.messages = [_outline(m) for m in r.messages]
        elif kind is ResponseChunk:
            fields = {"body": cast(ResponseChunk, ev).body}
        elif kind is ExchangeStart:
            x = cast(ExchangeStart, ev)
            same = x.headers.get(":path", "") == x.path  # form 2: the path only when it is not the :path header
            fields = {"headers": x.headers} if same else {"headers": x.headers, "path": x.path}
            x.path = x.path.partition("?")[0]
        elif kind is GuardrailVerdict:
            g = cast(GuardrailVerdict, ev)
            if g.arguments is None:
                return
            fields = {"arguments": g.arguments}
        else:
            fields = {"headers": cast(ResponseStart, ev).headers}
        try:
            plain = orjson.dumps(fields)
        except TypeError:  # an integer beyond 64 bits or a lone surrogate (client-controlled JSON): the exact fallback
            plain = json.dumps(fields, separators=(",", ":")).encode()
        nonce = self._next_nonce()
        aad = f"{kind.type}\n{ev.session}\n{ev.exchange}\n{ev.index}".encode()
        # the 12-byte nonce, then the ciphertext and its tag (base64 needs no JSON escaping)
        ct = binascii.b2a_base64(nonce + cipher.encrypt(nonce, plain, aad), newline=False).decode()
        if kind is ExchangeStart or kind is ResponseStart:  # headers are str -> str: the seal as JSON text
            if (head := self._head.get(ref)) is None:
                head = self._head[ref] = f'{{"v":{FORM},"alg":"{ALGORITHM}","key":{orjson.dumps(ref).decode()},"ct":"'
            ev.headers = {"sealed": head + ct + '"}'}  # type: ignore[attr-defined]
        elif kind is GuardrailVerdict:
            ev.arguments = {"sealed": {"v": FORM, "alg": ALGORITHM, "key": ref, "ct": ct}}  # type: ignore[attr-defined]
        else:
            ev.body = {"sealed": {"v": FORM, "alg": ALGORITHM, "key": ref, "ct": ct}}  # type: ignore[attr-defined]


def _outline(msg: Any) -> Any:
    """``Capture("metadata").message(msg)`` (policy/capture.py: what stays readable of a sealed message), written
    out for the request path (a third of its cost); tests hold the two equal."""
    if type(msg) is not dict:
        return _OUTLINE.message(msg)
    out: dict[str, Any] = {}
    for k in ("jsonrpc", "id", "method"):
        if k in msg:
            out[k] = msg[k]
    method = msg.get("method")
    if method == "tools/call" or method == "prompts/get":  # the name of what is called stays readable
        params = msg.get("params")
        if isinstance(params, dict) and isinstance(name := params.get("name"), str):
            out["params"] = {"name": name}
    if "result" in msg:
        result = msg["result"]
        flag = result.get("isError") if isinstance(result, dict) else None
        out["result"] = {"isError": flag} if type(flag) is bool else {}
    if isinstance(error := msg.get("error"), dict):
        out["error"] = {"code": error.get("code")}
    return out


def _nonce_prefix() -> int:
    return int.from_bytes(secrets.token_bytes(8), "big") << 32


def _sealed(ev: dict[str, Any]) -> dict[str, Any] | None:
    for where in ("body", "arguments"):
        if isinstance(part := ev.get(where), dict) and isinstance(found := part.get("sealed"), dict):
            return dict(found)
    if isinstance(headers := ev.get("headers"), dict) and isinstance(headers.get("sealed"), str):
        try:
            doc = json.loads(headers["sealed"])
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None
    return None


def open_events(events: Iterable[dict[str, Any]], keyring: Keyring | None) -> None:
    """Restore sealed payload fields in place (after the chains were verified over the ciphertext). A payload whose
    key was erased gets ``erased``: when, by whom and why, from the signed erasure record; one whose key is missing
    without a record, or that does not decrypt, gets ``unreadable`` and why. Reads sealed forms 1 and 2."""
    seen: dict[str, dict[str, bytes]] = {}
    for ev in events:
        sealed = _sealed(ev)
        if sealed is None:
            continue
        form = sealed.get("v", 1)
        if form not in (1, 2):  # a later form: never guess at its plaintext
            ev["unreadable"] = f"sealed form {form!r} is not known to this reader"
            continue
        ref = str(sealed.get("key", ""))
        cipher = keyring.for_reading(ref, seen) if keyring is not None else None
        if cipher is None:
            record = keyring.erasure(ref.partition("/")[0]) if keyring is not None else None
            if record is not None:
                ev["erased"] = {k: record.get(k) for k in ("time", "by", "reason")}
            else:
                ev["unreadable"] = "no key-store access" if keyring is None else f"data key {ref} not found"
            continue
        try:
            blob = base64.b64decode(sealed["ct"])
            plain = cipher.decrypt(blob[:12], blob[12:], _aad(ev, str(ev.get("type"))))
        except (InvalidTag, KeyError, ValueError):
            ev["unreadable"] = f"payload does not decrypt with data key {ref}"
            continue
        ev.update(_restored(ev, json.loads(plain)) if form == 2 else json.loads(plain))


def _restored(ev: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """Form 2's plaintext completed: a body's messages are its raw bytes' JSON value (a batch's elements; left out
    only where they parsed without error), exchange.start's path its ``:path`` header. Defined by the bytes alone."""
    kind, body, headers = ev.get("type"), fields.get("body"), fields.get("headers")
    if kind in ("mcp.request", "mcp.response") and "messages" not in fields and isinstance(body, dict):
        try:
            doc = loads(body_bytes(body))
        except (ValueError, RecursionError):  # not what a form-2 writer leaves out: show no messages, never guess
            doc = []
        fields["messages"] = doc if isinstance(doc, list) else [doc]
    elif kind == "exchange.start" and "path" not in fields and isinstance(headers, dict):
        fields["path"] = headers.get(":path", "")
    return fields


# --- erasure --------------------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class PayloadErased(Event):
    """A subject's data keys were destroyed: its sealed payloads are unreadable from now on, every proof intact."""

    type: ClassVar[str] = "payload.erased"
    subject: str = ""  # issuer#subject
    subject_id: str = ""  # the key-store name of the subject (a hash)
    keys: list[str] = field(default_factory=list)  # the data key ids destroyed
    by: str = ""
    reason: str = ""


def erasure_record(ev: PayloadErased, signer: Signer) -> bytes:
    """The signed erasure record kept in the key store (readers show it where the payloads were)."""
    doc = {k: v for k, v in ev.to_dict().items() if k not in ("session", "exchange", "index")}
    body = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    sig = signer.sign_bytes(body) if signer.public is not None else ""
    return json.dumps({**doc, "key_id": signer.key_id, "sig": sig}, sort_keys=True).encode()
