"""One HTTP exchange = one ext_proc stream (``Exchange``, phases.py), and the jobs it hands off whole:

phases.py   the exchange: a method per phase (admission, decisions, recording, the response)
state.py    what the phases share: the exchange's state, its end on the record, commit points, refusals
request.py  the request side as plain functions: its records (start, body), the client, the stateless run
response.py the response side as plain functions: the client's headers, framing, buffered bodies rewritten
decide.py   the authorization step: each request decided (policy, outside authorities), recorded, refused
surface.py  tool-surface integrity for the exchange: calls checked against what was shown, lists reviewed, pins
upstream.py what the MCP server gets instead of the caller's token: its own credential, the gateway's headers
"""

from extproc.exchange.phases import IDENTITY_ENCODINGS, Exchange
from extproc.exchange.response import RECORDING_HEADER
from extproc.exchange.upstream import UPSTREAM_REMOVE

__all__ = ["IDENTITY_ENCODINGS", "RECORDING_HEADER", "UPSTREAM_REMOVE", "Exchange"]
