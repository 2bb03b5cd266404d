"""Prometheus metrics of one processor: latency, what was refused and why, decisions, reloads, recording health.

Counters and histograms are updated on the exchange's own paths (a label lookup and an add: about a
microsecond); the state of the recorder, the policy watcher and the JWKS caches is read only when Prometheus
scrapes, through the small Protocols below (this module imports none of the parts it reads). Each processor
(worker) has its own registry and port, which also serves ``/ready`` and ``/live`` for orchestrators.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, cast

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from extproc.recording.behind import UNAVAILABLE_REASONS

log = logging.getLogger(__name__)

# Per ext_proc message our work is ~0.1-1 ms; a policy decision a few µs; an exchange up to minutes (SSE).
MESSAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
DECISION_BUCKETS = (0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005)
EXCHANGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
UPLOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
PHASES = ("request_headers", "request_body", "response_headers", "response_body")


class RecorderReading(Protocol):
    """A frozen reading of the recorder (read-only fields)."""

    @property
    def healthy(self) -> bool: ...
    @property
    def accepting(self) -> bool: ...
    @property
    def written_events(self) -> int: ...
    @property
    def lost_events(self) -> int: ...
    @property
    def queued_events(self) -> int: ...
    @property
    def segments_waiting(self) -> int: ...
    @property
    def disk_jobs_waiting(self) -> int: ...
    @property
    def spool_bytes(self) -> int: ...
    @property
    def uploads(self) -> int: ...
    @property
    def upload_failures(self) -> int: ...
    @property
    def store_failing(self) -> bool: ...
    @property
    def unavailable(self) -> str: ...  # why new exchanges are refused ("" while available)


class RecordingSource(Protocol):
    """The recorder as metrics see it: a reading, and a hook called with each upload's latency."""

    def stats(self) -> RecorderReading: ...
    def on_uploaded(self, observe: Callable[[float], None]) -> None: ...


class PolicySource(Protocol):
    reloads: int
    reload_failures: int


class KeySource(Protocol):
    @property
    def has_keys(self) -> bool: ...
    def keys_age(self) -> float | None: ...


class JwksCounts(Protocol):
    jwks_fetches: int
    fetch_failures: int


class IdentitySource(Protocol):
    @property
    def keysets(self) -> Mapping[str, Any]: ...  # issuer -> KeySource with .metrics: JwksCounts


