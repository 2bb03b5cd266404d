"""MCP awareness: JSON-RPC bodies (single and batch) and SSE framing across chunk boundaries."""
