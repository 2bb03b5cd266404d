"""Who made a request: the verified identity, never the token itself."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified caller. ``token_id`` is the token's ``jti`` or a SHA-256 prefix of it, never the token."""

    issuer: str
    subject: str
    username: str
    groups: tuple[str, ...] = ()
    token_id: str = ""
    claims: dict[str, object] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def to_record(self) -> dict[str, object]:
        """The form written into recordings."""
        return {
            "issuer": self.issuer,
            "subject": self.subject,
            "username": self.username,
            "groups": list(self.groups),
            "token_id": self.token_id,
        }


ANONYMOUS = Principal(issuer="", subject="anonymous", username="anonymous")
