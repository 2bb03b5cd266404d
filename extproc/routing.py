"""Which configured MCP server a request is for. Envoy routes on the same prefixes, rendered from the same config."""

from __future__ import annotations

from extproc.settings import Server, Settings


class Router:
    """Maps ``/<name>/mcp[/...][?...]`` to the server called ``name``; anything else is no server."""

    def __init__(self, settings: Settings) -> None:
        self._by_name = {s.name: s for s in settings.servers}

    def match(self, path: str) -> Server | None:
        """The server for this request path, or None."""
        path = path.split("?", 1)[0]
        _, _, rest = path.partition("/")
        name, _, tail = rest.partition("/")
        server = self._by_name.get(name)
        if server is None or not (tail == "mcp" or tail.startswith("mcp/")):
            return None
        return server
