"""OpenTelemetry traces of exchanges (off by default)."""
