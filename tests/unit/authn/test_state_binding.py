"""Request state of multi-round-trip calls is sealed to the caller and server it was issued to."""

from __future__ import annotations

import pytest

from extproc.authn.principal import Principal
from extproc.authn.state_binding import RequestStateNotYours, open_sealed, seal, unsealed_view

KEY = b"k" * 32
ALICE = Principal(issuer="https://idp", subject="alice", username="alice")


def test_round_trip() -> None:
    sealed = seal("v1.opaque-server-state", ALICE, "demo", KEY)
    assert sealed.startswith("mxs1.")
    assert open_sealed(sealed, ALICE, "demo", KEY) == "v1.opaque-server-state"
    assert unsealed_view(sealed) == "v1.opaque-server-state"


@pytest.mark.parametrize(
    ("who", "server", "key"),
    [
        (Principal(issuer="https://idp", subject="bob", username="bob"), "demo", KEY),
        (Principal(issuer="https://other-idp", subject="alice", username="alice"), "demo", KEY),
        (ALICE, "github", KEY),
        (ALICE, "demo", b"x" * 32),
    ],
    ids=["subject", "issuer", "server", "key"],
)
def test_anyone_else_is_refused(who: Principal, server: str, key: bytes) -> None:
    sealed = seal("state", ALICE, "demo", KEY)
    with pytest.raises(RequestStateNotYours):
        open_sealed(sealed, who, server, key)


@pytest.mark.parametrize(
    "value",
    ["state", "mxs1.", "mxs1.nodot", "mxs1.AAAA.state", "mxs1." + "A" * 43 + ".state", "x" * 70_000],
)
def test_unsealed_or_forged_values_are_refused(value: str) -> None:
    with pytest.raises(RequestStateNotYours):
        open_sealed(value, ALICE, "demo", KEY)


def test_state_change_breaks_the_seal() -> None:
    sealed = seal("state-a", ALICE, "demo", KEY)
    with pytest.raises(RequestStateNotYours):
        open_sealed(sealed.replace("state-a", "state-b"), ALICE, "demo", KEY)
