"""The tap on the recorder's chain: each event, as its line is chained, goes through the fold; each OCSF event
the fold completes is offered to every sink.

Why the chain and not the exchange's ``finish``: only there is the proof pointer known (the line's stream, segment,
sequence number and hash are fixed when it is chained, and never change after). The tap costs the recorder's
writer one type check per event and, for the four event types the fold reads, a few field reads; encoding and
sending happen in the sinks' own tasks. An error inside the tap is logged and counted, never raised into the
recorder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from extproc.export.config import Export
from extproc.export.ocsf import Fold, Pointer
from extproc.export.proof import checkpoint_event
from extproc.export.sinks import Entry, FileOutput, HecOutput, Sink, SyslogOutput, prepare
from extproc.export.template import exchange_entry
from extproc.recording.events import Event
from extproc.recording.streams import Streams

if TYPE_CHECKING:
    from extproc.evidence.tlog import TransparencyLog

log = logging.getLogger(__name__)

FOLDED = frozenset({"exchange.start", "mcp.request", "policy.decision", "exchange.end", "audit.access"})

_POINTED = frozenset({"exchange.start", "exchange.end", "audit.access"})
_ELSEWHERE = Pointer("", "", 0, 0, "")


class Exporter:
    """Folds chained events into OCSF events and hands them to the sinks; ``chained`` is the recorder's tap."""

    def __init__(self, sinks: list[Sink], fold: Fold | None = None) -> None:
        self.sinks = sinks
        self.fold = fold or Fold(make=exchange_entry)
        self.exported = 0  # OCSF events made (each offered to every sink)
        self.errors = 0  # events the fold could not read (a bug: logged)

    @classmethod
    def from_config(cls, config: Export, writer: str = "") -> Exporter:
        """The sinks of ``config``; ``writer`` names this process's own file when several processes export."""
        d = config.delivery
        sinks: list[Sink] = []
        if config.file is not None:
            sinks.append(FileOutput(config.file.for_writer(writer), d))
        if config.hec is not None:
            sinks.append(HecOutput(config.hec, d))
        if config.syslog is not None:
            sinks.append(SyslogOutput(config.syslog, d))
        include = config.include
        return cls(sinks, Fold(exchanges="exchanges" in include, audit="audit" in include, make=exchange_entry))

    def chained(self, event: Event, writer: str, segment: int, seq: int, sha256: str) -> None:
        """The recorder chained ``event`` as line ``seq`` of ``writer``'s stream, in ``segment``, hashing to
        ``sha256``. Never raises."""
        kind = event.type
        if kind not in FOLDED:
            return
        # Where the line is matters to the fold only at an exchange's start and end (and for an audit access).
        at = Pointer(event.session, writer, segment, seq, sha256) if kind in _POINTED else _ELSEWHERE
        try:
            out = self.fold.feed(kind, lambda name: getattr(event, name, None), at)
        except Exception:
            self.errors += 1
            log.exception("export: cannot fold %s of exchange %s", kind, event.exchange)
            return
        if out is not None:
            self.offer(out)

    def covered(self, origin: str, size: int, leaves: list[tuple[str, str, int, int]]) -> None:
        """The transparency log's ``on_covered``: one ``proofs`` event per segment its new checkpoint covers (the
        checkpoint the exchange events of that segment pointed to as null). Never raises."""
        now = time.time()
        for session, stream, segment, index in leaves:
            try:
                self.offer(checkpoint_event(origin, size, session, stream, segment, index, now))
            except Exception:
                self.errors += 1
                log.exception("export: cannot make the proof event of %s segment %d", session, segment)

    def offer(self, event: dict[str, Any] | Entry) -> None:
        """Serialize ``event`` once (an exchange's comes serialized: export/template.py) and queue the same bytes at
        every sink."""
        self.exported += 1
        entry = prepare(event) if isinstance(event, dict) else event
        for sink in self.sinks:
            sink.offer(entry)

    def start(self) -> None:
        for sink in self.sinks:
            sink.start()

    async def close(self, drain_within: float = 5.0) -> None:
        for sink in self.sinks:
            await sink.close(drain_within)

    def collector(self) -> Collector:
        """Prometheus readings of the sinks (registered on the processor's registry)."""
        return _Readings(self)


def attach(
    config: Export | None, streams: Streams, writer: str = "", tlog: TransparencyLog | None = None
) -> Exporter | None:
    """Start exporting what ``streams`` (a recorder's) chains, when gateway.yaml has an ``export:`` section, and
    the checkpoints of ``tlog`` (the recorder's transparency log, if any) as follow-up proof events.
    ``writer``: "" for the only process writing ``export.file``, else a name of its own (worker 2, audit)."""
    if config is None:
        return None
    exporter = Exporter.from_config(config, writer)
    streams.tap = exporter.chained
    if tlog is not None and "exchanges" in config.include:
        tlog.on_covered = exporter.covered
    exporter.start()
    log.info("exporting OCSF events to %s", ", ".join(s.name for s in exporter.sinks))
    return exporter


class _Readings(Collector):
    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        queued = GaugeMetricFamily(
            "mcp_extproc_export_queued", "OCSF events waiting in a sink's queue", labels=["sink"]
        )
        sent = CounterMetricFamily("mcp_extproc_export_sent", "OCSF events delivered, by sink", labels=["sink"])
        dropped = CounterMetricFamily(
            "mcp_extproc_export_dropped",
            "OCSF events not delivered, by sink and reason (queue_full, refused, shutdown)",
            labels=["sink", "reason"],
        )
        failures = CounterMetricFamily(
            "mcp_extproc_export_failures", "Failed delivery attempts (each retried with backoff)", labels=["sink"]
        )
        for s in self.exporter.sinks:
            queued.add_metric([s.name], len(s.queue))
            sent.add_metric([s.name], s.sent)
            failures.add_metric([s.name], s.failures)
            for reason, n in s.dropped.items():
                dropped.add_metric([s.name, reason], n)
        yield from (queued, sent, dropped, failures)
