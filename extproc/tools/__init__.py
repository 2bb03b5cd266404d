"""Tool-surface integrity: what each server offers, fingerprinted, pinned, screened, and checked on every call.

fingerprint.py  canonical (RFC 8785) SHA-256 of one listed definition
screens.py      invisible/bidi Unicode, instruction markers, other servers' tool names: found with spans, stripped
pins.py         the signed pin store (first seen, approved, rejected) and the change decision
surface.py      the list and call paths: pure functions the exchange calls
"""
