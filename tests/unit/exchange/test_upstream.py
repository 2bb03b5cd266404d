"""The upstream credential's record: in full once per recording unit, then named by each exchange's end."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from exchange_fakes import ALICE, KEY, SCOPE, FakeSink, _body, _call, _gateway, _headers, _request, load_fake_policy

from extproc.authn.session_binding import bind
from extproc.exchange import Exchange
from extproc.gateway import Gateway
from extproc.recording.events import ExchangeEnd
from extproc.recording.replay import Session
from extproc.recording.report import session_doc
from extproc.upstream.base import ExchangeEndNaming, UpstreamCredential
from extproc.upstream.config import Static
from extproc.upstream.credentials import Upstream
from extproc.upstream.static import StaticCredential

RESULT = b'{"jsonrpc":"2.0","id":1,"result":{"content":[]}}'


def _static_gateway(tmp_path: Path, sink: FakeSink) -> tuple[Gateway, Path]:
    key = tmp_path / "api-key"
    key.write_text("key-one\n")
    gw = _gateway(sink, load_fake_policy(tmp_path))
    static = Static(kind="static", file=key, header="x-api-key", check_interval_s=0)
    gw.upstream = Upstream({"demo": StaticCredential(static, time.monotonic)}, [])
    return gw, key


async def _call_once(gw: Gateway, session: str) -> dict[str, str]:
    ex = Exchange(gw)
    reply = await ex.on_request_headers(_request(session=session))
    set_headers = {
        h.header.key: h.header.raw_value.decode() for h in reply.request_headers.response.header_mutation.set_headers
    }
    await ex.on_request_body(_body(_call("echo")))
    await ex.on_response_headers(_headers({":status": "200", "content-type": "application/json"}))
    await ex.on_response_body(ep.HttpBody(body=RESULT, end_of_stream=True))
    return set_headers


async def test_a_credential_is_recorded_once_per_unit_and_named_by_each_later_exchange(tmp_path: Path) -> None:
    sink = FakeSink()
    gw, key = _static_gateway(tmp_path, sink)
    one, two = bind("s1", ALICE, KEY, SCOPE), bind("s2", ALICE, KEY, SCOPE)

    sent = [await _call_once(gw, one) for _ in range(3)] + [await _call_once(gw, two)]
    key.write_text("key-two\n")  # rotated: a credential the unit has not recorded yet
    sent.append(await _call_once(gw, one))

    assert [s["x-api-key"] for s in sent] == ["key-one"] * 4 + ["key-two"]  # every exchange still carries it
    full = [e for e in sink.events if isinstance(e, UpstreamCredential)]
    ends = [e for e in sink.events if isinstance(e, ExchangeEnd)]
    sha = [hashlib.sha256(v.encode()).hexdigest() for v in ("key-one", "key-two")]
    # In full: key-one's first use in each unit, key-two's first; the two later key-one uses of s1 only named.
    assert [(e.session.endswith("s1"), e.sha256) for e in full] == [(True, sha[0]), (False, sha[0]), (True, sha[1])]
    named = [e for e in ends if isinstance(e, ExchangeEndNaming)]
    assert [e.exchange for e in named] == [ends[1].exchange, ends[2].exchange]
    assert all(
        e.credential == {"server": "demo", "kind": "static", "sha256": sha[0], "expires_at": None} for e in named
    )

    # Readers join the name to the full record: each exchange of s1 shows its credential as before.
    s1 = [e.to_dict() for e in sink.events if e.session == full[0].session]
    shown = session_doc(Session(full[0].session, events=s1))["exchanges"]
    assert [[(c["kind"], c["header"], c["sha256"]) for c in x["upstream"]] for x in shown] == [
        [("static", "x-api-key", sha[0])]
    ] * 3 + [[("static", "x-api-key", sha[1])]]
    assert [x["upstream"][0].get("recorded_in") for x in shown[:3]] == [None, full[0].exchange, full[0].exchange]


async def test_a_refusal_is_always_recorded_in_full(tmp_path: Path) -> None:
    sink = FakeSink()
    gw, key = _static_gateway(tmp_path, sink)
    session = bind("s1", ALICE, KEY, SCOPE)
    await _call_once(gw, session)
    key.unlink()
    for _ in range(2):
        reply = await Exchange(gw).on_request_headers(_request(session=session))
        assert reply.immediate_response.status.code == 503

    refused = [e for e in sink.events if isinstance(e, UpstreamCredential) and e.refused]
    assert len(refused) == 2 and not any(isinstance(e, ExchangeEndNaming) for e in sink.events)
