"""gateway.yaml compiled once into frozen options: nothing on the request path reads the config as written."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from extproc.authn.challenge import protected_resource_metadata, resource_metadata_url
from extproc.authn.session_binding import load_key
from extproc.mcp.sse import HoldBudget
from extproc.secrets import load_salt
from extproc.settings import Settings


@dataclass(frozen=True, slots=True)
class ExchangeOptions:
    """What one exchange needs to know of the config."""

    required: bool = True  # fail closed: an exchange that cannot be recorded is refused (recording.required)
    max_event_body_bytes: int = 1 << 20  # a JSON body or SSE event past this is not held whole (size + SHA-256 kept)
    held: HoldBudget = field(default_factory=lambda: HoldBudget(32 << 20))  # this worker's unfinished bodies
    forward_identity: bool = False  # set x-mcp-user / x-mcp-groups upstream
    session_key: bytes = b""  # binds session ids and request state to their owner
    metadata_url: str = ""  # RFC 9728 protected-resource metadata, served without a token ("" without auth)
    metadata_path: str = ""  # the path Envoy sees for metadata_url (RFC 9728 puts public_url's path after it)
    metadata: Mapping[str, object] = field(default_factory=dict)
    run_idle_gap_s: float = 300.0  # stateless traffic: the window of one recorded run (mcp/protocol.py RunTracker)
    capture_salt: bytes = b""  # salts the value hashes of capture level shape (recording.capture_salt_file)


def compile_options(settings: Settings) -> ExchangeOptions:
    """The exchange's options from ``settings`` (reads the session key file: a missing one is a ConfigError)."""
    rec = settings.recording
    options = ExchangeOptions(
        required=rec.required,
        max_event_body_bytes=rec.max_event_body_bytes,
        run_idle_gap_s=rec.run_idle_gap_s,
        held=HoldBudget(rec.max_held_body_bytes),
        capture_salt=load_salt(rec.capture_salt_file),
    )
    auth = settings.auth
    if auth is None:
        return options
    url = resource_metadata_url(auth)
    return replace(
        options,
        forward_identity=auth.forward_identity_headers,
        session_key=load_key(auth.session_secret_file),
        metadata_url=url,
        metadata_path=urlsplit(url).path,
        metadata=protected_resource_metadata(auth),
    )
