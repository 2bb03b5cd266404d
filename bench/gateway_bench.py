"""Gateway benchmark: what the processor with recording costs on top of Envoy, on this machine, in one run.

Five rows, the same upstream, load generator and request mix (50/50 JSON-RPC tools/call answered with
application/json, and tools/call answered with a 3-event text/event-stream):

  upstream direct                    generator -> upstream           (ceiling of the generator + upstream)
  envoy only (A)                     generator -> Envoy -> upstream  (the bootstrap minus the ext_proc filter)
  envoy + no-op processor (N)        generator -> Envoy <-> processor (serve --passthrough: CONTINUE to every
                                     message, nothing recorded) -> upstream: what gRPC itself costs
  envoy + processor, anonymous (B0)  generator -> Envoy <-> processor (recording, allow_anonymous) -> upstream
  envoy + processor, auth+policy (B) the production path: bearer tokens from a development issuer on loopback,
                                     a policy directory with one allow rule, session ids bound to their owner
  B + budget (local), (redis)        B with a limit on the rule (never reached), counted in the processor's memory,
                                     or in a redis-server on loopback (one EVALSHA per request)
  B + token exchange (warm)          B whose server has upstream_auth: token_exchange at the development issuer
                                     (one RFC 8693 exchange per caller in the warm-up, then its cached token)

The upstream and the generator each run in their own process, so neither shares an event loop with what
is measured. They do share the machine's cores with Envoy and the processor: see bench/README.md.

    python bench/gateway_bench.py [--seconds 10] [--concurrency 16] [--out bench/results/gateway.json]
        [--scenarios upstream,envoy,noop,anonymous,authed,budget-local,budget-redis,token-exchange] [--workers N]
        [--rate R | --rate-of-b FRACTION]      open loop (R = 0: idle, CPU with no traffic)
        [--variants 'base;switch=0.001;switch=0.001;base']   each row once per processor variant, alternated
                                               (knobs: bench/variants/sitecustomize.py)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import math
import multiprocessing as mp
import os
import platform
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, cast

import yaml

from extproc.authn.dev_issuer import DevIssuer
from extproc.authn.principal import Principal
from extproc.authn.session_binding import bind, load_key
from extproc.envoy.bootstrap import render, render_yaml
from extproc.envoy.clusters import PROCESSOR_CLUSTER
from extproc.envoy.config import Edge
from extproc.envoy.process import envoy_binary
from extproc.envoy.process import envoy_command as launcher_envoy_command
from extproc.launcher import Stack, can_connect, free_port, http_ok, wait_until
from extproc.server import listen_address
from extproc.settings import load as load_settings
from extproc.workers import worker_command

SERVER = "bench"
VARIANTS_DIR = Path(__file__).resolve().parent / "variants"  # sitecustomize.py: --variants' knobs
PROCESSOR_ENV: dict[str, str] = {}  # --variants: added to the environment of processor processes only
UNIX_SOCKET = False  # --variants' knob "unix": Envoy reaches the processor over a Unix socket instead of TCP
ENVOY_CONCURRENCY = 2  # what Stack.start passes; all Envoy scenarios must run the same number of workers

UPSTREAM, ENVOY, NOOP, ANONYMOUS, AUTHED = (
    "upstream direct",
    "envoy only",
    "envoy + no-op processor",
    "envoy + processor (anonymous)",
    "envoy + processor (auth + policy)",
)
BUDGET_LOCAL, BUDGET_REDIS = "B + budget (local)", "B + budget (redis)"
TOKEN_EXCHANGE = "B + token exchange (warm)"  # issue 23: at most 2% CPU per exchange over B
REDIS_SERVER = "/usr/bin/redis-server"
BENCH_GROUP = "bench"  # every bench caller's token carries it; the policy's one rule allows this group
# One allow rule for exactly what the generator calls: with deny by default, anything else would be refused.
POLICY = f"""\
apiVersion: mcp-extproc/v1
description: The gateway benchmark's callers may call its two tools.
rules:
  - name: bench-tools
    effect: allow
    subjects: {{groups: [{BENCH_GROUP}]}}
    targets: {{servers: [{SERVER}], methods: [tools/call], tools: [echo, slow_echo]}}
