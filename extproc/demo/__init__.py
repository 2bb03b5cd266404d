"""Sample MCP server and client used by the demo and the integration tests."""
