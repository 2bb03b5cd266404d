"""Small SIEM collectors for the export tests, each on a free loopback port in a thread.

``HecReceiver``: Splunk's HTTP Event Collector as far as the gateway uses it: POST /services/collector/event with
``Authorization: Splunk <token>``; a wrong token is 401, a body that is not a sequence of JSON envelopes with an
``event`` object is 400 (Splunk's "invalid data format"). ``SyslogReceiver``: RFC 5424 over TCP with octet-counted
framing (RFC 6587), optionally TLS (RFC 5425), parsing each message's header, structured data and MSG.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from extproc.launcher import wait_until

_RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) "
    rb"(?P<sd>-|(?:\[[^\]]*\])+) (?P<msg>.*)$",
    re.S,
)


class HecReceiver:
    """An HEC endpoint that checks the token and the JSON, and keeps every event it accepted."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.events: list[dict[str, Any]] = []
        self.envelopes: list[dict[str, Any]] = []
        self.refused: list[int] = []  # statuses answered other than 200
        self.down = False  # answer 503 (the indexer is busy / down) to every request
        self.invalid = False  # answer 400 (invalid data format) to every request
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HecReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.events) >= n, timeout, f"{n} HEC events (got {len(self.events)})")
        return list(self.events)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if receiver.down:
                    return self._answer(503, {"text": "Server is busy", "code": 9})
                if self.path != "/services/collector/event":
                    return self._answer(404, {"text": "not found", "code": 404})
                if self.headers.get("authorization") != f"Splunk {receiver.token}":
                    return self._answer(401, {"text": "Invalid authorization", "code": 3})
                envelopes = _envelopes(body)
                if envelopes is None or receiver.invalid:
                    return self._answer(400, {"text": "Invalid data format", "code": 6})
                with receiver._lock:
                    receiver.envelopes.extend(envelopes)
                    receiver.events.extend(e["event"] for e in envelopes)
                return self._answer(200, {"text": "Success", "code": 0})

            def _answer(self, status: int, doc: dict[str, Any]) -> None:
                if status != 200:
                    receiver.refused.append(status)
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _envelopes(body: bytes) -> list[dict[str, Any]] | None:
    """HEC's batch format: JSON objects one after another, each with an ``event``; None when it is not that."""
    decoder = json.JSONDecoder()
    text, i, out = body.decode("utf-8", "replace"), 0, []
    while i < len(text):
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            break
        try:
            doc, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("event"), dict):
            return None
        out.append(doc)
    return out or None


class SyslogReceiver:
    """A TCP (or TLS) syslog collector: octet-counted RFC 5424 messages, parsed."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.messages: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> SyslogReceiver:
        self._accept.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._accept.join(5)
        for t in self._threads:
            t.join(5)
        self._sock.close()

    def wait_for(self, n: int, timeout: float = 10.0, what: Callable[[], str] | None = None) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.messages) >= n, timeout, f"{n} syslog messages (got {len(self.messages)})")
        return list(self.messages)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            t = threading.Thread(target=self._read, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _read(self, raw: socket.socket) -> None:
        conn = raw
        try:
            if self.tls is not None:
                raw.settimeout(5)
                conn = self.tls.wrap_socket(raw, server_side=True)
            conn.settimeout(0.2)
            buf = b""
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except (TimeoutError, ssl.SSLWantReadError):
                    continue
                if not chunk:
                    break
                buf += chunk
                while True:
                    head, sep, rest = buf.partition(b" ")
                    if not sep or not head.isdigit() or len(rest) < int(head):
                        break
                    msg, buf = rest[: int(head)], rest[int(head) :]
                    self._parse(msg)
        except (OSError, ssl.SSLError) as e:
            self.errors.append(str(e))
        finally:
            conn.close()

    def _parse(self, msg: bytes) -> None:
        m = _RFC5424.match(msg)
        if m is None:
            self.errors.append(f"not RFC 5424: {msg[:80]!r}")
            return
        self.messages.append(
            {
                "pri": int(m["pri"]),
                "timestamp": m["ts"].decode(),
                "host": m["host"].decode(),
                "app": m["app"].decode(),
                "msgid": m["msgid"].decode(),
                "sd": m["sd"].decode(),
                "event": json.loads(m["msg"]),
            }
        )
