"""The real gateway for the fault suite: dev issuer, sample MCP servers, processor worker(s) + Envoy via Stack.

Started exactly as tests/integration/conftest.py starts them, on loopback only, in a temp directory; ``Rig.close``
always stops every process it started (and only those).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from extproc.authn.dev_issuer import DevIssuer
from extproc.authn.session_binding import server_id_of
from extproc.launcher import Stack, free_port, http_ok, wait_until
from extproc.recording.manifest import generate_keys, load_public_key
from extproc.recording.replay import load_session
from extproc.recording.store import safe_key
from extproc.recording.store.file import FileStore

POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: eng-tools{suffix}
    effect: allow
    subjects: {{groups: [eng]}}
    targets: {{servers: ["*"], tools: [echo, whoami, count_slowly]}}
  - name: everyone-lists
    effect: allow
    subjects: {{users: ["*"]}}
    targets:
      servers: ["*"]
      methods: [initialize, server/discover, "notifications/*", tools/list, ping, http/get, http/delete]
  - name: nobody-adds
    effect: deny
    subjects: {{users: ["*"]}}
    targets: {{servers: ["*"], tools: [add]}}
"""


@dataclass
class Server:
    """A running MCP server subprocess (the SDK sample, or a hostile raw one)."""

    name: str
    port: int
    proc: subprocess.Popen

    @property
    def upstream(self) -> str:
        return f"127.0.0.1:{self.port}"

    def seen(self) -> list[dict[str, Any]]:
        import httpx

        return httpx.get(f"http://{self.upstream}/_seen", timeout=30).json()["requests"]


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (from /proc; 0 when gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class RssSampler:
    """Samples processor and Envoy RSS once a second in a thread: [(t, processors KiB, envoy KiB)]."""

    stack: Stack
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> tuple[float, int, int]:
        procs = sum(rss_kib(p.pid) for p in self.stack.processors)
        envoy = rss_kib(self.stack.envoy.pid) if self.stack.envoy else 0
        return (time.monotonic(), procs, envoy)

    def start(self) -> RssSampler:
        def run() -> None:
            while not self._stop.wait(1.0):
                self.samples.append(self.sample())

        self.samples.append(self.sample())
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def over_time(self, points: int = 6) -> str:
        """Processor RSS (MiB) at evenly spaced moments, e.g. '61→88→90'."""
        if not self.samples:
            return "-"
        step = max(1, len(self.samples) // points)
        picked = self.samples[::step] + ([self.samples[-1]] if (len(self.samples) - 1) % step else [])
        return "→".join(f"{p / 1024:.0f}" for _, p, _ in picked)


class Rig:
    """Everything one scenario runs; ``close`` stops it all (Envoy drained first, as Stack does)."""

    def __init__(self, name: str, workers: int = 2, issuer_class: type[DevIssuer] = DevIssuer) -> None:
        self.name = name
        self.workers = workers
        self.dir = Path(tempfile.mkdtemp(prefix=f"mcp-faults-{name}-"))
        self.log = self.dir / "gateway.log"
        self.servers: list[Server] = []
        self.stack: Stack | None = None
        self.config: dict[str, Any] = {}
        self.key, self.pub = generate_keys(self.dir / "keys")
        self.issuer = issuer_class(self.dir / "issuer").start()
        self.policy_dir = self.dir / "policies"
        self.policy_dir.mkdir()
        (self.policy_dir / "policy.yaml").write_text(POLICY.format(suffix=""))

    # --- parts ------------------------------------------------------------------------------------------

    def mcp_server(self, name: str, json_response: bool = False, *extra: str) -> Server:
        """The official-SDK sample server (``python -m extproc.demo.mcp_server``)."""
        port = free_port()
        cmd = [sys.executable, "-m", "extproc.demo.mcp_server", "--port", str(port), "--name", name, *extra]
        cmd += ["--json-response"] if json_response else []
        return self._server(name, port, cmd)

    def raw_server(self, name: str, module: str) -> Server:
        port = free_port()
        return self._server(name, port, [sys.executable, module, "--port", str(port)])

    def _server(self, name: str, port: int, cmd: list[str]) -> Server:
        out = (self.dir / f"mcp-{name}.log").open("ab")
        server = Server(name, port, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
        self.servers.append(server)

        def ready() -> bool:
            if server.proc.poll() is not None:
                raise RuntimeError(f"MCP server {name} exited: {(self.dir / f'mcp-{name}.log').read_text()}")
            return http_ok(f"http://{server.upstream}/_seen")

        wait_until(ready, 30, f"MCP server {name}")
        return server

    def gateway(self, auth: dict[str, Any] | None = None, **overrides: Any) -> Stack:
        """gateway.yaml for every server started so far (plus ``overrides``), then processor workers + Envoy."""
        port = free_port()
        self.config = {
            "listen": {"address": "127.0.0.1", "port": port},
            # a unix socket: worker i binds <path>.i (TCP would need port+i free too, not just the port picked)
            "processor": {"address": f"unix:{self.dir}/p.sock", "workers": self.workers},
            "admin": {"port": free_port()},
            "servers": [{"name": s.name, "upstream": s.upstream} for s in self.servers],
            "recording": {
                "directory": str(self.dir / "recordings"),
                "flush_interval_ms": 50,
                "signing_key": str(self.key),
                "segment_max_age_ms": 500,
                "completer_interval_s": 2.0,
                "digest_interval_s": 5.0,
            },
            "auth": {
                "public_url": f"http://127.0.0.1:{port}",
                "issuers": [{"issuer": self.issuer.url, **(auth or {})}],
                "forward_identity_headers": True,
                "session_secret_file": str(self._secret()),
            },
            "policy": {"directory": str(self.policy_dir), "reload_interval_ms": 200},
        }
        for key, value in overrides.items():
            self.config[key] = {**self.config.get(key, {}), **value} if isinstance(value, dict) else value
        path = self.dir / "gateway.yaml"
        path.write_text(yaml.safe_dump(self.config))
        self.stack = Stack(config=path, workdir=self.dir / "run")
        try:
            self.stack.start(log=self.log)
        except Exception as e:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{e}\n--- gateway log (tail) ---\n{tail}") from e
        return self.stack

    def _secret(self) -> Path:
        path = self.dir / "session.key"
        if not path.exists():
            path.write_text(secrets.token_hex(32) + "\n")
            path.chmod(0o600)
        return path

    @property
    def endpoint(self) -> str:
        assert self.stack is not None
        return self.stack.endpoint

    def url(self, server: str) -> str:
        assert self.stack is not None
        return self.stack.url(server)

    def token(self, user: str, groups: list[str] | None = None, **kw: Any) -> str:
        return self.issuer.mint(user, aud=self.endpoint, groups=groups if groups is not None else ["eng"], **kw)

    @property
    def store(self) -> FileStore:
        return FileStore(self.config["recording"]["directory"])

    # --- after the run ----------------------------------------------------------------------------------

    def stop_gateway(self) -> None:
        if self.stack is not None:
            self.stack.stop()

    def lost_events(self) -> tuple[int, int]:
        """(events lost, recorder shutdown lines found) from the workers' shutdown logs."""
        found = [int(m) for m in re.findall(r"lost_events=(\d+)", self.log.read_text(errors="replace"))]
        return sum(found), len(found)

    def close(self) -> None:
        try:
            self.stop_gateway()
        finally:
            for s in self.servers:
                if s.proc.poll() is None:
                    s.proc.terminate()
                    try:
                        s.proc.wait(10)
                    except subprocess.TimeoutExpired:
                        s.proc.kill()
                        s.proc.wait()
            self.issuer.stop()
            if os.environ.get("FAULTS_KEEP"):
                print(f"kept {self.dir}")
            else:
                shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Verified:
    """What the store holds after a run, every session read back and checked."""

    sessions: int = 0
    problems: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)
    exchanges: int = 0
    events: int = 0
    ended_texts: set[str] = field(default_factory=set)  # echo texts of exchanges recorded to their end
    requested_texts: set[str] = field(default_factory=set)  # echo texts of every recorded request
    responded_texts: set[str] = field(default_factory=set)  # ... whose exchange recorded a response
    decisions: list[dict[str, Any]] = field(default_factory=list)
    store_verify_rc: int = -1
    store_verify_out: str = ""
    session_keys: set[str] = field(default_factory=set)

    def has_session(self, sid: str) -> bool:
        """``sid`` as the client holds it (bound to its caller); recordings are keyed by the server's own id."""
        return safe_key(server_id_of(sid) or sid) in self.session_keys


def verify_store(rig: Rig) -> Verified:
    """Load and verify (chains, manifests, signatures) every recorded session; `store verify` the digests."""
    out = Verified()
    store, pub = rig.store, load_public_key(rig.pub)
    out.session_keys = set(store.list_sessions())
    for key in sorted(out.session_keys):
        s = load_session(store, key, pub)
        out.sessions += 1
        out.problems += [f"{key}: {p}" for p in s.problems]
        out.unfinished += [f"{key}: {u}" for u in s.unfinished]
        state = s.summary()["state"]
        out.states[state] = out.states.get(state, 0) + 1
        out.events += len(s.events)
        ended = {e.get("exchange") for e in s.events if e.get("type") == "exchange.end"}
        responded = {e.get("exchange") for e in s.events if e.get("type") in ("mcp.response", "http.response")}
        users = {
            e.get("exchange"): (e.get("principal") or {}).get("username", "")
            for e in s.events
            if e.get("type") == "exchange.start"
        }
        for e in s.events:
            t = e.get("type")
            if t == "exchange.start":
                out.exchanges += 1
            elif t == "policy.decision":
                out.decisions.append({**e, "_user": users.get(e.get("exchange"), "")})
            elif t == "mcp.request":
                for m in e.get("messages") or []:
                    text = ((m.get("params") or {}).get("arguments") or {}).get("text") if isinstance(m, dict) else None
                    if isinstance(text, str):
                        out.requested_texts.add(text)
                        if e.get("exchange") in ended:
                            out.ended_texts.add(text)
                        if e.get("exchange") in responded:
                            out.responded_texts.add(text)
    cmd = [sys.executable, "-m", "extproc", "store", "verify", "--dir", str(store.root), "--public-key", str(rig.pub)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out.store_verify_rc, out.store_verify_out = r.returncode, (r.stdout + r.stderr)[-2000:]
    return out


@dataclass
class Outcome:
    """A scenario's verdict: every check that failed, and the figures measured."""

    scenario: str
    scale: str
    failures: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)

    @property
    def ok(self) -> bool:
        return not self.failures

    def check_recordings(self, rig: Rig, v: Verified, allow_incomplete: bool = False) -> None:
        """The checks every scenario ends with: chains, manifests, signatures, digests, 0 events lost."""
        lost, lines = rig.lost_events()
        self.check(v.sessions > 0, "no session recorded at all")
        self.check(not v.problems, f"{len(v.problems)} verification problems: {v.problems[:3]}")
        self.check(not v.unfinished, f"{len(v.unfinished)} streams without a final manifest: {v.unfinished[:3]}")
        self.check(v.store_verify_rc == 0, f"store verify exit {v.store_verify_rc}: {v.store_verify_out[-500:]}")
        self.check(lines >= rig.workers, f"only {lines} recorder shutdown lines for {rig.workers} workers")
        self.check(lost == 0, f"{lost} events lost")
        if not allow_incomplete:
            self.check(v.states.get("incomplete", 0) == 0, f"{v.states.get('incomplete')} incomplete sessions")
        self.figures.update(
            sessions_recorded=v.sessions,
            exchanges_recorded=v.exchanges,
            events_recorded=v.events,
            states=v.states,
            lost_events=lost,
            store_verify_rc=v.store_verify_rc,
        )