"""

# The same rule with a budget no bench caller reaches (16 callers at ~40 req/s each): what counting costs, not
# what refusing does. Sliding window: every call of the last hour is an entry of the caller's counter.
BUDGETED_POLICY = POLICY + "    limits: [{calls: 1000000, per: 1h}]\n"

# --- the request mix: fixed bytes, so the upstream does no JSON work and the generator can check bodies -------

JSON_CALL = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}'
SSE_CALL = b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"slow_echo","arguments":{"text":"hi"}}}'
JSON_RESULT = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello"}],"isError":false}}'
SSE_EVENTS = [
    b'event: message\nid: 1\ndata: {"jsonrpc":"2.0","method":"notifications/progress",'
    b'"params":{"progressToken":"p2","progress":1,"total":2}}\n\n',
    b'event: message\nid: 2\ndata: {"jsonrpc":"2.0","method":"notifications/progress",'
    b'"params":{"progressToken":"p2","progress":2,"total":2}}\n\n',
    b'event: message\nid: 3\ndata: {"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"hi"}],'
    b'"isError":false}}\n\n',
]
KINDS = ("json", "sse")
EXPECTED_BODY = {"json": JSON_RESULT, "sse": b"".join(SSE_EVENTS)}
# Events the recorder writes per exchange: exchange.start, mcp.request, http.response, one mcp.response per
# JSON body or SSE event, exchange.end. With a policy, also one policy.decision per JSON-RPC request (each
# body here holds one). Used to check that every request of the processor scenarios was recorded.
EVENTS_PER_EXCHANGE = {"json": 5, "sse": 7}
DECISIONS_PER_EXCHANGE = 1


@dataclass(frozen=True)
class Identity:
    """What one generator connection presents: its session id as the client holds it, and maybe a token."""

    session: str
    authorization: str | None = None


def request_bytes(path: str, kind: str, who: Identity) -> bytes:
    """One keep-alive POST; the upstream picks its answer from X-Bench-Response."""
    body = JSON_CALL if kind == "json" else SSE_CALL
    auth = f"Authorization: {who.authorization}\r\n" if who.authorization else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Accept: application/json, text/event-stream\r\n{auth}Mcp-Session-Id: {who.session}\r\n"
        f"X-Bench-Response: {kind}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# --- upstream: minimal HTTP/1.1 keep-alive server on asyncio streams ------------------------------------------

# Like the MCP SDK's server, every response carries the session id the request named (so with auth the processor
# binds it for the client on every response, as in production).
_JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: %s\r\nContent-Length: %d\r\n\r\n"
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nMcp-Session-Id: %s\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
_SSE_CHUNKS = [b"%x\r\n%s\r\n" % (len(e), e) for e in SSE_EVENTS] + [b"0\r\n\r\n"]


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sse_gap: float) -> None:
    try:
        while True:
            raw = await reader.readuntil(b"\r\n\r\n")
            head = raw.lower()
            await reader.readexactly(_content_length(head))
            session = _header_value(raw, head, b"mcp-session-id")
            if b"\r\nx-bench-response: sse" not in head:
                writer.write(_JSON_HEAD % (session, len(JSON_RESULT)) + JSON_RESULT)
            elif not sse_gap:
                # Each event in its own write, but back to back: Envoy usually reads them as one body chunk.
                for chunk in (_SSE_HEAD % session, *_SSE_CHUNKS):
                    writer.write(chunk)
            else:
                # A pause between events, as a server producing them over time: one body chunk per event.
                writer.write(_SSE_HEAD % session)
                for chunk in _SSE_CHUNKS:
                    await asyncio.sleep(sse_gap)
                    writer.write(chunk)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


def _content_length(lowered_head: bytes) -> int:
    i = lowered_head.find(b"\r\ncontent-length:")
    if i < 0:
        return 0
    end = lowered_head.index(b"\r\n", i + 17)
    return int(lowered_head[i + 17 : end])


def _header_value(raw_head: bytes, lowered_head: bytes, name: bytes) -> bytes:
    """The value of header ``name`` (lowercase) as sent, case kept; empty when absent."""
    i = lowered_head.find(b"\r\n" + name + b":")
    if i < 0:
        return b""
    start = i + len(name) + 3
    return raw_head[start : raw_head.index(b"\r\n", start)].strip()


def run_upstream(port: int, sse_gap: float) -> None:
    """Process entry: serve until terminated."""

    async def main() -> None:
        handler = functools.partial(_serve_connection, sse_gap=sse_gap)
        server = await asyncio.start_server(handler, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --- load generator: keep-alive connections, closed loop (default) or open loop (--rate), per-request latency ---


@dataclass
class LoadResult:
    """What one generator run saw in its measurement window (latencies in seconds)."""

    window_s: float
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    issued: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))  # whole run, incl. warm-up
    failures: dict[str, int] = field(default_factory=dict)  # reason -> count, whole run
    cpu_s: dict[str, float] = field(default_factory=dict)  # process name -> CPU seconds in the window
    machine_busy: float = 0.0  # fraction of all cores busy in the window
    late: int = 0  # open loop: requests of the window that waited > 1 ms for a free connection
    behind: int = 0  # open loop: requests of the window the generator itself issued > 5 ms after their due time


class BadResponse(Exception):
    """The gateway answered something other than the upstream's exact bytes."""


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    """Status, session id header (as sent) and decoded body of one HTTP/1.1 response (Content-Length or chunked)."""
    raw = await reader.readuntil(b"\r\n\r\n")
    head = raw.lower()
    status = int(head[9:12])
    session = _header_value(raw, head, b"mcp-session-id")
    if b"\r\ncontent-length:" in head:
        return status, session, await reader.readexactly(_content_length(head))
    if b"\r\ntransfer-encoding: chunked" not in head:
        raise BadResponse("response without length")
    parts: list[bytes] = []
    while True:
        size = int((await reader.readline()).split(b";", 1)[0], 16)
        if size == 0:
            while await reader.readline() not in (b"\r\n", b""):  # trailers, none expected
                pass
            return status, session, b"".join(parts)
        parts.append((await reader.readexactly(size + 2))[:-2])


def check_response(status: int, session: bytes, body: bytes, kind: str, who: Identity) -> None:
    """Raise ``BadResponse`` unless this is the upstream's exact answer, under the client's own session id."""
    # Any other status is a failure, 401/403 included (bad token, session bound to someone else, policy deny): a
    # run that measured refusals would measure nothing. The gateway's error body is a fixed JSON-RPC error per
    # cause, so it makes a precise reason without multiplying the failure keys.
    if status != 200:
        raise BadResponse(f"status {status}: {body[:160].decode(errors='replace')}")
    if body != EXPECTED_BODY[kind]:
        raise BadResponse("body differs from the upstream's")
    if session != who.session.encode():  # with auth: the server's id bound again for this caller, same value
        raise BadResponse("response session id differs from the client's")


class Caller:
    """One keep-alive connection of one caller; reconnects after a failure."""

    def __init__(self, port: int, path: str, who: Identity) -> None:
        self.port, self.who = port, who
        self.requests = {k: request_bytes(path, k, who) for k in KINDS}
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def exchange(self, kind: str, result: LoadResult) -> bool:
        """Send one request of ``kind`` and check the answer; a failure is counted by reason. True on success."""
        result.issued[kind] += 1
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            assert self.reader is not None
            self.writer.write(self.requests[kind])
            check_response(*await read_response(self.reader), kind, self.who)
            return True
        except (OSError, asyncio.IncompleteReadError, BadResponse, ValueError) as e:
            reason = str(e) if isinstance(e, BadResponse) else type(e).__name__
            result.failures[reason] = result.failures.get(reason, 0) + 1
            self.close()
            return False

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _client(conn: Caller, first_kind: int, measure_from: float, stop_at: float, result: LoadResult) -> None:
    """Closed loop: send, read the whole response, repeat."""
    kind_index = first_kind  # alternate kinds per connection, start half of them on each: an exact 50/50 mix
    try:
        while (start := time.perf_counter()) < stop_at:
            kind = KINDS[kind_index]
            kind_index ^= 1
            if not await conn.exchange(kind, result):
                await asyncio.sleep(0.01)  # do not spin on a dead gateway
                continue
            done = time.perf_counter()
            if measure_from <= done <= stop_at:
                result.latencies[kind].append(done - start)
    finally:
        conn.close()


