"""mcp-extproc: an Envoy external processor that authenticates, authorizes and records MCP exchanges."""

__version__ = "0.1.0"
