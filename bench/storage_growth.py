"""Figure: recordings on the file store grow without bound unless retention is on; with it they stay under
max_total_bytes (and max_age_days) whatever the traffic.

A month of traffic is simulated at 50 MiB a day (1.5 GiB a month: the size of an audit table that took down
another gateway) as session folders of realistic sizes, written as sparse files (st_size counts, the disk does
not fill), with the real ``Retention`` sweeping every simulated hour on a simulated clock. Writes
bench/storage_growth.svg and prints the numbers.

    python bench/storage_growth.py
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

from extproc.recording.bounds import Retention
from extproc.recording.events import Event

MIB = 1 << 20
DAY = 86400.0
PER_DAY = 50 * MIB
SESSIONS_PER_DAY = 480
LIMIT = 256 * MIB
MAX_AGE_DAYS = 14


def simulate(root: Path, retention: bool, days: int = 30, seed: int = 1) -> list[tuple[float, int]]:
    rnd = random.Random(seed)
    now = [0.0]
    records: list[Event] = []

    def emit(ev: Event) -> bool:
        records.append(ev)
        return True

    sweeper = Retention(root, emit, max_age_s=MAX_AGE_DAYS * DAY, max_total_bytes=LIMIT, clock=lambda: now[0])
    points, total, n = [], 0, 0
    for hour in range(days * 24):
        for _ in range(SESSIONS_PER_DAY // 24):
            size = int(rnd.expovariate(1 / (PER_DAY / SESSIONS_PER_DAY)))
            folder = root / f"s{n:07d}"
            folder.mkdir()
            for name in ("w.jsonl", "w.manifests"):
                with open(folder / name, "wb") as f:
                    f.truncate(size if name == "w.jsonl" else 200)  # sparse: counted, not written
                os.utime(folder / name, (now[0], now[0]))
            n += 1
            total += size + 200
            now[0] += 3600 / (SESSIONS_PER_DAY // 24)
        if retention:
            before = len(records)
            sweeper.sweep()
            total -= sum(getattr(ev, "bytes", 0) for ev in records[before:])
        points.append((hour / 24, total))
    if retention:
        print(f"  retention recorded {len(records)} deletions (each with its manifests' SHA-256)")
    return points


def svg(series: dict[str, list[tuple[float, int]]], path: Path) -> None:
    w, h, pad = 720, 400, 60
    ymax = max(v for pts in series.values() for _, v in pts) * 1.05
    xmax = max(x for pts in series.values() for x, _ in pts)

    def xy(x: float, y: float) -> str:
        return f"{pad + x / xmax * (w - 2 * pad):.1f},{h - pad - y / ymax * (h - 2 * pad):.1f}"

    colors = {"no retention": "#c0392b", f"retention: {LIMIT // MIB} MiB, {MAX_AGE_DAYS} days": "#2471a3"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">'
    ]
    parts.append(f'<rect width="{w}" height="{h}" fill="white"/>')
    title = "File store size, 50 MiB/day of MCP traffic"
    parts.append(f'<text x="{w / 2}" y="24" text-anchor="middle" font-size="15">{title}</text>')
    for gb in range(0, int(ymax / MIB / 256) + 1):
        y = xy(0, gb * 256 * MIB).split(",")[1]
        parts.append(f'<line x1="{pad}" x2="{w - pad}" y1="{y}" y2="{y}" stroke="#ddd"/>')
        parts.append(f'<text x="{pad - 6}" y="{y}" text-anchor="end">{gb * 256} MiB</text>')
    for d in range(0, int(xmax) + 1, 5):
        parts.append(f'<text x="{xy(d, 0).split(",")[0]}" y="{h - pad + 18}" text-anchor="middle">day {d}</text>')
    for i, (name, pts) in enumerate(series.items()):
        color = list(colors.values())[i]
        line = " ".join(xy(x, y) for x, y in pts)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts.append(f'<text x="{pad + 10}" y="{50 + 16 * i}" fill="{color}">{name}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main() -> None:
    series = {}
    for label, on in (("no retention", False), (f"retention: {LIMIT // MIB} MiB, {MAX_AGE_DAYS} days", True)):
        with tempfile.TemporaryDirectory() as tmp:
            pts = simulate(Path(tmp), on)
        peak = max(v for _, v in pts)
        print(f"{label}: after 30 days {pts[-1][1] / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB")
        series[label] = pts
    out = Path(__file__).with_suffix(".svg")
    svg(series, out)
    print(f"figure: {out}")


if __name__ == "__main__":
    main()
