"""Small builders shared by the modules that render Envoy config (bootstrap, tls, stats, access_log).

A leaf module: it imports nothing from ``extproc.envoy``, so every renderer can use it without an import cycle.
"""

from __future__ import annotations

import ipaddress
from typing import Any

# The header the per-request backends cluster reads its destination from: only the processor (routing.py) ever
# sets it, and the listener strips a client's copy before the processor runs.
UPSTREAM_HEADER = "x-mcp-extproc-upstream"
T = "type.googleapis.com/envoy."  # prefix of every ``@type`` in the bootstrap: T + "extensions...v3.Name"


def is_ip(host: str) -> bool:
    """True when ``host`` is an IP address literal (Envoy connects to it as is; a name needs DNS)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def socket_address(host: str, port: int) -> dict[str, Any]:
    """An Envoy ``Address`` for a host and port."""
    return {"socket_address": {"address": host, "port_value": port}}


def seconds(value: float) -> str:
    """A protobuf ``Duration`` in its JSON spelling, to the millisecond."""
    return f"{value:.3f}s"
