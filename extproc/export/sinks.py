"""The export outputs: a JSON lines file (rotated), Splunk HEC, syslog RFC 5424 over TCP or TLS.

The exporter serializes each OCSF event once (``prepare``: the JSON bytes and the few header fields an output
puts around them) and offers the same entry to every sink: queues hold bytes, not nested dicts, so a backlog costs
the garbage collector nothing and no output encodes an event again.

Each sink owns a bounded queue and one task. ``offer`` never blocks and never raises: a full queue drops the event
and counts it (``dropped["queue_full"]``). The task sends batches from the head of the queue; a batch leaves the
queue only once sent, so a collector that is down holds the queue at its bound while the task retries with
exponential backoff (``delivery.retry_initial_ms`` doubling up to ``retry_max_ms``). What a collector refuses as
malformed (HEC 400) is dropped and counted, not retried forever; what is still queued at shutdown is counted too.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import socket
import ssl
import time
from collections import deque
from itertools import islice
from pathlib import Path
from typing import Any

import httpx
import orjson

from extproc.export.config import Delivery, FileSink, HecSink, SyslogSink
from extproc.sections import split_hostport

log = logging.getLogger(__name__)


# One prepared event: (OCSF JSON, time in ms, severity_id, metadata.log_name, the proof pointer's syslog parameters
# ((name, value) pairs of those in SD_PROOF it has)). Plain tuples of atoms: the garbage collector stops tracking them.
Entry = tuple[bytes, int, int, str, tuple[tuple[str, str], ...]]
SD_PROOF = ("session", "writer", "segment", "seq", "sha256")


def prepare(event: dict[str, Any]) -> Entry:
    """An OCSF event serialized once, with what the outputs' envelopes and headers need."""
    proof = (event.get("unmapped") or {}).get("proof") or {}
    pointer = tuple((k, str(proof[k])) for k in SD_PROOF if k in proof)
    return (
        orjson.dumps(event),
        int(event.get("time", 0)),
        int(event.get("severity_id", 1)),
        str((event.get("metadata") or {}).get("log_name") or "-"),
        pointer,
    )


class SendFailed(Exception):
    """A batch could not be delivered now; it stays queued and is retried."""


class Refused(Exception):
    """The collector refuses the batch as such (malformed): retrying would not help; it is dropped and counted."""