async def _open_loop(conns: list[Caller], rate: float, measure_from: float, stop_at: float, result: LoadResult) -> None:
    """Open loop: request i is due at start + i/rate whatever the answers do, kinds alternate (exact 50/50).

    A request takes a free connection (each connection is one caller; HTTP/1.1 carries one request at a time) and
    waits for one if all are busy. Latency runs from when the request was issued, so waiting for a connection
    counts (no coordinated omission); such requests are counted in ``late``. The generator's own timer lag (asyncio
    wakes about 1-2 ms after the due time) is not counted: it is not the gateway's. Requests the generator issued
    more than 5 ms late (a stalled generator on a busy box) are counted in ``behind``."""
    idle: asyncio.Queue[Caller] = asyncio.Queue()
    for conn in conns:
        idle.put_nowait(conn)

    async def one(kind: str, due: float, issued: float) -> None:
        conn = await idle.get()
        in_window = measure_from <= due < stop_at
        if in_window and time.perf_counter() - issued > 0.001:
            result.late += 1
        try:
            if await conn.exchange(kind, result) and in_window:
                result.latencies[kind].append(time.perf_counter() - issued)
        finally:
            idle.put_nowait(conn)

    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    for i in itertools.count():
        due = start + i / rate
        if due >= stop_at:
            break
        if (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        issued = time.perf_counter()
        if measure_from <= due < stop_at and issued - due > 0.005:
            result.behind += 1
        task = asyncio.create_task(one(KINDS[i % 2], due, issued))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    for conn in conns:
        conn.close()


async def _idle(conns: list[Caller], stop_at: float, result: LoadResult) -> None:
    """No load in the window: one request per connection first (so sessions and tokens exist), then nothing."""
    await asyncio.gather(*(conn.exchange(KINDS[n % 2], result) for n, conn in enumerate(conns)))
    await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
    for conn in conns:
        conn.close()


async def generate(
    port: int,
    path: str,
    identities: list[Identity],
    seconds: float,
    warmup: float,
    pids: dict[str, list[int]],
    rate: float | None = None,
) -> LoadResult:
    """One connection per identity for warm-up + ``seconds``; CPU of ``pids`` is sampled over the window.

    ``rate`` None: closed loop on every connection; > 0: open loop at ``rate`` requests/s over the connections;
    0: idle (one request per connection during the warm-up, then none)."""
    now = time.perf_counter()
    measure_from, stop_at = now + warmup, now + warmup + seconds
    result = LoadResult(window_s=seconds)
    conns = [Caller(port, path, who) for who in identities]
    load: asyncio.Future[Any]
    if rate is None:
        load = asyncio.gather(*(_client(c, n % 2, measure_from, stop_at, result) for n, c in enumerate(conns)))
    elif rate > 0:
        load = asyncio.ensure_future(_open_loop(conns, rate, measure_from, stop_at, result))
    else:
        load = asyncio.ensure_future(_idle(conns, stop_at, result))
    pids = {**pids, "generator": [os.getpid()]}
    await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
    cpu0, busy0 = {k: cpu_seconds(*p) for k, p in pids.items()}, machine_ticks()
    await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
    cpu1, busy1 = {k: cpu_seconds(*p) for k, p in pids.items()}, machine_ticks()
    await load  # let in-flight requests finish so the recording check can be exact
    result.cpu_s = {k: round(cpu1[k] - cpu0[k], 3) for k in pids}
    busy, total = busy1[0] - busy0[0], busy1[1] - busy0[1]
    result.machine_busy = busy / total if total else 0.0
    return result


def run_generator(
    out: Connection,
    port: int,
    path: str,
    identities: list[Identity],
    seconds: float,
    warmup: float,
    pids: dict[str, list[int]],
    rate: float | None = None,
) -> None:
    """Process entry: run the load and send the LoadResult back through ``out``."""
    out.send(asyncio.run(generate(port, path, identities, seconds, warmup, pids, rate)))
    out.close()


# --- CPU accounting from /proc (Linux); zeros elsewhere ------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(*pids: int) -> float:
    """User + system CPU time of processes (all their threads) so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / _TICK


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all cores since boot."""
    try:
        # user nice system idle iowait irq softirq steal (guest time is already inside user)
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return 0, 0
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


# --- scenarios -----------------------------------------------------------------------------------------------


@dataclass
class Target:
    """Where the generator sends requests, which processes (besides it) do the work, and who calls."""

    port: int
    path: str
    pids: dict[str, list[int]]  # process name -> its pids (one per processor worker)
    identities: list[Identity]


def anonymous_identities(count: int) -> list[Identity]:
    """One session per connection (as after initialize), no token."""
    return [Identity(f"bench-{n}") for n in range(count)]


RECORDING_OPTIONS: dict[str, Any] = {}  # --recording KEY=VALUE: extra keys of every processor row's recording:
CLI_RECORDING_OPTIONS: dict[str, Any] = {}  # those of --recording alone (a --variants knob rec:KEY=VALUE adds its own)


def _gateway_doc(workdir: Path, upstream_port: int, workers: int) -> dict[str, Any]:
    """One server, ``workers`` processor workers, recording into ``workdir``/recordings."""
    port = free_port(block=workers)  # worker i listens on port + i
    address = f"unix:{workdir / 'processor.sock'}" if UNIX_SOCKET else f"127.0.0.1:{port}"
    return {
        "listen": {"address": "127.0.0.1", "port": free_port()},
        "processor": {"address": address, "workers": workers},
        "admin": {"port": free_port()},
        "servers": [{"name": SERVER, "upstream": f"127.0.0.1:{upstream_port}", "path": "/mcp"}],
        "recording": {"directory": str(workdir / "recordings"), **RECORDING_OPTIONS},
    }


def _write_config(workdir: Path, doc: dict[str, Any]) -> Path:
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def write_anonymous_config(workdir: Path, upstream_port: int, workers: int = 1) -> Path:
    """gateway.yaml without auth (allow_anonymous: true, so no policy either): the processor's floor."""
    workdir.mkdir()
    return _write_config(workdir, {**_gateway_doc(workdir, upstream_port, workers), "allow_anonymous": True})


def write_authed_config(
    workdir: Path,
    upstream_port: int,
    issuer_url: str,
    workers: int = 1,
    policy: str = POLICY,
    budgets: dict[str, Any] | None = None,
    upstream_auth: dict[str, Any] | None = None,
) -> Path:
    """gateway.yaml as in production: one trusted issuer, a policy directory, a session-binding key file;
    ``budgets``: the budgets section (the budget rows); ``upstream_auth``: the server's (the token exchange row)."""
    workdir.mkdir()
    policies = workdir / "policies"
    policies.mkdir()
    (policies / "bench.yaml").write_text(policy)
    # 32 random bytes written as hex, as `openssl rand -hex 32` would: load_key strips surrounding whitespace,
    # so raw random bytes could lose some. The bench reads the key back with load_key, as the processor does.
    key = workdir / "session.key"
    key.touch(mode=0o600)
    key.write_text(secrets.token_hex(32) + "\n")
    doc = _gateway_doc(workdir, upstream_port, workers)
    listen = doc["listen"]
    doc["auth"] = {
        "public_url": f"http://{listen['address']}:{listen['port']}",  # tokens' audience = the listen URL
        "issuers": [{"issuer": issuer_url}],
        "session_secret_file": str(key),
    }
    doc["policy"] = {"directory": str(policies)}
    if budgets is not None:
        doc["budgets"] = budgets
    if upstream_auth is not None:
        doc["servers"][0]["upstream_auth"] = upstream_auth
    return _write_config(workdir, doc)


def authed_identities(config: Path, issuer: DevIssuer, count: int) -> list[Identity]:
    """A caller per connection: a token for ``bench-user-<n>`` and session ``bench-<n>`` bound to that caller."""
    auth = load_settings(config).auth
    assert auth is not None
    key = load_key(auth.session_secret_file)
    identities = []
    for n in range(count):
        sub = f"bench-user-{n}"
        token = issuer.mint(sub, aud=auth.resource_id, groups=[BENCH_GROUP])
        # What the processor derives from the verified token (issuer as configured, subject = sub): binding a
        # session for anyone else would get 403.
        who = Principal(issuer=issuer.url, subject=sub, username=sub)
        # Bound to server and backend (a static server has one, unnamed), as the gateway binds them.
        identities.append(Identity(bind(f"bench-{n}", who, key, f"{SERVER}/"), f"Bearer {token}"))
    return identities


def envoy_only_bootstrap(config: Path) -> dict[str, Any]:
    """The gateway's own bootstrap with the ext_proc filter (and its cluster) removed: nothing else differs."""
    bootstrap = render(load_settings(config))
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                hcm = network_filter["typed_config"]
                hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"]
    clusters = bootstrap["static_resources"]["clusters"]
    bootstrap["static_resources"]["clusters"] = [c for c in clusters if c["name"] != PROCESSOR_CLUSTER]
    return bootstrap


def stop_process(p: subprocess.Popen[bytes] | BaseProcess, timeout: float = 10) -> None:
    """SIGTERM, wait, then SIGKILL; safe to call on an already finished process."""
    if isinstance(p, BaseProcess):
        if p.is_alive():
            p.terminate()
            p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join()
        return
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextmanager
def upstream_process(ctx: mp.context.SpawnContext, sse_gap: float, concurrency: int) -> Iterator[Target]:
    port = free_port()
    proc = ctx.Process(target=run_upstream, args=(port, sse_gap), name="bench-upstream", daemon=True)
    proc.start()
    try:
        wait_until(lambda: proc.is_alive() and can_connect(f"127.0.0.1:{port}"), 30, "the upstream")  # a busy box: slow
        assert proc.pid is not None
        yield Target(port, "/mcp", {"upstream": [proc.pid]}, anonymous_identities(concurrency))
    finally:
        stop_process(proc)


def envoy_command(bootstrap: Path) -> list[str]:
    """Envoy's command line as ``Stack.start`` builds it (the scenarios that do not go through Stack use this)."""
    return launcher_envoy_command(bootstrap, Edge())


def start_envoy(bootstrap: Path, log: Path, admin_port: int, what: str) -> subprocess.Popen[bytes]:
    """Envoy on ``bootstrap``, waited for until ready (stopped again if it never gets there)."""
    with log.open("ab") as out:
        envoy = subprocess.Popen(envoy_command(bootstrap), stdout=out, stderr=out)
    try:
        ready = f"http://127.0.0.1:{admin_port}/ready"
        wait_until(lambda: envoy.poll() is None and http_ok(ready), 30, f"Envoy ({what}) to be ready")
    except BaseException:
        stop_process(envoy)
        raise
    return envoy


@contextmanager
def envoy_only(config: Path, upstream: Target) -> Iterator[Target]:
    settings = load_settings(config)
    workdir = config.parent
    bootstrap = workdir / "envoy-only.yaml"
    bootstrap.write_text(yaml.safe_dump(envoy_only_bootstrap(config), sort_keys=False))
    envoy = start_envoy(bootstrap, workdir / "envoy-only.log", settings.admin.port, "envoy only")
    try:
        pids = {**upstream.pids, "envoy": [envoy.pid]}
        yield Target(settings.listen.port, f"/{SERVER}/mcp", pids, upstream.identities)
    finally:
        stop_process(envoy)


@contextmanager
def envoy_and_noop_processor(config: Path, upstream: Target) -> Iterator[Target]:
    """What ``Stack.start`` runs for ``config`` (same bootstrap, ext_proc filter and processing modes included,
    same worker command line), except that the processor is started with ``--passthrough``: it answers CONTINUE
    to every ext_proc message and records nothing, so what it costs is gRPC's own. As many workers as the config
    names (``processor.workers``), each on its own endpoint, as ``Stack`` starts them."""
    settings = load_settings(config)
    workdir = config.parent / "stack"  # where Stack would put its files
    workdir.mkdir()
    log = config.parent / "stack.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **PROCESSOR_ENV}  # as Stack._spawn
    processors: list[subprocess.Popen[bytes]] = []
    envoy: subprocess.Popen[bytes] | None = None
    try:
        with log.open("ab") as out:
            for worker in range(settings.processor.workers):
                command = [*worker_command(config, worker), "--passthrough"]
                processors.append(subprocess.Popen(command, stdout=out, stderr=out, env=env))

        def listening() -> bool:
            for processor in processors:  # fail at once, as Stack does, rather than after the timeout
                if processor.poll() is not None:
                    raise RuntimeError(f"a no-op processor exited with status {processor.returncode}; see {log}")
            return all(can_connect(listen_address(settings, w)) for w in range(len(processors)))

        wait_until(listening, 20, "the no-op processor")
        bootstrap = workdir / "envoy.yaml"
        bootstrap.write_text(render_yaml(settings))  # what Stack.start writes
        envoy = start_envoy(bootstrap, log, settings.admin.port, "no-op processor")
        pids = {**upstream.pids, "envoy": [envoy.pid], "processor": [p.pid for p in processors]}
        yield Target(settings.listen.port, f"/{SERVER}/mcp", pids, upstream.identities)
    finally:
        if envoy is not None:  # Envoy first, as Stack.stop does
            stop_process(envoy)
        for processor in processors:
            stop_process(processor)


@contextmanager
def envoy_and_processor(config: Path, upstream: Target, identities: list[Identity]) -> Iterator[Target]:
    """``launcher.Stack`` as ``mcp-extproc up`` runs it, for ``config``; its files go next to the config."""
    stack = Stack(config=config, workdir=config.parent / "stack")
    try:
        with processor_env():
            stack.start(log=config.parent / "stack.log")
        assert stack.envoy is not None and len(stack.processors) == stack.settings.processor.workers
        args = [str(a) for a in cast("list[str]", stack.envoy.args)]
        if args != envoy_command(Path(args[args.index("-c") + 1])):
            # The other Envoy scenarios start Envoy themselves: they must keep running what Stack runs.
            raise RuntimeError(f"Stack starts Envoy differently ({args}); update envoy_command / ENVOY_CONCURRENCY")
        pids = {**upstream.pids, "envoy": [stack.envoy.pid], "processor": [p.pid for p in stack.processors]}
        yield Target(stack.settings.listen.port, f"/{SERVER}/mcp", pids, identities)
    finally:
        stack.stop()  # Envoy first, then the processor flushes its recording


@contextmanager
def processor_env() -> Iterator[None]:
    """``PROCESSOR_ENV`` in os.environ while ``Stack`` starts the processor (it passes os.environ on), then not."""
    saved = {k: os.environ.get(k) for k in PROCESSOR_ENV}
    os.environ.update(PROCESSOR_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def set_variant(spec: str) -> None:
    """Processor processes started from now on load bench/variants/sitecustomize.py with this spec."""
    global UNIX_SOCKET
    PROCESSOR_ENV.clear()
    knobs = [k.strip() for k in spec.split(",")]
    UNIX_SOCKET = "unix" in knobs  # config knobs: the rows' gateway.yaml
    for key in [k for k in RECORDING_OPTIONS if k not in CLI_RECORDING_OPTIONS]:
        del RECORDING_OPTIONS[key]
    RECORDING_OPTIONS.update(CLI_RECORDING_OPTIONS)
    for knob in knobs:
        if knob.startswith("rec:"):
            key, _, value = knob[4:].partition("=")
            RECORDING_OPTIONS[key] = yaml.safe_load(value)
    if spec != "base":
        path = os.pathsep.join(p for p in (str(VARIANTS_DIR), os.environ.get("PYTHONPATH", "")) if p)
        PROCESSOR_ENV.update(MCP_BENCH_VARIANT=spec, PYTHONPATH=path)


def run_load(
    ctx: mp.context.SpawnContext,
    target: Target,
    args: argparse.Namespace,
    profile: str | None = None,
    rate: float | None = None,
) -> LoadResult:
    """Run one generator process against ``target`` (closed loop, or open loop at ``rate``) and return what it
    measured. With ``--profile`` and a ``profile`` name, py-spy samples the (first) processor during the
    measurement window into ``bench/results/profile-<name>.txt`` (folded stacks, the input of flame graph tools)."""
    receive, send = ctx.Pipe(duplex=False)
    spy: subprocess.Popen[bytes] | None = None
    gen = ctx.Process(
        target=run_generator,
        name="bench-generator",
        daemon=True,
        args=(send, target.port, target.path, target.identities, args.seconds, args.warmup, target.pids, rate),
    )
    gen.start()
    send.close()
    try:
        if args.profile and profile and "processor" in target.pids:
            time.sleep(args.warmup)
            out = profile_path(args.out, profile)
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(target.pids["processor"][0]),
                 "-d", str(int(args.seconds)), "-r", "200", "-f", "raw", "-o", str(out),
                 *os.environ.get("PYSPY_ARGS", "").split()],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        if not receive.poll(args.warmup + args.seconds + 60):
            raise TimeoutError("the load generator did not report back")
        return receive.recv()
    finally:
        if spy is not None:
            spy.wait(30)
        stop_process(gen)
        receive.close()


def profile_path(out: Path, name: str) -> Path:
    """Where a row's py-spy profile goes: beside the JSON results (``--out``), the folder made if need be (py-spy
    writes nothing into a folder that does not exist)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent / f"profile-{name}.txt"


def print_profiles(out: Path, scenarios: dict[str, dict[str, Any]]) -> None:
    """Each profiled row's samples per phase and per component, in ms per exchange (bench/profile_summary.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from profile_summary import report

    for name, row in (("noop", NOOP), ("anonymous", ANONYMOUS), ("authed", AUTHED)):
        path = profile_path(out, name)
        if row in scenarios and path.exists():
            print()
            print(report(path, int(scenarios[row]["requests"])))


def count_recorded_events(directory: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in directory.rglob("*.jsonl"))


def recording_check(config: Path, loaded: LoadResult, extra: int = 0) -> dict[str, Any]:
    """Events in the store (read once the Stack has stopped, so everything is flushed) against the expected count;
    ``extra``: events beyond the exchanges' own (the token exchange row: one upstream.credential per session)."""
    settings = load_settings(config)
    decisions = DECISIONS_PER_EXCHANGE if settings.policy is not None else 0
    recorded = count_recorded_events(settings.recording.directory)
    expected = extra + sum((EVENTS_PER_EXCHANGE[k] + decisions) * n for k, n in loaded.issued.items())
    # Exact only when no request failed: a failed one may have been partly recorded.
    ok = recorded == expected and not loaded.failures
    return {"recorded_events": recorded, "expected_events": expected, "ok": ok}


def empty_recording_check(config: Path) -> dict[str, Any]:
    """The no-op processor must record nothing: its recording directory is absent or holds no file at all."""
    directory = load_settings(config).recording.directory
    files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    return {"files_in_recording_dir": len(files), "first_files": files[:5], "ok": not files}


# --- figures -------------------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(result: LoadResult) -> dict[str, Any]:
    """Throughput, latency percentiles (ms, overall and per kind) and CPU per request for one scenario."""
    everything = sorted(x for values in result.latencies.values() for x in values)
    completed = len(everything)

    def ms(values: list[float], q: float) -> float:
        return round(percentile(values, q) * 1000, 3)

    per_kind = {}
    for kind, values in result.latencies.items():
        values = sorted(values)
        per_kind[kind] = {"requests": len(values), "p50_ms": ms(values, 50), "p99_ms": ms(values, 99)}
    return {
        "requests": completed,
        "rps": round(completed / result.window_s, 1),
        "p50_ms": ms(everything, 50),
        "p90_ms": ms(everything, 90),
        "p99_ms": ms(everything, 99),
        "max_ms": round(everything[-1] * 1000, 3) if everything else 0.0,
        "by_kind": per_kind,
        "failures": result.failures,
        "cpu_s": result.cpu_s,
        "cpu_ms_per_request": {k: round(v * 1000 / max(completed, 1), 3) for k, v in result.cpu_s.items()},
        "machine_busy_pct": round(result.machine_busy * 100, 1),
        "late": result.late,
        "behind": result.behind,
    }


def envoy_version() -> str:
    out = subprocess.run([str(envoy_binary()), "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"/(\d+\.\d+\.\d+)/", out)
    return m.group(1) if m else out.strip()


def machine_info() -> dict[str, Any]:
    model = ""
    with suppress(OSError):
        model = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            "",
        )
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "envoy": envoy_version(),
    }


def cpu_note(cpus: int | None) -> str:
    """The honest caveat printed under the figures and saved with them."""
    return (
        f"This machine has {cpus} CPU(s). The load generator, the upstream, Envoy ({ENVOY_CONCURRENCY} worker threads)"
        " and the processor (one Python event loop, so at most about one core) all run on them and compete for CPU:"
        " absolute req/s is what this box gives with everything on it, not the gateway's capacity. Compare rows of"
        " the same run; the ratios (N/A, B0/A, B/A, B0/N, B/N, B/B0) and the CPU ms per request are the figures to"
        " track."
    )


NAME_WIDTH = 36
RATIOS = {
    "N/A": (NOOP, ENVOY),  # what gRPC to a processor that does nothing costs on top of Envoy alone
    "B0/A": (ANONYMOUS, ENVOY),
    "B/A": (AUTHED, ENVOY),
    "B0/N": (ANONYMOUS, NOOP),  # what our processing costs on top of the transport
    "B/N": (AUTHED, NOOP),
    "B/B0": (AUTHED, ANONYMOUS),
    "Bl/B": (BUDGET_LOCAL, AUTHED),  # what counting a budget in memory costs (goal: within 2%)
    "Br/B": (BUDGET_REDIS, AUTHED),  # one Redis round trip per request on loopback (goal: within 10%)
    "Bt/B": (TOKEN_EXCHANGE, AUTHED),  # the server's own token per caller, from the cache (goal: within 2%)
}


def print_report(report: dict[str, Any]) -> None:
    rows = report["scenarios"]
    w = NAME_WIDTH
    idle = report["parameters"]["load"] == "idle"
    print()
    if idle:
        print("No traffic in the window (one request per connection before it): CPU of each process, all threads")
        names = ["generator", "upstream", "envoy", "processor"]
        print(f"{'scenario':<{w}}" + "".join(f"{n + ' ms/s':>15}" for n in names))
        for name, r in rows.items():
            cells = [r["cpu_s"].get(n) for n in names]
            window = report["parameters"]["seconds"]
            print(f"{name:<{w}}" + "".join(f"{'-' if c is None else f'{c * 1000 / window:.1f}':>15}" for c in cells))
        print()
        print("Note: " + report["note"])
        return
    print(
        f"{'scenario':<{w}}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
        f"{'json p50':>10}{'sse p50':>9}{'busy %':>8}{'failed':>8}"
    )
    for name, r in rows.items():
        print(
            f"{name:<{w}}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p90_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['by_kind']['json']['p50_ms']:>10.2f}{r['by_kind']['sse']['p50_ms']:>9.2f}"
            f"{r['machine_busy_pct']:>8.0f}{sum(r['failures'].values()):>8}"
        )
    print()
    print("CPU ms per request (all threads of each process, measurement window only):")
    names = ["generator", "upstream", "envoy", "processor"]
    print(f"{'scenario':<{w}}" + "".join(f"{n:>11}" for n in names))
    for name, r in rows.items():
        cells = [r["cpu_ms_per_request"].get(n) for n in names]
        print(f"{name:<{w}}" + "".join(f"{'-' if c is None else f'{c:.3f}':>11}" for c in cells))
    print()
    print("Cores used (CPU seconds per second of the window, all threads; processor: all workers):")
    print(f"{'scenario':<{w}}" + "".join(f"{n:>11}" for n in names))
    for name, r in rows.items():
        cells = [r["cpu_s"].get(n) for n in names]
        window = report["parameters"]["seconds"]
        print(f"{name:<{w}}" + "".join(f"{'-' if c is None else f'{c / window:.2f}':>11}" for c in cells))
    if report["parameters"]["load"] != "closed loop" and ENVOY in rows:
        print()
        print(f"Latency added over {ENVOY} (open loop, same offered rate; ms):")
        heads = "".join(f"{h:>10}" for h in ("json p50", "json p99", "sse p50", "sse p99"))
        print(f"{'scenario':<{w}}{heads}{'late':>7}{'behind':>8}")
        base = rows[ENVOY]["by_kind"]
        for name, r in rows.items():
            if name in (UPSTREAM, ENVOY, CAPACITY):
                continue
            cells = [r["by_kind"][k][q] - base[k][q] for k in KINDS for q in ("p50_ms", "p99_ms")]
            print(f"{name:<{w}}" + "".join(f"{c:>+10.2f}" for c in cells) + f"{r['late']:>7}{r['behind']:>8}")
    print()
    for label, ratio in report["ratios"].items():
        over, under = RATIOS[label]
        cpu = ratio.get("processor_cpu_ms")
        print(
            f"{label:<5} ({over} / {under}): throughput x{ratio['rps']:.2f}, "
            f"p50 x{ratio['p50_ms']:.2f}, p99 x{ratio['p99_ms']:.2f}"
            + (f", processor CPU/request x{cpu:.2f}" if cpu is not None else "")
        )
    if NOOP in rows:
        noop_cpu = rows[NOOP]["cpu_ms_per_request"]["processor"]
        for name in (ANONYMOUS, AUTHED, BUDGET_LOCAL, BUDGET_REDIS):
            if name not in rows:
                continue
            cpu = rows[name]["cpu_ms_per_request"]["processor"]
            print(
                f"processor CPU per exchange, {name}: {cpu:.3f} ms = {noop_cpu:.3f} ms gRPC transport (no-op) "
                f"+ {cpu - noop_cpu:.3f} ms our processing"
            )
    if BUDGET_REDIS in rows and "redis" in rows[BUDGET_REDIS]["cpu_ms_per_request"]:
        print(
            f"redis-server CPU per exchange, {BUDGET_REDIS}: {rows[BUDGET_REDIS]['cpu_ms_per_request']['redis']:.3f} ms"
        )
    for name, check in report["recording_check"].items():
        if "files_in_recording_dir" in check:
            print(
                f"recording check, {name}: {check['files_in_recording_dir']} files in the recording directory, "
                f"none expected ({'ok' if check['ok'] else 'MISMATCH: ' + ', '.join(check['first_files'])})"
            )
            continue
        print(
            f"recording check, {name}: {check['recorded_events']} events written, {check['expected_events']} "
            f"expected ({'ok' if check['ok'] else 'MISMATCH'})"
        )
    for name, r in rows.items():
        for reason, count in r["failures"].items():
            print(f"FAILED, {name}: {count} x {reason}")
    print()
    print("Note: " + report["note"])


# --- main ------------------------------------------------------------------------------------------------------

RESULTS = Path(__file__).resolve().parent / "results" / "gateway.json"
CAPACITY = "B closed loop (capacity)"  # --rate-of-b: B's closed-loop run that sets the open-loop rate
SCENARIOS = {
    "upstream": UPSTREAM,
    "envoy": ENVOY,
    "noop": NOOP,
    "anonymous": ANONYMOUS,
    "authed": AUTHED,
    "budget-local": BUDGET_LOCAL,
    "budget-redis": BUDGET_REDIS,
    "token-exchange": TOKEN_EXCHANGE,
}


def run_scenarios(
    args: argparse.Namespace,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], float | None]:
    """The chosen rows (all five by default), one after the other against one upstream; the checks that N recorded
    nothing and that B0 and B recorded everything. Returns the rows, the checks and the offered rate (open loop)."""
    ctx = mp.get_context("spawn")
    chosen = set(args.scenarios)
    scenarios: dict[str, dict[str, Any]] = {}
    checks: dict[str, dict[str, Any]] = {}
    rate: float | None = args.rate
    with (
        tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp,
        upstream_process(ctx, args.sse_gap_ms / 1000, args.concurrency) as upstream,
        DevIssuer(Path(tmp) / "issuer-keys") as issuer,
    ):
        workdir = Path(tmp)
        workers = args.workers

        def authed_run(
            name: str,
            rate: float | None,
            label: str = AUTHED,
            policy: str = POLICY,
            budgets: dict[str, Any] | None = None,
            more_pids: dict[str, list[int]] | None = None,
            upstream_auth: dict[str, Any] | None = None,
        ) -> LoadResult:
            authed = write_authed_config(
                workdir / name, upstream.port, issuer.url, workers, policy, budgets, upstream_auth
            )
            identities = authed_identities(authed, issuer, args.concurrency)
            with envoy_and_processor(authed, upstream, identities) as target:
                target.pids.update(more_pids or {})  # the redis-server's CPU is the budget's too
                loaded = run_load(ctx, target, args, name, rate)
            # A credential is recorded in full once per recording unit (each connection's session), then named.
            extra = len(identities) if upstream_auth is not None else 0
            checks[label if name != "authed-capacity" else CAPACITY] = recording_check(authed, loaded, extra)
            return loaded

        if args.rate_of_b is not None:
            print(f"{AUTHED}, closed loop, to measure its capacity ...", flush=True)
            capacity = summarize(authed_run("authed-capacity", None))
            scenarios[CAPACITY] = capacity
            rate = round(args.rate_of_b * capacity["rps"], 1)
            print(f"open loop at {args.rate_of_b:g} x {capacity['rps']:.0f} = {rate:g} req/s", flush=True)

        if "upstream" in chosen:
            print(f"{UPSTREAM} ...", flush=True)
            scenarios[UPSTREAM] = summarize(run_load(ctx, upstream, args, rate=rate))

        if "envoy" in chosen:
            print(f"{ENVOY} ...", flush=True)
            config = write_anonymous_config(workdir / "envoy", upstream.port, workers)
            with envoy_only(config, upstream) as target:
                scenarios[ENVOY] = summarize(run_load(ctx, target, args, rate=rate))

        if "noop" in chosen:
            print(f"{NOOP} (--passthrough, nothing recorded) ...", flush=True)
            noop = write_anonymous_config(workdir / "noop", upstream.port, workers)  # own recording dir: stays empty
            with envoy_and_noop_processor(noop, upstream) as target:
                scenarios[NOOP] = summarize(run_load(ctx, target, args, "noop", rate))
            checks[NOOP] = empty_recording_check(noop)

        if "anonymous" in chosen:
            print(f"{ANONYMOUS}, recording on ...", flush=True)
            anonymous = write_anonymous_config(workdir / "anonymous", upstream.port, workers)
            with envoy_and_processor(anonymous, upstream, upstream.identities) as target:
                loaded = run_load(ctx, target, args, "anonymous", rate)
                scenarios[ANONYMOUS] = summarize(loaded)
            # The Stack is stopped here, so the processor has flushed every event it accepted.
            checks[ANONYMOUS] = recording_check(anonymous, loaded)

        if "authed" in chosen:
            print(f"{AUTHED}, recording on ...", flush=True)
            scenarios[AUTHED] = summarize(authed_run("authed", rate))

        if "budget-local" in chosen:
            print(f"{BUDGET_LOCAL}: {AUTHED} with a limit on its rule, counted in memory ...", flush=True)
            scenarios[BUDGET_LOCAL] = summarize(authed_run("budget-local", rate, BUDGET_LOCAL, BUDGETED_POLICY))

        if "budget-redis" in chosen:
            print(f"{BUDGET_REDIS}: the same limit counted in a redis-server on loopback ...", flush=True)
            with redis_server(workdir / "redis") as (url, pid):
                loaded = authed_run(
                    "budget-redis", rate, BUDGET_REDIS, BUDGETED_POLICY, {"store": url}, {"redis": [pid]}
                )
                scenarios[BUDGET_REDIS] = summarize(loaded)

        if "token-exchange" in chosen:
            print(f"{TOKEN_EXCHANGE}: {AUTHED} whose server gets a token exchanged per caller ...", flush=True)
            secret = workdir / "token-exchange.secret"
            secret.write_text("bench-secret\n")
            issuer.token_exchange.register_client("mcp-gateway", secret="bench-secret")
            issuer.token_exchange.add_target("bench-api", scopes=("bench:call",), ttl=3600)
            exchange = {"kind": "token_exchange", "client_id": "mcp-gateway", "client_secret_file": str(secret),
                        "audience": "bench-api", "scopes": ["bench:call"]}  # fmt: skip
            loaded = authed_run("token-exchange", rate, TOKEN_EXCHANGE, upstream_auth=exchange)
            scenarios[TOKEN_EXCHANGE] = summarize(loaded)
    return scenarios, checks, rate


