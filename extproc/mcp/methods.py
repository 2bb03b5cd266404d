"""The MCP method vocabulary per protocol revision: the one table parsing, policy and list filtering read.

Sources: the specification's schema for each revision (2025-06-18, 2025-11-25, 2026-07-28) and the tasks extension.
A test holds this table against the official SDK's own per-revision surface maps.
"""

from __future__ import annotations

from dataclasses import dataclass

# Revisions reached through the initialize handshake (stateful: Mcp-Session-Id, GET stream, DELETE).
HANDSHAKE_REVISIONS: tuple[str, ...] = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
# Stateless revisions: every request carries its revision and capabilities in params._meta.
STATELESS_REVISIONS: tuple[str, ...] = ("2026-07-28",)

_COMMON_2025 = (
    "ping",
    "tools/list", "tools/call",
    "resources/list", "resources/templates/list", "resources/read",
    "prompts/list", "prompts/get",
    "completion/complete",
)  # fmt: skip

# Client -> server requests and notifications, per revision.
CLIENT_METHODS: dict[str, frozenset[str]] = {
    "2025-06-18": frozenset(
        (*_COMMON_2025, "initialize", "logging/setLevel", "resources/subscribe", "resources/unsubscribe")
    ),
    "2025-11-25": frozenset(
        (*_COMMON_2025, "initialize", "logging/setLevel", "resources/subscribe", "resources/unsubscribe")
    ),
    # No handshake, logging level or subscribe pair; ping is gone too. Discovery and one listen stream are new.
    "2026-07-28": (frozenset(_COMMON_2025) - {"ping"}) | {"server/discover", "subscriptions/listen"},
}
CLIENT_NOTIFICATIONS: dict[str, frozenset[str]] = {
    "2025-06-18": frozenset(
        {"notifications/initialized", "notifications/cancelled", "notifications/progress",
         "notifications/roots/list_changed"}
    ),
    "2025-11-25": frozenset(
        {"notifications/initialized", "notifications/cancelled", "notifications/progress",
         "notifications/roots/list_changed"}
    ),
    "2026-07-28": frozenset({"notifications/cancelled"}),
}  # fmt: skip
# Server -> client requests (2026-07-28 has none: input is asked for with multi-round-trip results instead).
SERVER_METHODS: dict[str, frozenset[str]] = {
    "2025-06-18": frozenset({"ping", "roots/list", "sampling/createMessage", "elicitation/create"}),
    "2025-11-25": frozenset({"ping", "roots/list", "sampling/createMessage", "elicitation/create"}),
    "2026-07-28": frozenset(),
}
SERVER_NOTIFICATIONS: dict[str, frozenset[str]] = {
    "2025-06-18": frozenset(
        {"notifications/cancelled", "notifications/message", "notifications/progress",
         "notifications/prompts/list_changed", "notifications/resources/list_changed",
         "notifications/resources/updated", "notifications/tools/list_changed"}
    ),
    "2025-11-25": frozenset(
        {"notifications/cancelled", "notifications/message", "notifications/progress",
         "notifications/prompts/list_changed", "notifications/resources/list_changed",
         "notifications/resources/updated", "notifications/tools/list_changed",
         "notifications/elicitation/complete"}
    ),
    "2026-07-28": frozenset(
        {"notifications/cancelled", "notifications/message", "notifications/progress",
         "notifications/prompts/list_changed", "notifications/resources/list_changed",
         "notifications/resources/updated", "notifications/tools/list_changed",
         "notifications/subscriptions/acknowledged"}
    ),
}  # fmt: skip
# The tasks extension (2025-11-25 experimental, an extension at 2026-07-28): both directions.
TASK_METHODS = frozenset({"tasks/get", "tasks/result", "tasks/list", "tasks/cancel", "notifications/tasks/status"})

# HTTP requests without a JSON-RPC body, decided like methods (2025 revisions): GET opens the server-to-client
# stream of a session, DELETE ends a session. POST bodies are decided by their JSON-RPC methods.
HTTP_METHODS = {"GET": "http/get", "DELETE": "http/delete"}

# Every method a policy rule may name: a rule naming anything else is a typo and fails the load.
KNOWN_METHODS: tuple[str, ...] = tuple(
    sorted(
        set().union(*CLIENT_METHODS.values(), *CLIENT_NOTIFICATIONS.values(), *SERVER_METHODS.values())
        | set().union(*SERVER_NOTIFICATIONS.values())
        | TASK_METHODS
        | set(HTTP_METHODS.values())
    )
)


def removed_in(revision: str) -> frozenset[str]:
    """Client methods an earlier revision had and ``revision`` removed (at 2026-07-28: initialize, ping,
    logging/setLevel, resources/subscribe and unsubscribe, and their notifications)."""
    now = CLIENT_METHODS.get(revision, frozenset()) | CLIENT_NOTIFICATIONS.get(revision, frozenset())
    before = set().union(*(CLIENT_METHODS[r] | CLIENT_NOTIFICATIONS[r] for r in CLIENT_METHODS if r < revision))
    return frozenset(before - now) if revision in CLIENT_METHODS else frozenset()


# Methods that name their target in params, mirrored in the Mcp-Name header at 2026-07-28.
NAME_BEARING: dict[str, str] = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}

# Results that may carry ttlMs / cacheScope caching hints (2026-07-28).
CACHEABLE = frozenset(
    {"tools/list", "resources/list", "resources/templates/list", "resources/read", "prompts/list", "server/discover"}
)
# Requests whose result may be an input_required interim result (multi-round-trip requests).
INPUT_REQUIRED = frozenset({"tools/call", "prompts/get", "resources/read"})


@dataclass(frozen=True, slots=True)
class Listing:
    """A result that enumerates things a caller may or may not use: where the items are and how each is used."""

    key: str  # the result's list field
    item: str  # the field naming one item
    use: str  # the method that uses an item (what the policy decides per item)


LISTINGS: dict[str, Listing] = {
    "tools/list": Listing("tools", "name", "tools/call"),
    "resources/list": Listing("resources", "uri", "resources/read"),
    "prompts/list": Listing("prompts", "name", "prompts/get"),
}


def is_stateless(revision: str | None) -> bool:
    """True for a revision without handshake or sessions (2026-07-28 and later)."""
    return revision is not None and revision >= STATELESS_REVISIONS[0]