class Metrics:
    """The processor's counters and histograms; ``watch`` adds live readings of the gateway's parts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.exchanges = Counter(
            "mcp_extproc_exchanges", "Exchanges recorded, by server and outcome", ["server", "outcome"], registry=r
        )
        self.exchange_seconds = LoopHistogram(
            "mcp_extproc_exchange_duration_seconds",
            "Exchange duration (request headers to end of response), by server and outcome",
            ("server", "outcome"),
            EXCHANGE_BUCKETS,
        )
        r.register(self.exchange_seconds)
        self.refusals = Counter(
            "mcp_extproc_refusals",
            "Requests the gateway answered itself, by HTTP status and reason (error class)",
            ["status", "reason"],
            registry=r,
        )
        self.upstream_credentials = Counter(
            "mcp_extproc_upstream_credentials",
            "Credentials toward servers with upstream_auth, by server, kind and outcome (issued, cached, refused)",
            ["server", "kind", "outcome"],
            registry=r,
        )
        self.decisions = Counter(
            "mcp_extproc_policy_decisions", "Policy decisions per JSON-RPC request", ["server", "allowed"], registry=r
        )
        decision = LoopHistogram(
            "mcp_extproc_policy_decision_seconds", "Time to authorize one request body (every call in it)", (),
            DECISION_BUCKETS,
        )  # fmt: skip
        r.register(decision)
        self.decision_seconds = decision.labels()
        self.guardrail_seconds = Histogram(
            "mcp_extproc_guardrail_seconds",
            "Time for a server's outside guardrail to answer one call, by server and verdict (error: none in time)",
            ["server", "verdict"],
            buckets=EXCHANGE_BUCKETS,
            registry=r,
        )
        message = LoopHistogram(
            "mcp_extproc_message_seconds",
            "Processing time of one ext_proc message, by phase (our code, not gRPC transport)",
            ("phase",),
            MESSAGE_BUCKETS,
        )
        r.register(message)
        self._message = {p: message.labels(p) for p in PHASES}  # children bound once: no label lookup per message
        self.upload_seconds = Histogram(
            "mcp_extproc_recording_upload_seconds",
            "Segment sealed to stored (spool to store latency, retries included)",
            buckets=UPLOAD_BUCKETS,
            registry=r,
        )
        self.budget_refusals = Counter(
            "mcp_extproc_budget_refusals", "Calls refused over a policy limit (429), by rule", ["rule"], registry=r
        )
        self.budget_store_errors = Counter(
            "mcp_extproc_budget_store_errors",
            "Budget counter store failures, by what the rules made of them (closed: 503, open: passed uncounted)",
            ["outcome"],
            registry=r,
        )
        self.active = Gauge("mcp_extproc_active_streams", "ext_proc streams in progress", registry=r)
        self._ended: dict[tuple[str, str], tuple[Any, Buckets]] = {}
        self._decided: dict[tuple[str, bool], Any] = {}
        self.ready: Callable[[], list[str]] = lambda: ["not started"]

    def message(self, phase: str, seconds: float) -> None:
        """Observe one ext_proc message's processing time."""
        child = self._message.get(phase)
        if child is not None:
            child.observe(seconds)

    def budget_refused(self, rule: str) -> None:
        """Count a call refused over one of ``rule``'s limits."""
        self.budget_refusals.labels(rule).inc()

    def budget_store_error(self, outcome: str) -> None:
        """Count a budget store failure: ``closed`` (refused) or ``open`` (passed uncounted)."""
        self.budget_store_errors.labels(outcome).inc()

    def decided(self, server: str, allowed: bool) -> None:
        """Count one policy decision (label children cached: servers x 2)."""
        child = self._decided.get((server, allowed))
        if child is None:
            child = self._decided[(server, allowed)] = self.decisions.labels(server, "true" if allowed else "false")
        child.inc()

    def exchange_ended(self, server: str, outcome: str, seconds: float) -> None:
        """Count a recorded exchange and observe its duration (label children cached: servers x outcomes is small)."""
        children = self._ended.get((server, outcome))
        if children is None:
            children = self._ended[(server, outcome)] = (
                self.exchanges.labels(server, outcome),
                self.exchange_seconds.labels(server, outcome),
            )
        children[0].inc()
        children[1].observe(seconds)

    def watch(
        self,
        recording: RecordingSource,
        policy: PolicySource | None = None,
        identity: IdentitySource | None = None,
    ) -> None:
        """Expose the recorder, policy and identity state at scrape time; readiness reads the same parts."""
        self.registry.register(_Readings(recording, policy, identity))
        recording.on_uploaded(self.upload_seconds.observe)
        self.ready = lambda: not_ready(recording, identity)

    def serve(self, address: str, port: int) -> ThreadingHTTPServer:
        """Serve /metrics, /ready and /live over HTTP in a daemon thread."""
        server = ThreadingHTTPServer((address, port), _handler(self))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        return server