class Sink(abc.ABC):
    """A bounded queue in front of one output, drained by one task with retries and backoff."""

    name = "sink"

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.queue: deque[Entry] = deque()
        self.sent = 0
        self.failures = 0  # failed attempts (each retried)
        self.dropped: dict[str, int] = {"queue_full": 0, "refused": 0, "shutdown": 0}
        self.last_error = ""
        self.failures_in_a_row = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # the queue is empty (close waits on it)
        self._room = asyncio.Event()  # a batch left the queue (``put`` waits on it)
        self._full = asyncio.Event()  # a whole batch is queued: the linger ends
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def offer(self, event: Entry | dict[str, Any]) -> bool:
        """Queue one event (prepared, or an OCSF dict) without waiting; False (and counted) when the queue is full."""
        if len(self.queue) >= self.delivery.queue_size:
            self.dropped["queue_full"] += 1
            return False
        self.queue.append(prepare(event) if isinstance(event, dict) else event)
        self._idle.clear()
        self._wake.set()
        if len(self.queue) >= self.delivery.batch_size:
            self._full.set()
        return True

    async def put(self, event: Entry | dict[str, Any]) -> None:
        """Queue one event, waiting for room: for a backfill, which may wait (the live path uses ``offer``)."""
        while len(self.queue) >= self.delivery.queue_size:
            self._room.clear()
            await self._room.wait()
        self.offer(event)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"export-{self.name}")

    async def close(self, drain_within: float = 5.0) -> None:
        """Send what is queued for at most ``drain_within`` seconds, then stop; the rest is counted as dropped."""
        if self._task is None:
            return
        if self.queue and not self.failures_in_a_row:  # a failing collector gets no grace: it would only wait
            try:
                await asyncio.wait_for(self._idle.wait(), drain_within)
            except TimeoutError:
                pass
        self._stopping.set()
        self._wake.set()
        self._full.set()
        await self._task
        self._task = None
        if self.queue:
            self.dropped["shutdown"] += len(self.queue)
            log.warning("export %s: %d events not delivered at shutdown", self.name, len(self.queue))
            self.queue.clear()
        await self.aclose()

    async def _run(self) -> None:
        backoff = self.delivery.retry_initial_ms / 1000
        while not self._stopping.is_set():
            if not self.queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._linger()
            batch = list(islice(self.queue, self.delivery.batch_size))
            try:
                await self.send(batch)
            except (SendFailed, OSError, httpx.HTTPError, ssl.SSLError) as e:
                self.failures += 1
                self.failures_in_a_row += 1
                self.last_error = str(e) or type(e).__name__
                if self.failures_in_a_row == 1:
                    log.warning("export %s failing (retrying with backoff): %s", self.name, self.last_error)
                try:
                    await asyncio.wait_for(self._stopping.wait(), backoff)
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, self.delivery.retry_max_ms / 1000)
                continue
            except Exception as e:  # refused as malformed (or a bug encoding it): retrying would not help
                self.dropped["refused"] += len(batch)
                log.error(
                    "export %s: %d events dropped: %s", self.name, len(batch), e, exc_info=not isinstance(e, Refused)
                )
            else:
                self.sent += len(batch)
                if self.failures_in_a_row:
                    log.warning("export %s recovered after %d failed attempts", self.name, self.failures_in_a_row)
            for _ in batch:
                self.queue.popleft()
            self._room.set()
            self.failures_in_a_row = 0
            backoff = self.delivery.retry_initial_ms / 1000

    async def _linger(self) -> None:
        """Gather a batch for up to ``linger_ms``: one write (a thread hop, an HTTP request) per batch, not per
        event. A full batch, a backlog from failed attempts, or shutdown skips it."""
        linger = self.delivery.linger_ms / 1000
        if linger <= 0 or len(self.queue) >= self.delivery.batch_size or self.failures_in_a_row:
            return
        self._full.clear()
        if self._stopping.is_set():
            return
        try:
            await asyncio.wait_for(self._full.wait(), linger)
        except TimeoutError:
            pass

    @abc.abstractmethod
    async def send(self, batch: list[Entry]) -> None:
        """Deliver one batch (each output its own way); raising counts a failure and retries it."""

    async def aclose(self) -> None:  # noqa: B027 (an optional hook: most outputs hold nothing)
        """Release connections and files (nothing to release by default)."""


class FileOutput(Sink):
    """JSON lines, appended; a batch that would take the file past ``max_bytes`` goes to a fresh one, the full file
    becoming ``.1`` (older ones shift, ``keep`` are kept)."""

    name = "file"

    def __init__(self, config: FileSink, delivery: Delivery) -> None:
        super().__init__(delivery)
        self.config = config

    async def send(self, batch: list[Entry]) -> None:
        data = b"\n".join([e[0] for e in batch]) + b"\n"
        await asyncio.to_thread(self._append, data)

    def _append(self, data: bytes) -> None:
        path = self.config.path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(data) > self.config.max_bytes:  # rotate first: the named file always exists
            rotate(path, self.config.keep)
        with open(path, "ab") as f:
            f.write(data)


def rotate(path: Path, keep: int) -> None:
    """``path`` -> ``path.1`` -> ``path.2`` ...; the oldest past ``keep`` is removed (keep 0: just truncate)."""
    if keep == 0:
        path.unlink(missing_ok=True)
        return
    oldest = path.with_name(f"{path.name}.{keep}")
    oldest.unlink(missing_ok=True)
    for n in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.rename(path.with_name(f"{path.name}.{n + 1}"))
    path.rename(path.with_name(f"{path.name}.1"))


