"""`mcp-extproc doctor` names why the recording is unavailable: the reason a running processor publishes, and a
spool disk with no room."""

from __future__ import annotations

from pathlib import Path

from extproc.doctor.live import check_recording_available
from extproc.launcher import free_port
from extproc.metrics import Metrics
from extproc.recording.recorder import Recorder
from extproc.recording.spool import Spool
from extproc.recording.store.file import FileStore
from extproc.recording.writer import RecorderOptions
from extproc.settings import load


def _settings(tmp_path: Path, port: int):  # type: ignore[no-untyped-def]
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        "allow_anonymous: true\nservers: [{name: a, upstream: '127.0.0.1:1'}]\n"
        f"recording: {{directory: {tmp_path / 'rec'}}}\nprocessor: {{metrics_port: {port}}}\n"
    )
    return load(cfg)


async def test_a_processor_that_cannot_record_is_named_with_its_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rec = Recorder(FileStore(tmp_path / "store"), Spool(blocker / "spool", "w"), RecorderOptions(flush_interval=0.01))
    await rec.start()  # its spool cannot be made: unavailable (ENOTDIR)
    metrics, port = Metrics(), free_port()
    metrics.watch(rec)
    server = metrics.serve("127.0.0.1", port)
    try:
        checks = {c.name: c for c in check_recording_available(_settings(tmp_path, port))}
    finally:
        server.shutdown()
        server.server_close()
        await rec.close()
    assert checks["recording room"].status in ("ok", "warn")
    failed = checks["recording 0"]
    assert failed.status == "fail" and "recording unavailable (spool_unwritable)" in failed.detail


async def test_an_available_recording_is_ok(tmp_path: Path) -> None:
    rec = Recorder(FileStore(tmp_path / "store"), Spool(tmp_path / "spool", "w"), RecorderOptions(flush_interval=0.01))
    await rec.start()
    metrics, port = Metrics(), free_port()
    metrics.watch(rec)
    server = metrics.serve("127.0.0.1", port)
    try:
        checks = {c.name: c for c in check_recording_available(_settings(tmp_path, port))}
    finally:
        server.shutdown()
        server.server_close()
        await rec.close()
    assert checks["recording 0"].status == "ok", checks
