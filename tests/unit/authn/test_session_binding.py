"""Session ids bound to the identity that opened the session."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from extproc.authn.principal import Principal
from extproc.authn.session_binding import bind, load_key, unbind
from extproc.errors import ConfigError, SessionNotYours

KEY = b"k" * 32
ALICE = Principal(issuer="https://idp.test", subject="alice", username="alice")


@pytest.mark.parametrize(
    "server_id",
    [
        pytest.param("3f2b9c1e-8d4a-4c1e-9a77-0e5b2d6c1f00", id="uuid"),
        pytest.param("a.b/c+d=e~f!", id="punctuation"),
        pytest.param("x" * 300, id="long"),
    ],
)
def test_round_trip_is_url_and_header_safe(server_id: str) -> None:
    client_value = bind(server_id, ALICE, KEY)
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", client_value)
    assert unbind(client_value, ALICE, KEY) == server_id


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(Principal(issuer="https://idp.test", subject="bob", username="alice"), id="other-subject"),
        pytest.param(Principal(issuer="https://evil.test", subject="alice", username="alice"), id="other-issuer"),
        pytest.param(Principal(issuer="https://idp.test/", subject="alice", username="alice"), id="issuer-suffix"),
    ],
)
def test_other_identity_is_refused(other: Principal) -> None:
    with pytest.raises(SessionNotYours):
        unbind(bind("sid-1", ALICE, KEY), other, KEY)


def test_same_identity_new_token_is_accepted() -> None:
    again = Principal(issuer=ALICE.issuer, subject=ALICE.subject, username="other-name", token_id="t2")
    assert unbind(bind("sid-1", ALICE, KEY), again, KEY) == "sid-1"


def test_other_key_is_refused() -> None:
    with pytest.raises(SessionNotYours):
        unbind(bind("sid-1", ALICE, KEY), ALICE, b"z" * 32)


def _replace_char(value: str, i: int) -> str:
    return value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]


def _swap_server_id(value: str) -> str:
    return bind("sid-2", ALICE, KEY).split(".")[0] + "." + value.split(".")[1]


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda v: "", id="empty"),
        pytest.param(lambda v: "sid-1", id="raw-server-id"),
        pytest.param(lambda v: v.split(".")[0], id="no-mac"),
        pytest.param(lambda v: v + "A", id="mac-too-long"),
        pytest.param(lambda v: _replace_char(v, len(v) - 43), id="mac-changed"),
        pytest.param(lambda v: _replace_char(v, len(v) - 1), id="mac-last-char-changed"),
        pytest.param(_swap_server_id, id="server-id-swapped"),
        pytest.param(lambda v: "%%%." + v.split(".")[1], id="bad-base64"),
        pytest.param(lambda v: "x" * 5000, id="huge"),
    ],
)
def test_malformed_or_tampered_values_are_refused(tamper) -> None:
    with pytest.raises(SessionNotYours):
        unbind(tamper(bind("sid-1", ALICE, KEY)), ALICE, KEY)


def test_load_key_from_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("a" * 40 + "\n")
    assert load_key(str(tmp_path / "secret")) == b"a" * 40


@pytest.mark.parametrize(
    ("content", "match"),
    [pytest.param("short", "at least 32 bytes", id="short"), pytest.param(None, "cannot read", id="missing")],
)
def test_load_key_errors_name_the_key(tmp_path: Path, content: str | None, match: str) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=match) as caught:
        load_key(str(path))
    assert "auth.session_secret_file" in str(caught.value)


def test_load_key_without_file_is_random_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        a, b = load_key(None), load_key(None)
    assert len(a) == 32 and a != b
    assert "replicas" in caplog.text


def test_a_session_in_use_costs_one_hmac_and_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from extproc.authn import session_binding

    computed: list[bytes] = []
    real = session_binding._mac
    monkeypatch.setattr(session_binding, "_mac", lambda sid, *rest: computed.append(sid) or real(sid, *rest))
    value = bind("sid-memo", ALICE, KEY, "demo/")
    for _ in range(3):  # each exchange: the id checked at admission, the server's id bound again on the response
        assert unbind(value, ALICE, KEY, "demo/") == "sid-memo"
        assert bind("sid-memo", ALICE, KEY, "demo/") == value
    assert computed == [b"sid-memo"]
    for other in ("other/", "demo/b"):  # another scope, key or identity is its own input: still refused
        with pytest.raises(SessionNotYours):
            unbind(value, ALICE, KEY, other)
    with pytest.raises(SessionNotYours):
        unbind(value, ALICE, b"z" * 32, "demo/")
    monkeypatch.setattr(session_binding, "_MEMO_SIZE", 16)  # (4,096 in use)
    for i in range(40):  # ids a client makes up fill it: emptied, never grown
        bind(f"sid-{i}", ALICE, KEY)
    assert len(session_binding._memo) <= 16
