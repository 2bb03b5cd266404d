"""One HTTP exchange = one ext_proc stream (``Exchange``, phases.py), and the jobs it hands off whole:

phases.py   the exchange: a method per phase, owns the state (admission, decisions, recording, the response)
decide.py   the authorization step: each request decided (policy, outside authorities), recorded, refused
surface.py  tool-surface integrity for the exchange: calls checked against what was shown, lists reviewed, pins
upstream.py what the MCP server gets instead of the caller's token: its own credential, the gateway's headers
"""

from extproc.exchange.phases import IDENTITY_ENCODINGS, RECORDING_HEADER, Exchange
from extproc.exchange.upstream import UPSTREAM_REMOVE

__all__ = ["IDENTITY_ENCODINGS", "RECORDING_HEADER", "UPSTREAM_REMOVE", "Exchange"]