class HecOutput(Sink):
    """Splunk HTTP Event Collector: one POST per batch of event envelopes, ``Authorization: Splunk <token>``."""

    name = "hec"

    def __init__(self, config: HecSink, delivery: Delivery) -> None:
        super().__init__(delivery)
        self.config = config
        self.url = config.url.rstrip("/") + "/services/collector/event"
        try:
            token = config.token_file.read_text().strip()
        except OSError as e:
            from extproc.errors import ConfigError

            raise ConfigError(f"export.hec.token_file: cannot read {config.token_file}: {e.strerror}") from e
        self._headers = {"authorization": f"Splunk {token}", "content-type": "application/json"}
        verify: ssl.SSLContext | bool = True
        if config.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(config.ca_file))
        self._client = httpx.AsyncClient(timeout=config.timeout_ms / 1000, verify=verify)
        self._host = socket.gethostname()
        extra = {"index": config.index} if config.index else {}
        fields = {"host": self._host, "source": "mcp-extproc", "sourcetype": config.sourcetype, **extra}
        self._fields = orjson.dumps(fields)[1:-1] + b","  # the envelope's constant members

    async def send(self, batch: list[Entry]) -> None:
        # The envelope around the event's JSON as it is: '{"time":...,...,"event":' + event + '}'.
        body = b"".join(b'{"time":%s,%s"event":%s}' % (orjson.dumps(e[1] / 1000), self._fields, e[0]) for e in batch)
        r = await self._client.post(self.url, content=body, headers=self._headers)
        if r.status_code == 400:
            raise Refused(f"HTTP 400: {r.text[:200]}")
        if r.status_code != 200:
            raise SendFailed(f"HTTP {r.status_code} from {self.url}: {r.text[:200]}")

    async def aclose(self) -> None:
        await self._client.aclose()


class SyslogOutput(Sink):
    """RFC 5424 over TCP, octet-counted framing (RFC 6587 3.4.1); with ``tls``, RFC 5425 (server certificate and
    name checked against ``ca_file``). One connection, reopened after a failure or once the collector closed it.
    Syslog over TCP has no acknowledgement: what the kernel took just before a collector died can be lost; HEC
    (which answers each batch) is the output for delivery that is confirmed."""

    name = "syslog"

    def __init__(self, config: SyslogSink, delivery: Delivery) -> None:
        super().__init__(delivery)
        self.config = config
        self.host, self.port = split_hostport(config.address)
        self._ssl: ssl.SSLContext | None = None
        if config.tls:
            self._ssl = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
        self._reader: asyncio.StreamReader | None = None  # never read: it tells when the collector closed
        self._writer: asyncio.StreamWriter | None = None
        self._hostname = socket.gethostname()
        self._procid = str(os.getpid())

    async def send(self, batch: list[Entry]) -> None:
        data = b"".join(_framed(self.format(e)) for e in batch)
        try:
            await asyncio.sleep(0)  # let the loop read a close the collector sent meanwhile (its FIN, close_notify)
            if self._writer is None or self._writer.is_closing() or self._reader is None or self._reader.at_eof():
                await self.aclose()
                self._reader, self._writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None
                )
            self._writer.write(data)
            await self._writer.drain()
        except (OSError, ssl.SSLError) as e:
            await self.aclose()
            raise SendFailed(f"syslog {self.config.address}: {e}") from e

    def format(self, entry: Entry | dict[str, Any]) -> bytes:
        """One RFC 5424 message: header, the proof pointer as structured data, the OCSF event as MSG."""
        data, t, severity_id, msgid, proof = prepare(entry) if isinstance(entry, dict) else entry
        severity = 4 if severity_id >= 3 else 6  # warning for denials and failed accesses, else info
        pri = self.config.facility * 8 + severity
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t / 1000)) + f".{t % 1000:03d}Z"
        sd = "-"
        if proof:
            params = " ".join(f'{k}="{_sd_escape(v)}"' for k, v in proof)
            sd = f"[proof@32473 {params}]"  # 32473: the example enterprise number of RFC 5612
        head = f"<{pri}>1 {ts} {self._hostname} {self.config.app_name} {self._procid} {msgid or '-'} {sd} "
        return head.encode() + data

    async def aclose(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass


def _framed(msg: bytes) -> bytes:
    return b"%d %s" % (len(msg), msg)


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
