"""Prometheus metrics of one processor: what was refused and why, decisions, reloads, recording health.

Counters are incremented on the exchange's own paths (a label lookup and an add: about a microsecond); the state
of the recorder, the policy watcher and the JWKS caches is read only when Prometheus scrapes. Each processor
(worker) has its own registry and port.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from extproc.gateway import Gateway


class Metrics:
    """The processor's counters; ``watch`` adds live readings of the gateway's parts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.exchanges = Counter(
            "mcp_extproc_exchanges",
            "Exchanges recorded, by server and outcome",
            ["server", "outcome"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "mcp_extproc_refusals",
            "Requests the gateway answered itself, by HTTP status and reason (error class)",
            ["status", "reason"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "mcp_extproc_policy_decisions",
            "Policy decisions per JSON-RPC request",
            ["server", "allowed"],
            registry=self.registry,
        )
        self.active = Gauge("mcp_extproc_active_streams", "ext_proc streams in progress", registry=self.registry)

    def watch(self, gw: Gateway) -> None:
        """Expose the recorder, policy and identity state of ``gw`` at scrape time."""
        self.registry.register(_GatewayCollector(gw))

    def serve(self, address: str, port: int) -> None:
        """Serve /metrics over HTTP (a daemon thread of prometheus_client)."""
        start_http_server(port, addr=address, registry=self.registry)


class _GatewayCollector(Collector):
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        rec = self.gw.recorder
        yield _counter("mcp_extproc_recording_events_written", "Events written to the spool", rec.written_events)
        yield _counter("mcp_extproc_recording_events_lost", "Events lost (recording.required: false)", rec.lost_events)
        yield _gauge("mcp_extproc_recording_healthy", "1 while the recording can be made durable", rec.healthy)
        yield _gauge("mcp_extproc_recording_accepting", "1 while new exchanges are admitted", rec.accepting)
        yield _gauge("mcp_extproc_recording_spool_bytes", "Bytes waiting in the spool", rec.spool.size)
        if self.gw.policy is not None:
            yield _counter("mcp_extproc_policy_reloads", "Valid policy edits applied", self.gw.policy.reloads)
            yield _counter(
                "mcp_extproc_policy_reload_failures",
                "Policy edits rejected (last good kept)",
                self.gw.policy.reload_failures,
            )
        if self.gw.auth is not None:
            fetches = CounterMetricFamily("mcp_extproc_jwks_fetches", "JWKS fetches per issuer", labels=["issuer"])
            failures = CounterMetricFamily(
                "mcp_extproc_jwks_fetch_failures", "Failed discovery/JWKS fetches per issuer", labels=["issuer"]
            )
            for issuer, keyset in self.gw.auth.keysets.items():
                fetches.add_metric([issuer], keyset.metrics.jwks_fetches)
                failures.add_metric([issuer], keyset.metrics.fetch_failures)
            yield fetches
            yield failures


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float | bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))