def ab_encrypt(args: argparse.Namespace) -> dict[str, Any]:
    """B against B with ``recording.encrypt_payloads: per_subject`` (data keys wrapped by a key file), alternated
    off on / on off for ``--ab-encrypt`` rounds in one run (a drifting shared box favours neither): the processor's
    CPU per exchange and req/s, medians, and their ratios (issue 25: "payload encryption adds under 5% CPU")."""
    ctx = mp.get_context("spawn")
    rows: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    with (
        tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp,
        upstream_process(ctx, args.sse_gap_ms / 1000, args.concurrency) as upstream,
        DevIssuer(Path(tmp) / "issuer-keys") as issuer,
    ):
        (kek := Path(tmp) / "payload-kek.hex").write_text(secrets.token_hex(32) + "\n")
        encrypted = {"encrypt_payloads": "per_subject", "payload_keys": {"kek_file": str(kek)}}
        for r in range(args.ab_encrypt):
            for on in (False, True) if r % 2 == 0 else (True, False):
                name = f"{'encrypted' if on else 'plain'}-{r}"
                print(f"{AUTHED}, payload encryption {'on' if on else 'off'} (round {r + 1}) ...", flush=True)
                saved = dict(RECORDING_OPTIONS)
                RECORDING_OPTIONS.update(encrypted if on else {})
                try:
                    config = write_authed_config(Path(tmp) / name, upstream.port, issuer.url, args.workers)
                finally:
                    RECORDING_OPTIONS.clear()
                    RECORDING_OPTIONS.update(saved)
                with envoy_and_processor(config, upstream, authed_identities(config, issuer, args.concurrency)) as t:
                    loaded = run_load(ctx, t, args, name, args.rate)
                check = recording_check(config, loaded)
                if not check["ok"]:
                    raise SystemExit(f"{name}: {check['recorded_events']} events recorded, {check['expected_events']}")
                lines = [f.read_bytes() for f in (Path(tmp) / name / "recordings").rglob("*.jsonl")]
                if on != any(b'"sealed"' in data for data in lines):
                    raise SystemExit(f"{name}: payloads {'not ' if on else ''}sealed")
                rows[on].append(
                    summarize(loaded) | {"bytes": sum(map(len, lines)) / max(sum(loaded.issued.values()), 1)}
                )
    med = {
        on: {
            "cpu_ms": statistics.median(r["cpu_ms_per_request"]["processor"] for r in rows[on]),
            "rps": statistics.median(r["rps"] for r in rows[on]),
        }
        for on in (False, True)
    }
    out = {
        "rounds": args.ab_encrypt,
        "off": [r["cpu_ms_per_request"]["processor"] for r in rows[False]],
        "on": [r["cpu_ms_per_request"]["processor"] for r in rows[True]],
        "rps_off": [r["rps"] for r in rows[False]],
        "rps_on": [r["rps"] for r in rows[True]],
        "cpu_ratio": round(med[True]["cpu_ms"] / med[False]["cpu_ms"], 3),
        "rps_ratio": round(med[True]["rps"] / med[False]["rps"], 3),
        "recorded_bytes_per_exchange": {
            k: round(statistics.median(r["bytes"] for r in rows[on])) for k, on in (("off", False), ("on", True))
        },
    }
    print(f"processor CPU ms per exchange, off {out['off']}, per_subject {out['on']}")
    print(f"req/s, off {out['rps_off']}, per_subject {out['rps_on']}")
    print(f"recorded bytes per exchange (medians): {out['recorded_bytes_per_exchange']}")
    print(
        f"medians: off {med[False]['cpu_ms']:.3f} ms, per_subject {med[True]['cpu_ms']:.3f} ms CPU per exchange: "
        f"x{out['cpu_ratio']:.3f} ({out['cpu_ratio'] - 1:+.1%}); req/s x{out['rps_ratio']:.3f}"
    )
    return out


@contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[str, int]]:
    """A redis-server on a free loopback port (no persistence), for the budget row: its URL and pid."""
    workdir.mkdir()
    port = free_port()
    cmd = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", ""]
    proc = subprocess.Popen([*cmd, "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: can_connect(f"127.0.0.1:{port}"), 20, "redis-server")
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        stop_process(proc)


def scenario_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10, help="measurement window per scenario (default 10)")
    parser.add_argument("--warmup", type=float, default=1, help="warm-up before each window (default 1)")
    parser.add_argument("--concurrency", type=int, default=16, help="keep-alive connections (default 16)")
    parser.add_argument(
        "--sse-gap-ms",
        type=float,
        default=0,
        help="upstream pause before each SSE event; >0 makes each event its own body chunk (default 0)",
    )
    parser.add_argument(
        "--scenarios",
        type=scenario_list,
        default=list(SCENARIOS),
        help=f"comma-separated rows to run, in this order: {','.join(SCENARIOS)} (default: all)",
    )
    load = parser.add_mutually_exclusive_group()
    load.add_argument(
        "--rate",
        type=float,
        help="open loop: requests per second over the connections, sent on schedule whatever the answers do "
        "(default: closed loop); 0: idle, CPU with no traffic in the window",
    )
    load.add_argument(
        "--rate-of-b",
        type=float,
        metavar="FRACTION",
        help="open loop at FRACTION x the closed-loop req/s of auth + policy (B), measured first in the same run",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processor.workers of the processor rows (N starts as many, default 1)"
    )
    parser.add_argument(
        "--recording",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra recording: key for the processor rows (YAML value), e.g. seal_interval_ms=10000; repeatable",
    )
    parser.add_argument(
        "--ab-encrypt",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="only B, alternated without and with recording.encrypt_payloads: per_subject, ROUNDS times; the ratio",
    )
    parser.add_argument(
        "--variants",
        metavar="SPEC;SPEC;...",
        help="run the chosen rows once per processor variant, in this order (alternate them: base;X;X;base), e.g. "
        "'base;switch=0.001;sync;stream=iter': knobs in bench/variants/sitecustomize.py; with --rate-of-b, "
        "the first variant's capacity sets the rate for all",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results (default bench/results/gateway.json)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy samples the processor of N, B0 and B during their windows (bench/results/profile-*.txt)",
    )
    args = parser.parse_args(argv)
    for option in args.recording:
        key, sep, value = option.partition("=")
        if not sep:
            parser.error(f"--recording {option!r}: expected KEY=VALUE")
        RECORDING_OPTIONS[key.strip()] = yaml.safe_load(value)
    CLI_RECORDING_OPTIONS.update(RECORDING_OPTIONS)
    # SIGTERM (e.g. from CI) unwinds through the finally blocks, so no process outlives the run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if args.ab_encrypt:
        result = ab_encrypt(args)
        out = args.out.with_name("gateway_encrypt.json") if args.out == RESULTS else args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": machine_info(), **result}, indent=2) + "\n")
        return 0
    info = machine_info()
    mode = "closed loop" if args.rate is None and args.rate_of_b is None else "open loop"
    if args.rate == 0:
        mode = "idle"
    print(
        f"{info['cpu_count']} CPUs ({info['cpu_model']}), Python {info['python']}, Envoy {info['envoy']}; "
        f"{args.concurrency} connections ({mode}), {args.warmup:g}s warm-up + {args.seconds:g}s per scenario, "
        f"50/50 JSON and SSE tools/call, {args.workers} processor worker(s)"
    )
    if args.variants:
        return run_variants(args, info, mode)
    scenarios, checks, rate = run_scenarios(args)

    def ratio(over: str, under: str) -> dict[str, float | None]:
        b, a = scenarios[over], scenarios[under]
        out = {k: round(b[k] / a[k], 3) if a[k] else None for k in ("rps", "p50_ms", "p90_ms", "p99_ms")}
        b_cpu, a_cpu = b["cpu_ms_per_request"].get("processor"), a["cpu_ms_per_request"].get("processor")
        if b_cpu is not None and a_cpu:  # only between two processor scenarios
            out["processor_cpu_ms"] = round(b_cpu / a_cpu, 3)
        return out

    report = {
        "machine": info,
        "parameters": {
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "load": mode,
            "rate": rate,
            "rate_of_b": args.rate_of_b,
            "mix": {"json": 0.5, "sse": 0.5},
            "sse_events_per_response": len(SSE_EVENTS),
            "sse_gap_ms": args.sse_gap_ms,
            "envoy_concurrency": ENVOY_CONCURRENCY,
            "processor_workers": args.workers,
            "recording": "file store in a temp dir",
            "recording_options": RECORDING_OPTIONS,
            "sessions": "one Mcp-Session-Id per connection (as after initialize), echoed on every response",
            "auth": "B: one caller (token) per connection from a development issuer on loopback, session ids "
            "bound to it, one allow rule; B0: allow_anonymous",
            "noop": "N: the B0 config and bootstrap, processor started with --passthrough (CONTINUE to every "
            "ext_proc message, nothing authenticated or recorded), as many workers as B0",
        },
        "scenarios": scenarios,
        "ratios": {
            label: ratio(over, under)
            for label, (over, under) in RATIOS.items()
            if over in scenarios and under in scenarios and mode != "idle"
        },
        "recording_check": checks,
        "note": cpu_note(info["cpu_count"]),
    }
    print_report(report)
    if args.profile:
        print_profiles(args.out, scenarios)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.out}")
    ok = all(c["ok"] for c in checks.values()) and not any(s["failures"] for s in scenarios.values())
    return 0 if ok else 1


