"""The auth: section of gateway.yaml."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from extproc.authn.config import DEFAULT_ALGORITHMS, AuthConfig, IssuerConfig


def _cfg(issuer: dict[str, Any] | None = None, **extra: Any) -> AuthConfig:
    return AuthConfig.model_validate(
        {"issuers": [issuer or {"issuer": "https://idp.test"}], "public_url": "https://gw.example.test", **extra}
    )


def test_defaults() -> None:
    cfg = _cfg()
    issuer = cfg.issuers[0]
    assert issuer.algorithms == list(DEFAULT_ALGORITHMS)
    assert (issuer.username_claim, issuer.groups_claim) == ("sub", "groups")
    assert (issuer.clock_skew_seconds, issuer.unknown_kid_refetch_seconds, issuer.jwks_refresh_seconds) == (60, 30, 300)
    assert issuer.discovery_url == "https://idp.test/.well-known/openid-configuration"
    assert cfg.max_token_bytes == 16384 and not cfg.forward_identity_headers and cfg.session_secret_file is None
    assert cfg.resource_id == "https://gw.example.test"
    assert cfg.audiences_for(issuer) == ["https://gw.example.test"]


def test_issuer_audiences_override_resource() -> None:
    cfg = _cfg({"issuer": "https://idp.test", "audiences": ["api://mcp"]}, resource="https://mcp.test")
    assert cfg.audiences_for(cfg.issuers[0]) == ["api://mcp"]


@pytest.mark.parametrize(
    ("issuer", "extra", "match"),
    [
        pytest.param({"issuer": "https://idp.test", "algorithms": ["none"]}, {}, "never allowed", id="alg-none"),
        pytest.param({"issuer": "https://idp.test", "algorithms": ["HS256"]}, {}, "never allowed", id="hmac"),
        pytest.param({"issuer": "https://idp.test", "algorithms": []}, {}, "at least one", id="no-algorithms"),
        pytest.param({"issuer": "http://idp.example.com"}, {}, "https", id="plain-http-issuer"),
        pytest.param({"issuer": "idp.test"}, {}, "http", id="not-a-url"),
        pytest.param({"issuer": "https://idp.test", "groups_claim": "a..b"}, {}, "claim path", id="bad-claim-path"),
        pytest.param({"issuer": "https://idp.test", "audience": "x"}, {}, "Extra inputs", id="unknown-key"),
        pytest.param(None, {"allowed_origins": ["https://a.test/path"]}, "scheme://host", id="origin-with-path"),
        pytest.param(None, {"max_token_bytes": 10}, "greater than or equal", id="tiny-token-limit"),
        pytest.param(None, {"issuers": []}, "at least one issuer", id="no-issuers"),
        pytest.param(
            None, {"issuers": [{"issuer": "https://a.test"}, {"issuer": "https://a.test"}]}, "twice", id="duplicate"
        ),
    ],
)
def test_invalid(issuer: dict[str, Any] | None, extra: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        _cfg(issuer, **extra)


def test_loopback_http_issuer_is_allowed_for_development() -> None:
    assert IssuerConfig(issuer="http://127.0.0.1:9400").issuer == "http://127.0.0.1:9400"


def test_models_are_frozen() -> None:
    cfg = _cfg()
    with pytest.raises(ValidationError):
        cfg.public_url = "https://other.test"  # type: ignore[misc]


def test_allowed_origins_are_normalized() -> None:
    assert _cfg(allowed_origins=["https://App.Test:443/", "http://localhost:3000"]).allowed_origins == [
        "https://app.test",
        "http://localhost:3000",
    ]


# --- identity qualified per issuer -------------------------------------------------------------------------------


def _two(*issuers: dict[str, Any]) -> AuthConfig:
    return AuthConfig.model_validate({"issuers": list(issuers), "public_url": "https://gw.example.test"})


def test_a_single_issuer_has_no_prefix_by_default() -> None:
    issuer = _cfg().issuers[0]
    assert (issuer.username_prefix, issuer.groups_prefix) == ("", "")


def test_several_issuers_are_prefixed_with_their_url_by_default() -> None:
    cfg = _two({"issuer": "https://a.test"}, {"issuer": "https://b.test", "username_prefix": "b:"})
    assert [(i.username_prefix, i.groups_prefix) for i in cfg.issuers] == [
        ("https://a.test#", "https://a.test#"),
        ("b:", "https://b.test#"),
    ]


@pytest.mark.parametrize(
    "issuers",
    [
        pytest.param([{"username_prefix": ""}, {"username_prefix": ""}], id="both-unprefixed"),
        pytest.param([{"groups_prefix": "corp:"}, {"groups_prefix": "corp:"}], id="same-group-prefix"),
        pytest.param([{"username_prefix": "https://b.test#"}, {}], id="explicit-equals-other-default"),
    ],
)
def test_issuers_sharing_a_prefix_are_refused(issuers: list[dict[str, Any]]) -> None:
    a, b = issuers
    with pytest.raises(ValidationError, match="used by more than one issuer"):
        _two({"issuer": "https://a.test", **a}, {"issuer": "https://b.test", **b})
