"""The recorder's streams: one hash chain per (session, writer), cut into segments, each sealed by a signed manifest.

Chaining puts each event's line (serialized once, carrying the SHA-256 of the previous line) into its stream's
pending ops; cutting seals segments (after an exchange end, by age, by size) and ends streams (the session is over
or idle); ``batch`` hands the pending ops to the spool in order. Seals after an exchange end or by age happen on a
tick, every ``seal_interval``, for every stream due at once: at a low rate the seals of many
streams share one batch of disk work instead of one each per exchange. They keep to a processor-wide budget,
oldest segment first, so the cost does not grow with the number of busy sessions. A segment that would pass its
maximum age before the next tick is sealed on this one. A round touches only the streams with work: those where an
exchange ended (for a session's end), all with work on each tick, all once a second (idle timeouts).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from extproc.recording.chain import event_line
from extproc.recording.events import Event, ExchangeEnd, ExchangeStart
from extproc.recording.manifest import GENESIS, Manifest, Signer
from extproc.recording.spool_files import Append, Unfinished

MAX_ENDED = 16_384  # ended sessions remembered per generation (about 2 MB); see Streams._epochs


@dataclass(slots=True)
class Stream:
    """Chain and segment state of one (session, writer) stream."""

    session: str
    writer: str
    seq: int = 0
    prev: str = GENESIS
    segment: int = 0
    seg_first: int = 0
    seg_size: int = 0
    seg_opened: float = 0.0
    # SHA-256 of the stream's last manifest, kept by the seals behind the data path (they hash, sign and link)
    link: list[str] = field(default_factory=lambda: [GENESIS])
    open: set[str] = field(default_factory=set)
    end_now: bool = False  # the session is over: end the stream at the next cut
    due: bool = False  # an exchange ended: seal the segment, at most once per seal interval
    last_seal: float = 0.0
    last_event: float = 0.0
    ops: list[tuple[int, bytes] | Unfinished] = field(default_factory=list)  # not yet in the spool, in order


class Streams:
    """Every stream of one writer, and which of them have work."""

    def __init__(
        self,
        writer_id: str,
        signer: Signer,
        *,
        segment_bytes: int,
        segment_age: float,
        seal_interval: float,
        seal_rate: float,
        idle_timeout: float,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        max_ended: int = MAX_ENDED,
    ) -> None:
        self.writer_id = writer_id
        self.signer = signer
        self.segment_bytes = segment_bytes
        self.segment_age = segment_age
        self.seal_interval = seal_interval
        self.seal_rate = seal_rate
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._wall_clock = wall_clock
        self.open: dict[str, Stream] = {}  # by session
        # Streams with work (lines not spooled, an open segment, a seal due, an end pending); idle SSE sessions can
        # be many, and are only looked at once a second, for the idle timeout.
        self.active: dict[str, Stream] = {}
        # Streams with ops not yet in the spool (ended ones too), by identity: a round writes these and nothing else.
        self.pending: dict[int, Stream] = {}
        self.pending_bytes = 0  # chained lines not yet in the spool
        # Sessions whose stream this writer ended in this generation, and how often: a later event opens a stream
        # under a name never used before. Bounded: when it holds ``max_ended`` sessions it is dropped and the
        # generation moves on, so every stream opened afterwards is named with the new generation (a name no
        # earlier stream had), whether or not its session ended before.
        self._epochs: dict[str, int] = {}
        self.max_ended = max_ended
        self._generation = 0
        self._next_idle_scan = 0.0
        self._next_seal_scan = 0.0
        self._seal_tokens = seal_rate  # a token bucket over seals by exchange end or age
        self._seal_refill = clock()
        # Told of every chained line (event, writer, segment, seq, SHA-256): the SIEM export's proof pointers
        # (extproc/export/). Must not raise; None: nobody listens.
        self.tap: Callable[[Event, str, int, int, str], None] | None = None

    @property
    def has_lines(self) -> bool:
        """Chained lines not yet in the spool file (a manifest waiting alone does not hold a commit)."""
        return self.pending_bytes > 0

    def seal_due(self) -> bool:
        """A segment whose seal is held back (until the next tick, or by the budget)."""
        return any(s.due and s.seg_size for s in self.active.values())

    def next_tick(self) -> float:
        """Seconds until the next seal tick."""
        return max(0.0, self._next_seal_scan - self._clock())

    def unwritten_lines(self) -> int:
        return sum(1 for s in self.pending.values() for op in s.ops if isinstance(op, tuple))

    # --- chaining ----------------------------------------------------------------------------------------------

    def chain(self, events: list[Event], room: Callable[[int], bool] | None = None) -> tuple[list[Stream], list[Event]]:
        """Chain events into their streams' pending ops. Returns the streams where an exchange ended, and the events
        dropped because ``room`` (recording.required: false) said the spool could not take their line."""
        ended: list[Stream] = []
        dropped: list[Event] = []
        now = self._clock()  # one reading per batch: its events are chained within microseconds
        sha256, active, open_streams = hashlib.sha256, self.active, self.open
        for e in events:
            st = open_streams.get(e.session) or self._stream(e.session)
            active[e.session] = st
            body = event_line(st.seq, st.prev, e)
            line = body + b"\n"
            if room is not None and not room(self.pending_bytes + len(line)):
                dropped.append(e)  # never chained: what is kept still verifies
                continue
            self.pending_bytes += len(line)
            if st.seg_size == 0:
                st.seg_opened = now
            st.seq += 1
            st.prev = sha256(body).hexdigest()
            if self.tap is not None:
                self.tap(e, st.writer, st.segment, st.seq - 1, st.prev)
            st.seg_size += len(line)
            st.last_event = now
            st.ops.append((st.segment, line))
            self.pending[id(st)] = st
            if isinstance(e, ExchangeStart):
                st.open.add(e.exchange)
            elif isinstance(e, ExchangeEnd):
                st.open.discard(e.exchange)
                st.due = True
                ended.append(st)
                st.end_now = st.end_now or e.ends_session
            if st.seg_size >= self.segment_bytes:
                self.seal(st, final=False)
        return ended, dropped

    def _stream(self, session: str) -> Stream:
        st = self.open.get(session)
        if st is None:
            epoch, gen = self._epochs.get(session, 0), self._generation
            writer = self.writer_id if gen == 0 else f"{self.writer_id}.g{gen}"
            writer = writer if epoch == 0 else f"{writer}.{epoch}"
            st = self.open[session] = Stream(session, writer, seg_opened=self._clock())
        return st

    # --- segments ----------------------------------------------------------------------------------------------

    def cut(self, ended: list[Stream], stopping: bool) -> bool:
        """Seal segments at exchange ends and by age, and end streams whose session is over or idle. Returns whether
        this was a scan of every stream with work (then ``settle`` may forget the finished ones)."""
        now = self._clock()
        scanned = True
        if stopping or now >= self._next_idle_scan:  # idle streams have no work but may time out
            candidates = self.open
            self._next_idle_scan = now + min(1.0, self.idle_timeout)
        elif now >= self._next_seal_scan:
            candidates = self.active
        else:
            candidates = {st.session: st for st in ended if self.open.get(st.session) is st}
            scanned = False
        if scanned:
            self._next_seal_scan = now + self.seal_interval
        due: list[Stream] = []
        for session, st in list(candidates.items()):
            final = stopping or (not st.open and (st.end_now or now - st.last_event >= self.idle_timeout))
            if final:
                self.seal(st, final=True)
                del self.open[session]
                self.active.pop(session, None)
                self._ended(session)
            elif scanned and st.seg_size and (st.due or now - st.seg_opened >= self.segment_age - self.seal_interval):
                due.append(st)
        # Sealing signs a manifest and ships a segment: once per stream per seal interval, not once per exchange,
        # and at most ``seal_rate`` a second in all, oldest segment first. A crash before the seal loses nothing:
        # the completer seals every complete line left in the spool.
        self._seal_tokens = min(self.seal_rate, self._seal_tokens + (now - self._seal_refill) * self.seal_rate)
        self._seal_refill = now
        if len(due) > self._seal_tokens:
            due.sort(key=lambda st: st.seg_opened)
            due = due[: int(self._seal_tokens)]
        self._seal_tokens -= len(due)
        for st in due:
            self.seal(st, final=False)
        return scanned

    def _ended(self, session: str) -> None:
        """This writer ended ``session``'s stream: its next one needs a new name (see ``_epochs``)."""
        if len(self._epochs) >= self.max_ended and session not in self._epochs:
            self._epochs.clear()
            self._generation += 1
        self._epochs[session] = self._epochs.get(session, 0) + 1

    def seal(self, st: Stream, final: bool) -> None:
        if st.seg_size == 0 and not final:
            return
        manifest = Manifest(
            session=st.session,
            writer=st.writer,
            segment=st.segment,
            first=st.seg_first,
            last=st.seq - 1,
            count=st.seq - st.seg_first,
            size=st.seg_size,
            sha256="",  # of the segment file, behind the data path (Spool.write_behind), then signed and linked
            head=st.prev,
            prev_manifest="",
            final=final,
            open=sorted(st.open),
            created=self._wall_clock(),
        )
        st.ops.append(Unfinished(manifest, st.link, self.signer))
        self.pending[id(st)] = st
        st.due, st.last_seal = False, self._clock()
        st.segment += 1
        st.seg_first, st.seg_size = st.seq, 0

    def settle(self) -> None:
        """Forget streams whose work is done until their next event."""
        for session, st in list(self.active.items()):
            if not (st.ops or st.seg_size or st.due or st.end_now):
                del self.active[session]

    # --- handing ops to the spool ------------------------------------------------------------------------------

    def batch(self) -> tuple[list[Append | Unfinished], list[tuple[Stream, int]]]:
        """Every pending op, in order per stream; consecutive lines of one segment as one append. With each op: its
        stream and how many of the stream's ops it covers (for ``spooled``)."""
        batch: list[Append | Unfinished] = []
        owners: list[tuple[Stream, int]] = []
        for st in self.pending.values():
            ops, i = st.ops, 0
            while i < len(ops):
                op = ops[i]
                if isinstance(op, Unfinished):
                    batch.append(op)
                    owners.append((st, 1))
                    i += 1
                    continue
                n = i + 1
                while n < len(ops) and isinstance(ops[n], tuple) and ops[n][0] == op[0]:  # type: ignore[index]
                    n += 1
                batch.append(Append(st.session, st.writer, op[0], b"".join(o[1] for o in ops[i:n])))  # type: ignore[index]
                owners.append((st, n - i))
                i = n
        return batch, owners

    def spooled(self, batch: list[Append | Unfinished], owners: list[tuple[Stream, int]], done: int) -> int:
        """The spool took the first ``done`` ops of ``batch``: drop them from their streams. Returns the lines."""
        lines = 0
        for item, (st, count) in zip(batch[:done], owners[:done], strict=True):
            del st.ops[:count]
            if isinstance(item, Append):
                lines += count
                self.pending_bytes -= len(item.data)
        for key, st in list(self.pending.items()):
            if not st.ops:
                del self.pending[key]
        return lines
