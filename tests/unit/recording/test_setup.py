"""recording/setup.py: the recorder's options built once from ``recording:``, the units converted there."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.recording.config import Recording
from extproc.recording.setup import build_runtime, recorder_options
from extproc.recording.writer import RecorderOptions


def test_options_come_from_recording_in_seconds(tmp_path: Path) -> None:
    rec = Recording(
        directory=tmp_path,
        queue_size=500,
        flush_interval_ms=50,
        seal_interval_ms=1500,
        max_seals_per_second=7.5,
        segment_max_bytes=64 << 10,
        segment_max_age_ms=2500,
        session_idle_timeout_s=90,
        required=False,
    )

    assert recorder_options(rec) == RecorderOptions(
        queue_size=500,
        flush_interval=0.05,
        seal_interval=1.5,
        seal_rate=7.5,
        segment_bytes=64 << 10,
        segment_age=2.5,
        idle_timeout=90,
        required=False,
    )


@pytest.mark.parametrize(
    ("seal_interval_ms", "seal_every"),
    [pytest.param(None, 1.0, id="default-5-flushes"), pytest.param(300, 0.3, id="set")],
)
def test_the_seal_tick_defaults_to_five_flush_intervals(seal_interval_ms: int | None, seal_every: float) -> None:
    options = recorder_options(Recording(flush_interval_ms=200, seal_interval_ms=seal_interval_ms))

    assert options.seal_every == pytest.approx(seal_every)


async def test_the_runtime_records_with_those_options_as_its_spools_writer(tmp_path: Path) -> None:
    rec = Recording(directory=tmp_path / "rec", flush_interval_ms=20, segment_max_age_ms=700, queue_size=64)
    runtime = build_runtime(rec)
    recorder = runtime.recorder

    assert recorder.options == recorder_options(rec)
    assert recorder.writer_id == recorder.spool.writer
    assert recorder.spool.path == tmp_path / "rec" / ".spool" / recorder.writer_id
    assert recorder.streams.seal_interval == pytest.approx(0.1)
    assert recorder.linger == 0.005
    await runtime.start()
    await runtime.close()
