"""How the gateway authenticates to each MCP server on behalf of the caller (``servers[].upstream_auth``)."""