class Buckets:
    """One histogram child, observed on the event loop alone: a bisect and two adds, no lock. prometheus_client's
    child takes two locks and walks its buckets (2-2.5 µs); the hot path observes six times per exchange."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # ends with +Inf: every value has a bucket
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0
        self.created = time.time()

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1  # the first bound >= the value: ``le`` is inclusive
        self.sum += seconds


class LoopHistogram(Collector):
    """A labelled histogram of ``Buckets`` children, exposed at scrape time exactly as a prometheus_client
    ``Histogram`` is (``_bucket``, ``_count``, ``_sum``, ``_created``). Observed from one thread (the event loop);
    a scrape from the HTTP thread copies each child's counts, a reading at most one observation behind."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labels
        self.bounds = (*buckets, math.inf)
        go_string = cast(Callable[[float], str], floatToGoString)  # the bucket names prometheus_client writes
        self._le = tuple(go_string(b) for b in self.bounds)
        self._children: dict[tuple[str, ...], Buckets] = {}

    def labels(self, *values: str) -> Buckets:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: labels {self.labelnames}, got {values}")
            child = self._children[values] = Buckets(self.bounds)
        return child

    def collect(self) -> Iterator[HistogramMetricFamily | GaugeMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        created = GaugeMetricFamily(f"{self.name}_created", self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            counts, total, cumulative = list(child.counts), child.sum, []
            running = 0
            for le, n in zip(self._le, counts, strict=True):
                running += n
                cumulative.append((le, float(running)))
            family.add_metric(list(values), cumulative, total)
            created.add_metric(list(values), child.created)
        yield family
        yield created


def not_ready(recording: RecordingSource, identity: IdentitySource | None) -> list[str]:
    """Why this processor should not get traffic yet (empty: ready). The policy is loaded before anything starts."""
    why = []
    st = recording.stats()
    if not st.healthy:
        why.append("recording spool not durable")
    elif not st.accepting:
        why.append("recorder not accepting (queue or spool full)")
    if identity is not None:
        why += [f"no signing keys from {iss}" for iss, ks in identity.keysets.items() if not ks.has_keys]
    return why


def _handler(metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/ready":
                why = metrics.ready()
                self._send(503 if why else 200, ("\n".join(why) or "ready").encode() + b"\n")
            elif path == "/live":
                self._send(200, b"live\n")
            else:
                self._send(404, b"not found: /metrics, /ready, /live\n")

        def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _Readings(Collector):
    def __init__(
        self, recording: RecordingSource, policy: PolicySource | None, identity: IdentitySource | None
    ) -> None:
        self.recording, self.policy, self.identity = recording, policy, identity

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        st = self.recording.stats()
        yield _counter("mcp_extproc_recording_events_written", "Events written to the spool", st.written_events)
        yield _counter("mcp_extproc_recording_events_lost", "Events lost (recording.required: false)", st.lost_events)
        yield _gauge("mcp_extproc_recording_healthy", "1 while the recording can be made durable", st.healthy)
        yield _gauge("mcp_extproc_recording_accepting", "1 while new exchanges are admitted", st.accepting)
        yield _gauge("mcp_extproc_recording_spool_bytes", "Bytes waiting in the spool", st.spool_bytes)
        yield _gauge("mcp_extproc_recording_queued_events", "Events emitted, not yet in the spool", st.queued_events)
        yield _gauge(
            "mcp_extproc_recording_segments_waiting",
            "Sealed segments in the spool, not yet stored",
            st.segments_waiting,
        )
        yield _gauge(
            "mcp_extproc_recording_disk_jobs_waiting",
            "Seals, fsyncs and file closes of the spool queued behind the data path",
            st.disk_jobs_waiting,
        )
        yield _counter("mcp_extproc_recording_uploads", "Segments stored", st.uploads)
        yield _counter("mcp_extproc_recording_upload_failures", "Segment uploads the store refused", st.upload_failures)
        yield _gauge("mcp_extproc_recording_store_failing", "1 while the store refuses segments", st.store_failing)
        unavailable = GaugeMetricFamily(
            "mcp_extproc_recording_unavailable",
            "1 for the reason new exchanges are refused (disk_full, spool_unwritable, spool_full, store_refusing)",
            labels=["reason"],
        )
        for reason in UNAVAILABLE_REASONS:
            unavailable.add_metric([reason], 1.0 if st.unavailable == reason else 0.0)
        yield unavailable
        if self.policy is not None:
            yield _counter("mcp_extproc_policy_reloads", "Valid policy edits applied", self.policy.reloads)
            yield _counter(
                "mcp_extproc_policy_reload_failures",
                "Policy edits rejected (last good kept)",
                self.policy.reload_failures,
            )
        if self.identity is not None:
            yield from _identity(self.identity)


def _identity(identity: IdentitySource) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    fetches = CounterMetricFamily("mcp_extproc_jwks_fetches", "JWKS fetches per issuer", labels=["issuer"])
    failures = CounterMetricFamily(
        "mcp_extproc_jwks_fetch_failures", "Failed discovery/JWKS fetches per issuer", labels=["issuer"]
    )
    age = GaugeMetricFamily(
        "mcp_extproc_jwks_age_seconds",
        "Seconds since the issuer's keys were last fetched (absent: never)",
        labels=["issuer"],
    )
    loaded = GaugeMetricFamily(
        "mcp_extproc_jwks_keys_loaded", "1 while the issuer's keys are loaded", labels=["issuer"]
    )
    for issuer, keyset in identity.keysets.items():
        counts: JwksCounts = keyset.metrics
        fetches.add_metric([issuer], counts.jwks_fetches)
        failures.add_metric([issuer], counts.fetch_failures)
        loaded.add_metric([issuer], float(keyset.has_keys))
        if (seconds := keyset.keys_age()) is not None:
            age.add_metric([issuer], seconds)
    yield from (fetches, failures, age, loaded)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float | bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))
