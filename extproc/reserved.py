"""Every name the gateway reserves for itself, in one leaf module (it imports nothing of the project).

Names come from three parties: operators (server, backend and rule names in gateway.yaml and policies), MCP
servers (their session ids) and the gateway itself (recording units, internal sessions, built-in rules). Where
the gateway names something, nobody else may choose that name; the checks live here so one edit covers them all.
"""

from __future__ import annotations

AUDIT_SERVER = "audit"  # the auditors' own trail: a viewer rule naming it grants reading who looked at what
RESERVED_SERVERS = frozenset({AUDIT_SERVER})

DEFAULT_DENY = "default-deny"
BUILTIN_RULE_PREFIX = "builtin-"

# Recording units the gateway names itself.
SYNTHETIC_PREFIX = "x-"  # an exchange alone
RUN_PREFIXES = ("r-", "t-")  # a stateless run
TRAIL_PREFIX = "audit-"  # the auditors' trail, one unit per UTC day
SERVER_UNIT_PREFIX = "u_"  # a server's session: u_<server>_<backend>_<session id>
HASHED_KEY_PREFIX = "h-"  # a unit or writer id too odd for a file name, stored under its hash
INTERNAL_PREFIX = "mcp-extproc-"  # the gateway's own sessions
RETENTION_SESSION = INTERNAL_PREFIX + "retention"  # what retention deleted, chained

RESERVED_UNIT_PREFIXES = (
    SYNTHETIC_PREFIX,
    *RUN_PREFIXES,
    TRAIL_PREFIX,
    SERVER_UNIT_PREFIX,
    HASHED_KEY_PREFIX,
    INTERNAL_PREFIX,
)


def is_reserved_unit(session: str) -> bool:
    """True for a session id only the gateway may give a recording unit (an upstream naming one is refused)."""
    return session.startswith(RESERVED_UNIT_PREFIXES)


def is_reserved_rule_name(name: str) -> bool:
    """True for a rule name the gateway uses for its own decisions and redactions."""
    return name == DEFAULT_DENY or name.startswith(BUILTIN_RULE_PREFIX)


def is_reserved_server(name: str) -> bool:
    """True for a server name that names something of the gateway's own in viewer rules."""
    return name in RESERVED_SERVERS


def server_unit(server: str, backend: str, session: str) -> str:
    """The recording unit of ``session`` as named by ``server``'s ``backend``: no upstream can name another's.

    Server and backend names are DNS labels ([a-z0-9-]), so the first two ``_`` after the prefix end them and the
    rest, whatever the upstream chose, stays inside this server's and backend's units.
    """
    return f"{SERVER_UNIT_PREFIX}{server}_{backend}_{session}"


def parse_server_unit(unit: str) -> tuple[str, str, str] | None:
    """(server, backend, session) of a unit made by ``server_unit``; None for other (and pre-1.x) units."""
    if not unit.startswith(SERVER_UNIT_PREFIX):
        return None
    parts = unit[len(SERVER_UNIT_PREFIX) :].split("_", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None
