"""The completer: finishes what a killed processor left behind, at start-up and then periodically.

A writer's spool folder is locked (flock) by its live process; the kernel drops the lock when the process dies,
however it dies. The completer adopts every unlocked folder: it seals the unfinished tail of each stream (every
complete line written before the kill is kept, a torn last line is dropped), with a final manifest signed on the
dead writer's behalf, ships everything to the store, and records an ``exchange.incomplete`` marker, in its own
stream, for every exchange that started but never ended. The partial log stays exactly as it was written.

With a transparency log, the dead writer's digests (its queued ones and the closing one) go through
``digest_store`` (the live writer's ``LoggedDigests``: each stored digest becomes a leaf of the live log), and
``adopt_leaves`` hands the leaves the dead writer had queued but not yet checkpointed to the live log.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from extproc.recording import chain
from extproc.recording.digest import close_for_dead_writer
from extproc.recording.events import ExchangeIncomplete
from extproc.recording.manifest import GENESIS, Manifest, Signer
from extproc.recording.recorder import Recorder
from extproc.recording.spool import HEAD, Spool
from extproc.recording.spool_files import read_meta
from extproc.recording.store import Segment, Store
from extproc.recording.uploader import Uploader
from extproc.tasks import cancel

log = logging.getLogger(__name__)


class Completer:
    """Adopts dead writers' spools under ``root`` and completes their streams."""

    def __init__(
        self,
        root: Path,
        store: Store,
        recorder: Recorder,
        signer: Signer,
        interval: float = 30.0,
        on_stored: Callable[[Segment], Awaitable[None]] | None = None,
        digest_store: Store | None = None,
        adopt_leaves: Callable[[Path], Awaitable[int]] | None = None,
    ) -> None:
        self.root = Path(root)
        self.on_stored = on_stored  # adopted segments go into this writer's digests
        self.store = store
        self.digest_store = digest_store or store  # where a dead writer's digests are stored (and logged)
        self.adopt_leaves = adopt_leaves  # the transparency log takes a dead writer's unpublished leaves
        self.recorder = recorder
        self.signer = signer
        self.interval = interval
        self.marked = 0
        self._adopted: dict[Path, Uploader] = {}
        self._open_chains: set[Path] = set()  # adopted folders whose writer's digest chain is not closed yet
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="completer")

    async def stop(self, drain_within: float = 10.0) -> None:
        """Stop adopting; ship what adopted spools still hold (within ``drain_within`` seconds), then let go of
        them. Whatever the store did not take stays in the folder for the next completer, nothing is lost."""
        await cancel(self._task)
        for folder, uploader in list(self._adopted.items()):
            await uploader.stop()
            drained = folder not in self._open_chains and await uploader.drain(drain_within)
            await uploader.spool.close(remove_if_empty=drained)
        self._adopted.clear()

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # a bad folder must not stop the completer for the others
                log.exception("completer round failed")
            await asyncio.sleep(self.interval)

    async def run_once(self, drain_within: float = 5.0) -> int:
        """Adopt and complete every dead writer's folder; ship adopted spools. Returns folders adopted now."""
        adopted = 0
        if self.root.is_dir():
            own = self.recorder.spool.path.resolve()
            for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
                if folder.resolve() == own or folder in self._adopted:
                    continue
                spool = await Spool.adopt(folder)
                if spool is None:
                    continue  # its writer is alive
                adopted += 1
                log.warning("completing the recordings of dead writer %s", folder.name)
                if self.adopt_leaves is not None:
                    await self.adopt_leaves(folder)
                for stream in spool.streams():
                    await self._complete(spool, stream)
                # Shipping starts at once, in its own task beside the live traffic: a dead writer's segments do not
                # wait for this loop's drain or its next round.
                uploader = self._adopted[folder] = Uploader(spool, self.store, on_stored=self.on_stored)
                uploader.start()
                self._open_chains.add(folder)
        for folder in sorted(self._open_chains):  # before the folder goes (once it is empty)
            if await close_for_dead_writer(
                folder, folder.name, self.digest_store, self.signer, self.recorder.writer_id
            ):
                self._open_chains.discard(folder)
        for folder, uploader in list(self._adopted.items()):
            if folder in self._open_chains:
                continue  # its chain is closed first (the store refused: next round)
            if await uploader.drain(drain_within):  # mostly shipped already by its own task
                await uploader.stop()
                await uploader.spool.close()
                del self._adopted[folder]
        return adopted

    async def _complete(self, spool: Spool, stream: Path) -> None:
        try:
            meta = read_meta(stream)
        except (OSError, ValueError):  # killed between creating the folder and its first line
            await asyncio.to_thread(_remove_empty, stream)
            return
        last = await asyncio.to_thread(_newest_manifest, stream)
        if last is not None and last.final:
            return  # the stream was ended properly; its segments only need shipping
        # Seals run behind the data path, so a writer killed between cutting a segment and writing its manifest
        # leaves more than one unsealed file: each is sealed in order, the last one final.
        manifests = await asyncio.to_thread(self._seal_tails, stream, meta, last)
        for manifest in manifests:
            await spool.seal(manifest, manifest.to_bytes())
        manifest = manifests[-1]
        for exchange in manifest.open:
            self.recorder.emit(
                ExchangeIncomplete(
                    session=meta["session"],
                    exchange=exchange,
                    time=self.recorder.wall_clock(),
                    writer=meta["writer"],
                    last_seq=manifest.last,
                )
            )
            self.marked += 1

    def _seal_tails(self, stream: Path, meta: dict[str, str], last: Manifest | None) -> list[Manifest]:
        """Manifests for every segment file after ``last``, in order; the last of them final."""
        out: list[Manifest] = []
        while True:
            segment = last.segment + 1 if last else 0
            final = not (stream / f"{segment + 1:08d}.seg").exists()
            last = self._seal_tail(stream, meta, last, final)
            out.append(last)
            if final:
                return out

    def _seal_tail(self, stream: Path, meta: dict[str, str], last: Manifest | None, final: bool = True) -> Manifest:
        """The manifest for what follows ``last``: every intact line of the next segment file."""
        segment = last.segment + 1 if last else 0
        seq = last.last + 1 if last else 0
        prev = last.head if last else GENESIS
        open_ = set(last.open) if last else set()
        path = stream / f"{segment:08d}.seg"
        data = path.read_bytes() if path.exists() else b""
        kept, first, head = 0, seq, prev
        for kept, ev, head in chain.intact(data, seq, prev):  # noqa: B007 (the last values are what count)
            if ev.get("type") == "exchange.start":
                open_.add(ev.get("exchange", ""))
            elif ev.get("type") == "exchange.end":
                open_.discard(ev.get("exchange", ""))
            seq += 1
        if kept != len(data):
            log.warning("%s: dropping %d bytes after the last intact line (torn write)", path, len(data) - kept)
            with open(path, "r+b") as f:
                f.truncate(kept)
        elif not path.exists():
            path.touch()
        manifest = Manifest(
            session=meta["session"],
            writer=meta["writer"],
            segment=segment,
            first=first,
            last=seq - 1,
            count=seq - first,
            size=kept,
            sha256=hashlib.sha256(data[:kept]).hexdigest(),
            head=head,
            prev_manifest=last.digest() if last else GENESIS,
            final=final,
            open=sorted(open_),
            created=self.recorder.wall_clock(),
            sealed_by=self.recorder.writer_id,
        )
        return self.signer.sign(manifest)


def _newest_manifest(stream: Path) -> Manifest | None:
    numbered = sorted(stream.glob("[0-9]*.manifest"))
    path = numbered[-1] if numbered else stream / HEAD
    return Manifest.from_bytes(path.read_bytes()) if path.exists() else None


def _remove_empty(folder: Path) -> None:
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