def run_variants(args: argparse.Namespace, info: dict[str, Any], mode: str) -> int:
    """``--variants``: every chosen row once per processor variant, in the order given; one table of them all."""
    runs: list[dict[str, Any]] = []
    for i, spec in enumerate(s.strip() for s in args.variants.split(";")):
        set_variant(spec)
        print(f"--- variant {i + 1}: {spec} (load average {os.getloadavg()[0]:.1f})", flush=True)
        scenarios, checks, rate = run_scenarios(args)
        if args.rate_of_b is not None:  # one offered rate for every variant: the first one's half of B
            args.rate, args.rate_of_b = rate, None
        runs.append({"variant": spec, "rate": rate, "scenarios": scenarios, "recording_check": checks})
    w = NAME_WIDTH + 26
    print()
    heads = ("req/s", "json p50", "json p99", "sse p50", "sse p99", "proc ms")
    print(f"{'row [variant]':<{w}}" + "".join(f"{h:>10}" for h in heads))
    for i, run in enumerate(runs):
        for name, r in run["scenarios"].items():
            kinds = r["by_kind"]
            cells = [kinds[k][q] for k in KINDS for q in ("p50_ms", "p99_ms")]
            cpu = r["cpu_ms_per_request"].get("processor")
            label = f"{name} [{run['variant']}] #{i + 1}"
            print(
                f"{label:<{w}}{r['rps']:>10.0f}"
                + "".join(f"{c:>10.2f}" for c in cells)
                + f"{'-' if cpu is None else f'{cpu:.3f}':>10}"
            )
    report = {"machine": info, "load": mode, "seconds": args.seconds, "variants": runs, "note": cpu_note(None)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.out}")
    checks_ok = all(c["ok"] for run in runs for c in run["recording_check"].values())
    return 0 if checks_ok and not any(r["failures"] for run in runs for r in run["scenarios"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
