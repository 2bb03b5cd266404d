from __future__ import annotations

import socket
import threading

from extproc.launcher import http_ok


def test_a_readiness_probe_that_meets_a_peer_not_speaking_http1_says_not_ready() -> None:
    """A port briefly held by another process (here: HTTP/2 frame bytes, as a gRPC server answers) is "not ready
    yet", not a crash of whoever waits for Envoy's admin interface."""
    with socket.create_server(("127.0.0.1", 0)) as server:

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x04\x00\x00\xff\xff\n")

        t = threading.Thread(target=answer)
        t.start()
        assert http_ok(f"http://127.0.0.1:{server.getsockname()[1]}/ready") is False
        t.join(5)
